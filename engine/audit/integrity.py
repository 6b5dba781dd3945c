"""verify: is this journal the one walkbook wrote, and does it tell a possible story?

One streaming pass checks, row by row in seq order: seq continuity and the hash chain
(as `journal.chain.first_chain_break` does), every order's events through its state
machine (`OrderFold`), that fills never exceed the order's quantity, and that each
`orders` row equals the replay of its order at that row's `last_seq`. The `orders` rows
are read alongside in `last_seq` order, so memory holds the chain's last hash and the
folds of orders whose row is not reached yet, never the events nor one entry per order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from journal import GENESIS_HASH, Journal, JournalCorrupt, body_json, decode_canonical, hash_body

from ..order import EventKind
from .fold import OrderFold, ReplayRefused
from .source import SELECT_EVENTS, EventRow, read_snapshot

__all__ = ["VerifyResult", "verify"]


@dataclass(frozen=True)
class VerifyResult:
    """The verdict: `ok`, or the first bad seq and what is wrong there."""

    path: str
    events_checked: int
    orders_checked: int
    first_bad_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None

    def summary(self) -> str:
        """One line for people and logs."""
        if self.ok:
            return (
                f"{self.path}: OK, {self.events_checked} events and {self.orders_checked} orders "
                "verified (hash chain, seq, transitions, fills, orders projection)"
            )
        return (
            f"{self.path}: FAILED at seq {self.first_bad_seq}: {self.problem} "
            f"({self.events_checked} events checked)"
        )


def _differences(stored: Mapping[str, Any], replayed: Mapping[str, Any]) -> str:
    fields = [k for k in replayed if stored.get(k) != replayed[k]]
    return ", ".join(f"{k} is {stored.get(k)!r}, replay gives {replayed[k]!r}" for k in fields)


# orders rows by the seq they were written with; CAST so a forged non-integer sorts and
# compares as a number (0) instead of after every seq.
_ROWS_BY_SEQ = "SELECT order_id, CAST(last_seq AS INTEGER) FROM orders ORDER BY 2, rowid"
_ROW_SEQ = "SELECT CAST(last_seq AS INTEGER) FROM orders WHERE order_id = ?"


class _Verifier:
    """One pass over a snapshot; raises `ReplayRefused` at the first problem."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        # orders whose row is not reached yet: their fold, and the seq their row names
        self.open: dict[str, tuple[OrderFold, int]] = {}
        self.rows: Iterator[tuple[str, int]] = journal.conn.execute(_ROWS_BY_SEQ)
        self.next_row = next(self.rows, None)
        # rows passed by without naming any event's seq (a last_seq below 1)
        self.unreached: list[tuple[str, int]] = []
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
                f"{self.journal.path} is damaged or truncated after seq {self.events_checked}: "
                f"{exc}",
                path=str(self.journal.path),
                seq=self.events_checked + 1,
            ) from exc
        return self.result()

    def check_events(self) -> None:
        """The chain, then the order's history, then the rows claiming it, for each event."""
        expected_prev, expected_seq = GENESIS_HASH, 1
        for row in self.journal.conn.execute(f"{SELECT_EVENTS} ORDER BY seq"):
            seq, order_id, prev_hash, hash_ = row[0], row[1], row[9], row[10]
            if seq != expected_seq:
                raise ReplayRefused(
                    expected_seq, f"seq {expected_seq} is missing (next row is {seq})"
                )
            if prev_hash != expected_prev:
                raise ReplayRefused(seq, "prev_hash does not match the hash of the previous row")
            if hash_body(prev_hash, body_json(*row[:10])) != hash_:
                raise ReplayRefused(seq, "hash does not match the row's contents")
            try:
                data = decode_canonical(row[8])
            except ValueError as exc:
                raise ReplayRefused(seq, f"data is not canonical JSON: {exc}") from None
            if order_id is not None:
                self.fold(row, data)
            if self.next_row is not None and self.next_row[1] <= seq:
                self.check_claims(seq, order_id)
            self.events_checked += 1
            expected_prev, expected_seq = hash_, seq + 1

    def fold(self, row: EventRow, data: Any) -> None:
        seq, order_id = row[0], row[1]
        entry = self.open.get(order_id)
        if entry is None:
            found = self.journal.conn.execute(_ROW_SEQ, [order_id]).fetchone()
            if found is None:
                raise ReplayRefused(seq, f"order {order_id} has no orders row")
            row_seq = found[0]
            if 1 <= row_seq < seq:
                raise ReplayRefused(
                    seq,
                    f"event for {order_id} after seq {row_seq}, the last one its orders row "
                    "was written with",
                )
            fold = OrderFold.start(row, data)
            self.open[order_id] = fold, row_seq
        else:
            fold, row_seq = entry
            fold.apply(row, data)
        record = fold.record
        if row[5] == EventKind.FILL and record.filled_qty > record.quantity:
            raise ReplayRefused(
                seq,
                f"order {order_id} has filled {record.filled_qty}, "
                f"more than its quantity {record.quantity}",
            )
        if row_seq == seq:
            stored, replayed = self.journal.order(order_id) or {}, record.projection()
            if stored != replayed:
                raise ReplayRefused(
                    seq,
                    f"orders row of {order_id} differs from the replay: "
                    + _differences(stored, replayed),
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
            str(self.journal.path), self.events_checked, self.orders_checked, seq, problem
        )


def verify(path: str | Path) -> VerifyResult:
    """Check a journal's integrity in one streaming pass (read-only; safe while a run writes).

    A file that is not a walkbook journal, is damaged or truncated, or was written by a
    newer schema raises `JournalCorrupt` or `JournalSchemaTooNew` instead.
    """
    with read_snapshot(path) as journal:
        return _Verifier(journal).run()
