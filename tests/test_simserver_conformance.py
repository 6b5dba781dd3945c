"""The sim-server behaves as Alpaca documents it, one behaviour a test: the order lifecycle
(accepted first, fills only on trade_updates), replaces, the close, time in force,
fractional and dollar orders, unknown symbols and cancels.

Driven through alpaca-py (`TradingClient`, `StockHistoricalDataClient`) against a
ServerThread on 127.0.0.1; trade_updates are read over a plain websocket speaking Alpaca's
JSON protocol, each message parsed by alpaca-py's own `TradeUpdate` model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import StockLatestQuoteRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce
from alpaca.trading.models import Clock, Order, Position, TradeUpdate
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest, ReplaceOrderRequest
from alpaca_support import EAGER, KEYS, NEVER, market
from websockets.sync.client import ClientConnection, connect

from engine.brokers.simserver import FaultSpec, ServerThread, SimServer

AUTH = {"APCA-API-KEY-ID": KEYS[0], "APCA-API-SECRET-KEY": KEYS[1]}
WAIT = 8.0  # the longest any expected trade update may take (a deadline, not a speed claim)
# AAPL in `market()`: mid 190, 10 bps wide, no volatility -> bid 189.90, ask 190.10
FAR_BELOW = 150.0  # a buy limit that never fills
INSIDE = 190.09  # a buy limit inside the spread, a cent under the ask: fills at EAGER
THROUGH = 191.0  # a buy limit through the ask: marketable
EXECUTIONS = ("fill", "partial_fill")


class TradeUpdates:
    """trade_updates as a listening client receives them, each read by alpaca-py's model."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[TradeUpdate] = []

    def _read(self, timeout: float) -> None:
        try:
            frame = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return
        message = json.loads(frame)
        if message.get("stream") == "trade_updates":
            self.seen.append(TradeUpdate(**message["data"]))

    def until(self, done: Callable[[], bool], timeout: float = WAIT) -> None:
        """Read until `done()` holds; fail, saying what did arrive, at the deadline."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"trade_updates never got there; seen: {self.summary()}"
            self._read(left)

    def drain(self, seconds: float) -> None:
        """Read whatever arrives for `seconds` (to show that nothing more does)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._read(left)

    def of(self, order: Order | str) -> list[TradeUpdate]:
        order_id = str(order.id if isinstance(order, Order) else order)
        return [u for u in self.seen if str(u.order.id) == order_id]

    def events(self, order: Order | str) -> list[str]:
        return [_event(u) for u in self.of(order)]

    def wait_for(self, order: Order | str, event: str) -> TradeUpdate:
        """The first `event` for `order`, once it has arrived."""
        self.until(lambda: event in self.events(order))
        return next(u for u in self.of(order) if _event(u) == event)

    def summary(self) -> list[tuple[str, str]]:
        return [(str(u.order.id)[:8], _event(u)) for u in self.seen]


def _event(update: TradeUpdate) -> str:
    """The event's name, whether alpaca-py's TradeEvent names it or not (done_for_day,
    order_replace_rejected stay plain strings)."""
    return str(getattr(update.event, "value", update.event))


@dataclass
class Venue:
    """A sim-server with a trading client and a trade_updates listener on it."""

    server: ServerThread
    trading: TradingClient
    updates: TradeUpdates

    def submit(self, request: MarketOrderRequest | LimitOrderRequest) -> Order:
        return _order(self.trading.submit_order(request))

    def order(self, order: Order) -> Order:
        return _order(self.trading.get_order_by_id(order.id))

    def refusal(self, call: Callable[[], object]) -> APIError:
        """The APIError `call` raises (it must raise one)."""
        with pytest.raises(APIError) as refused:
            call()
        return refused.value

    def position(self, symbol: str) -> Decimal:
        """The position's qty; Alpaca answers 404 for a symbol not held."""
        try:
            answer = self.trading.get_open_position(symbol)
        except APIError as exc:
            if exc.status_code == 404:
                return Decimal(0)
            raise
        assert isinstance(answer, Position), answer
        return dec(answer.qty)


