"""Replay: each order's timeline rebuilt from `events` alone, through its state machine.

The `orders` table is never read here; a replay is the evidence the projection is
checked against (see `verify`). Orders are replayed one at a time, each from its own
indexed query, so memory holds one order's history, not the journal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from journal import Journal, decode_json

from ..fsm import OrderState
from ..numbers import decimal_text
from ..order import EventKind, OrderRecord
from ..results import OrderResult
from .fold import OrderFold
from .source import SELECT_EVENTS, EventRow, read_snapshot

__all__ = ["OrderTimeline", "TimelineEntry", "replay", "step_of"]

# One order's events, through the UNIQUE(order_id, order_seq) index.
_ORDER_EVENTS = f"{SELECT_EVENTS} WHERE order_id = ? ORDER BY order_seq"
_CLIENT_ORDER_ID = re.compile(r"^wb-o[0-9a-f]+-(L[0-9]+|M)-[0-9]+$")


def step_of(client_order_id: str | None) -> str | None:
    """`L1`…`Ln` or `M` from a `wb-<order>-<step>-<attempt>` id; None for any other id."""
    match = _CLIENT_ORDER_ID.match(client_order_id or "")
    return match.group(1) if match else None


@dataclass(frozen=True)
class TimelineEntry:
    """One journaled event of an order, with the state, quote and limit in force after it.

    `quote` is the latest quote journaled by a transition of this order (the quote of
    the step in force; for a state entered without one, the one before), and
    `limit_price` the current limit step's price (None outside a limit step).
    """

    seq: int
    at: str
    kind: str
    from_state: str | None
    state: str
    trigger: str | None
    reason: str | None
    quote: dict[str, Any] | None
    limit_price: Decimal | None
    client_order_id: str | None
    broker_order_id: str | None
    fill_qty: Decimal | None
    fill_price: Decimal | None
    filled_qty: Decimal
    data: dict[str, Any]

    @property
    def step(self) -> str | None:
        return step_of(self.client_order_id)

    def as_json(self) -> dict[str, Any]:
        return {
            key: decimal_text(value) if isinstance(value, Decimal) else value
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class OrderTimeline:
    """Everything that happened to one order, in journal order, and the record it folds to."""

    record: OrderRecord
    entries: tuple[TimelineEntry, ...]

    def result(self) -> OrderResult:
        """The order's result exactly as the live engine reports it, from the replayed record."""
        return OrderResult.from_record(self.record)

    @property
    def arrival(self) -> TimelineEntry | None:
        """The move into QUOTED, whose quote is the arrival quote."""
        return next((e for e in self.entries if e.state == OrderState.QUOTED), None)

    @property
    def fills(self) -> list[TimelineEntry]:
        return [e for e in self.entries if e.kind == EventKind.FILL]

    def as_json(self) -> dict[str, Any]:
        return {
            "order": self.result().model_dump(mode="json"),
            "events": [entry.as_json() for entry in self.entries],
        }


def _entry(row: EventRow, data: dict[str, Any], fold: OrderFold) -> TimelineEntry:
    record = fold.record
    fill = row[5] == EventKind.FILL
    return TimelineEntry(
        seq=row[0],
        at=row[4],
        kind=row[5],
        from_state=row[6],
        state=record.state,
        trigger=data.get("trigger"),
        reason=data.get("reason"),
        quote=fold.quote,
        limit_price=record.step_limit_price,
        client_order_id=data.get("client_order_id"),
        broker_order_id=data.get("broker_order_id"),
        fill_qty=Decimal(data["qty"]) if fill else None,
        fill_price=Decimal(data["price"]) if fill else None,
        filled_qty=record.filled_qty,
        data=data,
    )


def _order_timeline(rows: Iterable[EventRow]) -> OrderTimeline:
    """Fold one order's events (in order, `created` first) into its timeline."""
    stream = iter(rows)
    created = next(stream)
    data = decode_json(created[8])
    fold = OrderFold.start(created, data)
    entries = [_entry(created, data, fold)]
    for row in stream:
        data = decode_json(row[8])
        fold.apply(row, data)
        entries.append(_entry(row, data, fold))
    return OrderTimeline(fold.record, tuple(entries))


def _created_order_ids(
    journal: Journal, order_id: str | None, plan_id: str | None
) -> Iterator[str]:
    where, params = ["kind = ?"], [EventKind.CREATED]
    if order_id is not None:
        where.append("order_id = ?")
        params.append(order_id)
    if plan_id is not None:
        where.append("plan_id = ?")
        params.append(plan_id)
    sql = f"SELECT order_id FROM events WHERE {' AND '.join(where)} ORDER BY seq"
    for row in journal.conn.execute(sql, params):
        yield row[0]


def replay(
    path: str | Path, order_id: str | None = None, plan_id: str | None = None
) -> Iterator[OrderTimeline]:
    """Every order's timeline (or one order's, or one plan's), in the order they were created.

    Reads a snapshot without the lock, so it is safe while another process writes.
    Raises `ReplayRefused` (a `JournalCorrupt`) at the first event its order's state
    machine does not allow.
    """
    with read_snapshot(path) as journal:
        for created in _created_order_ids(journal, order_id, plan_id):
            yield _order_timeline(journal.conn.execute(_ORDER_EVENTS, [created]))
