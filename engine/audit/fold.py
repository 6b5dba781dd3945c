"""One order's events run through its state machine, refusing anything the engine cannot write.

Replay and verify share this fold: every transition must be a move of the order's own
transition table (its ladder comes from the `created` event's config, read the way the
walk reads it), every event must start from the state the previous one left, and
`OrderRecord.apply` (the engine's own fold) builds the record, so a replayed record is
exactly what the engine held.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from journal import Event, JournalCorrupt, NewEvent

from ..config import EngineConfig
from ..fsm import OrderState, transition_table
from ..order import EventKind, OrderRecord

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
    """An order replayed up to its latest event, and the latest quote any transition journaled.

    `folded` is the record after the latest event except for its `last_seq` (setting it
    on every event would copy the record twice per event); `record()` fills it in.
    """

    folded: OrderRecord
    steps: int
    last_seq: int
    order_seq: int = 1
    quote: dict[str, Any] | None = None

    def record(self) -> OrderRecord:
        """The replayed record, exactly as the engine held it after the latest event."""
        return replace(self.folded, last_seq=self.last_seq)

    @classmethod
    def start(cls, event: Event) -> OrderFold:
        """Begin an order at its `created` event (which carries the ladder it walks)."""
        _require_object(event)
        if event.kind != EventKind.CREATED:
            raise ReplayRefused(
                event.seq, f"order {event.order_id} has a {event.kind} event before `created`"
            )
        if event.from_state is not None or event.to_state != OrderState.PENDING:
            raise ReplayRefused(event.seq, "a created event must enter PENDING from nothing")
        if event.order_seq != 1:
            raise ReplayRefused(event.seq, f"created event has order_seq {event.order_seq}, not 1")
        try:
            record = OrderRecord.created(
                NewEvent(event.kind, event.order_id, event.plan_id, data=event.data), event.at
            )
            steps = len(EngineConfig.model_validate(record.config).ladder)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReplayRefused(event.seq, f"malformed created event: {exc}") from None
        return cls(record, steps, event.seq)

    def apply(self, event: Event) -> None:
        """Fold one more event in, after checking that the order's history allows it."""
        record = self.folded
        _require_object(event)
        if event.kind == EventKind.CREATED:
            raise ReplayRefused(event.seq, f"order {event.order_id} is created a second time")
        if event.order_seq != self.order_seq + 1:
            raise ReplayRefused(
                event.seq,
                f"order {event.order_id} jumps from order_seq {self.order_seq} "
                f"to {event.order_seq}",
            )
        if event.from_state != record.state:
            raise ReplayRefused(
                event.seq, f"event starts from {event.from_state} but the order is {record.state}"
            )
        if event.kind == EventKind.TRANSITION:
            move = (str(event.data.get("trigger")), record.state, str(event.to_state))
            if move not in _moves(self.steps):
                raise ReplayRefused(
                    event.seq,
                    f"illegal transition {record.state} -> {event.to_state} "
                    f"(trigger {move[0]}) for a ladder of {self.steps} steps",
                )
        elif event.to_state != record.state:
            raise ReplayRefused(event.seq, f"a {event.kind} event cannot change the state")
        try:
            applied = record.apply(event.kind, event.to_state, event.data, event.at)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            raise ReplayRefused(event.seq, f"malformed {event.kind} event: {exc!r}") from None
        if event.kind == EventKind.TRANSITION and event.data.get("quote") is not None:
            self.quote = event.data["quote"]
        self.folded, self.last_seq = applied, event.seq
        self.order_seq += 1


def _require_object(event: Event) -> None:
    if not isinstance(event.data, dict):
        raise ReplayRefused(event.seq, f"data of a {event.kind} event is not a JSON object")
