"""Named crash points, for proving that a process killed at any instant resumes cleanly.

`WALKBOOK_CRASH_AT=<point>:<nth>` makes the process exit at once with status 137
(as if SIGKILLed) the nth time it reaches <point>. Tests arm points in-process
instead, which raises `SimulatedCrash` (a BaseException nothing in the engine
catches) so a fresh Engine can resume from the same journal file.
"""

from __future__ import annotations

import inspect
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from .broker import Account, Asset, Broker, BrokerOrder, MarketClock, OrderRequest, Quote
from .events import EVENT_KINDS

__all__ = [
    "BROKER_METHODS",
    "CRASH_ENV",
    "CrashPoints",
    "CrashingBroker",
    "SimulatedCrash",
    "all_crash_points",
]

CRASH_ENV = "WALKBOOK_CRASH_AT"
KILLED_EXIT_STATUS = 137
T = TypeVar("T")

# every method of the Broker protocol, read off the protocol itself: one list to keep
BROKER_METHODS = tuple(
    name
    for name, member in vars(Broker).items()
    if not name.startswith("_") and inspect.iscoroutinefunction(member)
)


class SimulatedCrash(BaseException):
    """Raised at an armed crash point in tests: stands for the process dying there."""


def all_crash_points() -> list[str]:
    """Every point: before and after each journal append kind and each broker call."""
    points = [f"{when}_append.{kind}" for kind in EVENT_KINDS for when in ("before", "after")]
    points += [
        f"{when}_broker.{method}" for method in BROKER_METHODS for when in ("before", "after")
    ]
    return points


@dataclass
class CrashPoints:
    """Counts every point reached; crashes at the armed one on its nth hit."""

    armed: str | None = None
    nth: int = 1
    exit_process: bool = False
    hits: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_env(cls) -> CrashPoints:
        spec = os.environ.get(CRASH_ENV)
        if not spec:
            return cls()
        name, _, nth = spec.rpartition(":")
        if not name or not nth.isdigit():
            name, nth = spec, "1"
        return cls(armed=name, nth=int(nth), exit_process=True)

    def hit(self, point: str) -> None:
        self.hits[point] += 1
        if point == self.armed and self.hits[point] == self.nth:
            if self.exit_process:
                os._exit(KILLED_EXIT_STATUS)
            raise SimulatedCrash(f"{point}:{self.nth}")


class CrashingBroker:
    """Wraps a broker so every call passes crash points immediately before and after it."""

    def __init__(self, inner: Broker, points: CrashPoints) -> None:
        self.inner = inner
        self.points = points
        self.name = inner.name

    async def _call(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        self.points.hit(f"before_broker.{method}")
        result = await call()
        self.points.hit(f"after_broker.{method}")
        return result

    async def get_asset(self, symbol: str) -> Asset:
        return await self._call("get_asset", lambda: self.inner.get_asset(symbol))

    async def get_clock(self) -> MarketClock:
        return await self._call("get_clock", self.inner.get_clock)

    async def get_account(self) -> Account:
        return await self._call("get_account", self.inner.get_account)

    async def get_position(self, symbol: str) -> Decimal:
        return await self._call("get_position", lambda: self.inner.get_position(symbol))

    async def get_positions(self) -> dict[str, Decimal]:
        return await self._call("get_positions", self.inner.get_positions)

    async def stream_quote(self, symbol: str, wait_seconds: float) -> Quote | None:
        return await self._call(
            "stream_quote", lambda: self.inner.stream_quote(symbol, wait_seconds)
        )

    async def latest_quote(self, symbol: str) -> Quote | None:
        return await self._call("latest_quote", lambda: self.inner.latest_quote(symbol))

    async def latest_quotes(self, symbols: Collection[str]) -> dict[str, Quote]:
        return await self._call("latest_quotes", lambda: self.inner.latest_quotes(symbols))

    async def submit_order(self, request: OrderRequest) -> BrokerOrder:
        return await self._call("submit_order", lambda: self.inner.submit_order(request))

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        return await self._call(
            "replace_order",
            lambda: self.inner.replace_order(order_id, qty, limit_price, client_order_id),
        )

    async def cancel_order(self, order_id: str) -> None:
        await self._call("cancel_order", lambda: self.inner.cancel_order(order_id))

    async def get_order(self, order_id: str) -> BrokerOrder:
        return await self._call("get_order", lambda: self.inner.get_order(order_id))

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        return await self._call(
            "get_order_by_client_id", lambda: self.inner.get_order_by_client_id(client_order_id)
        )

    async def open_orders(self) -> list[BrokerOrder]:
        return await self._call("open_orders", self.inner.open_orders)

    async def close_position(self, symbol: str, qty: Decimal) -> BrokerOrder:
        return await self._call("close_position", lambda: self.inner.close_position(symbol, qty))

    async def recent_orders(self, symbol: str | None, since: datetime) -> list[BrokerOrder]:
        return await self._call("recent_orders", lambda: self.inner.recent_orders(symbol, since))

    async def wait_for_update(self, order_id: str, timeout_seconds: float) -> BrokerOrder:
        return await self._call(
            "wait_for_update", lambda: self.inner.wait_for_update(order_id, timeout_seconds)
        )
