"""verify: is this journal the one walkbook wrote, and does it tell a possible story?

One streaming pass checks, row by row in seq order: the hash chain and seq continuity
(`journal.chain.first_chain_break`), every order's events through its state machine
(`OrderFold`), that fills never exceed the order's quantity, and that each `orders`
row equals the replay of its order at that row's `last_seq`. Memory holds the chain's
last hash, the folds of orders whose projection row is not reached yet, and one id
per order, never the events.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from journal import Event, Journal, JournalCorrupt, first_chain_break

from ..order import EventKind
from .fold import OrderFold, ReplayRefused
from .source import EVENT_COLUMNS, read_snapshot

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


class _Verifier:
    """One pass over a snapshot; raises `ReplayRefused` at the first problem."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        # orders row -> the seq its projection was written with, and the reverse
        self.row_seq = {
            row["order_id"]: row["last_seq"]
            for row in journal.db.query("SELECT order_id, last_seq FROM orders")
        }
        self.claimed = {seq: order_id for order_id, seq in self.row_seq.items()}
        self.open: dict[str, OrderFold] = {}
        self.matched: set[str] = set()
        self.events_checked = 0
        self.current_seq = 0

    def accepted_by_chain(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """Hand rows to the chain check; check each one the chain has accepted."""
        for row in rows:
            self.current_seq = int(row["seq"])
            yield row
            self.check(Event.from_row(row))
            self.events_checked += 1

    def check(self, event: Event) -> None:
        order_id = event.order_id
        if order_id is not None:
            self.fold(event, order_id)
        claimant = self.claimed.get(event.seq)
        if claimant is not None and claimant != order_id:
            raise ReplayRefused(
                event.seq,
                f"orders row of {claimant} was written with seq {event.seq}, "
                f"but that event belongs to {order_id or 'no order'}",
            )

    def fold(self, event: Event, order_id: str) -> None:
        if order_id in self.matched:
            raise ReplayRefused(
                event.seq,
                f"event for {order_id} after seq {self.row_seq[order_id]}, the last one its "
                "orders row was written with",
            )
        fold = self.open.get(order_id)
        if fold is None:
            if order_id not in self.row_seq:
                raise ReplayRefused(event.seq, f"order {order_id} has no orders row")
            fold = self.open[order_id] = OrderFold.start(event)
        else:
            fold.apply(event)
        record = fold.folded
        if event.kind == EventKind.FILL and record.filled_qty > record.quantity:
            raise ReplayRefused(
                event.seq,
                f"order {order_id} has filled {record.filled_qty}, "
                f"more than its quantity {record.quantity}",
            )
        if self.row_seq[order_id] == event.seq:
            stored, replayed = self.journal.order(order_id) or {}, fold.record().projection()
            if stored != replayed:
                raise ReplayRefused(
                    event.seq,
                    f"orders row of {order_id} differs from the replay: "
                    + _differences(stored, replayed),
                )
            del self.open[order_id]
            self.matched.add(order_id)

    def run(self) -> VerifyResult:
        rows = self.journal.db.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY seq")
        try:
            try:
                chain_break = first_chain_break(self.accepted_by_chain(rows))
            except ValueError as exc:  # json.loads or canonical_json refused the row's data
                raise ReplayRefused(
                    self.current_seq, f"data is not canonical JSON: {exc}"
                ) from None
            if chain_break is not None:
                raise ReplayRefused(chain_break.seq, chain_break.problem)
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

    def check_every_row_reached(self) -> None:
        """Rows never matched: their last_seq is past the end (events cut off) or not theirs."""
        unreached = {o: s for o, s in self.row_seq.items() if o not in self.matched}
        if not unreached:
            return
        order_id = min(unreached, key=unreached.__getitem__)
        seq, end = unreached[order_id], self.events_checked
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
            str(self.journal.path), self.events_checked, len(self.matched), seq, problem
        )


def verify(path: str | Path) -> VerifyResult:
    """Check a journal's integrity in one streaming pass (read-only; safe while a run writes).

    A file that is not a walkbook journal, is damaged or truncated, or was written by a
    newer schema raises `JournalCorrupt` or `JournalSchemaTooNew` instead.
    """
    with read_snapshot(path) as journal:
        return _Verifier(journal).run()
