"""verify: is this journal the one walkbook wrote, and does it tell a possible story?

One streaming pass checks, row by row in seq order: seq continuity and the hash chain
(`journal.link_problem`, the check `journal.first_chain_break` runs), every order's events
through its state machine (`OrderFold`), that fills never exceed the order's quantity,
and that each `orders` row equals the replay of its order at that row's `last_seq`. The
`orders` rows are read alongside, in `last_seq` order for the rows claiming each seq
and in creation order for each order's own row, so memory holds the chain's last hash
and the folds (and rows) of orders whose row is not reached yet, never the events nor
one entry per order. A pass that finds nothing wrong then checks that the append-only
triggers are still in the database (`Recorder.missing_guards`: a file's, or PostgreSQL's).
The reads go through the journal's recorder, so a journal in a database is verified by the
same pass.

A large journal file (`feed.worth_a_helper`) is checked in two processes: a helper
(`feed.Feed`) reads the events of the same commit up to the seq this snapshot ends at and
checks their hash chain, and this process makes the pass on the rows it sends. That
verdict stands only when both find nothing wrong; otherwise (or when the feed stops
early, e.g. because another connection committed before the helper took its snapshot)
the one-process pass runs on this snapshot and gives the verdict, exactly as it would
have alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any

import msgspec

from journal import (
    GENESIS_HASH,
    ORDER_COLUMNS,
    Journal,
    JournalCorrupt,
    decode_canonical,
    link_problem,
)
from journal.sqlite import EVENTS_UP_TO as _EVENTS_UP_TO

from ..events import EventKind
from . import feed
from .fold import OrderFold, ReplayRefused
from .source import EventRow, read_snapshot

__all__ = ["VerifyResult", "verify"]


@dataclass(frozen=True)
class VerifyResult:
    """The verdict: `ok`, or what is wrong: at the first bad seq, or (missing append-only
    triggers) in the file's schema, with no seq."""

    path: str
    events_checked: int
    orders_checked: int
    first_bad_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        """One line for people and logs."""
        if self.ok:
            return (
                f"{self.path}: OK, {self.events_checked} events and {self.orders_checked} orders "
                "verified (hash chain, seq, transitions, fills, orders projection, "
                "append-only triggers)"
            )
        where = "" if self.first_bad_seq is None else f" at seq {self.first_bad_seq}"
        return f"{self.path}: FAILED{where}: {self.problem} ({self.events_checked} events checked)"


def _differences(stored: Mapping[str, Any], replayed: Mapping[str, Any]) -> str:
    fields = [k for k in replayed if stored.get(k) != replayed[k]]
    return ", ".join(f"{k} is {stored.get(k)!r}, replay gives {replayed[k]!r}" for k in fields)


# The one-process pass reads every event of its snapshot, whatever its seq (a row forged
# below seq 1 is a break in the chain); a feed, up to the seq the snapshot ends at (the
# helper's snapshot may end later).
_EVERY_SEQ = (-(2**63), 2**63 - 1)
# msgspec's decoding, as `decode_canonical` does it (its DecodeError is a ValueError)
_DECODE = msgspec.json.Decoder().decode

StoredRow = Sequence[Any]


