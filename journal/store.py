"""The durable journal: append-only events with a hash chain and an `orders` projection.

Every append is one database transaction holding the event row and, when given,
the new projection row of its order, so the projection can never disagree with
the events it was built from. The database is a recorder's (journal/recorder.py):
a SQLite file by default, or PostgreSQL.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from .chain import (
    GENESIS_HASH,
    ChainBreak,
    body_json,
    canonical_json,
    decode_json,
    first_chain_break,
    hash_body,
)
from .errors import JournalUnavailable
from .location import DEFAULT_LEASE_SECONDS, is_database_url
from .recorder import EVENT_FIELDS, OrderWrite, Recorder
from .sqlite import PROJECTED_COLUMNS, SqliteRecorder, Synchronous, readonly_uri

if TYPE_CHECKING:
    from .follow import FollowOptions

__all__ = [
    "Event",
    "HistoryRow",
    "Journal",
    "NewEvent",
    "Synchronous",
    "readonly_uri",
    "stamp",
]

# An order event as a fold reads it (`Journal.order_history`):
# seq, order_id, plan_id, at, kind, to_state and the decoded data.
HistoryRow = tuple[int, str, str | None, str, str, str | None, dict[str, Any]]

HEARTBEAT_INTERVAL_SECONDS = 5.0
# How often a writer waiting for a PostgreSQL journal's lease tries to take it.
LEASE_POLL_SECONDS = 0.5
# Orders whose last order_seq a writer keeps in memory, the most recently appended to last;
# an older order's is read from UNIQUE(order_id, order_seq) again, so a writer that runs
# for months does not keep one entry per order it ever wrote.
ORDER_SEQS_KEPT = 10_000


def stamp(at: datetime) -> str:
    """The journal's text form of a time: ISO 8601 in UTC."""
    return (at if at.tzinfo is UTC else at.astimezone(UTC)).isoformat()


