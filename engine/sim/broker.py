"""SimBroker: a seeded, in-process market and account on the engine's clock.

Each symbol's mid follows a random walk in one-second ticks with its own RNG, so
orders on different symbols never perturb each other and a run is reproducible
from its seed. Resting limit orders fill passively with an intensity that falls
with their distance from the far touch; a marketable order fills at the touch.
Cancels are asynchronous like Alpaca's: the order sits in `pending_cancel` until
the next tick and may still fill there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..broker import (
    Account,
    Asset,
    BrokerOrder,
    BrokerOrderStatus,
    MarketClock,
    OrderRequest,
    OrderType,
    Quote,
)
from ..clock import MIN_WAIT_SECONDS, Clock
from ..errors import (
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    NotReplaceable,
    OrderNotFound,
    OutcomeUnknown,
    UnknownSymbol,
)
from ..intents import OrderSide
from ..numbers import ZERO, ceil_to, floor_to
from ..pricing import tick_size
from .rng import SmallRandom
from .spec import MarketSpec, SymbolSpec
from .store import SimStore

__all__ = ["SimBroker"]

P = ParamSpec("P")
R = TypeVar("R")

TICK_SECONDS = 1
QTY_STEP = Decimal("0.000000001")
_OPEN = frozenset(
    {BrokerOrderStatus.NEW, BrokerOrderStatus.PARTIALLY_FILLED, BrokerOrderStatus.PENDING_CANCEL}
)


@dataclass
class _Book:
    """One symbol's simulated top of book."""

    spec: SymbolSpec
    rng: SmallRandom
    mid: float
    tick_index: int = 0
    bid: Decimal = ZERO
    ask: Decimal = ZERO
    zero_side: str | None = None
    zero_until: int = 0


