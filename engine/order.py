"""An engine order as a fold over its journal events.

The live engine and the audit replay use the same `apply`, so the `orders`
projection written beside each event is exactly what a replay reproduces.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field
from dataclasses import fields as dataclass_fields
from decimal import Decimal
from functools import lru_cache
from typing import Any

from journal import Event, HistoryRow, NewEvent, canonical_json

from .config import DISTINCT_CONFIGS_KEPT
from .events import (
    Ack,
    CancelAck,
    CancelIntent,
    Created,
    Escalated,
    Failed,
    Fill,
    IntentWithdrawn,
    OrderFinal,
    Payload,
    PositionRead,
    Quoted,
    Rejected,
    ReplaceAck,
    ReplaceIntent,
    Resized,
    Settled,
    StepEntered,
    StopRequested,
    SubmitAck,
    SubmitIntent,
    Transition,
    Validated,
    payload_of,
)
from .fsm import FailReason, OrderState, is_limit_step
from .intents import OrderIntent
from .numbers import ZERO, decimal_text

__all__ = [
    "OrderRecord",
    "client_order_id",
    "engine_order_of",
    "failure_detail",
    "fold_history",
    "fold_orders",
    "make_order_id",
    "shared_config",
]

CLIENT_ORDER_ID_MAX = 48
DETAIL_LIMIT = 200  # a failure detail is one line of about this many characters
_AVG_PLACES = Decimal("1e-9")  # the projection's avg_price is rounded to 9 decimals


def make_order_id(plan_id: str, index: int, intent: OrderIntent, attempt: int = 1) -> str:
    """Deterministic: the same plan line always maps to the same engine order; a line tried
    again (a failure that sent nothing, redelivered) maps to one new order per attempt."""
    key = f"{plan_id}|{index}|{intent.symbol}|{intent.side.value}"
    if attempt > 1:
        key += f"|{attempt}"
    return f"o{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}"


def client_order_id(order_id: str, step: str, attempt: int) -> str:
    """`wb-<order>-<step>-<attempt>`: a retry reuses it, so the broker refuses a double."""
    value = f"wb-{order_id}-{step}-{attempt}"
    assert len(value) <= CLIENT_ORDER_ID_MAX, value
    return value


def engine_order_of(client_id: str) -> str | None:
    """The engine order a walkbook client order id belongs to; None for anyone else's."""
    parts = client_id.split("-")
    if len(parts) != 4 or parts[0] != "wb" or not parts[1].startswith("o"):
        return None
    return parts[1]


@lru_cache(maxsize=DISTINCT_CONFIGS_KEPT)
def _config_of_text(text: str) -> dict[str, Any]:
    return dict(json.loads(text))


_last_shared: list[dict[str, Any]] = [{}]


def shared_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """One dict per distinct walk configuration, shared by every record that carries it.

    Each `created` event carries the full configuration, so 10,000 resumed orders would
    otherwise hold 10,000 equal copies. Shared: never mutate it. Orders come in plans
    that share one configuration, so the one shared last is compared first (cheaper than
    encoding it to look it up); equal by value, so
    a configuration differing only in writing 10 for 10.0 shares that dict, which
    validates to the same `EngineConfig`.
    """
    last = _last_shared[0]
    if config == last:
        return last
    shared = _last_shared[0] = _config_of_text(canonical_json(config))
    return shared


