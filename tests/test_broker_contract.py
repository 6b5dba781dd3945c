"""The Broker contract: what every broker implementation must do, stated once and run
against each (the pattern of eventsourcing's recorder tests: one abstract test class, one
concrete subclass per implementation supplying the fixture).

`BrokerContract` holds the tests; `TestSimBroker` runs them on the in-process simulator in
virtual time, `TestAlpacaBroker` through the real alpaca-py SDK against `walkbook
sim-server` on 127.0.0.1 in real time. The lifecycle follows Alpaca's documents
(https://docs.alpaca.markets/docs/orders-at-alpaca,
https://docs.alpaca.markets/reference/patchorderbyorderid-1), as docs/alpaca.md cites them.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alpaca_support import NEVER, broker_on_server, market

from engine import MarketSpec, RealClock, SimBroker, SymbolSpec, VirtualClock
from engine.broker import Broker, BrokerOrder, BrokerOrderStatus, OrderRequest, OrderType
from engine.clock import Clock
from engine.crash import BROKER_METHODS
from engine.errors import (
    BrokerRejected,
    DuplicateClientOrderId,
    NotReplaceable,
    OrderNotFound,
    UnknownSymbol,
)
from engine.intents import OrderSide
from engine.numbers import ZERO

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

START = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
# AAPL: mid 190, 10 bps wide, steady -> bid 189.90, ask 190.10. NKL: quoted in nickels,
# whole shares only, and held as 2.5 shares (the fraction only close_position can sell).
SYMBOLS = {
    "AAPL": SymbolSpec(price=Decimal("190"), spread_bps=10, volatility_bps=0),
    "NKL": SymbolSpec(
        price=Decimal("50"),
        spread_bps=40,
        volatility_bps=0,
        fractionable=False,
        price_increment=Decimal("0.05"),
    ),
}
HELD = Decimal("2.5")
DELISTED = "ZVZZT"  # a symbol the spec names as unknown
UNLISTED = "WBNOPE"  # a symbol no listing has
# resting orders never fill passively (NEVER); marketable and market orders still do
CONTRACT_MARKET = market(
    NEVER, symbols=SYMBOLS, positions={"NKL": HELD}, unknown_symbols=[DELISTED]
)
PRICE = SYMBOLS["AAPL"].price
FAR_BELOW = Decimal("180.00")  # a buy limit that rests
THROUGH = Decimal("191.00")  # a buy limit through the ask: marketable
OPEN_ON_SUBMIT = {BrokerOrderStatus.ACCEPTED, BrokerOrderStatus.NEW}
BEFORE_VENUE = {BrokerOrderStatus.ACCEPTED, BrokerOrderStatus.PENDING_NEW}
OURS = "contract-"  # the prefix of every client order id these tests send
ROUND_SECONDS = 1.0  # one wait_for_update while waiting for an order to move on
ROUNDS = 10  # how many of them before a test gives up (a deadline, not a speed claim)
# recent_orders' `since` sits this far after an older order: AlpacaBroker asks Alpaca for
# one second more than asked (Alpaca's `after` is exclusive), so a gap under a second
# would let the older order in by design
SINCE_GAP_SECONDS = 1.5
TIMEOUT_SECONDS = 0.5
# what walk._send_cancel lets a cancel answer (the simulator answers a cancel of a final
# order quietly; Alpaca with 422 'order is already in "filled" state', a BrokerRejected)
CANCEL_REFUSALS_TOLERATED = (OrderNotFound, NotReplaceable, BrokerRejected)

# Broker method -> the contract tests that pin it (filled by @pins)
CONTRACT: dict[str, list[str]] = {}


def pins(*methods: str) -> Callable[[F], F]:
    """Register a contract test as pinning `methods`, so a Broker method without one fails
    `test_the_contract_pins_every_method_of_the_broker_protocol`."""

    def register(test: F) -> F:
        for method in methods:
            CONTRACT.setdefault(method, []).append(test.__name__)
        return test

    return register


@dataclass
class Driver:
    """One broker under contract: the broker, the market spec it was opened on, and the
    clock that runs coroutines on it and lets time pass (virtual for the simulator, real
    for the server)."""

    broker: Broker
    spec: MarketSpec
    clock: Clock

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.clock.run(coro)

    async def pause(self, seconds: float) -> None:
        await self.clock.sleep(seconds)


Connect = Callable[[MarketSpec], Driver]


def buy(cid: str, qty: Decimal, limit: Decimal | None, symbol: str = "AAPL") -> OrderRequest:
    kind: OrderType = "market" if limit is None else "limit"
    return OrderRequest(OURS + cid, symbol, OrderSide.BUY, qty, kind, limit)


async def venue_sees(broker: Broker, order: BrokerOrder) -> BrokerOrder:
    """The order once it has reached the venue (left accepted and pending_new)."""
    for _ in range(ROUNDS):
        if order.status not in BEFORE_VENUE:
            break
        order = await broker.wait_for_update(order.id, ROUND_SECONDS)
    assert order.status not in BEFORE_VENUE, order
    return order


async def settled(broker: Broker, order: BrokerOrder) -> BrokerOrder:
    """The order once it is final, waiting for each change with wait_for_update."""
    for _ in range(ROUNDS):
        if order.is_terminal:
            break
        order = await broker.wait_for_update(order.id, ROUND_SECONDS)
    assert order.is_terminal, order
    return order


async def filled(broker: Broker, request: OrderRequest) -> BrokerOrder:
    order = await settled(broker, await broker.submit_order(request))
    assert order.status is BrokerOrderStatus.FILLED, order
    return order


class BrokerContract:
    """What every Broker implementation does. A subclass supplies `connect`: a factory
    opening the implementation on a market spec (a fresh account each time)."""

    @pytest.fixture
    def connect(self) -> Connect:
        raise NotImplementedError("each implementation's test class supplies `connect`")

    @pytest.fixture
    def driver(self, connect: Connect) -> Driver:
        return connect(CONTRACT_MARKET)

    # -- reads ------------------------------------------------------------------------

    @pins("get_asset")
    def test_get_asset_reports_a_listed_symbol_and_refuses_an_unknown_one(
        self, driver: Driver
    ) -> None:
        broker = driver.broker

        async def scenario() -> None:
            aapl, nkl = await broker.get_asset("AAPL"), await broker.get_asset("NKL")
            assert (aapl.symbol, aapl.tradable, aapl.fractionable) == ("AAPL", True, True)
            assert aapl.price_increment is None  # the engine's $1 rule applies
            assert (nkl.symbol, nkl.tradable, nkl.fractionable) == ("NKL", True, False)
            assert nkl.price_increment == Decimal("0.05")
            for symbol in (DELISTED, UNLISTED):
                with pytest.raises(UnknownSymbol):
                    await broker.get_asset(symbol)

        driver.run(scenario())

    @pins("get_clock")
    @pytest.mark.parametrize("market_open", [True, False])
    def test_get_clock_is_open_as_the_spec_says(self, connect: Connect, market_open: bool) -> None:
        driver = connect(CONTRACT_MARKET.model_copy(update={"market_open": market_open}))
        clock = driver.run(driver.broker.get_clock())
        assert clock.is_open is market_open

    @pins("get_account")
    def test_get_account_reports_a_margin_account_in_decimals(self, driver: Driver) -> None:
        account = driver.run(driver.broker.get_account())
        figures = (account.cash, account.buying_power, account.equity)
        assert all(isinstance(f, Decimal) for f in figures), figures
        assert isinstance(account.non_marginable_buying_power, Decimal)
        assert isinstance(account.multiplier, Decimal)
        assert account.cash == driver.spec.cash
        # NKL's book stands at its starting price: mid 50
        assert account.equity == driver.spec.cash + HELD * SYMBOLS["NKL"].price
        assert account.multiplier == 2  # Reg T margin from $2,000 of equity
        assert account.non_marginable_buying_power == account.cash  # no open buy holds any
        assert account.buying_power > account.non_marginable_buying_power  # margin lends

    @pins("get_position")
    def test_get_position_is_zero_unheld_and_the_qty_held(self, driver: Driver) -> None:
        broker = driver.broker

        async def scenario() -> tuple[Decimal, Decimal]:
            return await broker.get_position("AAPL"), await broker.get_position("NKL")

        assert driver.run(scenario()) == (ZERO, HELD)

    @pins("get_positions")
    def test_get_positions_lists_what_is_held_and_sees_a_fill_at_once(self, driver: Driver) -> None:
        """Every holding, signed; asked again once an order is final, the fill is in it (a
        broker sharing reads must not answer from one sent before the fill)."""
        broker = driver.broker

        async def scenario() -> tuple[dict[str, Decimal], dict[str, Decimal], Decimal]:
            before = await broker.get_positions()
            await filled(broker, buy("positions", Decimal(3), THROUGH))
            return before, await broker.get_positions(), await broker.get_position("AAPL")

        before, after, aapl = driver.run(scenario())
        assert before == {"NKL": HELD}
        assert after == {"NKL": HELD, "AAPL": Decimal(3)}
        assert aapl == 3

    @pins("latest_quotes")
    def test_latest_quotes_bracket_each_listed_price_and_leave_out_the_unlisted(
        self, driver: Driver
    ) -> None:
        quotes = driver.run(driver.broker.latest_quotes(["AAPL", "NKL", UNLISTED]))
        assert sorted(quotes) == ["AAPL", "NKL"]
        for symbol, quote in quotes.items():
            assert (quote.symbol, quote.source) == (symbol, "rest")
            assert 0 < quote.bid < SYMBOLS[symbol].price < quote.ask

    @pins("latest_quote")
    def test_latest_quote_brackets_the_price(self, driver: Driver) -> None:
        quote = driver.run(driver.broker.latest_quote("AAPL"))
        assert quote is not None
        assert (quote.symbol, quote.source) == ("AAPL", "rest")
        assert 0 < quote.bid < PRICE < quote.ask

    @pins("stream_quote")
    def test_stream_quote_brackets_the_price_while_the_stream_is_up(self, driver: Driver) -> None:
        """Both streams are up here (the simulator's has no gaps in this market, the
        server's accepts the connection), so None would be a broken contract: None means
        no stream is up."""
        quote = driver.run(driver.broker.stream_quote("AAPL", 5.0))
        assert quote is not None
        assert (quote.symbol, quote.source) == ("AAPL", "stream")
        assert 0 < quote.bid < PRICE < quote.ask

    # -- placing orders -------------------------------------------------------------

    @pins("submit_order")
    def test_submit_order_answers_an_open_order_with_nothing_filled(self, driver: Driver) -> None:
        broker = driver.broker

        async def scenario() -> None:
            order = await broker.submit_order(buy("rest", Decimal(2), FAR_BELOW))
            assert order.status in OPEN_ON_SUBMIT, order
            assert order.id
            assert (order.client_order_id, order.symbol, order.side) == (
                OURS + "rest",
                "AAPL",
                OrderSide.BUY,
            )
            assert (order.order_type, order.qty, order.limit_price) == (
                "limit",
                Decimal(2),
                FAR_BELOW,
            )
            assert (order.filled_qty, order.filled_avg_price) == (ZERO, None)
            rested = await venue_sees(broker, order)
            assert rested.status is BrokerOrderStatus.NEW
            assert rested.filled_qty == 0

        driver.run(scenario())

    @pins("submit_order")
    def test_submit_order_refuses_a_client_order_id_twice(self, driver: Driver) -> None:
        broker = driver.broker

        async def scenario() -> None:
            first = await broker.submit_order(buy("twice", Decimal(2), FAR_BELOW))
            with pytest.raises(DuplicateClientOrderId):
                await broker.submit_order(buy("twice", Decimal(3), FAR_BELOW - 1))
            listed = [o for o in await broker.open_orders() if o.client_order_id == OURS + "twice"]
            assert [(o.id, o.qty) for o in listed] == [(first.id, Decimal(2))]

        driver.run(scenario())

    @pins("submit_order")
    @pytest.mark.parametrize("limit", [THROUGH, None], ids=["marketable_limit", "market"])
    def test_submit_order_fills_a_marketable_order(
        self, driver: Driver, limit: Decimal | None
    ) -> None:
        broker = driver.broker

        async def scenario() -> None:
            order = await filled(broker, buy("now", Decimal(2), limit))
            assert order.filled_qty == 2
            assert order.filled_avg_price is not None
            assert 0 < order.filled_avg_price <= (limit or order.filled_avg_price)
            assert await broker.get_position("AAPL") == 2

        driver.run(scenario())

    # -- replacing and cancelling -------------------------------------------------

    @pins("replace_order")
    def test_replace_order_makes_a_new_order_and_ends_the_old_replaced(
        self, driver: Driver
    ) -> None:
        broker = driver.broker

        async def scenario() -> None:
            old = await venue_sees(
                broker, await broker.submit_order(buy("a", Decimal(2), FAR_BELOW))
            )
            new = await broker.replace_order(old.id, Decimal(3), FAR_BELOW + 1, OURS + "b")
            assert new.id != old.id
            assert (new.replaces, new.client_order_id) == (old.id, OURS + "b")
            assert (new.qty, new.limit_price, new.filled_qty) == (Decimal(3), FAR_BELOW + 1, ZERO)
            assert not new.is_terminal
            ended = await settled(broker, old)
            assert (ended.status, ended.replaced_by) == (BrokerOrderStatus.REPLACED, new.id)
            assert not (await broker.get_order(new.id)).is_terminal

        driver.run(scenario())

    @pins("replace_order")
    def test_replace_order_that_changes_nothing_is_not_replaceable(self, driver: Driver) -> None:
        broker = driver.broker

        async def scenario() -> None:
            old = await venue_sees(
                broker, await broker.submit_order(buy("a", Decimal(2), FAR_BELOW))
            )
            with pytest.raises(NotReplaceable):
                await broker.replace_order(old.id, Decimal(2), FAR_BELOW, OURS + "same")
            assert await broker.get_order_by_client_id(OURS + "same") is None
            assert (await broker.get_order(old.id)).status is BrokerOrderStatus.NEW

        driver.run(scenario())

    @pins("replace_order")
    def test_replace_order_of_a_final_order_is_not_replaceable(self, driver: Driver) -> None:
        broker = driver.broker

        async def scenario() -> None:
            done = await filled(broker, buy("done", Decimal(2), THROUGH))
            with pytest.raises(NotReplaceable):
                await broker.replace_order(done.id, Decimal(3), THROUGH + 1, OURS + "late")
            assert await broker.get_order_by_client_id(OURS + "late") is None
            assert (await broker.get_order(done.id)).status is BrokerOrderStatus.FILLED

        driver.run(scenario())

    @pins("cancel_order")
    def test_cancel_order_ends_a_resting_order_canceled(self, driver: Driver) -> None:
        broker = driver.broker
        pulling = {BrokerOrderStatus.PENDING_CANCEL, BrokerOrderStatus.CANCELED}

        async def scenario() -> None:
            order = await venue_sees(
                broker, await broker.submit_order(buy("a", Decimal(2), FAR_BELOW))
            )
            await broker.cancel_order(order.id)
            answered = await broker.get_order(order.id)
            assert answered.status in pulling, answered
            ended = await settled(broker, answered)
            assert (ended.status, ended.filled_qty) == (BrokerOrderStatus.CANCELED, ZERO)

        driver.run(scenario())

    @pins("cancel_order")
    def test_cancel_order_of_a_final_order_changes_nothing(self, driver: Driver) -> None:
        """Nothing raised, or only what the walk's cancel tolerates (walk._send_cancel:
        OrderNotFound, NotReplaceable, BrokerRejected); the order stays as it ended."""
        broker = driver.broker

        async def scenario() -> None:
            done = await filled(broker, buy("done", Decimal(2), THROUGH))
            with suppress(*CANCEL_REFUSALS_TOLERATED):
                await broker.cancel_order(done.id)
            after = await broker.get_order(done.id)
            assert (after.status, after.filled_qty) == (BrokerOrderStatus.FILLED, Decimal(2))

        driver.run(scenario())

    # -- reading orders -----------------------------------------------------------

    @pins("get_order")
    def test_get_order_reads_one_order_and_refuses_an_unknown_id(self, driver: Driver) -> None:
        broker = driver.broker

        async def scenario() -> None:
            placed = await broker.submit_order(buy("a", Decimal(2), FAR_BELOW))
            read = await broker.get_order(placed.id)
            assert (read.id, read.client_order_id, read.qty) == (placed.id, OURS + "a", Decimal(2))
            with pytest.raises(OrderNotFound):
                await broker.get_order(str(uuid.uuid4()))

        driver.run(scenario())

    @pins("get_order_by_client_id")
    def test_get_order_by_client_id_finds_ours_and_none_for_an_unknown_one(
        self, driver: Driver
    ) -> None:
        broker = driver.broker

        async def scenario() -> None:
            placed = await broker.submit_order(buy("a", Decimal(2), FAR_BELOW))
            found = await broker.get_order_by_client_id(OURS + "a")
            assert found is not None
            assert (found.id, found.qty, found.limit_price) == (placed.id, Decimal(2), FAR_BELOW)
            assert await broker.get_order_by_client_id(OURS + "never-sent") is None

        driver.run(scenario())

    @pins("open_orders")
    def test_open_orders_lists_exactly_the_open_ones(self, driver: Driver) -> None:
        broker = driver.broker

        async def scenario() -> None:
            resting = await broker.submit_order(buy("rests", Decimal(2), FAR_BELOW))
            pulled = await venue_sees(
                broker, await broker.submit_order(buy("pulled", Decimal(2), FAR_BELOW))
            )
            await broker.cancel_order(pulled.id)
            await settled(broker, pulled)
            await filled(broker, buy("done", Decimal(2), THROUGH))
            listed = await broker.open_orders()
            assert [(o.id, o.client_order_id) for o in listed] == [(resting.id, OURS + "rests")]
            assert not listed[0].is_terminal

        driver.run(scenario())

    @pins("recent_orders")
    def test_recent_orders_lists_the_orders_since_oldest_first(self, driver: Driver) -> None:
        broker = driver.broker

        async def scenario() -> None:
            await broker.submit_order(buy("before", Decimal(2), FAR_BELOW))
            await driver.pause(SINCE_GAP_SECONDS)
            since = driver.clock.now()
            first = await broker.submit_order(buy("first", Decimal(2), FAR_BELOW))
            elsewhere = await broker.submit_order(
                buy("elsewhere", Decimal(1), Decimal("40.00"), "NKL")
            )
            second = await filled(broker, buy("second", Decimal(1), THROUGH))
            listed = await broker.recent_orders("AAPL", since)
            assert [o.id for o in listed] == [first.id, second.id]
            assert [o.status for o in listed] == [BrokerOrderStatus.NEW, BrokerOrderStatus.FILLED]
            everything = await broker.recent_orders(None, since)  # every symbol's
            assert [o.id for o in everything] == [first.id, elsewhere.id, second.id]

        driver.run(scenario())

    @pins("close_position")
    def test_close_position_sells_a_fraction_under_a_client_order_id_not_ours(
        self, driver: Driver
    ) -> None:
        broker = driver.broker
        fraction = Decimal("0.5")

        async def scenario() -> None:
            since = driver.clock.now()
            order = await broker.close_position("NKL", fraction)
            assert (order.symbol, order.side, order.qty) == ("NKL", OrderSide.SELL, fraction)
            assert order.client_order_id
            assert not order.client_order_id.startswith(OURS)
            ended = await settled(broker, order)
            assert (ended.status, ended.filled_qty) == (BrokerOrderStatus.FILLED, fraction)
            assert await broker.get_position("NKL") == HELD - fraction
            # the walk finds such an order by listing, never by a client order id of its own
            assert [o.id for o in await broker.recent_orders("NKL", since)] == [order.id]

        driver.run(scenario())

    # -- waiting --------------------------------------------------------------------

    @pins("wait_for_update")
    def test_wait_for_update_returns_once_the_order_changes(self, driver: Driver) -> None:
        """A cancel sent while a wait is on ends the wait with the order pulling or pulled,
        well before the wait's timeout (which would return the order as it then stands)."""
        broker, clock = driver.broker, driver.clock
        timeout = ROUND_SECONDS * ROUNDS
        pulling = {BrokerOrderStatus.PENDING_CANCEL, BrokerOrderStatus.CANCELED}

        async def scenario() -> None:
            order = await venue_sees(
                broker, await broker.submit_order(buy("a", Decimal(2), FAR_BELOW))
            )
            started = clock.monotonic()
            waiting = asyncio.ensure_future(broker.wait_for_update(order.id, timeout))
            await driver.pause(0.2)
            assert not waiting.done()  # nothing changed yet
            await broker.cancel_order(order.id)
            changed = await waiting
            assert clock.monotonic() - started < timeout  # the change ended it, not the timeout
            assert (changed.id, changed.filled_qty) == (order.id, ZERO)
            assert changed.status in pulling, changed

        driver.run(scenario())

    @pins("wait_for_update")
    def test_wait_for_update_returns_the_unchanged_order_at_the_timeout(
        self, driver: Driver
    ) -> None:
        broker, clock = driver.broker, driver.clock

        async def scenario() -> None:
            order = await venue_sees(
                broker, await broker.submit_order(buy("a", Decimal(2), FAR_BELOW))
            )
            started = clock.monotonic()
            same = await broker.wait_for_update(order.id, TIMEOUT_SECONDS)
            # a lower bound: the wait was not cut short (no claim about speed)
            assert clock.monotonic() - started >= TIMEOUT_SECONDS * 0.99
            assert (same.id, same.status, same.filled_qty) == (order.id, order.status, ZERO)

        driver.run(scenario())


