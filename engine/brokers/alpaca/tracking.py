"""What the streams told us, shared between the stream thread and the engine's loop.

The websocket clients run on their own thread; the engine awaits on its own loop. State
lives here behind a lock, and waiting engine tasks are woken with
`call_soon_threadsafe` on the loop each one waits in, so nothing is lost when the engine
starts a new event loop (a later `asyncio.run`) while the streams keep running.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from decimal import Decimal

from ...broker import BrokerOrder, BrokerOrderStatus, Quote

__all__ = [
    "CANCEL_TAKEN",
    "EVERYONE",
    "FINAL_ORDERS_KEPT",
    "REPLACE_TAKEN",
    "OrderTracker",
    "QuoteBoard",
    "Waiters",
    "Watch",
]

EVERYONE = "*"
_NOT_ROUTED = frozenset({BrokerOrderStatus.ACCEPTED, BrokerOrderStatus.PENDING_NEW})
# Final orders the tracker keeps, the latest to become final last. A final order never
# changes again, so forgetting one costs at most one REST read if it is asked for again,
# and an engine embedded for months (or an account whose other orders stream by) does not
# keep every order it ever saw.
FINAL_ORDERS_KEPT = 10_000
# the statuses (besides a final one) in which an order shows that Alpaca took a cancel or a
# replace we sent (https://docs.alpaca.markets/docs/orders-at-alpaca#order-lifecycle)
CANCEL_TAKEN = frozenset({BrokerOrderStatus.PENDING_CANCEL})
REPLACE_TAKEN = frozenset({BrokerOrderStatus.PENDING_REPLACE})


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Watch:
    """One registered waiter: register first, then check state, then wait (no lost wake-up)."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future

    async def wait(self, timeout: float) -> None:
        """Return when woken or after `timeout` seconds, whichever comes first."""
        if timeout > 0:
            await asyncio.wait([self.future], timeout=timeout)


