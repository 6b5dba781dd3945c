"""The simulated account (engine/brokers/sim/ledger.py): cash, positions and their cost basis, and
the margin figures Alpaca reports, read in-process and through the real alpaca-py SDK
against walkbook's sim-server on 127.0.0.1."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide as SdkSide
from alpaca.trading.enums import OrderStatus, PositionSide, TimeInForce
from alpaca.trading.models import Order as SdkOrder
from alpaca.trading.models import Position, TradeAccount
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from alpaca_support import KEYS, NEVER, market
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import MarketSpec, SimBroker, SymbolSpec, VirtualClock
from engine.broker import BrokerOrder, OrderRequest
from engine.brokers.sim.ledger import Ledger, SimAccount
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer
from engine.errors import BrokerRejected
from engine.intents import OrderSide

START = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
# the account's amounts, each a decimal string in Alpaca's JSON
MONEY = (
    "cash",
    "buying_power",
    "regt_buying_power",
    "non_marginable_buying_power",
    "options_buying_power",
    "accrued_fees",
    "pending_transfer_in",
    "pending_transfer_out",
    "portfolio_value",
    "equity",
    "last_equity",
    "long_market_value",
    "short_market_value",
    "initial_margin",
    "maintenance_margin",
    "last_maintenance_margin",
    "sma",
)
ZERO = Decimal(0)


def steady(**fields: Any) -> MarketSpec:
    """AAPL at 189.90 / 190.10 and TSLA at 249.87 / 250.13, both still; nothing rests filled."""
    symbols = {
        "AAPL": SymbolSpec(price=Decimal(190), spread_bps=10, volatility_bps=0),
        "TSLA": SymbolSpec(price=Decimal(250), spread_bps=10, volatility_bps=0),
        "HARD": SymbolSpec(price=Decimal(40), spread_bps=10, volatility_bps=0, shortable=False),
    }
    base: dict[str, Any] = {
        "latency_seconds": 0.0,
        "fill_intensity": 1e-9,
        "market_partial_probability": 0.0,
        "stream_gap_probability": 0.0,
        "symbols": symbols,
    }
    return MarketSpec(**(base | fields))


def run(spec: MarketSpec, scenario: Callable[[SimBroker], Coroutine[Any, Any, None]]) -> SimBroker:
    clock = VirtualClock(START)
    broker = SimBroker(spec, clock)
    clock.run(scenario(broker))
    return broker


def order(
    cid: str, symbol: str, side: OrderSide, qty: str, limit: str | None = None
) -> OrderRequest:
    return OrderRequest(
        client_order_id=cid,
        symbol=symbol,
        side=side,
        qty=Decimal(qty),
        order_type="market" if limit is None else "limit",
        limit_price=None if limit is None else Decimal(limit),
    )


async def settled(broker: SimBroker, placed: BrokerOrder) -> BrokerOrder:
    """The order once final (a market order fills when it reaches the venue)."""
    current = placed
    for _ in range(30):
        if current.is_terminal:
            return current
        current = await broker.wait_for_update(placed.id, 1.0)
    raise AssertionError(f"order {placed.id} still {current.status}")


def account_at(ledger: Ledger, marks: dict[str, Decimal], kind: str = "margin") -> SimAccount:
    return ledger.account(
        marks,
        account_type="margin" if kind == "margin" else "cash",
        reserved_buys=ZERO,
        reserved_shorts=ZERO,
        created_at=START,
    )


# -- the ledger's arithmetic --------------------------------------------------------------


def test_average_entry_price_follows_alpacas_convention() -> None:
    """Buys raise the cost at their price, sells keep the average, crossing zero starts anew."""
    ledger = Ledger.opening(Decimal(10_000), {}, lambda _: Decimal(1))
    ledger.execute("AAPL", Decimal(10), Decimal(100))
    ledger.execute("AAPL", Decimal(10), Decimal(110))
    assert ledger.holdings["AAPL"].avg_entry_price == Decimal(105)
    ledger.execute("AAPL", Decimal(-5), Decimal(120))
    holding = ledger.holdings["AAPL"]
    assert (holding.qty, holding.avg_entry_price, holding.cost) == (15, 105, 1575)
    assert ledger.cash == 10_000 - 1_000 - 1_100 + 600
    ledger.execute("AAPL", Decimal(-20), Decimal(130))  # through zero: 5 short at 130
    holding = ledger.holdings["AAPL"]
    assert (holding.qty, holding.avg_entry_price, holding.cost) == (-5, 130, -650)
    ledger.execute("AAPL", Decimal(5), Decimal(125))
    assert "AAPL" not in ledger.holdings
    assert ledger.cash == 8_500 + 20 * 130 - 5 * 125


def test_spec_positions_enter_at_their_starting_price() -> None:
    ledger = Ledger.opening(
        Decimal(1_000), {"AAPL": Decimal(4), "NONE": ZERO}, {"AAPL": Decimal(50)}.__getitem__
    )
    assert list(ledger.holdings) == ["AAPL"]
    assert ledger.holdings["AAPL"].avg_entry_price == 50
    assert ledger.start.equity == 1_200
    assert ledger.start.maintenance_margin == 60  # 30% of 200


executions = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),
        st.decimals(min_value=-500, max_value=500, places=3).filter(bool),
        st.decimals(min_value=Decimal("0.01"), max_value=2_000, places=2),
    ),
    max_size=40,
)
prices = st.decimals(min_value=Decimal("0.01"), max_value=2_000, places=2)


@settings(max_examples=300, deadline=None)
@given(executions, prices, prices)
def test_cash_and_shares_are_conserved(
    trades: list[tuple[str, Decimal, Decimal]], mark_a: Decimal, mark_b: Decimal
) -> None:
    """Cash moves by exactly what each execution paid, shares by its quantity, and equity at
    any marks is the starting cash plus every execution's gain to the mark, whatever the
    cost bases in between."""
    start = Decimal(100_000)
    ledger = Ledger.opening(start, {}, lambda _: Decimal(1))
    for symbol, qty, price in trades:
        ledger.execute(symbol, qty, price)
    marks = {"A": mark_a, "B": mark_b}
    assert ledger.cash == start - sum((q * p for _, q, p in trades), ZERO)
    for symbol in marks:
        assert ledger.qty(symbol) == sum((q for s, q, _ in trades if s == symbol), ZERO)
    account = account_at(ledger, {s: marks[s] for s in ledger.holdings})
    gains = sum((q * (marks[s] - p) for s, q, p in trades), ZERO)
    assert account.equity == start + gains
    assert account.equity == account.cash + account.long_market_value + account.short_market_value


@settings(max_examples=300, deadline=None)
@given(executions)
def test_the_cost_basis_is_what_was_paid_and_kept_on_reductions(
    trades: list[tuple[str, Decimal, Decimal]],
) -> None:
    """Adding to a position adds exactly its cost (cash + cost bases stay at the starting
    cash while nothing is reduced); reducing one keeps the average; opening or crossing zero
    enters at the execution's price."""
    start = Decimal(100_000)
    ledger = Ledger.opening(start, {}, lambda _: Decimal(1))
    reduced = False
    for symbol, qty, price in trades:
        before = ledger.holdings.get(symbol)
        old_qty = ZERO if before is None else before.qty
        old_avg = None if before is None else before.avg_entry_price
        ledger.execute(symbol, qty, price)
        new_qty = ledger.qty(symbol)
        if not new_qty:
            reduced = True
            continue
        avg = ledger.holdings[symbol].avg_entry_price
        if not old_qty or (old_qty > 0) != (new_qty > 0):
            reduced = reduced or bool(old_qty)
            assert avg == price
        elif (qty > 0) != (old_qty > 0):
            reduced = True
            assert old_avg is not None
            assert abs(avg - old_avg) <= old_avg * Decimal("1e-20")
        if not reduced:
            costs = sum((h.cost for h in ledger.holdings.values()), ZERO)
            assert ledger.cash + costs == start