@dataclass(frozen=True)
class OrderRecord:
    """Everything known about one engine order, derived only from its events."""

    order_id: str
    plan_id: str | None
    intent: OrderIntent
    state: str
    created_at: str
    updated_at: str
    reason: str | None = None
    # one line saying why the order FAILED, from its FAILED transition (`failure_detail`)
    failure_detail: str | None = None
    filled_qty: Decimal = ZERO
    notional: Decimal = ZERO
    live_broker_order_id: str | None = None
    live_client_order_id: str | None = None
    # the limit price the live broker order was placed at (None for a market order)
    live_limit_price: Decimal | None = None
    steps_used: int = 0
    target_qty: Decimal | None = None
    position_before: Decimal | None = None
    position_after: Decimal | None = None
    # the position the broker reported with the order's latest fill (None: that fill came
    # without one): what validation compares before it spends a read
    position_reported: Decimal | None = None
    arrival: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    broker_filled: dict[str, Decimal] = field(default_factory=dict)
    broker_notional: dict[str, Decimal] = field(default_factory=dict)
    final_broker_orders: frozenset[str] = frozenset()
    broker_order_ids: tuple[str, ...] = ()
    client_order_ids: tuple[str, ...] = ()
    # the walk step (L1.., M, C) each of `client_order_ids` was journaled for, index by index
    intent_steps: tuple[str, ...] = ()
    pending_intent: SubmitIntent | ReplaceIntent | None = None
    pending_cancel: str | None = None
    cancels_sent: frozenset[str] = frozenset()
    ended_at_broker: dict[str, Any] | None = None
    stop_reason: str | None = None
    state_entered_at: str | None = None
    step_limit_price: Decimal | None = None
    step_quote: dict[str, Any] | None = None
    # re-pricings of the current limit step (a repeg stays in its state)
    repegs_in_step: int = 0
    last_seq: int = 0
    # a dollar order's notional (docs/plans.md)
    notional_requested: Decimal | None = None

    @property
    def quantity(self) -> Decimal:
        """What this order must trade: the intent, or the position read for a FULL close."""
        return self.target_qty if self.target_qty is not None else self.intent.shares

    @property
    def remaining_qty(self) -> Decimal:
        return self.quantity - self.filled_qty

    @property
    def avg_price(self) -> Decimal | None:
        return self.notional / self.filled_qty if self.filled_qty else None

    @property
    def is_terminal(self) -> bool:
        return self.state in (OrderState.VALIDATED, OrderState.FAILED)

    @property
    def unfinished_broker_orders(self) -> list[str]:
        """Broker orders acknowledged but not yet seen in a final status."""
        return [b for b in self.broker_order_ids if b not in self.final_broker_orders]

    @property
    def live_step(self) -> str | None:
        """The step whose intent placed the live broker order (None when nothing is live)."""
        live = self.live_client_order_id
        if live is None or live not in self.client_order_ids:
            return None
        return self.intent_steps[self.client_order_ids.index(live)]

    def attempts_at(self, step: str) -> int:
        """How many intents the journal holds for `step` (each a client order id of its own)."""
        return self.intent_steps.count(step)

    @property
    def sent_anything(self) -> bool:
        """Whether any order was ever meant for the broker (an intent journaled)."""
        return bool(self.client_order_ids)

    @property
    def awaits_broker_answer(self) -> bool:
        """An intent or a cancel sent (or about to be) whose answer the journal lacks."""
        return self.pending_intent is not None or self.pending_cancel is not None

    @property
    def has_broker_loose_ends(self) -> bool:
        """What a walk reconciles before moving on: an intent or a cancel the broker has
        not answered in the journal, or a broker order not yet seen final."""
        if self.is_terminal:
            return False
        return self.awaits_broker_answer or bool(self.unfinished_broker_orders)

    @classmethod
    def created(cls, event: NewEvent | Event, at: str, seq: int) -> OrderRecord:
        """The record an order's `created` event, stored at `seq`, starts."""
        assert event.order_id is not None
        return cls.start(event.order_id, event.plan_id, Created.from_data(event.data), at, seq)

    @classmethod
    def start(
        cls, order_id: str, plan_id: str | None, created: Created, at: str, seq: int
    ) -> OrderRecord:
        """The record a `created` payload begins, the first step of every fold.

        Its fields are filled in without the frozen `__init__` (docs/benchmarks.md,
        "Speed tricks"): a fold rebuilds many orders at once.
        """
        fields = _BLANK_FIELDS.copy()
        fields.update(
            order_id=order_id,
            plan_id=plan_id,
            intent=OrderIntent.model_validate(created.intent),
            state=OrderState.PENDING,
            created_at=at,
            updated_at=at,
            config=shared_config(created.config),
            broker_filled={},
            broker_notional={},
            last_seq=seq,
            notional_requested=created.notional,
        )
        record = object.__new__(cls)
        object.__setattr__(record, "__dict__", fields)
        return record

    def apply(self, payload: Payload, to_state: str | None, at: str, seq: int) -> OrderRecord:
        """The record after one more event, stored at `seq`: pure, the live walk's fold.

        A copy of the fields with the event folded into the copy (`dataclasses.replace`
        without its pass through `__init__`; docs/benchmarks.md, "Speed tricks").
        """
        record = object.__new__(type(self))
        record.__dict__.update(self.__dict__)
        record.fold_in(payload, to_state, at, seq)
        return record

    def apply_event(self, event: Event) -> OrderRecord:
        """The record after a stored event of this order (`apply` of its typed payload)."""
        return self.apply(payload_of(event.kind, event.data), event.to_state, event.at, event.seq)

    def fold_in(self, payload: Payload, to_state: str | None, at: str, seq: int) -> None:
        """Write what one event changes into this record's own fields.

        For a fold that owns the record and keeps no earlier version of it (resume's, the
        audit's: `fold_history`, `audit.fold.OrderFold`); everyone else calls `apply`. An
        event that raises may leave the record half-changed, so the fold must drop it then.
        """
        fields = self.__dict__
        fields["updated_at"] = at
        fields["last_seq"] = seq
        handler = _HANDLERS.get(type(payload))
        if handler is not None:
            handler(self, fields, payload, to_state, at)

    def projection(self) -> dict[str, Any]:
        """The row of the journal's `orders` table for this record."""
        avg = self.avg_price
        return {
            "order_id": self.order_id,
            "plan_id": self.plan_id,
            "symbol": self.intent.symbol,
            "side": self.intent.side.value,
            "close_type": self.intent.close_type.value,
            "urgency": self.intent.urgency.value,
            "quantity": decimal_text(self.quantity),
            "correlation_id": self.intent.correlation_id,
            "strategy_id": self.intent.strategy_id,
            "state": self.state,
            "reason": self.reason,
            "filled_qty": decimal_text(self.filled_qty),
            "notional": decimal_text(self.notional),
            "avg_price": None if avg is None else decimal_text(avg.quantize(_AVG_PLACES)),
            "live_broker_order_id": self.live_broker_order_id,
            "live_client_order_id": self.live_client_order_id,
            "steps_used": self.steps_used,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_seq": self.last_seq,
        }