@contextmanager
def venue(
    tmp_path: Path, faults: FaultSpec | None = None, tick_seconds: float = 0.2, **spec: Any
) -> Iterator[Venue]:
    server = SimServer(
        tmp_path / "sim.db", market(**spec), faults or FaultSpec(), KEYS, tick_seconds=tick_seconds
    )
    with (
        ServerThread(server) as thread,
        connect(thread.url.replace("http", "ws") + "/stream") as ws,
    ):
        keys = {"key_id": KEYS[0], "secret_key": KEYS[1]}
        ws.send(json.dumps({"action": "authenticate", "data": keys}))
        assert json.loads(ws.recv(timeout=5))["data"]["status"] == "authorized"
        ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        assert json.loads(ws.recv(timeout=5))["data"]["streams"] == ["trade_updates"]
        trading = TradingClient(KEYS[0], KEYS[1], paper=True, url_override=thread.url)
        trading._retry = 0  # the SDK would repeat a 429 or 504 on its own, 3 s apart
        yield Venue(thread, trading, TradeUpdates(ws))


def _order(answer: object) -> Order:
    assert isinstance(answer, Order), answer
    return answer


def _clock(answer: object) -> Clock:
    assert isinstance(answer, Clock), answer
    return answer


def buy(
    qty: float | None = None, limit: float | None = None, **fields: Any
) -> MarketOrderRequest | LimitOrderRequest:
    """A DAY buy of AAPL: a limit order when `limit` is given, else a market order."""
    base: dict[str, Any] = {
        "symbol": "AAPL",
        "side": OrderSide.BUY,
        "time_in_force": TimeInForce.DAY,
    }
    if qty is not None:
        base["qty"] = qty
    if limit is None:
        return MarketOrderRequest(**(base | fields))
    return LimitOrderRequest(limit_price=limit, **(base | fields))


def dec(value: object) -> Decimal:
    return Decimal(str(value))


# -- the lifecycle of a new order --------------------------------------------------------


def test_post_answers_accepted_unfilled_and_fills_arrive_on_trade_updates(tmp_path: Path) -> None:
    """A market order and a marketable limit order: POST answers `accepted`, filled_qty 0,
    even though both fill at once; `new` then `fill` arrive on trade_updates.
    https://docs.alpaca.markets/docs/orders-at-alpaca (Order Lifecycle: "accepted ... has not
    yet been routed"), https://docs.alpaca.markets/docs/websocket-streaming (trade_updates)"""
    with venue(tmp_path) as v:
        placed = [v.submit(buy(3)), v.submit(buy(2, THROUGH))]
        for order in placed:
            assert order.status == OrderStatus.ACCEPTED
            assert dec(order.filled_qty) == 0
            assert order.filled_avg_price is None
        for order in placed:
            v.updates.wait_for(order, "fill")
            assert v.updates.events(order) == ["new", "fill"]
            now = v.order(order)
            assert now.status == OrderStatus.FILLED
            assert dec(now.filled_qty) == dec(order.qty)
        assert v.position("AAPL") == 5


def test_a_routing_delay_shows_pending_new_before_new(tmp_path: Path) -> None:
    """With `pending_new_seconds`, the order is `pending_new` (routed, not yet at the venue)
    before it is `new`: trade_updates carries pending_new, new, fill in that order.
    https://docs.alpaca.markets/docs/orders-at-alpaca (Order Lifecycle: pending_new)"""
    with venue(tmp_path, pending_new_seconds=1.0) as v:
        order = v.submit(buy(1))
        assert order.status == OrderStatus.ACCEPTED
        v.updates.wait_for(order, "fill")
        assert v.updates.events(order) == ["pending_new", "new", "fill"]


def test_a_market_order_sent_while_closed_stays_accepted_unfilled(tmp_path: Path) -> None:
    """The market is closed: a market order is queued, `accepted`, and nothing fills or is
    reported for it. https://docs.alpaca.markets/docs/orders-at-alpaca ("Orders submitted
    outside of eligible trading hours will be queued ... for execution at the next open")"""
    with venue(tmp_path, market_open=False) as v:
        assert not _clock(v.trading.get_clock()).is_open
        order = v.submit(buy(2))
        v.updates.drain(1.5)  # past a market tick and several server ticks
        assert v.updates.events(order) == []
        still = v.order(order)
        assert (still.status, dec(still.filled_qty)) == (OrderStatus.ACCEPTED, Decimal(0))
        assert v.position("AAPL") == 0


