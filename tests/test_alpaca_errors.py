"""What a strict Alpaca answers, and what walkbook makes of it: refusals told apart by code
AND message (40010001 is a duplicate only when it says so), the figures of an error body
kept for the journal, and a margin account's borrowed buying power left unspent.

The end-to-end tests put a small HTTP server on 127.0.0.1 between alpaca-py and the
sim-server: it answers the staged requests as Alpaca does and passes every other one on.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from alpaca.trading.models import TradeAccount
from alpaca_support import FAST, KEYS, AlpacaRig, market, settings_for
from walk_support import of_kind, run_plan

from engine import BrokerRejected, Engine, EngineConfig, OrderState, RealClock, SymbolSpec
from engine.brokers.alpaca import (
    AlpacaBroker,
    Forbidden,
    InsufficientBuyingPower,
    error_from_response,
)
from engine.brokers.alpaca.convert import account_from_sdk
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer
from engine.errors import DuplicateClientOrderId, OrderNotFound
from engine.events import EventKind
from engine.fsm import FailReason
from journal import Event

UUIDS = [f"6a8f3c2e-1b4d-4e5f-9a0b-{n:012d}" for n in range(1, 5)]
NOT_PERMITTED = '{"code":40010001,"message":"us_equity orders not allowed for account"}'
UNKNOWN_ASSET = '{"code":40010001,"message":"could not find us_equity asset \\"ZZZQ\\""}'
BELOW_MINIMUM = '{"code":40310000,"message":"cost basis must be >= minimal amount of order 1"}'
DAY_TRADING = '{"code":40310000,"message":"insufficient day trading buying power"}'
PDT = '{"code":40310100,"message":"trade denied due to pattern day trading protection"}'
NO_FUNDS = (
    '{"code":40310000,"message":"insufficient buying power","buying_power":"123.45",'
    '"cost_basis":"500"}'
)
NO_SHARES = json.dumps(
    {
        "code": 40310000,
        "message": "insufficient qty available for order (requested: 10, available: 5)",
        "available": "5",
        "existing_qty": "5",
        "held_for_orders": "0",
        "related_orders": UUIDS,
        "symbol": "AAPL",
    }
)
GATEWAY_504 = "<html><head><title>504 Gateway Time-out</title></head><body>nginx</body></html>"


def reason_of(error: Exception) -> str | None:
    return getattr(error, "reason", None)


# -- classification by code and message -------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (NOT_PERMITTED, "not_permitted"),
        ('{"code":40010001,"message":"crypto orders not allowed for account"}', "not_permitted"),
        (UNKNOWN_ASSET, "unknown_symbol"),
        ('{"code":40010001,"message":"qty must be integer"}', "rejected"),
        ('{"code":40010001}', "rejected"),
    ],
)
def test_a_40010001_is_a_duplicate_only_when_its_message_says_so(body: str, reason: str) -> None:
    """Alpaca uses 40010001 for every refused order body; only "client_order_id must be
    unique" may send the walk looking for an order to adopt."""
    error = error_from_response(422, body, write=True)
    assert not isinstance(error, DuplicateClientOrderId)
    assert type(error) is BrokerRejected
    assert reason_of(error) == reason
    assert error.fields["code"] == 40010001
    duplicate = '{"code":40010001,"message":"client_order_id must be unique"}'
    assert type(error_from_response(422, duplicate, write=True)) is DuplicateClientOrderId


def test_an_unknown_asset_on_an_order_is_unknown_symbol_but_a_404_read_stays_not_found() -> None:
    """On a write the asset is what the order named; a GET of the asset itself answered 404
    stays "not found", which the adapter turns into UnknownSymbol."""
    body = '{"code":40410000,"message":"asset not found for ZZZQ"}'
    assert reason_of(error_from_response(404, body, write=True)) == "unknown_symbol"
    assert reason_of(error_from_response(422, body, write=True)) == "unknown_symbol"
    assert type(error_from_response(404, body, write=False)) is OrderNotFound
    assert type(error_from_response(404, UNKNOWN_ASSET, write=False)) is OrderNotFound


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BELOW_MINIMUM, "below_minimum"),
        (PDT, "pattern_day_trader"),
        ('{"code":40310100,"message":"potential PDT violation"}', "pattern_day_trader"),
        (NOT_PERMITTED.replace("40010001", "40310000"), "not_permitted"),
    ],
)
def test_actionable_403s_carry_their_reason_not_forbidden(body: str, reason: str) -> None:
    error = error_from_response(403, body, write=True)
    assert not isinstance(error, Forbidden)
    assert reason_of(error) == reason


