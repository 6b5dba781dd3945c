"""The Engine: validates intents, journals each new order, walks them, and resumes after a crash."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog

from journal import Journal, NewEvent, stamp

from .broker import Broker
from .clock import Clock, RealClock
from .config import EngineConfig
from .crash import CrashingBroker, CrashPoints
from .errors import BrokerRejected, InvalidIntent, InvalidPlan, UnknownSymbol
from .fsm import TERMINAL_STATES, OrderState
from .intents import CloseType, OrderIntent, OrderSide, RebalancePlan
from .numbers import ZERO, decimal_text
from .order import EventKind, OrderRecord, fold_orders, make_order_id
from .quotes import QuoteService
from .results import OrderResult, PlanResult
from .retry import read_with_retry
from .walk import Listener, OrderWalk, WalkContext

__all__ = ["Engine", "Listener", "ResumeReport", "ResumedOrder"]

DEFAULT_CONCURRENCY = 8
T = TypeVar("T")


@dataclass(frozen=True)
class ResumedOrder:
    """What resume found for one order and what it did about it."""

    order_id: str
    symbol: str
    found_state: str
    found: str
    actions: str
    result: OrderResult


@dataclass(frozen=True)
class ResumeReport:
    orders: tuple[ResumedOrder, ...]

    @property
    def nothing_in_flight(self) -> bool:
        return not self.orders

    def lines(self) -> list[str]:
        """One line per order, for people."""
        if self.nothing_in_flight:
            return ["nothing in flight: every order in the journal is already terminal"]
        return [
            f"{o.symbol} {o.order_id}: found {o.found_state} ({o.found}); "
            f"did {o.actions}; now {o.result.state}"
            + (f" ({o.result.reason})" if o.result.reason else "")
            + f", filled {o.result.filled_qty}/{o.result.quantity}"
            for o in self.orders
        ]


class Engine:
    """Executes intents and plans against one broker, journaling into one journal file.

    The engine owns the journal lock while it is open; close it (or use it as a
    context manager) so another process can resume or run.
    """

    def __init__(
        self,
        broker: Broker,
        journal: Journal | str | Path,
        config: EngineConfig | None = None,
        clock: Clock | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        crash_points: CrashPoints | None = None,
    ) -> None:
        self.crash_points = crash_points or CrashPoints.from_env()
        self.broker: Broker = CrashingBroker(broker, self.crash_points)
        self.journal = journal if isinstance(journal, Journal) else Journal.open(journal)
        self.config = config or EngineConfig()
        self.clock = clock or RealClock()
        self.concurrency = concurrency
        self.log = structlog.get_logger("walkbook")
        self.quotes = QuoteService(
            self.broker,
            freshness_seconds=self.config.quote_freshness_seconds,
            stream_wait_seconds=self.config.stream_quote_wait_seconds,
        )
        self.context = WalkContext(
            self.journal, self.broker, self.quotes, self.clock, self.config, self.crash_points
        )

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.journal.close()

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(record, kind, data)` after each of an order's events is committed."""
        self.context.listeners.append(listener)

    # -- public API -----------------------------------------------------------------

    async def execute(self, intent: OrderIntent, *, plan_id: str | None = None) -> OrderResult:
        """Execute one intent as a one-order plan."""
        plan = RebalancePlan(
            plan_id=plan_id or intent.correlation_id or f"adhoc-{uuid.uuid4().hex[:12]}",
            orders=(intent,),
        )
        return (await self.execute_plan(plan)).orders[0]

    async def execute_plan(self, plan: RebalancePlan) -> PlanResult:
        """Validate every intent first (nothing is journaled if one is bad), then walk them all."""
        await self.preflight(plan)
        records = self._create_orders(plan)
        done = {r.order_id: r for r in await self._walk_sells_then_buys(records)}
        results = [OrderResult.from_record(done[r.order_id]) for r in records]
        return PlanResult.from_results(plan.plan_id, results, self.quotes.counters.as_dict())

    def execute_plan_sync(self, plan: RebalancePlan) -> PlanResult:
        """For callers without an event loop: run the plan on the engine's clock."""
        return self.clock.run(self.execute_plan(plan))

    def execute_sync(self, intent: OrderIntent, *, plan_id: str | None = None) -> OrderResult:
        return self.clock.run(self.execute(intent, plan_id=plan_id))

    async def resume(self) -> ResumeReport:
        """Drive every non-terminal order in the journal to VALIDATED or FAILED.

        Each order is rebuilt from its events and reconciled with the broker first
        (unanswered intents looked up by client_order_id, live orders re-read, fills
        counted once); then it continues from its state with the time its step had left.
        """
        in_flight = [
            row["order_id"] for row in self.journal.orders() if row["state"] not in TERMINAL_STATES
        ]
        records = [self._load(order_id) for order_id in in_flight]
        seq_before = self.journal.last_seq
        done = {r.order_id: r for r in await self._walk_sells_then_buys(records)}
        actions: dict[str, Counter[str]] = {r.order_id: Counter() for r in records}
        for event in self.journal.events(after_seq=seq_before):
            if event.order_id in actions:
                actions[event.order_id][event.kind] += 1
        return ResumeReport(
            tuple(
                ResumedOrder(
                    order_id=r.order_id,
                    symbol=r.intent.symbol,
                    found_state=r.state,
                    found=_describe_found(r),
                    actions=", ".join(f"{k} x{n}" for k, n in actions[r.order_id].items())
                    or "nothing",
                    result=OrderResult.from_record(done[r.order_id]),
                )
                for r in records
            )
        )

    def resume_sync(self) -> ResumeReport:
        return self.clock.run(self.resume())

    async def preflight(self, plan: RebalancePlan) -> None:
        """Refuse the whole plan, naming the order, if any intent cannot be sent as written."""
        for index, intent in enumerate(plan.orders):
            where = f"order {index} ({intent.symbol} {intent.side.value} {intent.quantity})"
            symbol = intent.symbol
            try:
                asset = await self._read(partial(self.broker.get_asset, symbol))
            except UnknownSymbol:
                raise InvalidIntent(f"{where}: unknown symbol", symbol=symbol) from None
            except BrokerRejected as exc:
                raise InvalidIntent(f"{where}: cannot check the asset: {exc.message}") from None
            if not asset.tradable:
                raise InvalidIntent(f"{where}: asset is not tradable", symbol=intent.symbol)
            if intent.is_fractional and not asset.fractionable:
                raise InvalidIntent(
                    f"{where}: asset is not fractionable; use a whole-share quantity",
                    symbol=intent.symbol,
                )
            if intent.side is OrderSide.SELL and intent.close_type is not CloseType.FULL:
                position = await self._read(partial(self.broker.get_position, symbol))
                if intent.quantity > max(position, ZERO):
                    raise InvalidIntent(
                        f"{where}: sell of {intent.quantity} exceeds the position of {position}",
                        symbol=intent.symbol,
                    )

    # -- internals ------------------------------------------------------------------

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        return await read_with_retry(call, self.config, self.clock, self.log)

    def _load(self, order_id: str) -> OrderRecord:
        return fold_orders(self.journal.events(order_id=order_id))[order_id]

    def _create_orders(self, plan: RebalancePlan) -> list[OrderRecord]:
        order_ids = [make_order_id(plan.plan_id, i, intent) for i, intent in enumerate(plan.orders)]
        if any(self.journal.order(order_id) is not None for order_id in order_ids):
            raise InvalidPlan(
                f"plan {plan.plan_id} is already in the journal; resume it or use a new plan_id",
                plan_id=plan.plan_id,
            )
        config = self.config.model_dump(mode="json")
        at = self.clock.now()
        items: list[tuple[NewEvent, dict[str, Any] | None]] = []
        records = []
        for order_id, intent in zip(order_ids, plan.orders, strict=True):
            event = NewEvent(
                kind=EventKind.CREATED,
                order_id=order_id,
                plan_id=plan.plan_id,
                to_state=OrderState.PENDING,
                data={"intent": intent.model_dump(mode="json"), "config": config},
            )
            record = OrderRecord.created(event, stamp(at))
            records.append(record)
            items.append((event, record.projection()))
        self.crash_points.hit(f"before_append.{EventKind.CREATED}")
        stored = self.journal.append_many(items, at=at)
        self.crash_points.hit(f"after_append.{EventKind.CREATED}")
        return [replace(r, last_seq=e.seq) for r, e in zip(records, stored, strict=True)]

    async def _walk_sells_then_buys(self, records: Sequence[OrderRecord]) -> list[OrderRecord]:
        sells = [r for r in records if r.intent.side is OrderSide.SELL]
        buys = [r for r in records if r.intent.side is OrderSide.BUY]
        return await self._walk_all(sells) + await self._walk_all(buys)

    async def _walk_all(self, records: Sequence[OrderRecord]) -> list[OrderRecord]:
        gate = asyncio.Semaphore(self.concurrency)

        async def walk(record: OrderRecord) -> OrderRecord:
            async with gate:
                return await OrderWalk(self.context, record).run()

        return list(await asyncio.gather(*(walk(r) for r in records)))


def _describe_found(record: OrderRecord) -> str:
    parts = [f"filled {decimal_text(record.filled_qty)}/{decimal_text(record.quantity)}"]
    if record.live_broker_order_id:
        parts.append(f"live {record.live_client_order_id}")
    if record.pending_intent:
        parts.append(
            f"unanswered {record.pending_intent['kind']} {record.pending_intent['client_order_id']}"
        )
    if record.pending_cancel:
        parts.append(f"unanswered cancel of {record.pending_cancel}")
    return ", ".join(parts)