class _Verifier:
    """One pass over a snapshot; raises `ReplayRefused` at the first problem.

    It reads the events itself and checks their chain, or takes them from a feed that
    checks the chain (the rows then come without their hash columns).
    """

    def __init__(self, journal: Journal, fed: Iterable[EventRow] | None = None) -> None:
        self.journal = journal
        self.recorder = recorder = journal.recorder
        self.fed = fed
        # orders whose row is not reached yet: their fold, the seq their row names, the row
        self.open: dict[str, tuple[OrderFold, int, StoredRow]] = {}
        self.rows: Iterator[tuple[str, int]] = recorder.row_claims()
        self.next_row = next(self.rows, None)
        # rows passed by without naming any event's seq (a last_seq below 1)
        self.unreached: list[tuple[str, int]] = []
        # each order's row, read in creation order beside the events (a query per order
        # where a row comes out of that order)
        self.created_rows: Iterator[StoredRow] = recorder.stored_rows()
        self.next_created: StoredRow | None = next(self.created_rows, None)
        self.events_checked = 0
        self.orders_checked = 0

    def run(self) -> VerifyResult:
        try:
            self.check_events()
            self.check_every_row_reached()
        except ReplayRefused as refused:
            return self.result(refused.seq, refused.problem)
        except sqlite3.DatabaseError as exc:
            raise JournalCorrupt(
                f"{self.journal.location} is damaged or truncated after seq "
                f"{self.events_checked}: {exc}",
                path=self.journal.location,
                seq=self.events_checked + 1,
            ) from exc
        return self.result()

    def check_events(self) -> None:
        """The chain, then the order's history, then the rows claiming it, for each event.

        The per-event work is inline: it runs a million times for a million events.
        """
        expected_prev, expected_seq = GENESIS_HASH, 1
        open_orders, fill, fed = self.open, EventKind.FILL, self.fed
        events: Iterable[EventRow]
        decode: Callable[[str], Any]
        if fed is None:
            batches = self.recorder.event_batches(*_EVERY_SEQ)
            events, decode = chain.from_iterable(batches), decode_canonical
        else:
            # the feed refused data with whitespace around it: the rest is a plain decode
            events, decode = fed, _DECODE
        try:
            for row in events:
                seq = row[0]
                if fed is None:
                    problem = link_problem(row, expected_seq, expected_prev)
                    if problem is not None:
                        raise ReplayRefused(*problem)
                    expected_prev = row[10]
                elif seq != expected_seq:
                    raise ReplayRefused(
                        expected_seq, f"seq {expected_seq} is missing (next row is {seq})"
                    )
                try:
                    data = decode(row[8])
                except ValueError as exc:
                    raise ReplayRefused(seq, f"data is not canonical JSON: {exc}") from None
                order_id = row[1]
                if order_id is not None:
                    entry = open_orders.get(order_id)
                    if entry is None:
                        self.start(row, data)
                    else:
                        fold, row_seq, stored = entry
                        fold.apply(row, data)
                        if row[5] == fill:
                            self.check_fill(seq, order_id, fold)
                        if row_seq == seq:
                            self.check_row(seq, order_id, fold, stored)
                next_row = self.next_row
                if next_row is not None and next_row[1] <= seq:
                    self.check_claims(seq, order_id)
                expected_seq = seq + 1
        finally:
            self.events_checked = expected_seq - 1

    def start(self, row: EventRow, data: Any) -> None:
        """An order's first event: its row must exist and name this event or a later one."""
        seq, order_id = row[0], row[1]
        stored = self.order_row(order_id)
        if stored is None:
            raise ReplayRefused(seq, f"order {order_id} has no orders row")
        row_seq = stored[1]
        if 1 <= row_seq < seq:
            raise ReplayRefused(
                seq,
                f"event for {order_id} after seq {row_seq}, the last one its orders row "
                "was written with",
            )
        fold = OrderFold.start(row, data)
        self.open[order_id] = fold, row_seq, stored[2:]
        if row_seq == seq:
            self.check_row(seq, order_id, fold, stored[2:])

    def order_row(self, order_id: str) -> StoredRow | None:
        """The order's row: the next one in creation order, else looked up by order_id."""
        row = self.next_created
        if row is not None and row[0] == order_id:
            self.next_created = next(self.created_rows, None)
            return row
        return self.recorder.stored_row(order_id)

    def check_fill(self, seq: int, order_id: str, fold: OrderFold) -> None:
        record = fold.record
        if record.filled_qty > record.quantity:
            raise ReplayRefused(
                seq,
                f"order {order_id} has filled {record.filled_qty}, "
                f"more than its quantity {record.quantity}",
            )

    def check_row(self, seq: int, order_id: str, fold: OrderFold, stored: StoredRow) -> None:
        """The orders row written with this seq must equal the replay, field by field."""
        replayed = fold.record.projection()
        if tuple(stored) != tuple(map(replayed.__getitem__, ORDER_COLUMNS)):
            raise ReplayRefused(
                seq,
                f"orders row of {order_id} differs from the replay: "
                + _differences(dict(zip(ORDER_COLUMNS, stored, strict=True)), replayed),
            )
        del self.open[order_id]
        self.orders_checked += 1

    def check_claims(self, seq: int, order_id: str | None) -> None:
        """The orders rows written with this seq must be this event's order's."""
        row = self.next_row
        while row is not None and row[1] < seq:
            self.unreached.append(row)
            row = next(self.rows, None)
        while row is not None and row[1] == seq:
            if row[0] != order_id:
                raise ReplayRefused(
                    seq,
                    f"orders row of {row[0]} was written with seq {seq}, "
                    f"but that event belongs to {order_id or 'no order'}",
                )
            row = next(self.rows, None)
        self.next_row = row

    def check_every_row_reached(self) -> None:
        """Rows never matched: their last_seq is past the end (events cut off) or not theirs."""
        unreached = self.unreached
        if self.next_row is not None:
            unreached += [self.next_row, *self.rows]
        if not unreached:
            return
        order_id, seq = min(unreached, key=lambda row: row[1])
        end = self.events_checked
        if seq <= end:
            raise ReplayRefused(
                seq, f"orders row of {order_id} names seq {seq}, which is not one of its events"
            )
        raise ReplayRefused(
            end + 1,
            f"the journal ends at seq {end}, but the orders row of {order_id} was written "
            f"with seq {seq}: events are missing",
        )

    def result(self, seq: int | None = None, problem: str | None = None) -> VerifyResult:
        return VerifyResult(
            self.journal.location, self.events_checked, self.orders_checked, seq, problem
        )