def test_403s_about_the_keys_or_the_account_stay_forbidden_beside_the_actionable_ones() -> None:
    """The same status, told apart by message: refused keys are Forbidden, a refused order
    is not."""
    for status, body in [
        (403, '{"message": "forbidden."}'),
        (401, '{"code":40110000,"message":"request is not authorized"}'),
        (403, '{"code":40310000,"message":"account is not authorized to trade"}'),
    ]:
        assert type(error_from_response(status, body, write=True)) is Forbidden
    assert not isinstance(error_from_response(403, BELOW_MINIMUM, write=True), Forbidden)


def test_insufficient_day_trading_buying_power_is_insufficient_funds_marked_day_trading() -> None:
    error = error_from_response(403, DAY_TRADING, write=True)
    assert type(error) is InsufficientBuyingPower
    assert reason_of(error) == "insufficient_funds"
    assert error.day_trading is True
    assert error.fields["day_trading"] is True
    overnight = error_from_response(403, NO_FUNDS, write=True)
    assert isinstance(overnight, InsufficientBuyingPower)
    assert overnight.day_trading is False


def test_every_reason_a_broker_answer_maps_to_is_a_fail_reason() -> None:
    """The walk turns an unknown reason into `rejected`: each new reason must be a member,
    or the FAILED event would lose it."""
    bodies = [(422, NOT_PERMITTED), (422, UNKNOWN_ASSET), (403, BELOW_MINIMUM), (403, PDT)]
    reasons = {reason_of(error_from_response(status, b, write=True)) for status, b in bodies}
    assert reasons == {"not_permitted", "unknown_symbol", "below_minimum", "pattern_day_trader"}
    assert {FailReason(r).value for r in reasons if r is not None} == reasons


# -- the figures of an error body --------------------------------------------------------


def test_insufficient_funds_keeps_buying_power_and_cost_basis() -> None:
    error = error_from_response(403, NO_FUNDS, write=True)
    assert (error.fields["buying_power"], error.fields["cost_basis"]) == ("123.45", "500")


def test_insufficient_qty_keeps_what_is_available_held_and_which_orders_hold_it() -> None:
    error = error_from_response(403, NO_SHARES, write=True)
    assert reason_of(error) == "insufficient_position"
    figures = {k: error.fields[k] for k in ("available", "existing_qty", "held_for_orders")}
    assert figures == {"available": "5", "existing_qty": "5", "held_for_orders": "0"}
    assert error.fields["symbol"] == "AAPL"
    assert error.fields["related_orders"] == 4
    assert error.fields["related_order_ids"] == UUIDS[:3]


def test_figures_are_short_texts_with_the_keys_redacted() -> None:
    body = json.dumps(
        {
            "code": 40310000,
            "message": "insufficient buying power",
            "buying_power": 1e-05,
            "cost_basis": f"{KEYS[1]} " + "9" * 200,
            "symbol": {"nested": "ignored"},
            "reason": "not a figure",
        }
    )
    error = error_from_response(403, body, write=True, secrets=KEYS)
    assert error.fields["buying_power"] == "1e-05"
    assert KEYS[1] not in error.fields["cost_basis"]
    assert len(error.fields["cost_basis"]) <= 44
    assert "symbol" not in error.fields
    assert error.fields["reason"] == "insufficient_funds"


# -- the account -------------------------------------------------------------------------

MARGIN_ACCOUNT = {
    "id": "4f2c1e7a-8b3d-4c5e-9f60-7a8b9c0d1e2f",
    "account_number": "PA3K9Z0QX1YB",
    "status": "ACTIVE",
    "crypto_status": "ACTIVE",
    "currency": "USD",
    "buying_power": "20000",
    "regt_buying_power": "20000",
    "non_marginable_buying_power": "10000",
    "cash": "10000",
    "accrued_fees": "0",
    "portfolio_value": "10000",
    "trading_blocked": False,
    "transfers_blocked": False,
    "account_blocked": False,
    "created_at": "2024-03-04T15:01:02.123456Z",
    "trade_suspended_by_user": False,
    "multiplier": "2",
    "shorting_enabled": True,
    "equity": "10000",
    "last_equity": "10000",
    "long_market_value": "0",
    "short_market_value": "0",
    "initial_margin": "0",
    "maintenance_margin": "0",
    "last_maintenance_margin": "0",
    "sma": "10000",
}


def test_a_margin_account_reads_with_what_cash_alone_buys() -> None:
    account = account_from_sdk(TradeAccount(**MARGIN_ACCOUNT))
    assert (account.cash, account.buying_power) == (Decimal(10_000), Decimal(20_000))
    assert account.non_marginable_buying_power == Decimal(10_000)
    assert (account.equity, account.multiplier) == (Decimal(10_000), Decimal(2))