def test_a_market_order_sent_before_the_open_fills_once_it_opens(tmp_path: Path) -> None:
    """Before `opens_in_seconds` the clock is closed and a market order waits `accepted`;
    at the open it is routed and fills. https://docs.alpaca.markets/docs/orders-at-alpaca"""
    with venue(tmp_path, opens_in_seconds=3.0) as v:
        assert not _clock(v.trading.get_clock()).is_open
        order = v.submit(buy(2))
        assert v.order(order).status == OrderStatus.ACCEPTED
        assert v.updates.events(order) == []
        v.updates.wait_for(order, "fill")
        assert v.updates.events(order) == ["new", "fill"]
        assert _clock(v.trading.get_clock()).is_open
        assert v.order(order).status == OrderStatus.FILLED


# -- replace --------------------------------------------------------------------------------


def test_a_replace_is_refused_while_the_order_is_accepted_or_pending_new(tmp_path: Path) -> None:
    """PATCH on an order not yet at the venue: 422, the order untouched.
    https://docs.alpaca.markets/reference/replaceorderforaccount ("Order cannot be replaced
    when the status is accepted, pending_new, pending_cancel or pending_replace"), with the
    words real Alpaca answers it with (alpacahq/alpaca-trade-api-python#306)"""
    not_sent = "unable to replace order, order isn't sent to exchange yet"
    with venue(tmp_path, pending_new_seconds=30.0) as v:
        order = v.submit(buy(2, FAR_BELOW))
        change = ReplaceOrderRequest(qty=2, limit_price=FAR_BELOW + 1)
        refused = v.refusal(lambda: v.trading.replace_order_by_id(order.id, change))
        assert (refused.status_code, refused.message) == (422, not_sent)
        v.updates.wait_for(order, "pending_new")
        refused = v.refusal(lambda: v.trading.replace_order_by_id(order.id, change))
        assert (refused.status_code, refused.message) == (422, not_sent)
        after = v.order(order)
        assert (after.status, dec(after.limit_price)) == (OrderStatus.PENDING_NEW, Decimal(150))
        assert after.replaced_by is None


def test_a_replace_goes_pending_replace_then_replaced_and_new(tmp_path: Path) -> None:
    """PATCH on a working order answers 200 with the replacement; the old order goes
    `pending_replace`, then `replaced` (naming its replacement in replaced_by) as the
    replacement goes `new`. https://docs.alpaca.markets/reference/replaceorderforaccount,
    https://docs.alpaca.markets/docs/websocket-streaming (pending_replace, replaced)"""
    with venue(tmp_path, fill_intensity=NEVER) as v:
        old = v.submit(buy(2, FAR_BELOW))
        v.updates.wait_for(old, "new")
        change = ReplaceOrderRequest(qty=3, limit_price=FAR_BELOW + 1)
        new = _order(v.trading.replace_order_by_id(old.id, change))
        assert new.id != old.id
        assert new.replaces == old.id
        assert (dec(new.qty), dec(new.limit_price)) == (Decimal(3), Decimal(151))
        replaced = v.updates.wait_for(old, "replaced")
        v.updates.wait_for(new, "new")
        assert v.updates.events(old) == ["new", "pending_replace", "replaced"]
        assert replaced.order.replaced_by == new.id
        assert v.updates.events(new) == ["new"]
        assert v.order(old).status == OrderStatus.REPLACED
        assert v.order(old).replaced_by == new.id
        assert v.order(new).status == OrderStatus.NEW


def test_a_replace_changing_nothing_is_refused_403(tmp_path: Path) -> None:
    """A PATCH with the order's own qty and limit price: 403 40310000 "order parameters are
    not changed". https://docs.alpaca.markets/reference/replaceorderforaccount"""
    with venue(tmp_path, fill_intensity=NEVER) as v:
        order = v.submit(buy(2, FAR_BELOW))
        v.updates.wait_for(order, "new")
        same = ReplaceOrderRequest(qty=2, limit_price=FAR_BELOW)
        refused = v.refusal(lambda: v.trading.replace_order_by_id(order.id, same))
        assert refused.status_code == 403
        assert (refused.code, refused.message) == (40310000, "order parameters are not changed")
        assert v.order(order).status == OrderStatus.NEW