# Every field of a record, at its default where it has one (`OrderRecord._started`
# fills in the others and gives each record its own mutable defaults).
_BLANK_FIELDS: dict[str, Any] = {
    f.name: None if f.default is MISSING else f.default for f in dataclass_fields(OrderRecord)
}

_FAILED, _MARKET = OrderState.FAILED.value, OrderState.MARKET.value

Fields = dict[str, Any]


def _transition(
    record: OrderRecord, fields: Fields, event: Transition, to_state: str | None, at: str
) -> None:
    if to_state is None:
        return
    fields["step_limit_price"] = getattr(event, "limit_price", None)
    fields["step_quote"] = getattr(event, "quote", None)
    if to_state == fields["state"]:  # a repeg: the step goes on, its time and count kept
        fields["repegs_in_step"] += 1
        return
    fields["state"] = to_state
    fields["state_entered_at"] = at
    fields["repegs_in_step"] = 0
    if isinstance(event, Failed):
        fields["reason"] = event.reason
        fields["failure_detail"] = failure_detail(record, event)
    elif isinstance(event, Quoted):
        fields["arrival"] = event.quote
    elif to_state == _MARKET or is_limit_step(to_state):
        fields["steps_used"] += 1


def _fill(record: OrderRecord, fields: Fields, event: Fill, to_state: str | None, at: str) -> None:
    broker_id, traded = event.broker_order_id, event.qty * event.price
    fields["filled_qty"] += event.qty
    fields["notional"] += traded
    notional = fields["broker_notional"]
    # new dicts: a record `apply` copied shares them with the record before it
    fields["broker_filled"] = {**fields["broker_filled"], broker_id: event.cum_qty}
    fields["position_reported"] = event.position_after
    fields["broker_notional"] = {**notional, broker_id: notional.get(broker_id, ZERO) + traded}


def _position_read(
    record: OrderRecord, fields: Fields, event: PositionRead, to_state: str | None, at: str
) -> None:
    if event.phase == "before":
        fields["position_before"] = event.qty
        if event.target_qty is not None:
            fields["target_qty"] = event.target_qty
    else:
        fields["position_after"] = event.qty


