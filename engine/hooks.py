"""Hooks for the orchestration layer: typed notices, delivered only after the journal commit.

A notice is never sent for a fact the journal does not hold, and a hook that raises is
logged and ignored: the walk and its journal go on as if the hook had returned.
Delivery is at most once per process; after a crash the journal is the record.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from journal import Event

from .events import Failed, Fill, Payload, StepEntered, Transition
from .fsm import OrderState
from .order import OrderRecord
from .results import PlanResult

__all__ = [
    "Hooks",
    "Notice",
    "NoticeT",
    "OrderFilled",
    "OrderNotice",
    "OrderTransitioned",
    "PlanCompleted",
]


@dataclass(frozen=True)
class OrderNotice:
    """Which order, and where in the journal the fact behind the notice is (`seq`)."""

    order_id: str
    plan_id: str | None
    symbol: str
    correlation_id: str | None
    at: str
    seq: int


@dataclass(frozen=True)
class OrderTransitioned(OrderNotice):
    """An order moved between FSM states; `reason` and its one-line `detail` are set when it
    FAILED."""

    source: str
    dest: str
    reason: str | None
    limit_price: Decimal | None
    detail: str | None = None


@dataclass(frozen=True)
class OrderFilled(OrderNotice):
    """A broker fill was counted for an order; `filled_qty` is the order's running total."""

    side: str
    qty: Decimal
    price: Decimal
    filled_qty: Decimal


@dataclass(frozen=True)
class PlanCompleted:
    """Every order of a plan is terminal; `result` is the plan's one truthful answer."""

    result: PlanResult


Notice = OrderTransitioned | OrderFilled | PlanCompleted
NoticeT = TypeVar("NoticeT", OrderTransitioned, OrderFilled, PlanCompleted)


@dataclass
class Hooks:
    """Subscriptions by notice type; `deliver` calls each subscriber and contains its errors."""

    _subscribers: dict[type[Any], list[Callable[[Any], None]]] = field(default_factory=dict)
    _log: Any = field(default_factory=lambda: structlog.get_logger("walkbook.hooks"))

    def subscribe(self, notice_type: type[NoticeT], callback: Callable[[NoticeT], None]) -> None:
        """Refuses a coroutine function: hooks run synchronously right after the commit, and
        a coroutine would be created, never awaited, and its work silently lost."""
        call = callback if inspect.isroutine(callback) else type(callback).__call__
        if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(callback):
            raise TypeError(
                f"{getattr(callback, '__qualname__', callback)!r} is an async function: hooks "
                "are called synchronously after each commit; subscribe a plain function "
                "(it may hand the notice to your loop, e.g. with loop.create_task)"
            )
        self._subscribers.setdefault(notice_type, []).append(callback)

    def deliver(self, notice: Notice) -> None:
        for callback in self._subscribers.get(type(notice), ()):
            try:
                callback(notice)
            except Exception as exc:
                self._log.error(
                    "hook.failed",
                    notice=type(notice).__name__,
                    callback=getattr(callback, "__qualname__", repr(callback)),
                    error=f"{type(exc).__name__}: {exc}",
                )

    def after_commit(self, record: OrderRecord, event: Event, payload: Payload) -> None:
        """The walk's listener: turn a committed order event into the notice it stands for."""
        where = (
            record.order_id,
            record.plan_id,
            record.intent.symbol,
            record.intent.correlation_id,
            event.at,
            event.seq,
        )
        if isinstance(payload, Transition):
            self.deliver(
                OrderTransitioned(
                    *where,
                    source=str(event.from_state),
                    dest=str(event.to_state),
                    reason=payload.reason if isinstance(payload, Failed) else None,
                    limit_price=payload.limit_price if isinstance(payload, StepEntered) else None,
                    detail=record.failure_detail if event.to_state == OrderState.FAILED else None,
                )
            )
        elif isinstance(payload, Fill):
            self.deliver(
                OrderFilled(
                    *where,
                    side=record.intent.side.value,
                    qty=payload.qty,
                    price=payload.price,
                    filled_qty=record.filled_qty,
                )
            )