# -- end to end: alpaca-py, a staging server, the sim-server -----------------------------

Answer = tuple[int, str]


class StagedAlpaca:
    """An HTTP server on 127.0.0.1 in front of the sim-server: a staged route ("POST
    /v2/orders") gets its answers in turn, the last one ever after; the rest pass through."""

    def __init__(self, upstream: str, staged: dict[str, list[Answer]]) -> None:
        self.upstream = upstream
        self.staged = {route: list(answers) for route, answers in staged.items()}
        self.answered: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        assert self._runner is not None
        assert self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        route = f"{request.method} {request.path}"
        answers = self.staged.get(route)
        if answers:
            self.answered[route] += 1
            status, body = answers.pop(0) if len(answers) > 1 else answers[0]
            kind = "text/html" if body.startswith("<") else "application/json"
            return web.Response(status=status, text=body, content_type=kind)
        if not request.path.startswith("/v2/"):
            return web.Response(status=404)  # trade_updates: the adapter polls instead
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.upper().startswith("APCA-")}
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        url = self.upstream + request.path_qs
        data = await request.read()
        async with self._session.request(request.method, url, headers=headers, data=data) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type=answer.content_type)


@contextmanager
def staged_alpaca(upstream: str, staged: dict[str, list[Answer]]) -> Iterator[StagedAlpaca]:
    proxy = StagedAlpaca(upstream, staged)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
        yield proxy
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextmanager
def staged_rig(
    tmp_path: Path,
    staged: dict[str, list[Answer]],
    config: EngineConfig = FAST,
    **spec: Any,
) -> Iterator[tuple[AlpacaRig, StagedAlpaca]]:
    """The engine on AlpacaBroker whose trading REST goes through `staged`; quotes come from
    the sim-server directly."""
    server = SimServer(tmp_path / "sim.db", market(**spec), FaultSpec(), KEYS)
    with ServerThread(server) as thread, staged_alpaca(thread.url, staged) as proxy:
        settings = settings_for(proxy.url, data_url=thread.url, stream_connect_seconds=0.2)
        with AlpacaBroker(settings) as broker:
            asyncio.run(broker.check_keys())
            path = tmp_path / "journal.db"
            with Engine(broker, path, config=config, clock=RealClock()) as engine:
                yield AlpacaRig(thread, broker, engine, path), proxy


def failed(rig: AlpacaRig) -> Event:
    (event,) = [e for e in rig.events(EventKind.TRANSITION) if e.to_state == OrderState.FAILED]
    return event


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ([(422, NOT_PERMITTED)], "not_permitted"),  # the first sending
        ([(504, GATEWAY_504), (422, UNKNOWN_ASSET)], "unknown_symbol"),  # the resend
    ],
)
def test_a_non_duplicate_40010001_is_never_resolved_as_an_adoption(
    tmp_path: Path, answers: list[Answer], reason: str
) -> None:
    """Refused with 40010001 on its first sending, or on the resend after a 504 left the
    outcome unknown, the order fails with the refusal's reason: it is not taken for another
    journal's order, nothing is looked up to adopt, nothing is acknowledged."""
    staged = {"POST /v2/orders": answers}
    with staged_rig(tmp_path, staged) as (rig, proxy):
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "3", "urgency": "high"})
        (order,) = result.orders
        assert (order.state, order.reason) == (OrderState.FAILED, reason)
        assert proxy.answered["POST /v2/orders"] == len(answers)
        assert not rig.events(EventKind.SUBMIT_ACK)
        assert [e.data["reason"] for e in rig.events(EventKind.REJECTED)] == [reason]
        assert len(rig.events(EventKind.OUTCOME_UNKNOWN)) == len(answers) - 1
        details = failed(rig).data
        assert (details["status"], details["code"]) == (422, 40010001)
        assert not rig.book().orders


@pytest.mark.parametrize(
    ("side", "body", "reason", "figures"),
    [
        ("sell", NO_SHARES, "insufficient_position",
         {"available": "5", "held_for_orders": "0", "related_orders": 4, "symbol": "AAPL"}),
        ("buy", NO_FUNDS, "insufficient_funds",
         {"buying_power": "123.45", "cost_basis": "500", "day_trading": False}),
        ("buy", DAY_TRADING, "insufficient_funds", {"day_trading": True}),
        ("buy", BELOW_MINIMUM, "below_minimum", {"code": 40310000}),
    ],
)  # fmt: skip
def test_the_figures_of_a_refusal_reach_the_failed_transition(
    tmp_path: Path, side: str, body: str, reason: str, figures: dict[str, Any]
) -> None:
    staged = {"POST /v2/orders": [(403, body)]}
    with staged_rig(tmp_path, staged, positions={"AAPL": Decimal(10)}) as (rig, _):
        result = rig.run({"symbol": "AAPL", "side": side, "quantity": "10", "urgency": "high"})
        assert result.orders[0].reason == reason
        details = failed(rig).data
        assert {k: details.get(k) for k in figures} == figures
        assert details["status"] == 403


