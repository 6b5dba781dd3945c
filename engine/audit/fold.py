"""One order's events run through its state machine, refusing anything the engine cannot write.

Replay and verify share this fold: every transition must be a move of the order's own
transition table (its ladder comes from the `created` event's config, read the way the
walk reads it), every event must start from the state the previous one left, and
`OrderRecord.apply` (the engine's own fold) builds the record, so a replayed record is
exactly what the engine held.

Rows are the stored tuples (`source.EVENT_COLUMNS` order) with their `data` decoded:
an audit reads every event of the journal, and building an `Event` per row would
cost about as much as reading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from journal import JournalCorrupt, NewEvent

from ..config import journaled_config
from ..fsm import OrderState, transition_table
from ..order import EventKind, OrderRecord
from .source import EventRow

__all__ = ["OrderFold", "ReplayRefused"]

Move = tuple[str, str, str]


class ReplayRefused(JournalCorrupt):
    """An event the order's history does not allow; `seq` names the first such row."""

    def __init__(self, seq: int, problem: str, **fields: Any) -> None:
        super().__init__(f"seq {seq}: {problem}", seq=seq, **fields)
        self.seq = seq
        self.problem = problem


@cache
def _moves(steps: int) -> frozenset[Move]:
    return frozenset(transition_table(steps))


@dataclass
class OrderFold:
    """An order replayed up to its latest event, and the latest quote any transition journaled."""

    record: OrderRecord
    steps: int
    order_seq: int = 1
    quote: dict[str, Any] | None = None

    @classmethod
    def start(cls, row: EventRow, data: Any) -> OrderFold:
        """Begin an order at its `created` event (which carries the ladder it walks)."""
        seq, order_id, order_seq, plan_id, at, kind, from_state, to_state = row[:8]
        _require_object(seq, kind, data)
        if kind != EventKind.CREATED:
            raise ReplayRefused(seq, f"order {order_id} has a {kind} event before `created`")
        if from_state is not None or to_state != OrderState.PENDING:
            raise ReplayRefused(seq, "a created event must enter PENDING from nothing")
        if order_seq != 1:
            raise ReplayRefused(seq, f"created event has order_seq {order_seq}, not 1")
        try:
            record = OrderRecord.created(NewEvent(kind, order_id, plan_id, data=data), at, seq)
            steps = len(journaled_config(record.config).ladder)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReplayRefused(seq, f"malformed created event: {exc}") from None
        return cls(record, steps)

    def apply(self, row: EventRow, data: Any) -> None:
        """Fold one more event in, after checking that the order's history allows it."""
        seq, order_id, order_seq, _, at, kind, from_state, to_state = row[:8]
        record = self.record
        _require_object(seq, kind, data)
        if kind == EventKind.CREATED:
            raise ReplayRefused(seq, f"order {order_id} is created a second time")
        if order_seq != self.order_seq + 1:
            raise ReplayRefused(
                seq, f"order {order_id} jumps from order_seq {self.order_seq} to {order_seq}"
            )
        if from_state != record.state:
            raise ReplayRefused(
                seq, f"event starts from {from_state} but the order is {record.state}"
            )
        if kind == EventKind.TRANSITION:
            move = (str(data.get("trigger")), record.state, str(to_state))
            if move not in _moves(self.steps):
                raise ReplayRefused(
                    seq,
                    f"illegal transition {record.state} -> {to_state} "
                    f"(trigger {move[0]}) for a ladder of {self.steps} steps",
                )
        elif to_state != record.state:
            raise ReplayRefused(seq, f"a {kind} event cannot change the state")
        try:
            self.record = record.apply(kind, to_state, data, at, seq)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            raise ReplayRefused(seq, f"malformed {kind} event: {exc!r}") from None
        if kind == EventKind.TRANSITION and data.get("quote") is not None:
            self.quote = data["quote"]
        self.order_seq += 1


def _require_object(seq: int, kind: str, data: Any) -> None:
    if not isinstance(data, dict):
        raise ReplayRefused(seq, f"data of a {kind} event is not a JSON object")