def verify(path: str | Path) -> VerifyResult:
    """Check a journal's integrity in one streaming pass (read-only; safe while a run writes).

    A file that is not a walkbook journal, is damaged or truncated, or was written by a
    newer schema raises `JournalCorrupt` or `JournalSchemaTooNew` instead.
    """
    with read_snapshot(path) as journal:
        result = _with_helper(journal) or _Verifier(journal).run()
        return _with_triggers(journal, result) if result.ok else result


def _with_triggers(journal: Journal, result: VerifyResult) -> VerifyResult:
    """The verdict, failed when an append-only trigger is gone: the events check out, but
    whoever dropped it could edit or delete rows without the database refusing."""
    missing = journal.recorder.missing_guards()
    if not missing:
        return result
    return replace(
        result,
        problem=f"append-only trigger(s) {', '.join(missing)} missing or altered: someone "
        "dropped or replaced them, so events can be edited or deleted without the database "
        "refusing",
    )


def _with_helper(journal: Journal) -> VerifyResult | None:
    """The verdict of the pass over the rows a feed sends, the feed having checked their
    chain, when both find nothing wrong; None when the one-process pass must decide (a
    journal in a database always has it)."""
    if journal.path is None:
        return None
    watch = feed.Watch(journal.path)
    try:
        # the snapshot's first read: from here on it sees no other commit
        tail = journal.recorder.tail()
        if tail is None or not feed.worth_a_helper(tail[0]):
            return None
        last_seq = tail[0]
        rows = feed.Feed(journal.path, _EVENTS_UP_TO, last_seq, chain=True, watch=watch)
        try:
            result = _Verifier(journal, chain.from_iterable(rows.batches())).run()
        finally:
            rows.stop()
        intact = rows.complete and rows.problem is None
        return result if intact and result.ok and result.events_checked == last_seq else None
    except (sqlite3.DatabaseError, JournalCorrupt):
        # damage: the one-process pass says where, or finds a broken chain before it
        return None
    finally:
        watch.close()