@pytest.mark.parametrize(
    ("kind", "cash", "multiplier", "buying_power", "shorting"),
    [
        ("margin", 1_999, 1, 1_999, False),
        ("margin", 2_000, 2, 4_000, True),
        ("margin", 25_000, 2, 50_000, True),
        ("cash", 1_000_000, 1, 1_000_000, False),
    ],
)
def test_the_multiplier_follows_the_equity(
    kind: str, cash: int, multiplier: int, buying_power: int, shorting: bool
) -> None:
    """1x below $2,000 (and on a cash account), Reg T 2x from $2,000 (margin-and-short-
    selling); no 4x pattern-day-trader tier since Alpaca retired it on 2026-07-06
    (https://docs.alpaca.markets/us/changelog/2026-06-03-pdt-f3c04da)."""
    account = account_at(Ledger.opening(Decimal(cash), {}, lambda _: Decimal(1)), {}, kind)
    assert account.multiplier == multiplier
    assert account.buying_power == buying_power
    assert account.regt_buying_power == (cash if multiplier == 1 else 2 * cash)
    assert account.non_marginable_buying_power == cash
    assert account.shorting_enabled is shorting


def test_margin_figures_follow_alpacas_definitions() -> None:
    """A long and a short: equity = cash + long - |short|; initial margin 50% of both;
    maintenance 30% of the long, the greater of $5 a share and 30% of the short; buying
    power twice the equity over the initial margin."""
    ledger = Ledger.opening(Decimal(50_000), {"A": Decimal(100)}, lambda _: Decimal(100))
    ledger.execute("B", Decimal(-200), Decimal(10))  # short 200 at 10: cash + 2,000
    ledger.execute("A", Decimal(50), Decimal(100))  # 50 more of A: cash - 5,000
    account = account_at(ledger, {"A": Decimal(110), "B": Decimal(8)})
    assert account.cash == 47_000
    assert (account.long_market_value, account.short_market_value) == (16_500, -1_600)
    assert account.equity == 47_000 + 16_500 - 1_600
    assert account.initial_margin == (16_500 + 1_600) / 2
    assert account.maintenance_margin == 16_500 * Decimal("0.3") + 200 * 5
    assert (account.last_equity, account.last_maintenance_margin) == (60_000, 3_000)
    assert account.regt_buying_power == (account.equity - account.initial_margin) * 2
    assert account.buying_power == account.regt_buying_power