def test_the_contract_pins_every_method_of_the_broker_protocol() -> None:
    """Every Broker method (BROKER_METHODS, read off the protocol) has a contract test, and
    every contract test pins a real method: a new method cannot go untested."""
    assert set(CONTRACT) == set(BROKER_METHODS), set(BROKER_METHODS) ^ set(CONTRACT)
    tests = {name for name in vars(BrokerContract) if name.startswith("test_")}
    pinned = {name for names in CONTRACT.values() for name in names}
    assert pinned == tests, pinned ^ tests
    assert issubclass(TestSimBroker, BrokerContract)
    assert issubclass(TestAlpacaBroker, BrokerContract)


class TestSimBroker(BrokerContract):
    """The in-process simulator on a virtual clock (which only moves under `clock.run`)."""

    @pytest.fixture
    def connect(self) -> Connect:
        def open_sim(spec: MarketSpec) -> Driver:
            clock = VirtualClock(START)
            return Driver(SimBroker(spec, clock), spec, clock)

        return open_sim


class TestAlpacaBroker(BrokerContract):
    """AlpacaBroker through alpaca-py, on a sim-server thread on 127.0.0.1, in real time."""

    @pytest.fixture
    def connect(self, tmp_path: Path) -> Iterator[Connect]:
        numbers = itertools.count()
        with ExitStack() as servers:

            def open_alpaca(spec: MarketSpec) -> Driver:
                state = tmp_path / f"sim-{next(numbers)}.db"
                _, broker = servers.enter_context(broker_on_server(state, spec))
                return Driver(broker, spec, RealClock())

            yield open_alpaca