def test_a_replacement_is_rejected_when_the_old_order_filled_first(tmp_path: Path) -> None:
    """The old order fills while its replace is pending: PATCH still answered 200, the old
    order ends `filled`, the replacement `rejected`; trade_updates carries
    order_replace_rejected for the old and rejected for the replacement.
    https://docs.alpaca.markets/reference/replaceorderforaccount ("If the existing open order
    is filled before the replacing (new) order reaches the execution venue, the replacing
    (new) order is rejected, and these events are sent in the trade_updates stream")"""
    faults = FaultSpec(replace_rejected_probability=1.0)
    with venue(tmp_path, faults, fill_intensity=NEVER) as v:
        old = v.submit(buy(2, FAR_BELOW))
        v.updates.wait_for(old, "new")
        new = _order(v.trading.replace_order_by_id(old.id, ReplaceOrderRequest(limit_price=151)))
        v.updates.wait_for(new, "rejected")
        v.updates.wait_for(old, "order_replace_rejected")
        assert "fill" in v.updates.events(old)
        assert "replaced" not in v.updates.events(old)
        old_now, new_now = v.order(old), v.order(new)
        assert (old_now.status, dec(old_now.filled_qty)) == (OrderStatus.FILLED, Decimal(2))
        assert old_now.replaced_by is None
        assert (new_now.status, dec(new_now.filled_qty)) == (OrderStatus.REJECTED, Decimal(0))
        assert v.position("AAPL") == 2


# -- rejection and the close -------------------------------------------------------------


def test_a_late_rejection_comes_after_an_accepted_post(tmp_path: Path) -> None:
    """The venue rejects an order Alpaca accepted: POST 200 `accepted`, then `rejected` on
    trade_updates, nothing filled. https://docs.alpaca.markets/docs/orders-at-alpaca
    (Order Lifecycle: rejected), https://docs.alpaca.markets/docs/websocket-streaming"""
    with venue(tmp_path, late_reject_probability=1.0) as v:
        order = v.submit(buy(1))
        assert order.status == OrderStatus.ACCEPTED
        rejected = v.updates.wait_for(order, "rejected")
        assert rejected.order.failed_at is not None
        assert (v.order(order).status, v.position("AAPL")) == (OrderStatus.REJECTED, Decimal(0))


def test_at_the_close_day_orders_expire_and_gtc_orders_with_fills_are_done_for_day(
    tmp_path: Path,
) -> None:
    """At the close an open DAY order ends `expired` (expired_at set) and a GTC order with
    fills `done_for_day`; the clock then says closed.
    https://docs.alpaca.markets/docs/orders-at-alpaca (Time in Force: day; Order Lifecycle:
    expired, done_for_day)"""
    closing = venue(
        tmp_path, fill_intensity=EAGER, closes_in_seconds=3.0, partial_fill_probability=1.0
    )
    with closing as v:
        day = v.submit(buy(2, FAR_BELOW))
        gtc = v.submit(buy(100, INSIDE, time_in_force=TimeInForce.GTC))
        expired = v.updates.wait_for(day, "expired")
        assert expired.order.expired_at is not None
        v.updates.wait_for(gtc, "done_for_day")
        assert "partial_fill" in v.updates.events(gtc)
        assert not _clock(v.trading.get_clock()).is_open
        day_now, gtc_now = v.order(day), v.order(gtc)
        assert day_now.status == OrderStatus.EXPIRED
        assert day_now.expired_at is not None
        assert gtc_now.status == OrderStatus.DONE_FOR_DAY
        assert 0 < dec(gtc_now.filled_qty) < 100


