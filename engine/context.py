"""What every walk of an order shares, and the one door its events go through.

`OrderJournal` appends one order's events and keeps its `OrderRecord` in step with the
journal: the record is folded forward by each event before it is stored, so what the engine
knows of an order is always exactly what the journal holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from journal import Event, Journal, NewEvent, stamp

from .broker import Broker
from .clock import Clock
from .config import EngineConfig
from .crash import CrashPoints
from .events import Payload
from .order import OrderRecord
from .quotes import QuoteCounters, QuoteService
from .stopping import StopRequests

__all__ = ["Listener", "OrderJournal", "WalkContext"]

# a committed event: the record after it, the event as stored, and its typed payload
Listener = Callable[[OrderRecord, Event, Payload], None]


@dataclass
class WalkContext:
    """What every walk shares: the journal, the broker, quotes, time, config and listeners."""

    journal: Journal
    broker: Broker
    quotes: QuoteService
    clock: Clock
    config: EngineConfig
    crash_points: CrashPoints = field(default_factory=CrashPoints)
    listeners: list[Listener] = field(default_factory=list)
    # each plan's share of `quotes.counters` (what its orders' quotes were, in this process)
    plan_quotes: defaultdict[str | None, QuoteCounters] = field(
        default_factory=lambda: defaultdict(QuoteCounters)
    )
    stops: StopRequests = field(default_factory=StopRequests)


class OrderJournal:
    """Appends one order's events and keeps its record exactly in step with the journal."""

    def __init__(self, context: WalkContext, record: OrderRecord) -> None:
        self.context = context
        self.record = record

    def write(
        self, payload: Payload, *, from_state: str | None = None, to_state: str | None = None
    ) -> OrderRecord:
        record, journal = self.record, self.context.journal
        at = self.context.clock.now()
        kind = payload.KIND
        # Journal.append stores the event at last_seq + 1 or raises, so the record knows
        # its seq before the append and the projection is written with it.
        updated = record.apply(payload, to_state, stamp(at), journal.last_seq + 1)
        event = NewEvent(
            kind=kind,
            order_id=record.order_id,
            plan_id=record.plan_id,
            from_state=from_state or record.state,
            to_state=to_state or updated.state,
            data=payload.to_data(),
        )
        crash_points = self.context.crash_points
        crash_points.hit(f"before_append.{kind}")
        stored = journal.append(event, at=at, projection=updated.projection())
        crash_points.hit(f"after_append.{kind}")
        self.record = updated
        for listener in self.context.listeners:
            listener(self.record, stored, payload)
        return self.record