@dataclass
class _Order:
    id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    order_type: OrderType
    qty: Decimal
    limit_price: Decimal | None
    status: BrokerOrderStatus = BrokerOrderStatus.NEW
    filled_qty: Decimal = ZERO
    notional: Decimal = ZERO
    replaced_by: str | None = None
    replaces: str | None = None
    version: int = 0
    submitted_at: str | None = None

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled_qty

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("qty", "limit_price", "filled_qty", "notional"):
            data[key] = None if data[key] is None else str(data[key])
        data["side"], data["status"] = self.side.value, self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Order:
        values = dict(data)
        for key in ("qty", "limit_price", "filled_qty", "notional"):
            values[key] = None if values[key] is None else Decimal(values[key])
        values["side"] = OrderSide(values["side"])
        values["status"] = BrokerOrderStatus(values["status"])
        return cls(**values)

    def snapshot(self) -> BrokerOrder:
        return BrokerOrder(
            id=self.id,
            client_order_id=self.client_order_id,
            symbol=self.symbol,
            side=self.side,
            order_type=self.order_type,
            qty=self.qty,
            limit_price=self.limit_price,
            status=self.status,
            filled_qty=self.filled_qty,
            filled_avg_price=self.notional / self.filled_qty if self.filled_qty else None,
            replaced_by=self.replaced_by,
            replaces=self.replaces,
        )


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
    cash: Decimal = field(init=False)
    positions: dict[str, Decimal] = field(init=False)
    orders: dict[str, _Order] = field(init=False, default_factory=dict)
    _by_client_id: dict[str, str] = field(init=False, default_factory=dict)
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
        self.cash = self.spec.cash
        self.positions = {s: q for s, q in self.spec.positions.items() if q}
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
        for symbol, book in self._books.items():
            self._advance(symbol, book)
        self._commit()

    def order_versions(self) -> dict[str, int]:
        """Each order's change counter, so an observer can tell which orders moved."""
        return {order_id: order.version for order_id, order in self.orders.items()}

    def order_snapshot(self, order_id: str) -> BrokerOrder:
        return self._order(order_id).snapshot()

    def fill_now(self, order_id: str) -> None:
        """Fill what remains of an open limit order at its price: a race a server can stage."""
        order = self._order(order_id)
        if order.status in _OPEN and order.limit_price is not None:
            self._fill(order, order.remaining, order.limit_price)
            self._commit()

    # -- persistence --------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "cash": str(self.cash),
            "positions": {s: str(q) for s, q in self.positions.items()},
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
                    "rng": book.rng.getstate(),
                }
                for symbol, book in self._books.items()
            },
        }

    def _restore(self, state: dict[str, Any], orders: list[dict[str, Any]]) -> None:
        self.cash = Decimal(state["cash"])
        self.positions = {s: Decimal(q) for s, q in state["positions"].items()}
        self._next_id = state["next_id"]
        self._origin = datetime.fromisoformat(state["origin"])
        self._faults, self._feed = SmallRandom(), SmallRandom()
        self._faults.setstate(state["faults"])
        self._feed.setstate(state["feed"])
        for symbol, saved in state["books"].items():
            rng = SmallRandom()
            rng.setstate(saved["rng"])
            self._books[symbol] = _Book(
                spec=self.spec.symbol(symbol),
                rng=rng,
                mid=saved["mid"],
                tick_index=saved["tick_index"],
                bid=Decimal(saved["bid"]),
                ask=Decimal(saved["ask"]),
                zero_side=saved["zero_side"],
                zero_until=saved["zero_until"],
            )
        for data in orders:
            order = _Order.from_json(data)
            self.orders[order.id] = order
            self._by_client_id[order.client_order_id] = order.id

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
            if symbol in self.spec.unknown_symbols:
                raise UnknownSymbol(f"unknown symbol {symbol}", symbol=symbol)
            spec = self.spec.symbol(symbol)
            book = _Book(spec, SmallRandom(f"{self.spec.seed}/{symbol}"), float(spec.price))
            book.tick_index = self._now_tick()
            self._requote(book)
            self._books[symbol] = book
        self._advance(symbol, book)
        return book

    def _requote(self, book: _Book) -> None:
        mid = Decimal(repr(book.mid))
        tick = tick_size(mid, book.spec.price_increment)
        half = max(mid * Decimal(repr(book.spec.spread_bps)) / Decimal(20_000), tick / 2)
        book.bid = max(floor_to(mid - half, tick), tick)
        book.ask = max(ceil_to(mid + half, tick), book.bid + tick)

    def _advance(self, symbol: str, book: _Book) -> None:
        """Run the symbol's market forward, one tick at a time, up to the clock."""
        target = self._now_tick()
        while book.tick_index < target:
            book.tick_index += 1
            rng = book.rng
            book.mid *= math.exp(book.spec.volatility_bps / 10_000 * rng.normalvariate(0.0, 1.0))
            self._requote(book)
            if book.zero_side is not None and book.tick_index >= book.zero_until:
                book.zero_side = None
            if book.zero_side is None and rng.random() < book.spec.zero_quote_probability:
                book.zero_side = rng.choice(("bid", "bid", "ask", "both"))
                book.zero_until = book.tick_index + rng.randint(2, 8)
            for order in self._open_orders(symbol):
                self._tick_order(order, book)

    def _open_orders(self, symbol: str) -> list[_Order]:
        return [o for o in self.orders.values() if o.symbol == symbol and o.status in _OPEN]

    def _tick_order(self, order: _Order, book: _Book) -> None:
        cancelling = order.status is BrokerOrderStatus.PENDING_CANCEL
        if order.order_type == "limit":
            self._passive_fill(order, book)
        if cancelling and order.status is not BrokerOrderStatus.FILLED:
            self._set_status(order, BrokerOrderStatus.CANCELED)

    def _passive_fill(self, order: _Order, book: _Book) -> None:
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
        if book.rng.random() >= probability:
            return
        qty = order.remaining
        if book.rng.random() < self.spec.partial_fill_probability:
            qty = self._portion(order, book.rng.uniform(0.2, 0.8))
        self._fill(order, qty, price)

    def _portion(self, order: _Order, fraction: float) -> Decimal:
        """A part of the remaining qty: whole shares for whole-share orders, at least one unit."""
        step = Decimal(1) if order.qty == order.qty.to_integral_value() else QTY_STEP
        part = floor_to(order.remaining * Decimal(repr(fraction)), step)
        return min(max(part, step), order.remaining)

    def _fill(self, order: _Order, qty: Decimal, price: Decimal) -> None:
        if qty <= 0:
            return
        order.filled_qty += qty
        order.notional += qty * price
        signed = qty if order.side is OrderSide.BUY else -qty
        self.positions[order.symbol] = self.positions.get(order.symbol, ZERO) + signed
        if not self.positions[order.symbol]:
            del self.positions[order.symbol]
        self.cash -= signed * price
        self._set_status(
            order,
            BrokerOrderStatus.FILLED
            if order.remaining == 0
            else (
                order.status
                if order.status is BrokerOrderStatus.PENDING_CANCEL
                else BrokerOrderStatus.PARTIALLY_FILLED
            ),
        )

    def _set_status(self, order: _Order, status: BrokerOrderStatus) -> None:
        order.status = status
        order.version += 1
        self._dirty.add(order.id)

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
        spec = self._book(symbol).spec
        return Asset(symbol, spec.tradable, spec.fractionable, spec.price_increment)

    @_persisted
    async def get_clock(self) -> MarketClock:
        await self._call()
        now = self.clock.now()
        opens_in = self.spec.opens_in_seconds
        if opens_in is None or not self.spec.market_open:
            return MarketClock(is_open=self.spec.market_open, at=now)
        opens_at = self._origin + timedelta(seconds=opens_in)
        if now >= opens_at:
            return MarketClock(is_open=True, at=now)
        return MarketClock(is_open=False, at=now, next_open=opens_at)

    @_persisted
    async def get_account(self) -> Account:
        await self._call()
        return Account(cash=self.cash, buying_power=self.cash - self._reserved_cash())

    @_persisted
    async def get_position(self, symbol: str) -> Decimal:
        await self._call()
        self._book(symbol)
        return self.positions.get(symbol, ZERO)

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
    async def submit_order(self, request: OrderRequest) -> BrokerOrder:
        await self._call(read=False)
        if request.client_order_id in self._by_client_id:
            raise DuplicateClientOrderId(
                "client_order_id must be unique", client_order_id=request.client_order_id
            )
        book = self._book(request.symbol)
        self._check_new(request.symbol, request.side, request.qty, request.limit_price, book)
        order = _Order(
            id=self._new_id(),
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            order_type=request.order_type,
            qty=request.qty,
            limit_price=request.limit_price,
        )
        self._accept(order, book)
        if self._faults.random() < self.spec.submit_timeout_probability:
            raise OutcomeUnknown("simulated timeout after the order was accepted")
        return order.snapshot()

    def _check_new(
        self,
        symbol: str,
        side: OrderSide,
        qty: Decimal,
        limit_price: Decimal | None,
        book: _Book,
        releasing: _Order | None = None,
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
            if cost > self.cash - self._reserved_cash(excluding=releasing):
                raise BrokerRejected("insufficient buying power", reason="insufficient_funds")
        else:
            available = self.positions.get(symbol, ZERO) - self._reserved_qty(symbol, releasing)
            if qty > available:
                raise BrokerRejected(
                    f"insufficient qty available for order (requested: {qty}, "
                    f"available: {available})",
                    reason="insufficient_position",
                )

    def _reserved_cash(self, excluding: _Order | None = None) -> Decimal:
        total = ZERO
        for order in self.orders.values():
            if order is excluding or order.status not in _OPEN or order.side is not OrderSide.BUY:
                continue
            price = order.limit_price or self._books[order.symbol].ask
            total += order.remaining * price
        return total

    def _reserved_qty(self, symbol: str, excluding: _Order | None = None) -> Decimal:
        return sum(
            (
                o.remaining
                for o in self._open_orders(symbol)
                if o is not excluding and o.side is OrderSide.SELL
            ),
            ZERO,
        )

    def _new_id(self) -> str:
        order_id = f"sim-{self._next_id:06d}"
        self._next_id += 1
        return order_id

    def _accept(self, order: _Order, book: _Book) -> None:
        order.submitted_at = self.clock.now().isoformat()
        self.orders[order.id] = order
        self._dirty.add(order.id)
        self._by_client_id[order.client_order_id] = order.id
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

    def _market_fill(self, order: _Order, book: _Book) -> None:
        touch = book.ask if order.side is OrderSide.BUY else book.bid
        if book.rng.random() < self.spec.market_partial_probability:
            self._fill(order, self._portion(order, book.rng.uniform(0.3, 0.9)), touch)
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
        if old.status not in (BrokerOrderStatus.NEW, BrokerOrderStatus.PARTIALLY_FILLED):
            raise NotReplaceable(
                f"order {order_id} is {old.status.value} and cannot be replaced",
                status=old.status.value,
            )
        if qty != qty.to_integral_value() or old.qty != old.qty.to_integral_value():
            raise NotReplaceable("fractional orders cannot be replaced", order_id=order_id)
        if qty == old.qty and limit_price == old.limit_price:
            raise BrokerRejected("order parameters are not changed", reason="rejected")
        if client_order_id in self._by_client_id:
            raise DuplicateClientOrderId(
                "client_order_id must be unique", client_order_id=client_order_id
            )
        self._check_new(old.symbol, old.side, qty, limit_price, book, releasing=old)
        new = _Order(
            id=self._new_id(),
            client_order_id=client_order_id,
            symbol=old.symbol,
            side=old.side,
            order_type="limit",
            qty=qty,
            limit_price=limit_price,
            replaces=old.id,
        )
        old.replaced_by = new.id
        self._set_status(old, BrokerOrderStatus.REPLACED)
        self._accept(new, book)
        return new.snapshot()

    @_persisted
    async def cancel_order(self, order_id: str) -> None:
        await self._call(read=False)
        order = self._order(order_id, by_id=False)
        self._book(order.symbol)
        if order.status in (BrokerOrderStatus.NEW, BrokerOrderStatus.PARTIALLY_FILLED):
            self._set_status(order, BrokerOrderStatus.PENDING_CANCEL)

    def _order(self, order_id: str, *, by_id: bool = True) -> _Order:
        """The order, or OrderNotFound: also for one the `order_lookup` knob hides."""
        order = self.orders.get(order_id)
        if order is None or self._lost(order, by_id=by_id):
            raise OrderNotFound(f"order {order_id} not found", order_id=order_id)
        return order

    def _lost(self, order: _Order, *, by_id: bool) -> bool:
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
        available = self.positions.get(symbol, ZERO) - self._reserved_qty(symbol)
        if qty <= 0 or qty > available:
            raise BrokerRejected(
                f"insufficient qty available for order (requested: {qty}, available: {available})",
                reason="insufficient_position",
            )
        order_id = self._new_id()
        order = _Order(
            id=order_id,
            client_order_id=f"close-{order_id}",
            symbol=symbol,
            side=OrderSide.SELL,
            order_type="market",
            qty=qty,
            limit_price=None,
        )
        self._accept(order, book)
        return order.snapshot()

    @_persisted
    async def recent_orders(self, symbol: str, since: datetime) -> list[BrokerOrder]:
        await self._call()
        self.catch_up()
        return [
            o.snapshot()
            for o in self.orders.values()
            if o.symbol == symbol
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
            for o in self.orders.values()
            if o.status in _OPEN and not self._lost(o, by_id=False)
        ]

    def catch_up(self) -> None:
        """Run every symbol with an open order forward to the clock, so what is open now
        is what a listing shows (each symbol's market otherwise moves when it is asked about)."""
        for symbol in {o.symbol for o in self.orders.values() if o.status in _OPEN}:
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