def test_a_day_order_sent_after_the_close_is_queued_not_expired(tmp_path: Path) -> None:
    """A DAY order submitted after the close waits, `accepted`, for the next session; only
    an order that was live through the close expires. alpaca-py's TimeInForce (from
    https://docs.alpaca.markets/docs/orders-at-alpaca, Time in Force): "If submitted after
    the close, it is queued and submitted the following trading day." """
    with venue(tmp_path, closes_in_seconds=1.0) as v:
        v.updates.drain(1.5)
        assert not _clock(v.trading.get_clock()).is_open
        order = v.submit(buy(2, FAR_BELOW))
        v.updates.drain(1.0)
        assert v.updates.events(order) == []
        assert v.order(order).status == OrderStatus.ACCEPTED


# -- time in force -------------------------------------------------------------------------


def test_gtc_is_echoed_and_rests(tmp_path: Path) -> None:
    """A GTC limit order keeps its time in force in every answer and rests like a DAY one.
    https://docs.alpaca.markets/docs/orders-at-alpaca (Time in Force: gtc)"""
    with venue(tmp_path, fill_intensity=NEVER) as v:
        order = v.submit(buy(2, FAR_BELOW, time_in_force=TimeInForce.GTC))
        assert order.time_in_force == TimeInForce.GTC
        v.updates.wait_for(order, "new")
        now = v.order(order)
        assert (now.time_in_force, now.status) == (TimeInForce.GTC, OrderStatus.NEW)


def test_ioc_never_rests(tmp_path: Path) -> None:
    """IOC: what does not fill at once is canceled, a marketable IOC fills.
    https://docs.alpaca.markets/docs/orders-at-alpaca (Time in Force: ioc)"""
    with venue(tmp_path, fill_intensity=EAGER) as v:
        resting = v.submit(buy(2, FAR_BELOW, time_in_force=TimeInForce.IOC))
        marketable = v.submit(buy(2, THROUGH, time_in_force=TimeInForce.IOC))
        assert resting.time_in_force == TimeInForce.IOC
        v.updates.wait_for(resting, "canceled")
        v.updates.wait_for(marketable, "fill")
        assert v.updates.events(resting) == ["new", "canceled"]
        canceled = v.order(resting)
        assert (canceled.status, dec(canceled.filled_qty)) == (OrderStatus.CANCELED, Decimal(0))
        assert v.order(marketable).status == OrderStatus.FILLED


def test_fok_fills_whole_or_not_at_all(tmp_path: Path) -> None:
    """FOK: a marketable order fills whole; one that cannot fill at once is canceled unfilled.
    https://docs.alpaca.markets/docs/orders-at-alpaca (Time in Force: fok)"""
    with venue(tmp_path, fill_intensity=EAGER) as v:
        whole = v.submit(buy(3, THROUGH, time_in_force=TimeInForce.FOK))
        killed = v.submit(buy(3, FAR_BELOW, time_in_force=TimeInForce.FOK))
        v.updates.wait_for(whole, "fill")
        v.updates.wait_for(killed, "canceled")
        assert dec(v.order(whole).filled_qty) == 3
        assert dec(v.order(killed).filled_qty) == 0
        assert v.position("AAPL") == 3


@pytest.mark.parametrize("tif", [TimeInForce.OPG, TimeInForce.CLS])
def test_auction_orders_are_refused_not_made_day(tmp_path: Path, tif: TimeInForce) -> None:
    """opg and cls (auction orders) are not simulated: refused 422, never silently taken as
    DAY orders. https://docs.alpaca.markets/docs/orders-at-alpaca (Time in Force: opg, cls)"""
    with venue(tmp_path) as v:
        refused = v.refusal(lambda: v.trading.submit_order(buy(2, FAR_BELOW, time_in_force=tif)))
        assert refused.status_code == 422
        assert not v.server.app.broker.orders


@pytest.mark.parametrize(
    "request_fields",
    [{"qty": 1.5}, {"notional": 100}],
    ids=["fractional-qty", "notional"],
)
@pytest.mark.parametrize("tif", [TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK])
def test_fractional_and_notional_orders_must_be_day_orders(
    tmp_path: Path, request_fields: dict[str, Any], tif: TimeInForce
) -> None:
    """A fractional qty or a notional with any time in force but DAY: 422.
    https://docs.alpaca.markets/docs/fractional-trading ("fractional shares trading is
    currently supported only for day orders")"""
    with venue(tmp_path) as v:
        request = buy(time_in_force=tif, **request_fields)
        refused = v.refusal(lambda: v.trading.submit_order(request))
        assert refused.status_code == 422
        assert not v.server.app.broker.orders