# -- margin: what cash buys, unless use_margin -------------------------------------------

MARGIN_BUY = {"symbol": "AAPL", "side": "buy", "quantity": "60", "urgency": "high"}  # ~$11,457


@pytest.mark.parametrize("use_margin", [False, True])
def test_buys_on_a_margin_account_spend_only_cash_unless_use_margin(
    tmp_path: Path, use_margin: bool
) -> None:
    """Alpaca reports $20,000 buying power on $10,000 cash (2x margin): a buy of about
    $11,457 would borrow. Without use_margin it fails insufficient_funds unsent, sized to
    the non-marginable buying power; with it, it is sent and fills."""
    staged = {"GET /v2/account": [(200, json.dumps(MARGIN_ACCOUNT))]}
    config = EngineConfig.model_validate(FAST.model_dump() | {"use_margin": use_margin})
    with staged_rig(tmp_path, staged, config=config) as (rig, proxy):
        (order,) = rig.run(MARGIN_BUY).orders
        assert proxy.answered["GET /v2/account"] >= 1
        if use_margin:
            assert order.state == OrderState.VALIDATED
            assert order.filled_qty == Decimal(60)
            return
        assert (order.state, order.reason) == (OrderState.FAILED, "insufficient_funds")
        assert not rig.events(EventKind.SUBMIT_INTENT)
        details = failed(rig).data
        assert details["funds_from"] == "non_marginable_buying_power"
        assert Decimal(details["buying_power"]) == Decimal(20_000)
        assert Decimal(details["non_marginable_buying_power"]) == Decimal(10_000)
        assert Decimal(details["available"]) == Decimal(10_000)


def test_the_simulator_is_a_margin_account_and_buys_stay_within_its_cash(
    make_rig: Any,
) -> None:
    """SimBroker reports a Reg T margin account (2x buying power at $2,000 equity or more):
    a buy between its cash and its buying power fails insufficient_funds unsent, sized to
    what cash buys; with use_margin it is sent."""
    book = {"AAPL": SymbolSpec(price=Decimal("100"), spread_bps=20, volatility_bps=0)}
    buy = {"symbol": "AAPL", "side": "buy", "quantity": "150"}  # ~$15,100 on $10,000 cash
    cautious = make_rig(symbols=book, cash=Decimal(10_000), fill_intensity=1e9)
    (order,) = run_plan(cautious, buy).orders
    assert (order.state, order.reason) == ("FAILED", "insufficient_funds")
    assert not of_kind(cautious, order.order_id, EventKind.SUBMIT_INTENT)
    (fail,) = [e for e in cautious.journal.events() if e.to_state == "FAILED"]
    cash_figure = fail.data["funds_from"]
    assert cash_figure in ("non_marginable_buying_power", "cash")
    assert Decimal(fail.data["buying_power"]) > Decimal(fail.data[cash_figure])

    borrowing = make_rig(
        config=EngineConfig(use_margin=True), symbols=book, cash=Decimal(10_000), fill_intensity=1e9
    )
    (order,) = run_plan(borrowing, buy).orders
    assert of_kind(borrowing, order.order_id, EventKind.SUBMIT_INTENT)


def test_the_alpaca_doc_tables_every_reason_a_broker_answer_fails_with() -> None:
    """docs/alpaca.md's table of Alpaca's error answers names each FAILED reason a broker
    answer leads to, each row citing the page it follows."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "alpaca.md").read_text()
    section = doc.split("## Alpaca's error answers and what walkbook does")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    from_broker = {
        FailReason.REJECTED, FailReason.INSUFFICIENT_FUNDS, FailReason.INSUFFICIENT_POSITION,
        FailReason.PLACED_ELSEWHERE, FailReason.ORDER_NOT_FOUND, FailReason.UNKNOWN_SYMBOL,
        FailReason.NOT_PERMITTED, FailReason.BELOW_MINIMUM, FailReason.PATTERN_DAY_TRADER,
    }  # fmt: skip
    assert [r.value for r in from_broker if f"FAILED `{r.value}`" not in section] == []
    assert all("](https://" in row for row in rows[1:])
    for status in (
        "429",
        "5xx",
        "404",
        "not replaceable",
        "parameters are not changed",
        "sub-penny",
    ):
        assert status in section