class Waiters:
    """asyncio futures keyed by order id or symbol, woken from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: defaultdict[str, set[asyncio.Future[None]]] = defaultdict(set)

    @contextmanager
    def watch(self, key: str) -> Iterator[Watch]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._by_key[key].add(future)
        try:
            yield Watch(future)
        finally:
            with self._lock:
                waiting = self._by_key[key]
                waiting.discard(future)
                if not waiting:
                    del self._by_key[key]  # one key per order ever waited on would pile up

    async def until(self, key: str, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until `ready()` holds (re-checked after every wake-up) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            with self.watch(key) as watch:
                if ready():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                await watch.wait(left)

    def wake(self, key: str = EVERYONE) -> None:
        with self._lock:
            if key == EVERYONE:
                futures = [f for waiting in self._by_key.values() for f in waiting]
            else:
                futures = list(self._by_key.get(key, ()))
        for future in futures:
            with suppress(RuntimeError):  # its loop has closed: nobody waits there any more
                future.get_loop().call_soon_threadsafe(_wake, future)


def _fresher(old: BrokerOrder | None, new: BrokerOrder) -> BrokerOrder:
    """The later of two views of one order: more filled wins, then final over open; the
    position an execution reported is kept while the fills are those it came with.

    A REST answer can be older than a trade update that overtook it, so arrival order
    alone cannot decide; fills and finality only ever move forward.
    """
    if old is None:
        return new
    behind = _progress(new) < _progress(old)
    keep, other = (old, new) if behind else (new, old)
    if keep.replaced_by is None and other.replaced_by is not None:
        keep = replace(keep, replaced_by=other.replaced_by)
    reported = other.position_after
    if keep.position_after is None and reported is not None and other.filled_qty == keep.filled_qty:
        # what an execution reported stays with its fills when a later view (the final
        # status, a REST read) shows the same fills without it
        keep = replace(
            keep,
            position_after=reported,
            filled_at=keep.filled_at or other.filled_at,
        )
    return keep


def _progress(order: BrokerOrder) -> tuple[Decimal, bool, bool]:
    """How far an order has come: fills, then finality, then whether it reached the venue
    (an order seen `new` never goes back to `accepted`, whatever a late REST answer says)."""
    return order.filled_qty, order.is_terminal, order.status not in _NOT_ROUTED


def _shows(order: BrokerOrder | None, taken: frozenset[BrokerOrderStatus] | None) -> bool:
    """Whether a view of an order shows a write that puts it in one of `taken` (or None:
    no write is waiting): that status, or final, which no write can undo."""
    if taken is None:
        return True
    return order is not None and (order.is_terminal or order.status in taken)


def _view(order: BrokerOrder) -> tuple[object, ...]:
    return order.status, order.filled_qty, order.filled_avg_price, order.replaced_by


class OrderTracker:
    """The freshest known state of each broker order, from REST answers and trade_updates.

    An order's state is trusted without a REST read only if it was confirmed during the
    current connection of the trade stream (`generation`): a reconnect may have missed
    updates, so each open order is read once again after it.
    """

    def __init__(self, final_orders_kept: int = FINAL_ORDERS_KEPT) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, BrokerOrder] = {}
        self._shown: dict[str, BrokerOrder] = {}
        self._confirmed: dict[str, int] = {}
        self._finals: OrderedDict[str, None] = OrderedDict()  # ids, oldest final first
        self._finals_kept = final_orders_kept
        # order id -> the statuses that would show a write of ours its view does not show yet
        self._writes: dict[str, frozenset[BrokerOrderStatus]] = {}
        self.generation = 0
        self.stream_up = False
        self.waiters = Waiters()

    def observe(self, order: BrokerOrder) -> BrokerOrder:
        """Merge a fresh view of an order (from either source); wake whoever waits on it."""
        with self._lock:
            merged = _fresher(self._latest.get(order.id), order)
            self._latest[order.id] = merged
            self._confirmed[order.id] = self.generation
            if _shows(merged, self._writes.get(order.id)):
                self._writes.pop(order.id, None)
            if merged.is_terminal and order.id not in self._finals:
                self._finals[order.id] = None
                if len(self._finals) > self._finals_kept:
                    self._forget(self._finals.popitem(last=False)[0])
        self.waiters.wake(order.id)
        return merged

    def _forget(self, order_id: str) -> None:
        for views in (self._latest, self._shown, self._confirmed, self._writes):
            views.pop(order_id, None)

    def wrote(self, order_id: str, taken: frozenset[BrokerOrderStatus]) -> None:
        """Alpaca accepted a cancel or replace of the order: until a view shows it (a status
        in `taken`, or final), the stream's view is not the order as it now stands."""
        with self._lock:
            if not _shows(self._latest.get(order_id), taken):
                self._writes[order_id] = taken

    def awaits_echo(self, order_id: str) -> bool:
        """Vouched for by the stream but for a write of ours it has not reported yet."""
        with self._lock:
            return order_id in self._writes and self._vouched(order_id)

    def current(self, order_id: str) -> BrokerOrder | None:
        """The order as it stands if the stream vouches for it, our own writes included;
        else None (a REST read is needed)."""
        with self._lock:
            if order_id in self._writes or not self._vouched(order_id):
                return None
            return self._latest[order_id]

    def show(self, order: BrokerOrder) -> BrokerOrder:
        """Merge, and remember this as what the engine has now seen of the order."""
        merged = self.observe(order)
        with self._lock:
            self._shown[order.id] = merged
        return merged

    def news(self, order_id: str) -> BrokerOrder | None:
        """The latest state if it differs from what the engine last saw, else None."""
        with self._lock:
            latest, shown = self._latest.get(order_id), self._shown.get(order_id)
        if latest is None or (shown is not None and _view(latest) == _view(shown)):
            return None
        return latest

    def latest(self, order_id: str) -> BrokerOrder | None:
        with self._lock:
            return self._latest.get(order_id)

    def needs_read(self, order_id: str) -> bool:
        """True unless the trade stream is up and has vouched for this order since connecting."""
        with self._lock:
            return not self._vouched(order_id)

    def _vouched(self, order_id: str) -> bool:
        if not self.stream_up or order_id not in self._latest:
            return False
        latest = self._latest[order_id]
        return latest.is_terminal or self._confirmed[order_id] == self.generation

    def stream_connected(self) -> None:
        with self._lock:
            self.generation += 1
            self.stream_up = True
        self.waiters.wake()

    def stream_lost(self) -> None:
        with self._lock:
            self.stream_up = False
        self.waiters.wake()


class QuoteBoard:
    """The latest streamed quote per symbol and the quote stream's health."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Quote] = {}
        self.stream_up = False
        self.ever_connected = False
        self.refused = False
        self.waiters = Waiters()

    def observe(self, quote: Quote) -> None:
        with self._lock:
            self._latest[quote.symbol] = quote
        self.waiters.wake(quote.symbol)

    def latest(self, symbol: str) -> Quote | None:
        with self._lock:
            return self._latest.get(symbol) if self.stream_up else None

    def usable_soon(self) -> bool:
        """Worth waiting for a first quote: connected, or still starting (never refused)."""
        return self.stream_up or not (self.refused or self.ever_connected)

    def stream_connected(self) -> None:
        with self._lock:
            self.stream_up = self.ever_connected = True
            self.refused = False
        self.waiters.wake()

    def stream_refused(self) -> None:
        self.refused = True
        self.waiters.wake()

    def stream_lost(self) -> None:
        """Forget quotes from a dead connection: after a reconnect only fresh ones count."""
        with self._lock:
            self.stream_up = False
            self._latest.clear()
        self.waiters.wake()