# -- dollar orders, the $1 minimum -------------------------------------------------------


def test_a_notional_market_order_buys_about_that_many_dollars(tmp_path: Path) -> None:
    """`notional` is echoed, and the order fills to within a cent of that many dollars.
    https://docs.alpaca.markets/docs/fractional-trading (notional orders)"""
    with venue(tmp_path) as v:
        order = v.submit(buy(notional=500))
        assert dec(order.notional) == 500
        v.updates.wait_for(order, "fill")
        done = v.order(order)
        assert dec(done.notional) == 500
        spent = dec(done.filled_qty) * dec(done.filled_avg_price)
        assert abs(spent - 500) < Decimal("0.01"), spent
        assert v.position("AAPL") == dec(done.filled_qty)


def test_a_notional_order_shows_no_qty(tmp_path: Path) -> None:
    """An order placed by notional carries `qty: null` (what it bought shows in filled_qty).
    https://docs.alpaca.markets/docs/brokerapi-trading ("The order entity includes the
    notional value if the order was submitted with the notional value. In this case, the
    order entity omits the qty field.")"""
    with venue(tmp_path) as v:
        order = v.submit(buy(notional=500))
        assert order.qty is None, order.qty


def test_notional_on_a_limit_order_is_refused(tmp_path: Path) -> None:
    """Dollar orders are market orders: `notional` on a limit order is refused 422.
    https://alpaca.markets/support/how-can-i-pass-a-fractional-order (market, day),
    https://github.com/alpacahq/alpaca-py/issues/242 ("only supported for market orders")"""
    with venue(tmp_path) as v:
        refused = v.refusal(lambda: v.trading.submit_order(buy(limit=FAR_BELOW, notional=100)))
        assert refused.status_code == 422
        assert not v.server.app.broker.orders


def test_qty_and_notional_together_are_refused(tmp_path: Path) -> None:
    """Both `qty` and `notional`: refused, nothing placed (alpaca-py refuses to send it, so
    the body goes over raw HTTP). https://alpaca.markets/support/how-can-i-pass-a-fractional-order
    ("If both qty and notional are entered the request will be rejected")"""
    with venue(tmp_path) as v:
        body = {"symbol": "AAPL", "qty": "1", "notional": "100", "side": "buy", "type": "market"}
        body["time_in_force"] = "day"
        answer = requests.post(v.server.url + "/v2/orders", json=body, headers=AUTH, timeout=5)
        assert answer.status_code in (400, 422), answer.text
        assert not v.server.app.broker.orders


@pytest.mark.parametrize("request_fields", [{"notional": 0.5}, {"qty": 0.001}])
def test_a_fractional_buy_under_one_dollar_is_refused_403(
    tmp_path: Path, request_fields: dict[str, Any]
) -> None:
    """A fractional or dollar buy worth under $1: 403 40310000 "cost basis must be >= minimal
    amount of order 1". https://docs.alpaca.markets/docs/fractional-trading ($1 minimum),
    https://github.com/ccxt/ccxt/pull/30101 (Alpaca's answer, probed live: code 40310000)"""
    with venue(tmp_path) as v:
        refused = v.refusal(lambda: v.trading.submit_order(buy(**request_fields)))
        assert refused.status_code == 403
        assert refused.code == 40310000
        assert refused.message == "cost basis must be >= minimal amount of order 1"
        assert not v.server.app.broker.orders


# -- unknown symbols -------------------------------------------------------------------------


def test_an_unlisted_symbol_has_no_asset_no_order_and_no_quote(tmp_path: Path) -> None:
    """ZZZZ is not listed: `GET /v2/assets/ZZZZ` 404, an order for it 422 40010001 "could
    not find us_equity asset ZZZZ", and the latest-quotes answer has no entry for it.
    https://docs.alpaca.markets/docs/working-with-assets"""
    with venue(tmp_path) as v:
        missing = v.refusal(lambda: v.trading.get_asset("ZZZZ"))
        assert missing.status_code == 404
        refused = v.refusal(lambda: v.trading.submit_order(buy(1, symbol="ZZZZ")))
        assert refused.status_code == 422
        assert refused.code == 40010001
        assert "could not find us_equity" in refused.message
        assert not v.server.app.broker.orders
        data = StockHistoricalDataClient(KEYS[0], KEYS[1], url_override=v.server.url)
        quotes = data.get_stock_latest_quote(
            StockLatestQuoteRequest(symbol_or_symbols=["ZZZZ", "AAPL"])
        )
        assert isinstance(quotes, dict)
        assert set(quotes) == {"AAPL"}