def _intent(
    record: OrderRecord,
    fields: Fields,
    event: SubmitIntent | ReplaceIntent,
    to_state: str | None,
    at: str,
) -> None:
    fields["pending_intent"] = event
    fields["client_order_ids"] += (event.client_order_id,)
    fields["intent_steps"] += (event.walk_step,)


def _ack(record: OrderRecord, fields: Fields, event: Ack, to_state: str | None, at: str) -> None:
    broker_id, pending = event.broker_order_id, fields["pending_intent"]
    fields["live_broker_order_id"] = broker_id
    fields["live_client_order_id"] = event.client_order_id
    fields["live_limit_price"] = None if pending is None else pending.limit_price
    fields["pending_intent"] = None
    if broker_id not in fields["broker_order_ids"]:
        fields["broker_order_ids"] += (broker_id,)


def _order_final(
    record: OrderRecord, fields: Fields, event: OrderFinal, to_state: str | None, at: str
) -> None:
    broker_id = event.broker_order_id
    fields["final_broker_orders"] = fields["final_broker_orders"] | {broker_id}
    if broker_id == fields["live_broker_order_id"]:
        fields["live_broker_order_id"] = None
        fields["live_client_order_id"] = None
        fields["live_limit_price"] = None
    if event.external:
        fields["ended_at_broker"] = {"broker_order_id": broker_id, "status": event.status}


def _answered_unsent(
    record: OrderRecord,
    fields: Fields,
    event: Rejected | IntentWithdrawn,
    to_state: str | None,
    at: str,
) -> None:
    """An intent the broker refused, or one a stop withdrew because the broker never had it."""
    fields["pending_intent"] = None


def _cancel_intent(
    record: OrderRecord, fields: Fields, event: CancelIntent, to_state: str | None, at: str
) -> None:
    fields["pending_cancel"] = event.broker_order_id
    fields["cancels_sent"] = fields["cancels_sent"] | {event.broker_order_id}


def _cancel_ack(
    record: OrderRecord, fields: Fields, event: CancelAck, to_state: str | None, at: str
) -> None:
    fields["pending_cancel"] = None


def _resized(
    record: OrderRecord, fields: Fields, event: Resized, to_state: str | None, at: str
) -> None:
    fields["target_qty"] = event.qty


def _stop_requested(
    record: OrderRecord, fields: Fields, event: StopRequested, to_state: str | None, at: str
) -> None:
    fields["stop_reason"] = event.reason


Handler = Callable[[OrderRecord, Fields, Any, str | None, str], None]
# what each payload type changes in a record (a type absent here changes only the times)
_HANDLED: tuple[tuple[Handler, tuple[type[Payload], ...]], ...] = (
    (_transition, (Quoted, StepEntered, Escalated, Settled, Validated, Failed)),
    (_fill, (Fill,)),
    (_position_read, (PositionRead,)),
    (_intent, (SubmitIntent, ReplaceIntent)),
    (_ack, (SubmitAck, ReplaceAck)),
    (_order_final, (OrderFinal,)),
    (_answered_unsent, (Rejected, IntentWithdrawn)),
    (_cancel_intent, (CancelIntent,)),
    (_cancel_ack, (CancelAck,)),
    (_resized, (Resized,)),
    (_stop_requested, (StopRequested,)),
)
_HANDLERS: dict[type[Payload], Handler] = {
    cls: handler for handler, types in _HANDLED for cls in types
}


# the figures a broker refusal carries beside its message (engine/brokers/alpaca/errors.py FIGURES,
# the simulator's alike): what the broker counted, worth a reader's eye
_BROKER_FIGURES = ("buying_power", "cost_basis", "available", "existing_qty", "held_for_orders")
# data of a FAILED transition that says nothing a reader of the detail needs
_QUIET_FIELDS = frozenset({"quote", "status", "code"})


