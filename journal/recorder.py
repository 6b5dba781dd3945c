"""The seam between the journal and its database: what `Journal` asks of a store.

`Journal` owns what makes a journal a journal (seqs, the hash chain, canonical JSON,
the order_seq memory, commit observers); a recorder only stores and reads rows. Two
recorders implement it: `SqliteRecorder` (journal/sqlite.py, the embedded default) and
`PostgresRecorder` (journal/postgres.py). tests/test_journal_contract.py holds both to
the same contract, so a journal behaves the same whichever database holds it.

Rows cross the seam as tuples in the stored column order (`EVENT_FIELDS`), `data` as
the canonical JSON text exactly as hashed: decoding stays in `Journal`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import JournalWriteConflict

__all__ = [
    "EVENT_FIELDS",
    "FOLD_FIELDS",
    "HISTORY_FIELDS",
    "EventRow",
    "OrderWrite",
    "Recorder",
]

EVENT_FIELDS = (
    "seq", "order_id", "order_seq", "plan_id", "at", "kind",
    "from_state", "to_state", "data", "prev_hash", "hash",
)  # fmt: skip
# What a fold reads of an event (`Journal.order_history`), in this order.
HISTORY_FIELDS = ("seq", "order_id", "plan_id", "at", "kind", "to_state", "data")
# What an audit's one pass reads of an event (`Recorder.fold_batches`), in this order:
# plan_id on an order's first event only, and `events_after` on an event that leaves its
# order in one of the given final states only (else None).
FOLD_FIELDS = (*EVENT_FIELDS[: EVENT_FIELDS.index("data") + 1], "events_after")

# An event row in EVENT_FIELDS order.
EventRow = Sequence[Any]
# A projection write: whether it is its order's first event, and the row's values in
# ORDER_COLUMNS order but with last_seq last.
OrderWrite = tuple[bool, list[Any]]


class Recorder(ABC):
    """One journal's rows in one database. A writer's recorder is opened owning the
    journal (a file lock, a database lock); a reader's never writes."""

    # where the journal is, as messages name it (never with a password)
    location: str
    # the journal's file, or None for a journal held by a database server
    path: Path | None

    @abstractmethod
    def close(self) -> None: ...

    # -- writing -----------------------------------------------------------------

    @abstractmethod
    def insert(
        self, rows: Sequence[EventRow], order_rows: Sequence[OrderWrite], heartbeat_at: str | None
    ) -> None:
        """One transaction: the event rows, their projection rows and (when given) the
        owner's heartbeat, all or nothing. The rows follow one another; the first must
        follow the stored last event (`follows_tail`). A seq or (order_id, order_seq) stored
        already is refused by the database's unique keys, a row after a gap or off the
        chain by that check (both `JournalWriteConflict`); any other failure is
        `JournalUnavailable`."""

    def follows_tail(self, first: EventRow) -> None:
        """Inside `insert`'s transaction: refuse (`JournalWriteConflict`) a first row whose
        seq is not one past a stored event whose hash is its prev_hash; a writer whose
        idea of the journal's end is stale must not leave a gap or a fork."""
        seq, prev_hash = first[0], first[9]
        stored = self.hash_at(seq - 1) if seq > 1 else prev_hash
        if stored != prev_hash:
            raise JournalWriteConflict(
                f"journal {self.location} refused seq {seq}: "
                + ("no event before it (a gap)" if stored is None else "it does not link")
                + " to the stored last event",
                seq=seq,
            )

    @abstractmethod
    def begin_snapshot(self) -> None:
        """Open one read transaction: every read until close sees the same commit."""

    @abstractmethod
    def record_owner(self, pid: int, host: str, at: str) -> None:
        """Name this process as the journal's owner (its own transaction)."""

    @abstractmethod
    def set_meta(self, values: Mapping[str, str]) -> None:
        """Store these meta keys in one transaction."""

    @abstractmethod
    def take_meta(self, prefix: str) -> list[str]:
        """Remove the meta keys starting with `prefix` and give their values, in one
        statement: a key written meanwhile is either taken whole or left for the next take."""

    # -- reading -----------------------------------------------------------------

    @abstractmethod
    def tail(self) -> tuple[int, str] | None:
        """The last event's seq and hash, or None for an empty journal."""

    @abstractmethod
    def last_at(self) -> str | None:
        """The last event's `at`, or None for an empty journal."""

    @abstractmethod
    def last_order_seq(self, order_id: str) -> int:
        """The highest order_seq stored for the order (0 for none)."""

    @abstractmethod
    def hash_at(self, seq: int) -> str | None:
        """The stored hash of event `seq`, or None when there is none."""

    @abstractmethod
    def event_rows(
        self, *, after_seq: int = 0, order_id: str | None = None, plan_id: str | None = None
    ) -> Iterator[EventRow]:
        """Events after `after_seq` in seq order, of one order or plan when given."""

    @abstractmethod
    def event_batch(self, after_seq: int, limit: int) -> list[EventRow]:
        """Up to `limit` events after `after_seq`, in seq order: one short read."""

    @abstractmethod
    def history_rows(
        self, plan_id: str | None, unless_state: Collection[str]
    ) -> Iterator[Sequence[Any]]:
        """HISTORY_FIELDS of the events of each order whose row matches, in seq order."""

    @abstractmethod
    def first_event_of_plan(self, plan_id: str) -> EventRow | None:
        """The first event of the plan's first order, or None."""

    @abstractmethod
    def orders(self, plan_id: str | None, unless_state: Collection[str]) -> list[dict[str, Any]]:
        """Matching `orders` rows (ORDER_COLUMNS), oldest first."""

    @abstractmethod
    def order(self, order_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def owner(self) -> dict[str, Any] | None:
        """The owner row: pid, host, acquired_at, heartbeat_at."""

    @abstractmethod
    def meta(self, keys: Collection[str]) -> dict[str, str]:
        """Those meta keys that are stored, with their values."""

    @abstractmethod
    def missing_guards(self) -> list[str]:
        """The database's append-only guards on events that are gone or altered, by name."""

    @abstractmethod
    def holder(self) -> str | None:
        """Who owns the journal now ("pid N on host"), or None when no live process does."""

    @abstractmethod
    def change_marker(self) -> object:
        """A value that changes when a transaction commits (a follower's cheap look)."""

    # -- reading for an audit: inside `begin_snapshot` ... `end_snapshot` ------------------

    @abstractmethod
    def end_snapshot(self) -> None:
        """End the read transaction `begin_snapshot` opened."""

    @abstractmethod
    def event_batches(self, after_seq: int, last_seq: int) -> Iterator[Iterable[EventRow]]:
        """The events with `after_seq < seq <= last_seq`, in seq order, in batches each read
        as it is consumed (so a read that fails names the last row read before it): a
        verify's pass."""

    @abstractmethod
    def fold_batches(
        self, after_seq: int, last_seq: int, ends: Collection[str]
    ) -> Iterator[Iterable[Sequence[Any]]]:
        """FOLD_FIELDS of the events with `after_seq < seq <= last_seq`, in seq order, in
        batches as `event_batches`; `events_after`, on an event whose to_state is one of `ends`: how
        many events of its order up to `last_seq` follow its order_seq (a replay's pass
        knows from it whether it holds the order's whole history)."""

    @abstractmethod
    def order_ids_of_kind(
        self, kind: str, *, order_id: str | None = None, plan_id: str | None = None
    ) -> list[str]:
        """The order_id of each event of `kind`, in seq order; of one order or plan when given."""

    @abstractmethod
    def unfinished_order_ids(self, ends: Collection[str]) -> set[str]:
        """Each order whose events hold its `created` and no transition into one of `ends`:
        what is in flight by the hash-chained events, whatever the `orders` rows say."""

    @abstractmethod
    def order_event_rows(self, order_id: str) -> Iterator[EventRow]:
        """The order's events in order_seq order, through UNIQUE(order_id, order_seq)."""

    @abstractmethod
    def order_event_count(self, order_id: str, last_seq: int) -> int:
        """How many events of the order have `seq <= last_seq`."""

    @abstractmethod
    def row_claims(self) -> Iterator[tuple[str, int]]:
        """Each `orders` row's order_id and last_seq (as a number: a forged text sorts as
        0), by last_seq, then in the order the rows were created."""

    @abstractmethod
    def stored_rows(self) -> Iterator[Sequence[Any]]:
        """Each `orders` row as order_id, last_seq (as in `row_claims`), then its
        ORDER_COLUMNS, in the order the rows were created."""

    @abstractmethod
    def stored_row(self, order_id: str) -> Sequence[Any] | None:
        """The order's row as `stored_rows` gives it, or None."""
