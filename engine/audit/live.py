"""A running journal as a second, read-only process sees it: every order of the plans in
flight, folded with the engine's own fold and kept current by the events committed since.

The reader never takes the writer's lock and never writes: it opens the journal
`Journal.open_readonly` (a file `mode=ro`, a database in read-only transactions, so each
query sees the writer's latest commit) and follows new events by `seq`. Resume's fold
(`fold_history`) rebuilds the orders at the start, inside one read transaction with the
seq it ends at; each later event goes through `OrderRecord.apply`, the step the live
engine folds with, so no second copy of the state logic exists.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from journal import Event, Journal, JournalCorrupt

from ..events import EventKind
from ..fsm import TERMINAL_STATES, OrderState
from ..order import OrderRecord, fold_history

__all__ = ["LiveJournal", "PlanProgress"]


@dataclass(frozen=True)
class PlanProgress:
    """How far one plan's orders are: counts by outcome, and when it started and ended."""

    plan_id: str | None
    total: int
    validated: int
    failed: int
    started_at: datetime
    # when its last order finished; None while any is in flight
    ended_at: datetime | None

    @property
    def done(self) -> int:
        return self.validated + self.failed

    def elapsed_seconds(self, now: datetime) -> float:
        return ((self.ended_at or now) - self.started_at).total_seconds()


def _shown(record: OrderRecord) -> tuple[Any, ...]:
    """What a view shows of an order: an event that changes none of it is no change."""
    return (
        record.state,
        record.filled_qty,
        record.quantity,
        record.step_limit_price,
        record.live_broker_order_id,
    )


def _stamp(at: str) -> datetime:
    return datetime.fromisoformat(at)


class LiveJournal:
    """The orders a running journal is walking, kept current with `poll`.

    Watched: every order of each plan with an order in flight when it was opened (its
    finished orders too, for the plan's counts), every in-flight order without a plan, and
    every order created since. An event of any other order (one that was final before)
    changes nothing watched and is passed over.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.records: dict[str, OrderRecord] = {}
        self.last_seq = 0
        self.latest_at: datetime | None = None
        with self._reading():
            journal.recorder.begin_snapshot()
            try:
                self._catch_up()
            finally:
                journal.recorder.end_snapshot()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """SQLite's complaint about the file as the journal's typed error (the CLI's exit 2)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            where = self.journal.location
            raise JournalCorrupt(f"{where} is damaged or truncated: {exc}", path=where) from exc

    def _catch_up(self) -> None:
        """Fold the watched orders and note the seq they stand at: one read transaction, so
        no event is folded twice or missed between the fold and the first `poll`."""
        journal = self.journal
        tail, latest_at = journal.recorder.tail(), journal.last_at()
        if tail is not None:
            self.last_seq, self.latest_at = tail[0], latest_at
        in_flight = journal.orders(unless_state=TERMINAL_STATES)
        plans = dict.fromkeys(r["plan_id"] for r in in_flight if r["plan_id"] is not None)
        loose = {r["order_id"] for r in in_flight if r["plan_id"] is None}
        histories = [journal.order_history(plan_id=plan) for plan in plans]
        if loose:
            unfinished = journal.order_history(unless_state=TERMINAL_STATES)
            histories.append(h for h in unfinished if h[1] in loose)
        self.records = fold_history(chain.from_iterable(histories))

    def poll(self) -> list[OrderRecord]:
        """Fold the events committed since the last look; each watched order as it stood
        after every event that changed what a view shows of it, in seq order."""
        with self._reading():
            events = list(self.journal.events(after_seq=self.last_seq))
        changed = []
        for event in events:
            self.last_seq = event.seq
            at = _stamp(event.at)
            self.latest_at = at if self.latest_at is None else max(self.latest_at, at)
            before = self.records.get(event.order_id or "")
            after = self._fold(event, before)
            if after is not None and (before is None or _shown(before) != _shown(after)):
                changed.append(after)
        return changed

    def _fold(self, event: Event, before: OrderRecord | None) -> OrderRecord | None:
        if event.order_id is None:
            return None
        if event.kind == EventKind.CREATED:
            record = OrderRecord.created(event, event.at, event.seq)
        elif before is None:
            return None
        else:
            record = before.apply_event(event)
        self.records[event.order_id] = record
        return record

    def in_flight(self) -> list[OrderRecord]:
        """The watched orders not yet final, in the order they were created."""
        return [r for r in self.records.values() if not r.is_terminal]

    def plans(self) -> list[PlanProgress]:
        """Each watched plan's progress, in the order its orders were created."""
        by_plan: dict[str | None, list[OrderRecord]] = {}
        for record in self.records.values():
            by_plan.setdefault(record.plan_id, []).append(record)
        return [_progress(plan_id, records) for plan_id, records in by_plan.items()]

    def now(self) -> datetime:
        """The time ages are measured to: the clock, or the newest event's stamp when that is
        later (a simulated run stamps its journal in virtual time, ahead of the clock)."""
        now = datetime.now(UTC)
        return now if self.latest_at is None else max(now, self.latest_at)


def _progress(plan_id: str | None, records: list[OrderRecord]) -> PlanProgress:
    states = [r.state for r in records]
    finished = all(r.is_terminal for r in records)
    return PlanProgress(
        plan_id=plan_id,
        total=len(records),
        validated=states.count(OrderState.VALIDATED),
        failed=states.count(OrderState.FAILED),
        started_at=min(_stamp(r.created_at) for r in records),
        ended_at=max(_stamp(r.updated_at) for r in records) if finished else None,
    )