# -- the simulator's refusals ---------------------------------------------------------------


def test_margin_buying_power_exceeds_the_cash_and_buys_spend_it() -> None:
    async def scenario(broker: SimBroker) -> None:
        before = await broker.get_account()
        assert (before.cash, before.equity, before.buying_power) == (10_000, 10_000, 20_000)
        assert before.non_marginable_buying_power == 10_000
        await settled(broker, await broker.submit_order(order("b1", "AAPL", OrderSide.BUY, "80")))
        after = await broker.get_account()
        assert after.cash == 10_000 - 80 * Decimal("190.10")  # borrowed: below zero
        assert after.long_market_value == 80 * 190
        assert after.equity == after.cash + after.long_market_value
        assert after.buying_power == 2 * after.equity - after.long_market_value
        assert after.non_marginable_buying_power == 0

    run(steady(cash=Decimal(10_000)), scenario)


@pytest.mark.parametrize("kind", ["margin", "cash"])
def test_a_buy_beyond_the_cash_is_margin_only(kind: str) -> None:
    """60 AAPL at 190.10 (11,406) with 10,000 of cash: a margin account lends the rest; a
    cash account refuses it with Alpaca's 403 figures."""
    result: dict[str, Any] = {}

    async def scenario(broker: SimBroker) -> None:
        try:
            placed = await broker.submit_order(order("b1", "AAPL", OrderSide.BUY, "60", "190.10"))
        except BrokerRejected as exc:
            result["refused"] = exc
            return
        result["filled"] = await settled(broker, placed)

    broker = run(steady(cash=Decimal(10_000), account_type=kind), scenario)
    if kind == "margin":
        assert result["filled"].filled_qty == 60
        assert broker.positions == {"AAPL": 60}
    else:
        refused = result["refused"]
        assert refused.reason == "insufficient_funds"
        assert refused.message == "insufficient buying power"
        assert refused.fields["buying_power"] == "10000"
        assert refused.fields["cost_basis"] == "11406"
        assert broker.positions == {}


