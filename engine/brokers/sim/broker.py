"""SimBroker: a seeded, in-process market and account on the engine's clock.

Each symbol's mid follows a random walk in one-second ticks with its own RNG, and its
fills draw from another, so orders never perturb a price path and a run is reproducible
from its seed. Resting limit orders fill passively with an intensity that falls
with their distance from the far touch; a marketable order fills at the touch.
Cancels are asynchronous like Alpaca's: the order sits in `pending_cancel` until
the next tick and may still fill there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from ...broker import (
    Asset,
    BrokerOrder,
    BrokerOrderStatus,
    MarketClock,
    OrderRequest,
    Quote,
)
from ...clock import MIN_WAIT_SECONDS, Clock
from ...errors import (
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    NotReplaceable,
    OrderNotFound,
    OutcomeUnknown,
    UnknownSymbol,
)
from ...intents import OrderSide
from ...numbers import ZERO, ceil_to, decimal_text, floor_to
from ...pricing import tick_size
from .ledger import Ledger, PositionView, SimAccount, short_sale_value
from .orders import EVENT_NAMES, OPEN, PENDING_CHANGE, WORKING, Activity, SimOrder
from .rng import SmallRandom
from .spec import MarketSpec, SymbolSpec
from .store import SimStore

__all__ = ["SimBroker"]

P = ParamSpec("P")
R = TypeVar("R")

TICK_SECONDS = 1
MIN_ORDER_VALUE = Decimal(1)
QTY_STEP = Decimal("0.000000001")


@dataclass
class _Book:
    """One symbol's simulated top of book.

    Two generators (common random numbers): `prices` draws the mid's walk and zero-quote
    episodes, `fills` every draw an order causes, so the same seed gives the same price path
    whatever orders rest on it, and policies compared on one seed face the same market.
    """

    spec: SymbolSpec
    prices: SmallRandom
    fills: SmallRandom
    mid: float
    tick_index: int = 0
    bid: Decimal = ZERO
    ask: Decimal = ZERO
    zero_side: str | None = None
    zero_until: int = 0


def _persisted(
    method: Callable[Concatenate[SimBroker, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SimBroker, P], Coroutine[Any, Any, R]]:
    """Save the simulator's state after the call, before the engine sees the answer."""

    async def wrapper(broker: SimBroker, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(broker, *args, **kwargs)
        finally:
            broker._commit()

    return wrapper


@dataclass
class SimBroker:
    """The embedded default broker: deterministic for a given spec, seed and engine behaviour.

    With a `store` it keeps its whole state (orders, fills, positions, cash, time,
    random generators) in its own SQLite file and picks it up again on the next start.
    """

    spec: MarketSpec
    clock: Clock
    store: SimStore | None = None
    name: str = "sim"
    ledger: Ledger = field(init=False)
    orders: dict[str, SimOrder] = field(init=False, default_factory=dict)
    _by_client_id: dict[str, str] = field(init=False, default_factory=dict)
    # symbol -> its orders not yet final, so nothing scans every order ever sent
    _live: dict[str, dict[str, SimOrder]] = field(init=False, default_factory=dict)
    # what trade_updates would report, recorded only for an observer that drains it (the
    # sim-server); None: nobody listens, nothing is kept
    activity: list[Activity] | None = field(init=False, default=None)
    _books: dict[str, _Book] = field(init=False, default_factory=dict)
    _next_id: int = field(init=False, default=1)
    _origin: datetime = field(init=False)
    _faults: SmallRandom = field(init=False)
    _feed: SmallRandom = field(init=False)
    _dirty: set[str] = field(init=False, default_factory=set)
    _spec_saved: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        saved = self.store.load() if self.store is not None else None
        if saved is not None:
            spec, state, orders = saved
            self.spec = MarketSpec.model_validate(spec)
            self._restore(state, orders)
            self._spec_saved = True
            return
        self.ledger = self._opening_ledger()
        self._origin = self.clock.now()
        self._faults = SmallRandom(f"{self.spec.seed}/faults")
        self._feed = SmallRandom(f"{self.spec.seed}/feed")
        self._commit()

    @classmethod
    def open(cls, path: str | Path, spec: MarketSpec, clock: Clock) -> SimBroker:
        """A simulator kept in `path`: created from `spec` if new, else picked up as saved."""
        return cls(spec, clock, store=SimStore(path))

    @staticmethod
    def saved_time(path: str | Path) -> datetime | None:
        """The simulator clock's time at its last save, for continuing in virtual time."""
        store = SimStore(path)
        try:
            state = store.saved_state()
        finally:
            store.close()
        return None if state is None else datetime.fromisoformat(state["now"])

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- for a server that runs the market between calls (walkbook sim-server) -------

    def advance(self) -> None:
        """Run every symbol's market up to the clock; in-process, only calls do that."""
        for symbol in list(self._books):
            self._book(symbol)
        self._commit()

    def order_versions(self) -> dict[str, int]:
        """Each order's change counter, so an observer can tell which orders moved."""
        return {order_id: order.version for order_id, order in self.orders.items()}

    def assets(self) -> list[Asset]:
        """Every asset the market lists, for Alpaca's `GET /v2/assets`."""
        return [self._asset(self.spec.symbol(name), name) for name in self.spec.listed()]

    @staticmethod
    def _asset(spec: SymbolSpec, symbol: str) -> Asset:
        return Asset(
            symbol,
            spec.tradable,
            spec.fractionable,
            spec.price_increment,
            shortable=spec.shortable,
            easy_to_borrow=spec.easy_to_borrow,
        )

    def order_snapshot(self, order_id: str) -> BrokerOrder:
        return self._order(order_id).snapshot()

    def fill_now(self, order_id: str) -> None:
        """Fill what remains of an open limit order at its price: a race a server can stage."""
        order = self._order(order_id)
        if order.routed and order.status in WORKING and order.limit_price is not None:
            self._fill(order, order.remaining, order.limit_price)
            self._commit()

    # -- the account ------------------------------------------------------------------

    @property
    def cash(self) -> Decimal:
        return self.ledger.cash

    @property
    def positions(self) -> dict[str, Decimal]:
        """Each symbol's signed quantity (a short is negative); a copy."""
        return {symbol: holding.qty for symbol, holding in self.ledger.holdings.items()}

    def _start_price(self, symbol: str) -> Decimal:
        """Where the symbol's book starts: the entry and last-day price of a spec position."""
        return self.spec.symbol(symbol).price

    def _opening_ledger(self) -> Ledger:
        return Ledger.opening(self.spec.cash, self.spec.positions, self._start_price)

    def _marks(self) -> dict[str, Decimal]:
        """Each held symbol's price: its book's mid as the book stands (the simulator keeps
        no trade tape for a last price), or its starting price before it has a book."""
        marks = {}
        for symbol in self.ledger.holdings:
            book = self._books.get(symbol)
            marks[symbol] = self._start_price(symbol) if book is None else (book.bid + book.ask) / 2
        return marks

    def _account_now(self, excluding: SimOrder | None = None) -> SimAccount:
        return self.ledger.account(
            self._marks(),
            account_type=self.spec.account_type,
            reserved_buys=self._reserved_cash(excluding),
            reserved_shorts=self._reserved_shorts(excluding),
            created_at=self._origin,
        )

    def position_views(self, symbol: str | None = None) -> list[PositionView]:
        """The positions (or the one in `symbol`, if held) as Alpaca's position object shows
        them, at the books as they stand."""
        marks = self._marks()
        held = sorted(marks) if symbol is None else [s for s in marks if s == symbol]
        return [
            self.ledger.position(s, marks[s], self._start_price(s), self._held_for_orders(s))
            for s in held
        ]

    def _held_for_orders(self, symbol: str) -> Decimal:
        """Shares of the position open orders would close (sells of a long, buys of a short)."""
        closing = OrderSide.SELL if self.ledger.qty(symbol) > 0 else OrderSide.BUY
        return sum((o.remaining for o in self._open_orders(symbol) if o.side is closing), ZERO)

    # -- persistence --------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            **self.ledger.saved(),
            "next_id": self._next_id,
            "origin": self._origin.isoformat(),
            "now": self.clock.now().isoformat(),
            "faults": self._faults.getstate(),
            "feed": self._feed.getstate(),
            "books": {
                symbol: {
                    "mid": book.mid,
                    "tick_index": book.tick_index,
                    "bid": str(book.bid),
                    "ask": str(book.ask),
                    "zero_side": book.zero_side,
                    "zero_until": book.zero_until,
                    "rng": book.prices.getstate(),
                    "fills_rng": book.fills.getstate(),
                }
                for symbol, book in self._books.items()
            },
        }

    def _restore(self, state: dict[str, Any], orders: list[dict[str, Any]]) -> None:
        self.ledger = self._opening_ledger()
        self.ledger.restore(state, self._start_price)
        self._next_id = state["next_id"]
        self._origin = datetime.fromisoformat(state["origin"])
        self._faults, self._feed = SmallRandom(), SmallRandom()
        self._faults.setstate(state["faults"])
        self._feed.setstate(state["feed"])
        for symbol, saved in state["books"].items():
            prices, fills = self._generators(symbol)
            prices.setstate(saved["rng"])
            if "fills_rng" in saved:  # else saved by older code: its fills start from the seed
                fills.setstate(saved["fills_rng"])
            self._books[symbol] = _Book(
                spec=self.spec.symbol(symbol),
                prices=prices,
                fills=fills,
                mid=saved["mid"],
                tick_index=saved["tick_index"],
                bid=Decimal(saved["bid"]),
                ask=Decimal(saved["ask"]),
                zero_side=saved["zero_side"],
                zero_until=saved["zero_until"],
            )
        for data in orders:
            order = SimOrder.from_json(data)
            self.orders[order.id] = order
            self._by_client_id[order.client_order_id] = order.id
            if order.status in OPEN:
                self._live.setdefault(order.symbol, {})[order.id] = order

    def _commit(self) -> None:
        if self.store is None:
            return
        spec = None if self._spec_saved else self.spec.model_dump(mode="json")
        self.store.save(spec, self._state(), [self.orders[i].to_json() for i in self._dirty])
        self._spec_saved = True
        self._dirty.clear()

    # -- the market ---------------------------------------------------------------

    def _now_tick(self) -> int:
        return int((self.clock.now() - self._origin).total_seconds() // TICK_SECONDS)

    def _book(self, symbol: str) -> _Book:
        book = self._books.get(symbol)
        if book is None:
            if not self.spec.lists(symbol):
                raise UnknownSymbol(f"unknown symbol {symbol}", symbol=symbol)
            spec = self.spec.symbol(symbol)
            book = _Book(spec, *self._generators(symbol), float(spec.price))
            book.tick_index = self._now_tick()
            self._requote(book)
            self._books[symbol] = book
        self._advance(symbol, book)
        self._route_due(symbol, book)
        self._expire_at_close(symbol)
        return book

    def _generators(self, symbol: str) -> tuple[SmallRandom, SmallRandom]:
        """A symbol's price-path and fills generators, as seeded for a new book."""
        seed = f"{self.spec.seed}/{symbol}"
        return SmallRandom(seed), SmallRandom(f"{seed}/fills")

    def _requote(self, book: _Book) -> None:
        mid = Decimal(repr(book.mid))
        tick = tick_size(mid, book.spec.price_increment)
        half = max(mid * Decimal(repr(book.spec.spread_bps)) / Decimal(20_000), tick / 2)
        book.bid = max(floor_to(mid - half, tick), tick)
        book.ask = max(ceil_to(mid + half, tick), book.bid + tick)

    def _advance(self, symbol: str, book: _Book) -> None:
        """Run the symbol's market forward, one tick at a time, up to the clock. The quote
        is worked out at a tick only while an order of the symbol is open to meet it, and
        once at the end: the price path and every random draw are the same, and a book read
        once and left (a plan's long tail of symbols) no longer costs a requote a tick
        (bench.scale's 10,000-order plan)."""
        target = self._now_tick()
        if book.tick_index >= target:
            return
        while book.tick_index < target:
            book.tick_index += 1
            rng = book.prices
            book.mid *= math.exp(book.spec.volatility_bps / 10_000 * rng.normalvariate(0.0, 1.0))
            if book.zero_side is not None and book.tick_index >= book.zero_until:
                book.zero_side = None
            if book.zero_side is None and rng.random() < book.spec.zero_quote_probability:
                book.zero_side = rng.choice(("bid", "bid", "ask", "both"))
                book.zero_until = book.tick_index + rng.randint(2, 8)
            if self._live.get(symbol):
                self._requote(book)
                at = self._tick_time(book.tick_index)
                self._route_due(symbol, book, at)  # what reached the venue before this tick
                if self._session_open(at):
                    for order in self._working_orders(symbol):
                        self._tick_order(order, book)
        self._requote(book)

    def _tick_time(self, tick_index: int) -> datetime:
        return self._origin + timedelta(seconds=tick_index * TICK_SECONDS)

    def _open_orders(self, symbol: str) -> list[SimOrder]:
        """The symbol's orders not yet final, routed or not."""
        return list(self._live.get(symbol, {}).values())

    def _working_orders(self, symbol: str) -> list[SimOrder]:
        """The symbol's orders at the venue, which the market may fill."""
        return [o for o in self._open_orders(symbol) if o.routed and o.status in WORKING]

    # -- the order lifecycle: accepted, routed (new), final -----------------------

    def _session_open(self, at: datetime) -> bool:
        """Whether the market trades at `at`: the spec's session, from its open to its close."""
        if not self.spec.market_open:
            return False
        opens, closes = self.spec.opens_in_seconds, self.spec.closes_in_seconds
        since = (at - self._origin).total_seconds()
        return (opens is None or since >= opens) and (closes is None or since < closes)

    def _route_due(self, symbol: str, book: _Book, at: datetime | None = None) -> None:
        """Accepted orders reach the venue once their routing time has come (by `at`, the
        clock by default) and the market is open (Alpaca queues orders sent while it is
        closed): pending_new first under a routing delay, then new (or rejected), and a
        marketable one may fill at once. A market run forward over a long pause routes each
        order at its own time, between the ticks, not after all of them."""
        now = self.clock.now() if at is None else at
        for order in self._open_orders(symbol):
            if order.routed:
                continue
            if order.status is BrokerOrderStatus.ACCEPTED and self.spec.pending_new_seconds:
                self._set_status(order, BrokerOrderStatus.PENDING_NEW)
            assert order.routes_at is not None
            if now >= datetime.fromisoformat(order.routes_at) and self._session_open(now):
                self._route(order, book)

    def _route(self, order: SimOrder, book: _Book) -> None:
        order.routed = True
        if order.replaces is not None and not self._takes_over(order):
            return
        if order.status is BrokerOrderStatus.PENDING_CANCEL:
            self._set_status(order, BrokerOrderStatus.CANCELED)
            return
        late_reject = self.spec.late_reject_probability
        if late_reject and self._faults.random() < late_reject:
            self._set_status(order, BrokerOrderStatus.REJECTED)
            return
        self._set_status(order, BrokerOrderStatus.NEW)
        self._on_arrival(order, book)
        if order.time_in_force in ("ioc", "fok") and order.status in WORKING:
            self._set_status(order, BrokerOrderStatus.CANCELED)  # nothing of it may rest

    def _takes_over(self, new: SimOrder) -> bool:
        """A replacement at the venue: the old order is replaced, unless it filled (or ended)
        while the replace was pending; then the replacement is rejected (Alpaca: "If the
        existing open order is filled before the replacing (new) order reaches the execution
        venue, the replacing (new) order is rejected")."""
        assert new.replaces is not None
        old = self.orders[new.replaces]
        if old.status is not BrokerOrderStatus.PENDING_REPLACE:
            self._set_status(new, BrokerOrderStatus.REJECTED)
            self._record(old, "order_replace_rejected")
            return False
        old.replaced_by = new.id
        self._set_status(old, BrokerOrderStatus.REPLACED)
        return True

    def _expire_at_close(self, symbol: str) -> None:
        """At the close a DAY order open then ends `expired`, a GTC order with fills is
        `done_for_day`; an order sent after the close waits, queued for the next session."""
        closes = self.spec.closes_in_seconds
        if closes is None:
            return
        close = self._origin + timedelta(seconds=closes)
        if self.clock.now() < close:
            return
        for order in self._open_orders(symbol):
            if order.submitted_at is None or datetime.fromisoformat(order.submitted_at) >= close:
                continue
            if order.time_in_force != "gtc":
                self._set_status(order, BrokerOrderStatus.EXPIRED)
            elif order.status is BrokerOrderStatus.PARTIALLY_FILLED:
                self._set_status(order, BrokerOrderStatus.DONE_FOR_DAY)

    def _tick_order(self, order: SimOrder, book: _Book) -> None:
        cancelling = order.status is BrokerOrderStatus.PENDING_CANCEL
        if order.order_type == "limit":
            self._passive_fill(order, book)
        if cancelling and order.status is not BrokerOrderStatus.FILLED:
            self._set_status(order, BrokerOrderStatus.CANCELED)

    def _passive_fill(self, order: SimOrder, book: _Book) -> None:
        assert order.limit_price is not None
        price = order.limit_price
        touch = book.ask if order.side is OrderSide.BUY else book.bid
        marketable = price >= book.ask if order.side is OrderSide.BUY else price <= book.bid
        if marketable:
            self._fill(order, order.remaining, touch)
            return
        spread = book.ask - book.bid
        distance = float(abs(touch - price) / spread) if spread else 1.0
        intensity = self.spec.fill_intensity * book.spec.liquidity
        probability = 1.0 - math.exp(-intensity * math.exp(-self.spec.fill_decay * distance))
        if book.fills.random() >= probability:
            return
        qty = order.remaining
        if book.fills.random() < self.spec.partial_fill_probability:
            qty = self._portion(order, book.fills.uniform(0.2, 0.8))
        self._fill(order, qty, price)

    def _portion(self, order: SimOrder, fraction: float) -> Decimal:
        """A part of the remaining qty: whole shares for whole-share orders, at least one unit."""
        step = Decimal(1) if order.qty == order.qty.to_integral_value() else QTY_STEP
        part = floor_to(order.remaining * Decimal(repr(fraction)), step)
        return min(max(part, step), order.remaining)

    def _fill(self, order: SimOrder, qty: Decimal, price: Decimal) -> None:
        if qty <= 0:
            return
        order.filled_qty += qty
        order.notional += qty * price
        order.filled_at = self._tick_time(self._books[order.symbol].tick_index).isoformat()
        self._settle(order.symbol, qty if order.side is OrderSide.BUY else -qty, price)
        if order.remaining == 0:
            status = BrokerOrderStatus.FILLED
        elif order.status in PENDING_CHANGE:
            status = order.status  # a fill does not end a pending cancel or replace
        else:
            status = BrokerOrderStatus.PARTIALLY_FILLED
        self._set_status(order, status, execution=(qty, price))

    def _settle(self, symbol: str, signed_qty: Decimal, price: Decimal) -> None:
        """Move shares and cash for one execution (`signed_qty` < 0 for a sell)."""
        self.ledger.execute(symbol, signed_qty, price)

    def _set_status(
        self,
        order: SimOrder,
        status: BrokerOrderStatus,
        execution: tuple[Decimal, Decimal] | None = None,
    ) -> None:
        order.status = status
        order.version += 1
        self._dirty.add(order.id)
        if status not in OPEN:
            live = self._live.get(order.symbol)
            if live is not None and live.pop(order.id, None) is not None and not live:
                del self._live[order.symbol]  # a symbol with nothing open costs nothing
        if execution is not None:
            self._record(order, "fill" if order.remaining == 0 else "partial_fill", execution)
        elif status is not BrokerOrderStatus.ACCEPTED:  # Alpaca's stream has no `accepted`
            self._record(order, EVENT_NAMES.get(status, status.value))

    def _record(
        self, order: SimOrder, event: str, execution: tuple[Decimal, Decimal] | None = None
    ) -> None:
        """Keep the change for trade_updates, when an observer drains `activity`."""
        if self.activity is None:
            return
        qty, price = execution if execution is not None else (None, None)
        position = self.positions.get(order.symbol, ZERO) if execution is not None else None
        self.activity.append(
            Activity(event, order.snapshot(), self.clock.now(), qty, price, position)
        )

    def _quote(self, symbol: str, book: _Book, *, hide_both: bool) -> Quote:
        bid, ask = book.bid, book.ask
        if book.zero_side in ("bid", "both") and (hide_both or book.zero_side == "bid"):
            bid = ZERO
        if book.zero_side in ("ask", "both") and (hide_both or book.zero_side == "ask"):
            ask = ZERO
        shown = book.spec.stream_quote if hide_both else book.spec.rest_quote
        if shown is not None:  # the quote knobs: a corrupt or disagreeing source
            bid, ask = shown
        at = self._origin + timedelta(seconds=book.tick_index * TICK_SECONDS)
        return Quote(
            symbol, bid, ask, at, "stream" if hide_both else "rest", Decimal(100), Decimal(100)
        )

    # -- faults and latency -------------------------------------------------------

    async def _call(self, *, read: bool = True) -> None:
        if self.spec.latency_seconds:
            await self.clock.sleep(self.spec.latency_seconds)
        if read and self._faults.random() < self.spec.read_error_probability:
            raise BrokerUnavailable("simulated transient read error (HTTP 503)")

    # -- Broker protocol ----------------------------------------------------------

    @_persisted
    async def get_asset(self, symbol: str) -> Asset:
        await self._call()
        return self._asset(self._book(symbol).spec, symbol)

    @_persisted
    async def get_clock(self) -> MarketClock:
        await self._call()
        now, spec = self.clock.now(), self.spec
        opens_at, closes_at = (
            None if seconds is None else self._origin + timedelta(seconds=seconds)
            for seconds in (spec.opens_in_seconds, spec.closes_in_seconds)
        )
        return MarketClock(
            is_open=self._session_open(now),
            at=now,
            next_open=opens_at if spec.market_open and opens_at and now < opens_at else None,
            next_close=closes_at if closes_at and now < closes_at else None,
        )

    @_persisted
    async def get_account(self) -> SimAccount:
        await self._call()
        return self._account_now()

    @_persisted
    async def get_position(self, symbol: str) -> Decimal:
        await self._call()
        self._book(symbol)
        return self.ledger.qty(symbol)

    @_persisted
    async def get_positions(self) -> dict[str, Decimal]:
        """Each held symbol's signed qty, every book first run up to now (as get_position
        runs its own), so fills already due are in."""
        await self._call()
        for symbol in list(self._books):
            self._book(symbol)
        return self.positions

    @_persisted
    async def stream_quote(self, symbol: str, wait_seconds: float) -> Quote | None:
        await self._call(read=False)
        book = self._book(symbol)
        if self._feed.random() < self.spec.stream_gap_probability:
            return None
        return self._quote(symbol, book, hide_both=True)

    @_persisted
    async def latest_quote(self, symbol: str) -> Quote | None:
        await self._call()
        return self._quote(symbol, self._book(symbol), hide_both=False)

    @_persisted
    async def latest_quotes(self, symbols: Collection[str]) -> dict[str, Quote]:
        """One call for them all; a symbol the market does not list has no quote."""
        await self._call()
        listed = (symbol for symbol in symbols if self.spec.lists(symbol))
        return {s: self._quote(s, self._book(s), hide_both=False) for s in listed}

    @_persisted
    async def submit_order(self, request: OrderRequest) -> BrokerOrder:
        await self._call(read=False)
        if request.client_order_id in self._by_client_id:
            raise DuplicateClientOrderId(
                "client_order_id must be unique", client_order_id=request.client_order_id
            )
        book = self._book(request.symbol)
        qty = request.qty if request.notional is None else self._sized(request.notional, book)
        self._check_minimum(request, qty, book)
        self._check_new(request.symbol, request.side, qty, request.limit_price, book)
        order = SimOrder(
            id=self._new_id(),
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            order_type=request.order_type,
            qty=qty,
            limit_price=request.limit_price,
            time_in_force=request.time_in_force,
            asked_notional=request.notional,
        )
        self._accept(order, book)
        if self._faults.random() < self.spec.submit_timeout_probability:
            raise OutcomeUnknown("simulated timeout after the order was accepted")
        return order.snapshot()

    @staticmethod
    def _sized(notional: Decimal, book: _Book) -> Decimal:
        """A dollar order's quantity at the touch it arrives at (fractions to 1e-9)."""
        return floor_to(notional / book.ask, QTY_STEP) if book.ask > 0 else ZERO

    @staticmethod
    def _check_minimum(request: OrderRequest, qty: Decimal, book: _Book) -> None:
        """Alpaca's $1 minimum for a fractional or dollar buy ("cost basis must be >= minimal
        amount of order 1"); whole-share orders of cheap stocks stay allowed."""
        fractional = request.notional is not None or qty != qty.to_integral_value()
        if request.side is not OrderSide.BUY or not fractional:
            return
        value = request.notional or qty * (request.limit_price or book.ask)
        if value < MIN_ORDER_VALUE:
            raise BrokerRejected(
                "cost basis must be >= minimal amount of order 1",
                reason="below_minimum",
                cost_basis=str(value),
            )

    def _check_new(
        self,
        symbol: str,
        side: OrderSide,
        qty: Decimal,
        limit_price: Decimal | None,
        book: _Book,
        releasing: SimOrder | None = None,
    ) -> None:
        spec = book.spec
        if not spec.tradable:
            raise BrokerRejected(f"asset {symbol} is not tradable", reason="not_tradable")
        if qty != qty.to_integral_value() and not spec.fractionable:
            raise BrokerRejected(f"asset {symbol} is not fractionable", reason="rejected")
        if limit_price is not None:
            tick = tick_size(limit_price, spec.price_increment)
            if limit_price % tick or limit_price <= 0:
                raise BrokerRejected(
                    f"invalid limit_price {limit_price}: sub-penny increment does not fulfill "
                    "minimum pricing criteria",
                    reason="rejected",
                )
        if self._faults.random() < self.spec.reject_probability:
            raise BrokerRejected("simulated rejection", reason="rejected")
        if side is OrderSide.BUY:
            cost = qty * (limit_price if limit_price is not None else book.ask)
            self._check_buying_power(cost, releasing)
        elif self.ledger.qty(symbol) > 0 or not self._account_now(releasing).shorting_enabled:
            self._check_qty_available(symbol, qty, releasing)
        else:
            self._check_short_sale(symbol, qty, limit_price, book, releasing)

    def _check_buying_power(self, cost: Decimal, releasing: SimOrder | None) -> None:
        """Alpaca's 403 for an order the buying power does not cover, with its figures.

        Without short positions no account's buying power is below the cash its open buys
        leave free, so an order that cash covers passes without marking every holding to
        its book (which made each buy cost as much as the positions held)."""
        if not self.ledger.short_symbols and cost <= self.ledger.cash - self._reserved_cash(
            releasing
        ):
            return
        power = self._account_now(releasing).buying_power
        if cost > power:
            raise BrokerRejected(
                "insufficient buying power",
                reason="insufficient_funds",
                buying_power=decimal_text(power),
                cost_basis=decimal_text(cost),
            )

    def _check_qty_available(
        self, symbol: str, qty: Decimal, releasing: SimOrder | None = None
    ) -> None:
        """A sell closes a long position, never more of it than open sells leave free
        (Alpaca's 403 names the shares held and the orders holding them)."""
        existing = self.ledger.qty(symbol)
        holding = self._holding_sells(symbol, releasing)
        held = sum((o.remaining for o in holding), ZERO)
        available = max(existing - held, ZERO)
        if qty <= 0 or qty > available:
            raise BrokerRejected(
                f"insufficient qty available for order (requested: {decimal_text(qty)}, "
                f"available: {decimal_text(available)})",
                reason="insufficient_position",
                available=decimal_text(available),
                existing_qty=decimal_text(existing),
                held_for_orders=decimal_text(held),
                symbol=symbol,
                **({"related_orders": [o.id for o in holding]} if holding else {}),
            )

    def _check_short_sale(
        self,
        symbol: str,
        qty: Decimal,
        limit_price: Decimal | None,
        book: _Book,
        releasing: SimOrder | None,
    ) -> None:
        """A sell with no long position on a margin account opens (or adds to) a short: in
        whole shares, of a shortable asset, within the buying power."""
        if not book.spec.shortable:
            raise BrokerRejected(f"asset {symbol} cannot be sold short", reason="rejected")
        if qty != qty.to_integral_value():
            raise BrokerRejected("fractional orders cannot be sold short", reason="rejected")
        self._check_buying_power(short_sale_value(qty, limit_price, book.ask), releasing)

    def _live_orders(self) -> list[SimOrder]:
        return [order for live in self._live.values() for order in live.values()]

    def _reserved_cash(self, excluding: SimOrder | None = None) -> Decimal:
        """What open buys hold of the cash. While a replace is pending, the larger of the
        old order and its replacement (Alpaca: "the account's buying power is reduced by
        the larger of the two orders")."""
        held: dict[str, Decimal] = {}
        for order in self._live_orders():
            if order is excluding or order.side is not OrderSide.BUY:
                continue
            price = order.limit_price or self._books[order.symbol].ask
            key = order.replaces if order.replaces and not order.routed else order.id
            held[key] = max(held.get(key, ZERO), order.remaining * price)
        return sum(held.values(), ZERO)

    def _reserved_shorts(self, excluding: SimOrder | None = None) -> Decimal:
        """What open sells of symbols not held long hold of the buying power: short sales."""
        total = ZERO
        for order in self._live_orders():
            if order is excluding or order.side is OrderSide.BUY:
                continue
            if self.ledger.qty(order.symbol) <= 0:
                book = self._books[order.symbol]
                total += short_sale_value(order.remaining, order.limit_price, book.ask)
        return total

    def _holding_sells(self, symbol: str, excluding: SimOrder | None = None) -> list[SimOrder]:
        """The open sells of `symbol`, whose shares no other sell may take."""
        return [
            o for o in self._open_orders(symbol) if o is not excluding and o.side is OrderSide.SELL
        ]

    def _reserved_qty(self, symbol: str, excluding: SimOrder | None = None) -> Decimal:
        return sum((o.remaining for o in self._holding_sells(symbol, excluding)), ZERO)

    def _new_id(self) -> str:
        order_id = f"sim-{self._next_id:06d}"
        self._next_id += 1
        return order_id

    def _accept(self, order: SimOrder, book: _Book) -> None:
        """Take the order in as Alpaca does: `accepted` now, at the venue (and able to fill)
        only once routed, at the caller's next look at the market at the earliest."""
        now = self.clock.now()
        order.status, order.routed = BrokerOrderStatus.ACCEPTED, False
        order.submitted_at = now.isoformat()
        order.routes_at = (now + timedelta(seconds=self.spec.pending_new_seconds)).isoformat()
        self.orders[order.id] = order
        self._live.setdefault(order.symbol, {})[order.id] = order
        self._dirty.add(order.id)
        self._by_client_id[order.client_order_id] = order.id

    def _on_arrival(self, order: SimOrder, book: _Book) -> None:
        """At the venue: a market order fills at the touch, a marketable limit order too."""
        if order.order_type == "market":
            self._market_fill(order, book)
        else:
            touch = book.ask if order.side is OrderSide.BUY else book.bid
            assert order.limit_price is not None
            crosses = (
                order.limit_price >= touch
                if order.side is OrderSide.BUY
                else order.limit_price <= touch
            )
            if crosses:
                self._fill(order, order.remaining, touch)

    def _market_fill(self, order: SimOrder, book: _Book) -> None:
        touch = book.ask if order.side is OrderSide.BUY else book.bid
        if book.fills.random() < self.spec.market_partial_probability:
            self._fill(order, self._portion(order, book.fills.uniform(0.3, 0.9)), touch)
            self._set_status(order, BrokerOrderStatus.CANCELED)
        else:
            self._fill(order, order.remaining, touch)

    @_persisted
    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        await self._call(read=False)
        old = self._order(order_id, by_id=False)
        book = self._book(old.symbol)
        replaceable = (BrokerOrderStatus.NEW, BrokerOrderStatus.PARTIALLY_FILLED)
        if not old.routed or old.status not in replaceable:
            raise NotReplaceable(
                f"order {order_id} is {old.status.value} and cannot be replaced",
                status=old.status.value,
            )
        if qty != qty.to_integral_value() or old.qty != old.qty.to_integral_value():
            raise NotReplaceable("fractional orders cannot be replaced", order_id=order_id)
        if qty == old.qty and limit_price == old.limit_price:
            raise NotReplaceable("order parameters are not changed", order_id=order_id)
        if client_order_id in self._by_client_id:
            raise DuplicateClientOrderId(
                "client_order_id must be unique", client_order_id=client_order_id
            )
        self._check_new(old.symbol, old.side, qty, limit_price, book, releasing=old)
        new = SimOrder(
            id=self._new_id(),
            client_order_id=client_order_id,
            symbol=old.symbol,
            side=old.side,
            order_type="limit",
            qty=qty,
            limit_price=limit_price,
            replaces=old.id,
            time_in_force=old.time_in_force,
        )
        self._set_status(old, BrokerOrderStatus.PENDING_REPLACE)
        self._accept(new, book)
        return new.snapshot()

    @_persisted
    async def cancel_order(self, order_id: str) -> None:
        await self._call(read=False)
        order = self._order(order_id, by_id=False)
        self._book(order.symbol)
        status = order.status
        if status is BrokerOrderStatus.PENDING_REPLACE:  # Alpaca refuses it in this state
            raise BrokerRejected(
                f"order {order_id} is pending_replace and cannot be canceled", status=status.value
            )
        if status is BrokerOrderStatus.DONE_FOR_DAY or (
            not order.routed and order.replaces is None
        ):
            self._set_status(order, BrokerOrderStatus.CANCELED)  # nothing at a venue to pull
        elif status in OPEN and status is not BrokerOrderStatus.PENDING_CANCEL:
            self._set_status(order, BrokerOrderStatus.PENDING_CANCEL)

    def _order(self, order_id: str, *, by_id: bool = True) -> SimOrder:
        """The order, or OrderNotFound: also for one the `order_lookup` knob hides."""
        order = self.orders.get(order_id)
        if order is None or self._lost(order, by_id=by_id):
            raise OrderNotFound(f"order {order_id} not found", order_id=order_id)
        return order

    def _lost(self, order: SimOrder, *, by_id: bool) -> bool:
        lookup = self._spec_of(order.symbol).order_lookup
        return lookup == "not_found" or (by_id and lookup == "not_found_by_id")

    def _spec_of(self, symbol: str) -> SymbolSpec:
        book = self._books.get(symbol)
        return book.spec if book is not None else self._book(symbol).spec

    @_persisted
    async def get_order(self, order_id: str) -> BrokerOrder:
        await self._call()
        order = self._order(order_id)
        self._book(order.symbol)
        return order.snapshot()

    @_persisted
    async def close_position(self, symbol: str, qty: Decimal) -> BrokerOrder:
        """A market sell of `qty` of the position, fractions allowed whatever the asset,
        under a client order id of the simulator's (as Alpaca's close-position route)."""
        await self._call(read=False)
        book = self._book(symbol)
        self._check_qty_available(symbol, qty)
        order_id = self._new_id()
        order = SimOrder(
            id=order_id,
            client_order_id=f"close-{order_id}",
            symbol=symbol,
            side=OrderSide.SELL,
            order_type="market",
            qty=qty,
            limit_price=None,
        )
        self._accept(order, book)
        if self._faults.random() < self.spec.submit_timeout_probability:
            raise OutcomeUnknown("simulated timeout after the close was accepted")
        return order.snapshot()

    @_persisted
    async def recent_orders(self, symbol: str | None, since: datetime) -> list[BrokerOrder]:
        await self._call()
        self.catch_up()
        return [
            o.snapshot()
            for o in self.orders.values()
            if symbol in (None, o.symbol)
            and not self._lost(o, by_id=False)
            and o.submitted_at is not None
            and datetime.fromisoformat(o.submitted_at) >= since
        ]

    @_persisted
    async def open_orders(self) -> list[BrokerOrder]:
        await self._call()
        self.catch_up()
        return [
            o.snapshot()
            for live in self._live.values()
            for o in live.values()
            if not self._lost(o, by_id=False)
        ]

    def catch_up(self) -> None:
        """Run every symbol with an open order forward to the clock, so what is open now
        is what a listing shows (each symbol's market otherwise moves when it is asked about)."""
        for symbol in [s for s, live in self._live.items() if live]:
            self._book(symbol)

    @_persisted
    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        await self._call()
        order_id = self._by_client_id.get(client_order_id)
        if order_id is None or self._lost(self.orders[order_id], by_id=False):
            return None
        order = self.orders[order_id]
        self._book(order.symbol)
        return order.snapshot()

    @_persisted
    async def wait_for_update(self, order_id: str, timeout_seconds: float) -> BrokerOrder:
        order = self._order(order_id)
        version = order.version
        deadline = self.clock.monotonic() + timeout_seconds
        while True:
            self._book(order.symbol)
            remaining = deadline - self.clock.monotonic()
            if order.version != version or remaining <= MIN_WAIT_SECONDS:
                return order.snapshot()
            await self.clock.sleep(min(float(TICK_SECONDS), remaining))
