"""One order's events run through its state machine, refusing anything the engine cannot write.

Replay and verify share this fold: every transition must be a move of the order's own
transition table (its ladder comes from the `created` event's config, read the way the
walk reads it), every event must start from the state the previous one left, and
`OrderRecord`'s own event handlers (the engine's fold) build the record, so a replayed
record is exactly what the engine held.

Rows are the stored tuples (`source.EVENT_COLUMNS` order) with their `data` decoded:
an audit reads every event of the journal, and builds no `Event` per row.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from journal import JournalCorrupt

from ..config import journaled_config
from ..events import Created, EventKind, Payload, payload_of
from ..fsm import OrderState, transition_table
from ..order import OrderRecord
from .source import EventRow

__all__ = ["OrderFold", "ReplayRefused"]

Move = tuple[str, str, str]

_CREATED, _TRANSITION = EventKind.CREATED, EventKind.TRANSITION
# what a malformed `data` raises in the record's handlers
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


class ReplayRefused(JournalCorrupt):
    """An event the order's history does not allow; `seq` names the first such row."""

    def __init__(self, seq: int, problem: str, **fields: Any) -> None:
        super().__init__(f"seq {seq}: {problem}", seq=seq, **fields)
        self.seq = seq
        self.problem = problem


@cache
def _moves(steps: int) -> frozenset[Move]:
    return frozenset(transition_table(steps))


class OrderFold:
    """An order replayed up to its latest event, and the latest quote any transition journaled.

    The fold owns its record and folds each event's typed payload into it in place
    (`OrderRecord.fold_in`, what `OrderRecord.apply` runs on a copy), as resume's fold does.
    Once a fold refuses an event, drop it.
    """

    __slots__ = ("moves", "order_seq", "payload", "quote", "record", "steps")

    def __init__(self, record: OrderRecord, steps: int, created: Created) -> None:
        self.record = record
        # the typed payload of the event folded last
        self.payload: Payload = created
        self.steps = steps
        self.moves = _moves(steps)
        self.order_seq = 1
        self.quote: dict[str, Any] | None = None

    @classmethod
    def start(cls, row: EventRow, data: Any) -> OrderFold:
        """Begin an order at its `created` event (which carries the ladder it walks)."""
        seq, order_id, order_seq, plan_id, at, kind, from_state, to_state = row[:8]
        _require_object(seq, kind, data)
        if kind != _CREATED:
            raise ReplayRefused(seq, f"order {order_id} has a {kind} event before `created`")
        if from_state is not None or to_state != OrderState.PENDING:
            raise ReplayRefused(seq, "a created event must enter PENDING from nothing")
        if order_seq != 1:
            raise ReplayRefused(seq, f"created event has order_seq {order_seq}, not 1")
        try:
            created = Created.from_data(data)
            record = OrderRecord.start(order_id, plan_id, created, at, seq)
            steps = len(journaled_config(record.config).ladder)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReplayRefused(seq, f"malformed created event: {exc}") from None
        return cls(record, steps, created)

    def apply(self, row: EventRow, data: Any) -> None:
        """Fold one more event in, after checking that the order's history allows it."""
        # row: seq, order_id, order_seq, plan_id, at, kind, from_state, to_state, data, ...
        # indexed where needed rather than unpacked: this runs once per event
        kind, to_state = row[5], row[7]
        record = self.record
        state = record.state
        if not isinstance(data, dict):
            raise ReplayRefused(row[0], f"data of a {kind} event is not a JSON object")
        if kind == _CREATED:
            raise ReplayRefused(row[0], f"order {row[1]} is created a second time")
        if row[2] != self.order_seq + 1:
            raise ReplayRefused(
                row[0], f"order {row[1]} jumps from order_seq {self.order_seq} to {row[2]}"
            )
        if row[6] != state:
            raise ReplayRefused(row[0], f"event starts from {row[6]} but the order is {state}")
        if kind == _TRANSITION:
            move = (str(data.get("trigger")), state, str(to_state))
            if move not in self.moves:
                raise ReplayRefused(
                    row[0],
                    f"illegal transition {state} -> {to_state} "
                    f"(trigger {move[0]}) for a ladder of {self.steps} steps",
                )
        elif to_state != state:
            raise ReplayRefused(row[0], f"a {kind} event cannot change the state")
        try:
            payload = payload_of(kind, data)
            record.fold_in(payload, to_state, row[4], row[0])
        except _MALFORMED as exc:
            raise ReplayRefused(row[0], f"malformed {kind} event: {exc!r}") from None
        self.payload = payload
        quote = getattr(payload, "quote", None)
        if quote is not None:
            self.quote = quote
        self.order_seq += 1


def _require_object(seq: int, kind: str, data: Any) -> None:
    if not isinstance(data, dict):
        raise ReplayRefused(seq, f"data of a {kind} event is not a JSON object")