@pytest.mark.parametrize("kind", ["margin", "cash"])
def test_a_sell_with_no_position_opens_a_short_on_margin_only(kind: str) -> None:
    result: dict[str, Any] = {}

    async def scenario(broker: SimBroker) -> None:
        try:
            placed = await broker.submit_order(order("s1", "TSLA", OrderSide.SELL, "10"))
        except BrokerRejected as exc:
            result["refused"] = exc
            return
        await settled(broker, placed)
        result["account"] = await broker.get_account()

    broker = run(steady(cash=Decimal(30_000), account_type=kind), scenario)
    if kind == "cash":
        refused = result["refused"]
        assert refused.reason == "insufficient_position"
        assert refused.fields | {"reason": None} == {
            "reason": None,
            "available": "0",
            "existing_qty": "0",
            "held_for_orders": "0",
            "symbol": "TSLA",
        }
        assert broker.positions == {}
        return
    assert broker.positions == {"TSLA": -10}
    (short,) = broker.position_views()
    assert (short.side, short.avg_entry_price, short.cost_basis) == (
        "short",
        Decimal("249.87"),
        Decimal("-2498.7"),
    )
    assert short.market_value == -2500
    assert short.unrealized_pl == Decimal("-1.3")
    account = result["account"]
    assert account.cash == 30_000 + Decimal("2498.7")
    assert account.short_market_value == -2500
    assert account.equity == account.cash - 2500


def test_a_sell_beyond_the_long_position_is_refused_with_alpacas_figures() -> None:
    """10 AAPL held, 4 of them by a resting sell: a sell of 8 is refused, never a short."""
    result: dict[str, Any] = {}

    async def scenario(broker: SimBroker) -> None:
        resting = await broker.submit_order(order("s1", "AAPL", OrderSide.SELL, "4", "250"))
        result["resting"] = resting.id
        with pytest.raises(BrokerRejected) as refused:
            await broker.submit_order(order("s2", "AAPL", OrderSide.SELL, "8", "250"))
        result["refused"] = refused.value
        (view,) = broker.position_views()
        result["available"] = view.qty_available

    broker = run(steady(positions={"AAPL": Decimal(10)}), scenario)
    refused = result["refused"]
    assert refused.reason == "insufficient_position"
    assert refused.message == "insufficient qty available for order (requested: 8, available: 6)"
    assert {k: v for k, v in refused.fields.items() if k != "reason"} == {
        "available": "6",
        "existing_qty": "10",
        "held_for_orders": "4",
        "related_orders": [result["resting"]],
        "symbol": "AAPL",
    }
    assert result["available"] == 6
    assert broker.positions == {"AAPL": 10}


def test_a_short_sale_needs_a_shortable_asset_whole_shares_and_buying_power() -> None:
    refusals: dict[str, BrokerRejected] = {}

    async def scenario(broker: SimBroker) -> None:
        attempts = {
            "not shortable": order("s1", "HARD", OrderSide.SELL, "5"),
            "fractional": order("s2", "TSLA", OrderSide.SELL, "1.5"),
            "too big": order("s3", "TSLA", OrderSide.SELL, "40", "240"),
        }
        for name, request in attempts.items():
            with pytest.raises(BrokerRejected) as refused:
                await broker.submit_order(request)
            refusals[name] = refused.value

    run(steady(cash=Decimal(5_000)), scenario)  # 2x: 10,000 of buying power
    assert refusals["not shortable"].message == "asset HARD cannot be sold short"
    assert refusals["fractional"].message == "fractional orders cannot be sold short"
    too_big = refusals["too big"]
    assert too_big.reason == "insufficient_funds"
    # costed at 3% above the ask, the limit being lower: 40 * 250.13 * 1.03
    assert too_big.fields == {
        "reason": "insufficient_funds",
        "buying_power": "10000",
        "cost_basis": "10305.356",
    }


def test_below_2000_of_equity_a_margin_account_is_1x_and_never_shorts() -> None:
    async def scenario(broker: SimBroker) -> None:
        account = await broker.get_account()
        assert (account.multiplier, account.buying_power) == (1, 1_500)
        assert not account.shorting_enabled
        with pytest.raises(BrokerRejected, match="insufficient qty available"):
            await broker.submit_order(order("s1", "TSLA", OrderSide.SELL, "1"))

    run(steady(cash=Decimal(1_500)), scenario)


