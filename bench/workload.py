"""The walkbook workloads the bench scripts share: the engine's own event shapes, and plan runs.

Events are built with the engine's own types (`OrderRecord.apply`, `UsableQuote.as_data`,
`make_order_id`), so a benchmark journals exactly what a walk journals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from engine import (
    Engine,
    EngineConfig,
    MarketSpec,
    OrderIntent,
    OrderResult,
    OrderSide,
    RebalancePlan,
    SimBroker,
    VirtualClock,
)
from engine.broker import Quote
from engine.events import EventKind, payload_of
from engine.fsm import OrderState, Trigger, limit_step
from engine.numbers import decimal_text
from engine.order import OrderRecord, make_order_id
from engine.pricing import limit_price
from engine.quotes import UsableQuote
from journal import Journal, NewEvent, Synchronous, stamp

__all__ = [
    "START",
    "Item",
    "Step",
    "TransitionWriter",
    "created",
    "follow",
    "journal_append_rate",
    "quote_data",
    "run_in_plans",
    "sample_orders",
    "steady_rate",
    "step_data",
    "walk_steps",
]

START = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
START_TEXT = stamp(START)
SAMPLE_ORDERS = 50
Item = tuple[NewEvent, dict[str, Any]]


def quote_data(symbol: str, bid: Decimal, ask: Decimal, at: datetime = START) -> dict[str, Any]:
    """A quote exactly as the engine journals it."""
    return UsableQuote(Quote(symbol, bid, ask, at, "stream")).as_data()


def step_data(ratio: str, price: Decimal, quote: dict[str, Any]) -> dict[str, Any]:
    """The data of a move into a limit step (`start_walk` / `next_step`), as the walk fires it."""
    wait = EngineConfig().medium_step_wait_seconds
    return {
        "ratio": ratio,
        "limit_price": decimal_text(price),
        "quote": quote,
        "wait_seconds": wait,
    }


class Step(NamedTuple):
    """One durable step of a walk: the FSM trigger, the state it leads to, and its data."""

    trigger: str
    dest: str
    data: dict[str, Any]


def walk_steps(symbol: str, bid: Decimal, ask: Decimal) -> list[Step]:
    """The seven durable steps of one buy's walk: quote, three limit steps, market, settle,
    validate; every step priced from the same quote."""
    quote = quote_data(symbol, bid, ask)
    limits = [
        step_data(ratio, limit_price(OrderSide.BUY, bid, ask, Decimal(ratio)), quote)
        for ratio in ("0.75", "0.85", "0.95")
    ]
    return [
        Step(Trigger.QUOTE, OrderState.QUOTED, {"quote": quote}),
        Step(Trigger.START_WALK, limit_step(1), limits[0]),
        Step(Trigger.NEXT_STEP, limit_step(2), limits[1]),
        Step(Trigger.NEXT_STEP, limit_step(3), limits[2]),
        Step(Trigger.ESCALATE, OrderState.MARKET, {"quote": quote}),
        Step(Trigger.SETTLE, OrderState.SETTLING, {}),
        Step(Trigger.VALIDATE, OrderState.VALIDATED, {"position": "100"}),
    ]


def created(
    plan_id: str, index: int, intent: OrderIntent, config: EngineConfig, seq: int
) -> tuple[NewEvent, OrderRecord]:
    """An order's `created` event and its record once stored at `seq`, as the engine builds
    them for a plan."""
    event = NewEvent(
        kind=EventKind.CREATED,
        order_id=make_order_id(plan_id, index, intent),
        plan_id=plan_id,
        to_state=OrderState.PENDING,
        data={"intent": intent.model_dump(mode="json"), "config": config.model_dump(mode="json")},
    )
    return event, OrderRecord.created(event, START_TEXT, seq)


def follow(
    record: OrderRecord, kind: str, data: dict[str, Any], to_state: str | None = None
) -> tuple[NewEvent, OrderRecord]:
    """An order's next event and its record once that event is stored right after the
    record's last one, as the walk's journal writer builds them."""
    updated = record.apply(payload_of(kind, data), to_state, START_TEXT, record.last_seq + 1)
    event = NewEvent(
        kind=kind,
        order_id=record.order_id,
        plan_id=record.plan_id,
        from_state=record.state,
        to_state=to_state or updated.state,
        data=data,
    )
    return event, updated


def sample_orders() -> tuple[list[Item], list[Item]]:
    """`created` items for SAMPLE_ORDERS orders, and for each a LIMIT_STEP_1 -> 2 transition."""
    config = EngineConfig()
    births: list[Item] = []
    steps: list[Item] = []
    bid, ask = Decimal("187.41"), Decimal("187.47")
    for index in range(SAMPLE_ORDERS):
        intent = OrderIntent(symbol=f"S{index:04d}", side=OrderSide.BUY, quantity=Decimal(100))
        event, record = created("bench-journal", index, intent, config, index + 1)
        births.append((event, record.projection()))
        for step in walk_steps(intent.symbol, bid, ask)[:3]:
            data = {"trigger": step.trigger, **step.data}
            event, record = follow(record, EventKind.TRANSITION, data, step.dest)
        steps.append((event, record.projection()))
    return births, steps


class TransitionWriter:
    """A fresh journal holding the sample orders; each `commit` appends their next transitions.

    One event and its order's projection per commit through `Journal.append` (the walk's
    path), or `batch` of them per commit through `Journal.append_many` (group commit).
    """

    def __init__(self, path: Path, *, synchronous: Synchronous = "FULL", batch: int = 1) -> None:
        births, self.steps = sample_orders()
        self.batch = batch
        self.journal = Journal.open(path, synchronous=synchronous)
        self.journal.append_many(births, at=START)

    def commit(self, offset: int) -> None:
        steps = self.steps
        if self.batch == 1:
            event, projection = steps[offset % len(steps)]
            self.journal.append(event, at=START, projection=projection)
        else:
            chunk = [steps[(offset + i) % len(steps)] for i in range(self.batch)]
            self.journal.append_many(chunk, at=START)

    def __enter__(self) -> TransitionWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.journal.close()


def journal_append_rate(
    path: Path, count: int, *, synchronous: Synchronous = "FULL", batch: int = 1
) -> float:
    """Durable LIMIT_STEP transitions per second into a fresh journal at `path`."""
    with TransitionWriter(path, synchronous=synchronous, batch=batch) as writer:
        return steady_rate(count, batch, writer.commit)


def steady_rate(count: int, batch: int, commit: Callable[[int], None]) -> float:
    """Items per second of `commit(offset)` calls of `batch` items each.

    As many untimed items come first, so a WAL has grown to its steady size and is being
    reused, as in a long-lived file: a fresh WAL's growth makes early commits dearer.
    """
    for offset in range(0, count, batch):
        commit(offset)
    start = time.perf_counter()
    for offset in range(0, count, batch):
        commit(offset)
    return count / (time.perf_counter() - start)


def run_in_plans(
    intents: Sequence[OrderIntent],
    spec: MarketSpec,
    journal: Journal,
    *,
    prefix: str,
    plan_size: int,
    config: EngineConfig | None = None,
    broker_type: type[SimBroker] = SimBroker,
) -> list[OrderResult]:
    """Execute `intents` as consecutive plans of `plan_size` orders on one virtual clock.

    Each plan gets a fresh simulator: the simulator scans every order it ever held on each
    one-second tick, so one long-lived simulator would make a big run quadratic in the
    simulator, which is not what these benchmarks measure. The engines share `journal`
    and are not closed, since closing an engine closes its journal.
    """
    clock = VirtualClock(START)
    results: list[OrderResult] = []
    for number, offset in enumerate(range(0, len(intents), plan_size)):
        engine = Engine(broker_type(spec, clock), journal, config=config, clock=clock)
        plan = RebalancePlan(
            plan_id=f"{prefix}-{number:04d}", orders=tuple(intents[offset : offset + plan_size])
        )
        results += engine.execute_plan_sync(plan).orders
    return results