def failure_detail(record: OrderRecord, event: Failed) -> str | None:
    """One line (at most about `DETAIL_LIMIT` characters) saying why `record` FAILED, from
    its FAILED transition: the message journaled with it (a broker's refusal, an invalid
    intent's problem), else a sentence built from its figures.

    The one place the detail comes from, for the live record and the audit's replay alike;
    a message is journaled already redacted (the Alpaca adapter strips keys)."""
    figures = event.figures
    if not event.message:
        text = _detail_from_figures(record, event.reason, figures)
        return None if text is None else _one_line(text)
    named = [f"{name} {figures[name]}" for name in _BROKER_FIGURES if figures.get(name) is not None]
    return _one_line(f"{event.message}; {', '.join(named)}" if named else event.message)


def _detail_from_figures(record: OrderRecord, reason: str, data: dict[str, Any]) -> str | None:
    """The sentence for a FAILED transition journaled without a message."""
    symbol = record.intent.symbol
    if reason == FailReason.MARKET_CLOSED:
        return "the market is closed"
    if reason == FailReason.NOT_TRADABLE:
        return f"{symbol} is not tradable"
    if reason == FailReason.NO_QUOTE:
        return f"no usable quote for {symbol}"
    if reason == FailReason.NO_POSITION:
        return f"no position in {symbol} to close"
    if reason == FailReason.INSUFFICIENT_POSITION and "position" in data:
        return f"sell of {decimal_text(record.quantity)} exceeds the position of {data['position']}"
    if reason == FailReason.INSUFFICIENT_FUNDS and "price_estimate" in data:
        return (
            f"buy of {data['requested']} at about {data['price_estimate']} a share does not fit "
            f"the {data['available']} of {data['funds_from']} left"
        )
    if reason == FailReason.VALIDATION_MISMATCH and "actual" in data:
        return f"the position is {data['actual']} after the fills, expected {data['expected']}"
    if reason == FailReason.PARTIAL_FILL and "quantity" in data:
        return f"filled {data['filled_qty']} of {data['quantity']}"
    if reason in (FailReason.CANCELLED, FailReason.ABANDONED) and "filled_qty" in data:
        return f"{reason} on request after {data['filled_qty']} filled"
    if reason == FailReason.ORDER_NOT_FOUND and "broker_order_id" in data:
        return f"the broker has no order {data['broker_order_id']}"
    if "broker_order_id" in data and "status" in data:
        return f"broker order {data['broker_order_id']} ended {data['status']} at the broker"
    figures = [f"{k} {v}" for k, v in data.items() if k not in _QUIET_FIELDS and v is not None]
    return ", ".join(figures) or None


def _one_line(text: str, limit: int = DETAIL_LIMIT) -> str:
    """`text` on one line, cut at a word boundary to about `limit` characters, marked as cut
    (as engine/brokers/alpaca/errors.py `shortened` cuts a broker's message)."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    return f"{line[:limit].rsplit(' ', 1)[0]} ..."


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a fold builds its records.

    A fold allocates a few objects per event, none in a cycle, and keeps the records:
    every collection pass it triggers scans the growing heap and frees nothing
    (docs/benchmarks.md, "Speed tricks"). Freed memory is still freed by reference
    counting; the collector's previous state is restored.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def fold_orders(events: Iterable[Event]) -> dict[str, OrderRecord]:
    """Rebuild every order's record from journal events alone.

    Each order's events in order (seq or order_seq); orders may come one after another
    or interleaved, since no order's record depends on another's.
    """
    return fold_history(
        (e.seq, e.order_id, e.plan_id, e.at, e.kind, e.to_state, e.data)
        for e in events
        if e.order_id is not None
    )


def fold_history(rows: Iterable[HistoryRow]) -> dict[str, OrderRecord]:
    """`fold_orders` from `Journal.order_history` rows, the way resume reads the journal.

    The fold owns the records it builds until it returns them, so each event is folded
    in place (`OrderRecord.fold_in`) rather than into a copy per event.
    """
    records: dict[str, OrderRecord] = {}
    with _collector_paused():
        for seq, order_id, plan_id, at, kind, to_state, data in rows:
            payload = payload_of(kind, data)
            if isinstance(payload, Created):
                records[order_id] = OrderRecord.start(order_id, plan_id, payload, at, seq)
            else:
                records[order_id].fold_in(payload, to_state, at, seq)
    return records