def test_open_buys_and_short_sales_hold_buying_power() -> None:
    """A resting buy holds its cost of the buying power and of the cash; a resting short
    sale holds MAX(limit, 3% above the ask) of the buying power only."""

    async def scenario(broker: SimBroker) -> None:
        await broker.submit_order(order("b1", "AAPL", OrderSide.BUY, "10", "180"))
        await broker.submit_order(order("s1", "TSLA", OrderSide.SELL, "10", "300"))
        account = await broker.get_account()
        assert account.buying_power == 20_000 - 1_800 - 3_000
        assert account.non_marginable_buying_power == 10_000 - 1_800
        assert account.cash == 10_000

    run(steady(cash=Decimal(10_000)), scenario)


def test_the_books_survive_a_restart_and_an_older_state_file_still_loads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sim.db"
    spec = steady(cash=Decimal(50_000), positions={"TSLA": Decimal(2)})
    clock = VirtualClock(START)
    broker = SimBroker.open(path, spec, clock)

    async def buy() -> None:
        await settled(broker, await broker.submit_order(order("b1", "AAPL", OrderSide.BUY, "3")))

    clock.run(buy())
    broker.close()
    again = SimBroker.open(path, spec, clock)
    assert again.ledger.holdings == broker.ledger.holdings
    assert again.ledger.holdings["AAPL"].avg_entry_price == Decimal("190.10")
    assert again.ledger.start == broker.ledger.start
    again.close()

    with sqlite3.connect(path) as conn:  # a state file from before cost basis was kept
        (text,) = conn.execute("SELECT value FROM sim_meta WHERE key = 'state'").fetchone()
        state = json.loads(text)
        del state["cost_basis"]
        conn.execute("UPDATE sim_meta SET value = ? WHERE key = 'state'", [json.dumps(state)])
    older = SimBroker.open(path, spec, clock)
    assert older.positions == {"TSLA": 2, "AAPL": 3}
    assert older.ledger.holdings["AAPL"].avg_entry_price == 190  # its starting price
    assert older.cash == broker.cash
    older.close()


# -- through alpaca-py against the sim-server -------------------------------------------------


def filled(client: TradingClient, placed: SdkOrder) -> SdkOrder:
    """Read the order until it is filled (the server's market fills on its next tick)."""
    current = placed
    for _ in range(100):
        if current.status == OrderStatus.FILLED:
            return current
        time.sleep(0.05)
        answer = client.get_order_by_id(placed.id)
        assert isinstance(answer, SdkOrder)
        current = answer
    raise AssertionError(f"order {placed.id} is still {current.status}")