@dataclass(frozen=True)
class NewEvent:
    """A fact to append; the journal assigns seq, order_seq, at and the hashes.

    `data` is a JSON object: str keys, JSON values (Decimals are written as strings).
    """

    kind: str
    order_id: str | None = None
    plan_id: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A journaled fact exactly as stored."""

    seq: int
    order_id: str | None
    order_seq: int | None
    plan_id: str | None
    at: str
    kind: str
    from_state: str | None
    to_state: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        return cls(
            seq=row["seq"],
            order_id=row["order_id"],
            order_seq=row["order_seq"],
            plan_id=row["plan_id"],
            at=row["at"],
            kind=row["kind"],
            from_state=row["from_state"],
            to_state=row["to_state"],
            data=decode_json(row["data"]),
            prev_hash=row["prev_hash"],
            hash=row["hash"],
        )

    @classmethod
    def from_values(cls, row: Sequence[Any]) -> Event:
        """From a row selected as `seq, order_id, ..., prev_hash, hash` (the stored order)."""
        return cls._filled(row, decode_json(row[8]))

    @classmethod
    def _filled(cls, row: Sequence[Any], data: dict[str, Any]) -> Event:
        """The event of a stored row and its decoded data, its fields set as one dict
        rather than through the frozen `__init__`: every append and every row a resume
        reads builds one (docs/benchmarks.md, "Speed tricks")."""
        seq, order_id, order_seq, plan_id, at, kind, from_state, to_state, _, prev, hash_ = row
        event = object.__new__(cls)
        object.__setattr__(
            event,
            "__dict__",
            {
                "seq": seq,
                "order_id": order_id,
                "order_seq": order_seq,
                "plan_id": plan_id,
                "at": at,
                "kind": kind,
                "from_state": from_state,
                "to_state": to_state,
                "data": data,
                "prev_hash": prev,
                "hash": hash_,
            },
        )
        return event

    @property
    def at_datetime(self) -> datetime:
        return datetime.fromisoformat(self.at)


class Journal:
    """A walkbook journal. Open with `Journal.open` (writer) or `Journal.open_readonly`.

    Its rows live in a recorder (journal/recorder.py): a SQLite file, or a PostgreSQL
    database named by a `postgresql://` URL. `conn` is a SQLite journal's plain sqlite3
    connection, in autocommit mode: writes are explicit BEGIN ... COMMIT transactions.
    """

    def __init__(self, recorder: Recorder, *, owned: bool = False) -> None:
        self.recorder = recorder
        self.path = recorder.path
        self.location = recorder.location
        self._owned = owned
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._order_seqs: OrderedDict[str, int] = OrderedDict()
        self.order_seqs_kept = ORDER_SEQS_KEPT
        self._last_heartbeat = 0.0
        # called after each commit with its seconds and the events it stored (engine/metrics.py
        # times commits with it); an observer must not raise: the events are already stored
        self.commit_observers: list[Callable[[float, list[Event]], None]] = []
        tail = recorder.tail()
        if tail is not None:
            self._last_seq, self._last_hash = tail

    @property
    def conn(self) -> sqlite3.Connection:
        """The SQLite connection of a journal file (benches and tests read it raw)."""
        if not isinstance(self.recorder, SqliteRecorder):
            raise JournalUnavailable(
                f"journal {self.location} is not a SQLite file", location=self.location
            )
        return self.recorder.conn

    @classmethod
    def open(
        cls,
        location: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        lock: bool = True,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        wait_for_lease: bool = False,
        poll_seconds: float = LEASE_POLL_SECONDS,
    ) -> Journal:
        """Open (creating if needed) a journal for writing, owned by this process: a file
        (its lock), or the PostgreSQL database a `postgresql://` URL names (its fenced lease,
        `lease_seconds` long, renewed while the journal is open; journal/lease.py).

        While another process's lease is live, JournalLocked; with `wait_for_lease`, a try
        every `poll_seconds` until it runs out instead (a standby). A journal written by an
        older walkbook is migrated to the current schema first.
        """
        if not (math.isfinite(lease_seconds) and lease_seconds > 0 and poll_seconds > 0):
            raise ValueError("lease_seconds and poll_seconds must be positive")
        recorder: Recorder
        if is_database_url(location):
            from .postgres import PostgresRecorder  # here: psycopg only for a database

            wait = poll_seconds if wait_for_lease else None
            recorder = PostgresRecorder.open(
                str(location), lock=lock, lease_seconds=lease_seconds, wait_for_lease=wait
            )
        elif wait_for_lease:
            raise ValueError("wait_for_lease needs a PostgreSQL journal (a file has no lease)")
        else:
            recorder = SqliteRecorder.open(Path(location), synchronous=synchronous, lock=lock)
        try:
            journal = cls(recorder, owned=lock)
            if lock:
                journal._record_owner()
            return journal
        except BaseException:
            recorder.close()
            raise

    @classmethod
    def open_readonly(cls, location: str | Path) -> Journal:
        """Open an existing journal to read, without the lock: safe while another process writes.

        A read-only journal (file or directory) is read without writing anything beside it
        (`readonly_uri`). An older schema is read as it is (a reader never migrates); every
        query here reads both.
        """
        if is_database_url(location):
            from .postgres import PostgresRecorder  # here: psycopg only for a database

            return cls(PostgresRecorder.open_readonly(str(location)))
        return cls(SqliteRecorder.open_readonly(Path(location)))

    def close(self) -> None:
        self.recorder.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------

    def _record_owner(self) -> None:
        self.recorder.record_owner(os.getpid(), socket.gethostname(), datetime.now(UTC).isoformat())
        self._last_heartbeat = time.monotonic()

    def _next_order_seq(self, order_id: str | None) -> int | None:
        if order_id is None:
            return None
        last = self._order_seqs.get(order_id)
        if last is None:
            last = self.recorder.last_order_seq(order_id)
        return last + 1

    def append(
        self,
        event: NewEvent,
        *,
        at: datetime,
        projection: Mapping[str, Any] | None = None,
    ) -> Event:
        """Durably append one event (and its order's projection) in one transaction.

        The event is stored as seq `last_seq + 1` or not at all: a journal that moved
        on under this writer refuses the append (`JournalWriteConflict`).
        """
        return self.append_many([(event, projection)], at=at)[0]

    def append_many(
        self,
        items: Sequence[tuple[NewEvent, Mapping[str, Any] | None]],
        *,
        at: datetime,
    ) -> list[Event]:
        """Append several events in one commit (group commit); all or none are stored.

        Each projection is its order's whole `orders` row; its `last_seq` is the seq
        its event is stored at. The row is inserted for a new order, and for a known
        one only the columns an event can change are rewritten.
        """
        at_text = stamp(at)
        seq, prev_hash = self._last_seq, self._last_hash
        order_seqs: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        order_rows: list[OrderWrite] = []
        stored: list[Event] = []
        for event, projection in items:
            seq += 1
            order_id, order_seq = event.order_id, None
            if order_id is not None:
                order_seq = order_seqs.get(order_id) or self._next_order_seq(order_id)
                assert order_seq is not None
                order_seqs[order_id] = order_seq + 1
            data = dict(event.data)
            values = (
                seq, order_id, order_seq, event.plan_id, at_text, event.kind,
                event.from_state, event.to_state, canonical_json(data), prev_hash,
            )  # fmt: skip
            row = (*values, hash_body(prev_hash, body_json(*values)))
            rows.append(row)
            stored.append(Event._filled(row, data))
            prev_hash = row[-1]
            if projection is not None:
                row_values = [*map(projection.__getitem__, PROJECTED_COLUMNS), seq]
                order_rows.append((order_seq == 1, row_values))
        started = time.perf_counter()
        self.recorder.insert(rows, order_rows, self._heartbeat_due())
        seconds = time.perf_counter() - started
        self._last_seq, self._last_hash = seq, prev_hash
        known = self._order_seqs
        for order_id, next_seq in order_seqs.items():
            known[order_id] = next_seq - 1
            known.move_to_end(order_id)
        while len(known) > self.order_seqs_kept:
            known.popitem(last=False)
        for observer in self.commit_observers:
            observer(seconds, stored)
        return stored

    def _heartbeat_due(self) -> str | None:
        """The owner's new heartbeat time when one is due with this commit, else None."""
        now = time.monotonic()
        if self._owned and now - self._last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            self._last_heartbeat = now
            return datetime.now(UTC).isoformat()
        return None

    # -- reading -----------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def last_at(self) -> datetime | None:
        """Time of the newest event, or None for an empty journal."""
        at = self.recorder.last_at()
        return None if at is None else datetime.fromisoformat(at)

    def events(
        self,
        *,
        order_id: str | None = None,
        plan_id: str | None = None,
        after_seq: int = 0,
    ) -> Iterator[Event]:
        """Stream events in seq order, optionally for one order or one plan.

        By plan this scans the journal; `order_history` finds a plan's orders' events
        through the `orders` table instead.
        """
        rows = self.recorder.event_rows(after_seq=after_seq, order_id=order_id, plan_id=plan_id)
        for row in rows:
            yield Event.from_values(row)

    def follow(self, from_seq: int = 0, **options: Unpack[FollowOptions]) -> Iterator[Event]:
        """Every event after `from_seq`, in seq order, as it commits (journal/follow.py)."""
        from .follow import follow  # here: journal.follow builds on this module

        return follow(self, from_seq, **options)

    def order_history(
        self, *, plan_id: str | None = None, unless_state: Collection[str] = ()
    ) -> Iterator[HistoryRow]:
        """What folding each order whose `orders` row matches needs of its events, in seq order.

        One range scan over the stretch of the journal those orders span, from the oldest
        one's `created` event to the newest `last_seq` among their rows, keeping their
        events; only the columns a fold reads and no `Event` per row (docs/benchmarks.md,
        "Speed tricks"). Orders interleave, each order's events in its own order: what a
        fold per order needs.
        """
        for seq, order_id, plan, at, kind, to_state, data in self.recorder.history_rows(
            plan_id, unless_state
        ):
            yield seq, order_id, plan, at, kind, to_state, decode_json(data)

    def first_event_of_plan(self, plan_id: str) -> Event | None:
        """The first event of the plan's first order (its `created`), or None for an unknown plan.

        Every order of a plan is created in one commit, so that first event carries
        what the plan was delivered with.
        """
        row = self.recorder.first_event_of_plan(plan_id)
        return None if row is None else Event.from_values(row)

    def orders(
        self, *, plan_id: str | None = None, unless_state: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """The `orders` projection, oldest first; of one plan, or without some states."""
        return self.recorder.orders(plan_id, unless_state)

    def order(self, order_id: str) -> dict[str, Any] | None:
        return self.recorder.order(order_id)

    def owner(self) -> dict[str, Any] | None:
        return self.recorder.owner()

    def holder(self) -> str | None:
        """Who owns the journal now ("pid N on host"), or None when no live process does."""
        return self.recorder.holder()

    def verify_chain(self) -> ChainBreak | None:
        """The first break in seq continuity or the hash chain, or None when intact."""
        rows = self.recorder.event_rows()
        return first_chain_break(dict(zip(EVENT_FIELDS, row, strict=True)) for row in rows)