def test_universe_any_invents_unlisted_symbols(tmp_path: Path) -> None:
    """`universe: any` in the market spec: a made-up symbol has an asset, a quote and trades
    (the simulator's escape hatch from Alpaca's listing, for tests that want any name)."""
    with venue(tmp_path, universe="any") as v:
        asset = v.trading.get_asset("ZZZZ")
        assert getattr(asset, "symbol", None) == "ZZZZ"
        data = StockHistoricalDataClient(KEYS[0], KEYS[1], url_override=v.server.url)
        quotes = data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="ZZZZ"))
        assert isinstance(quotes, dict)
        assert set(quotes) == {"ZZZZ"}
        order = v.submit(buy(1, symbol="ZZZZ"))
        v.updates.wait_for(order, "fill")


# -- trade_updates: one event per execution ------------------------------------------------


def test_every_execution_is_its_own_event_with_the_position_after_it(tmp_path: Path) -> None:
    """The server looks at the market every 3 s, so several one-second ticks of partial
    fills land between two looks: each execution still arrives as its own partial_fill with
    its execution_id, qty, price and position_qty the position right after it.
    https://docs.alpaca.markets/docs/websocket-streaming (fill, partial_fill: price, qty,
    position_qty "after this fill event")"""
    with venue(tmp_path, tick_seconds=3.0, partial_fill_probability=1.0) as v:
        order = v.submit(buy(100, INSIDE))
        v.order(order)  # the read looks at the market: the order is routed now
        v.updates.until(lambda: len(_executions(v.updates.of(order))) >= 2)
        v.updates.drain(0.3)  # the rest of that look's events
        now = v.order(order)  # its own look may add executions: they are sent before it answers
        v.updates.drain(0.5)
        executions = _executions(v.updates.of(order))
        ids = [u.execution_id for u in executions]
        assert None not in ids
        assert len(set(ids)) == len(ids)
        running = Decimal(0)
        for update in executions:
            assert update.qty is not None
            assert update.qty > 0
            assert dec(update.price) == dec(INSIDE)
            running += dec(update.qty)
            assert dec(update.position_qty) == running
            assert dec(update.order.filled_qty) == running
        assert running == dec(now.filled_qty) == v.position("AAPL")


def _executions(updates: list[TradeUpdate]) -> list[TradeUpdate]:
    return [u for u in updates if _event(u) in EXECUTIONS]


# -- cancel --------------------------------------------------------------------------------


def test_cancel_of_an_accepted_order_ends_it_canceled(tmp_path: Path) -> None:
    """DELETE on an order not yet at the venue: 204, then `canceled` on trade_updates.
    https://docs.alpaca.markets/reference/cancel-an-order-by-id"""
    with venue(tmp_path, pending_new_seconds=30.0) as v:
        order = v.submit(buy(2, FAR_BELOW))
        v.trading.cancel_order_by_id(order.id)  # 204, no body
        v.updates.wait_for(order, "canceled")
        assert v.order(order).status == OrderStatus.CANCELED


def test_cancel_of_a_final_order_is_refused_422(tmp_path: Path) -> None:
    """DELETE on a filled order: 422 42210000, the order still filled.
    https://docs.alpaca.markets/reference/cancel-an-order-by-id ("If the order is no longer
    cancelable (example: status = filled), the server will respond with status 422")"""
    with venue(tmp_path) as v:
        order = v.submit(buy(1))
        v.updates.wait_for(order, "fill")
        refused = v.refusal(lambda: v.trading.cancel_order_by_id(order.id))
        assert (refused.status_code, refused.code) == (422, 42210000)
        assert v.order(order).status == OrderStatus.FILLED