def test_account_and_positions_read_through_alpaca_py(tmp_path: Path) -> None:
    """A long, a short and a spec position, read with the real SDK: every field parses, the
    positions add up to the account's market values and equity = cash + both of them."""
    spec = market(NEVER, cash=Decimal(100_000), positions={"MSFT": Decimal(5)})
    server = SimServer(tmp_path / "sim.db", spec, FaultSpec(), KEYS)
    with ServerThread(server) as thread:
        client = TradingClient(KEYS[0], KEYS[1], paper=True, url_override=thread.url)
        day = TimeInForce.DAY
        buy = MarketOrderRequest(symbol="AAPL", qty=20, side=SdkSide.BUY, time_in_force=day)
        short = MarketOrderRequest(symbol="TSLA", qty=8, side=SdkSide.SELL, time_in_force=day)
        for request in (buy, short):
            placed = client.submit_order(request)
            assert isinstance(placed, SdkOrder)
            filled(client, placed)
        rest = LimitOrderRequest(
            symbol="MSFT", qty=2, side=SdkSide.SELL, limit_price=500, time_in_force=day
        )
        client.submit_order(rest)  # holds 2 of the 5 MSFT
        account = client.get_account()
        positions = client.get_all_positions()
        one = client.get_open_position("TSLA")

    assert isinstance(account, TradeAccount)
    unset = [name for name, value in account.model_dump().items() if value is None]
    # crypto_status only where crypto trading is enabled; the pattern-day-trader fields
    # since Alpaca removed them on 2026-07-06
    assert sorted(unset) == [
        "crypto_status",
        "daytrade_count",
        "daytrading_buying_power",
        "pattern_day_trader",
    ]
    figures = {name: Decimal(getattr(account, name)) for name in MONEY}
    cash, equity = figures["cash"], figures["equity"]
    assert equity == cash + figures["long_market_value"] + figures["short_market_value"]
    assert figures["portfolio_value"] == equity
    assert figures["last_equity"] == 100_000 + 5 * 410  # MSFT entered at its price
    assert account.multiplier == "2"
    assert account.shorting_enabled is True
    assert figures["buying_power"] == figures["regt_buying_power"] > cash
    assert figures["regt_buying_power"] == (equity - figures["initial_margin"]) * 2
    assert cash == 100_000 - 20 * Decimal("190.10") + 8 * Decimal("249.85")  # the touches
    assert figures["non_marginable_buying_power"] == cash  # a resting sell holds no cash
    assert (
        figures["initial_margin"]
        == (figures["long_market_value"] - figures["short_market_value"]) / 2
    )

    assert all(isinstance(p, Position) for p in positions)
    by_symbol = {p.symbol: p for p in positions if isinstance(p, Position)}
    assert sorted(by_symbol) == ["AAPL", "MSFT", "TSLA"]
    assert isinstance(one, Position)
    assert one.model_dump() == by_symbol["TSLA"].model_dump()
    for p in by_symbol.values():
        qty, price = Decimal(p.qty), Decimal(str(p.current_price))
        value, basis = Decimal(str(p.market_value)), Decimal(p.cost_basis)
        assert value == qty * price
        assert basis == qty * Decimal(p.avg_entry_price)
        assert Decimal(str(p.unrealized_pl)) == value - basis
        assert Decimal(str(p.unrealized_intraday_pl)) == value - basis
        assert Decimal(str(p.unrealized_plpc)) == ((value - basis) / abs(basis)).quantize(
            Decimal("1e-16")
        )
        assert p.side == (PositionSide.LONG if qty > 0 else PositionSide.SHORT)
    long_value = sum((Decimal(str(p.market_value)) for p in positions if Decimal(p.qty) > 0), ZERO)
    assert long_value == figures["long_market_value"]
    assert Decimal(str(by_symbol["TSLA"].market_value)) == figures["short_market_value"]
    aapl, msft, tsla = by_symbol["AAPL"], by_symbol["MSFT"], by_symbol["TSLA"]
    assert (aapl.qty, aapl.avg_entry_price, aapl.lastday_price) == ("20", "190.1", "190")
    assert (tsla.qty, tsla.qty_available, tsla.side) == ("-8", "-8", PositionSide.SHORT)
    assert Decimal(tsla.avg_entry_price) > 0
    assert (msft.qty, msft.qty_available, msft.avg_entry_price) == ("5", "3", "410")


def test_refusals_carry_alpacas_figures_on_the_wire(tmp_path: Path) -> None:
    """The 403 bodies name what Alpaca's do: buying power against cost basis; shares
    available, held and by which orders."""
    spec = market(NEVER, cash=Decimal(1_000), positions={"AAPL": Decimal(3)})
    server = SimServer(tmp_path / "sim.db", spec, FaultSpec(), KEYS)
    headers = {"APCA-API-KEY-ID": KEYS[0], "APCA-API-SECRET-KEY": KEYS[1]}
    with ServerThread(server) as thread:

        def post(body: dict[str, Any]) -> requests.Response:
            order_body = {"type": "limit", "time_in_force": "day", **body}
            url = f"{thread.url}/v2/orders"
            return requests.post(url, json=order_body, headers=headers, timeout=5)

        resting = post({"symbol": "AAPL", "side": "sell", "qty": "2", "limit_price": "250"})
        assert resting.status_code == 200
        beyond = post({"symbol": "AAPL", "side": "sell", "qty": "2", "limit_price": "250"})
        broke = post({"symbol": "AAPL", "side": "buy", "qty": "10", "limit_price": "189"})

    assert beyond.status_code == 403
    assert beyond.json() == {
        "code": 40310000,
        "message": "insufficient qty available for order (requested: 2, available: 1)",
        "available": "1",
        "existing_qty": "3",
        "held_for_orders": "2",
        "related_orders": [resting.json()["id"]],
        "symbol": "AAPL",
    }
    assert broke.status_code == 403
    # 1,570 of equity: 1x, the cash less nothing held (a resting sell holds no cash)
    assert broke.json() == {
        "code": 40310000,
        "message": "insufficient buying power",
        "buying_power": "1000",
        "cost_basis": "1890",
    }
