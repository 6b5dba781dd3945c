"""An engine order as a fold over its journal events.

The live engine and the audit replay use the same `apply`, so the `orders`
projection written beside each event is exactly what a replay reproduces.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field
from dataclasses import fields as dataclass_fields
from decimal import Decimal
from functools import lru_cache
from typing import Any

from journal import Event, HistoryRow, NewEvent, canonical_json

from .config import DISTINCT_CONFIGS_KEPT
from .fsm import FailReason, OrderState, is_limit_step
from .intents import OrderIntent
from .numbers import ZERO, decimal_text

__all__ = [
    "EVENT_KINDS",
    "EventKind",
    "OrderRecord",
    "client_order_id",
    "engine_order_of",
    "failure_detail",
    "fold_history",
    "fold_orders",
    "intent_step",
    "make_order_id",
    "shared_config",
]

CLIENT_ORDER_ID_MAX = 48
DETAIL_LIMIT = 200  # a failure detail is one line of about this many characters
_AVG_PLACES = Decimal("1e-9")  # the projection's avg_price is rounded to 9 decimals


class EventKind:
    """Every event kind the engine writes; docs/journal-format.md describes each."""

    CREATED = "created"
    TRANSITION = "transition"
    POSITION_READ = "position_read"
    SUBMIT_INTENT = "submit_intent"
    SUBMIT_ACK = "submit_ack"
    REPLACE_INTENT = "replace_intent"
    REPLACE_ACK = "replace_ack"
    CANCEL_INTENT = "cancel_intent"
    CANCEL_ACK = "cancel_ack"
    OUTCOME_UNKNOWN = "outcome_unknown"
    REJECTED = "rejected"
    FILL = "fill"
    ORDER_FINAL = "order_final"
    RESIZED = "resized"
    INTENT_WITHDRAWN = "intent_withdrawn"
    STOP_REQUESTED = "stop_requested"
    ERROR = "error"


EVENT_KINDS: tuple[str, ...] = tuple(
    value for name, value in vars(EventKind).items() if name.isupper()
)


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


def intent_step(data: Mapping[str, Any]) -> str:
    """The walk step a submit or replace intent was journaled for. Journals written before
    intents carried `step` name it only inside the client order id (`wb-<order>-<step>-<n>`)."""
    step = data.get("step")
    return str(step) if step is not None else str(data["client_order_id"]).split("-")[-2]


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
    that share one configuration, so the one shared last is compared first (an equality
    test costs a tenth of encoding the configuration to look it up); equal by value, so
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
    steps_used: int = 0
    target_qty: Decimal | None = None
    position_before: Decimal | None = None
    position_after: Decimal | None = None
    arrival: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    broker_filled: dict[str, Decimal] = field(default_factory=dict)
    broker_notional: dict[str, Decimal] = field(default_factory=dict)
    final_broker_orders: frozenset[str] = frozenset()
    broker_order_ids: tuple[str, ...] = ()
    client_order_ids: tuple[str, ...] = ()
    # the walk step (L1.., M, C) each of `client_order_ids` was journaled for, index by index
    intent_steps: tuple[str, ...] = ()
    pending_intent: dict[str, Any] | None = None
    pending_cancel: str | None = None
    cancels_sent: frozenset[str] = frozenset()
    ended_at_broker: dict[str, Any] | None = None
    stop_reason: str | None = None
    state_entered_at: str | None = None
    step_limit_price: Decimal | None = None
    step_quote: dict[str, Any] | None = None
    last_seq: int = 0

    @property
    def quantity(self) -> Decimal:
        """What this order must trade: the intent, or the position read for a FULL close."""
        return self.target_qty if self.target_qty is not None else self.intent.quantity

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
        data = event.data
        assert event.order_id is not None
        return cls(
            order_id=event.order_id,
            plan_id=event.plan_id,
            intent=OrderIntent.model_validate(data["intent"]),
            state=OrderState.PENDING,
            created_at=at,
            updated_at=at,
            config=shared_config(data.get("config", {})),
            last_seq=seq,
        )

    @classmethod
    def _started(
        cls, order_id: str, plan_id: str | None, data: Mapping[str, Any], at: str, seq: int
    ) -> OrderRecord:
        """`created` from the event's parts, the fields filled in without `__init__`.

        For the folds that rebuild many orders at once (resume's, the audit's): the frozen
        `__init__` (a guarded setattr per field) costs as much as validating the intent.
        """
        intent = OrderIntent.model_validate(data["intent"])
        config = shared_config(data.get("config", {}))
        fields = _BLANK_FIELDS.copy()
        fields.update(
            order_id=order_id,
            plan_id=plan_id,
            intent=intent,
            state=OrderState.PENDING,
            created_at=at,
            updated_at=at,
            config=config,
            broker_filled={},
            broker_notional={},
            last_seq=seq,
        )
        record = object.__new__(cls)
        object.__setattr__(record, "__dict__", fields)
        return record

    def apply(
        self, kind: str, to_state: str | None, data: dict[str, Any], at: str, seq: int
    ) -> OrderRecord:
        """The record after one more event, stored at `seq`.

        Pure: the live path and replay share it. A copy of the fields, then the event
        folded into the copy: `dataclasses.replace` without its pass through `__init__`,
        which costs about ten times as much for 28 fields (the record has no
        `__post_init__` or validation for that pass to run).
        """
        record = object.__new__(type(self))
        record.__dict__.update(self.__dict__)
        record._apply_in_place(kind, to_state, data, at, seq)
        return record

    def _apply_in_place(
        self, kind: str, to_state: str | None, data: dict[str, Any], at: str, seq: int
    ) -> None:
        """Write what one event of `kind` changes into this record's own fields.

        `apply` runs it on a fresh copy. Called directly only by a fold that owns the
        record and keeps no earlier version of it (resume's, the audit's), which saves the
        copy of 28 fields per event, about half of what `apply` costs. An event that
        raises may leave the record half-changed, so the fold must drop it then.
        """
        fields = self.__dict__
        fields["updated_at"] = at
        fields["last_seq"] = seq
        if kind == EventKind.TRANSITION:
            if to_state is None:
                return
            fields["state"] = to_state
            fields["state_entered_at"] = at
            limit = data.get("limit_price")
            fields["step_limit_price"] = None if limit is None else Decimal(limit)
            fields["step_quote"] = data.get("quote")
            if to_state == _FAILED:
                fields["reason"] = data["reason"]
                fields["failure_detail"] = failure_detail(self, data)
            elif to_state == _QUOTED:
                fields["arrival"] = data["quote"]
            elif to_state == _MARKET or is_limit_step(to_state):
                fields["steps_used"] += 1
        elif kind == EventKind.FILL:
            broker_id = data["broker_order_id"]
            qty, price = Decimal(data["qty"]), Decimal(data["price"])
            traded = qty * price
            fields["filled_qty"] += qty
            fields["notional"] += traded
            notional = fields["broker_notional"]
            # new dicts: a record `apply` copied shares them with the record before it
            fields["broker_filled"] = {
                **fields["broker_filled"],
                broker_id: Decimal(data["cum_qty"]),
            }
            fields["broker_notional"] = {
                **notional,
                broker_id: notional.get(broker_id, ZERO) + traded,
            }
        elif kind == EventKind.POSITION_READ:
            qty = Decimal(data["qty"])
            if data["phase"] == "before":
                fields["position_before"] = qty
                if data.get("target_qty") is not None:
                    fields["target_qty"] = Decimal(data["target_qty"])
            else:
                fields["position_after"] = qty
        elif kind in _INTENT_KINDS:
            fields["pending_intent"] = {"kind": kind, **data}
            fields["client_order_ids"] += (data["client_order_id"],)
            fields["intent_steps"] += (intent_step(data),)
        elif kind in _ACK_KINDS:
            broker_id = data["broker_order_id"]
            fields["live_broker_order_id"] = broker_id
            fields["live_client_order_id"] = data["client_order_id"]
            fields["pending_intent"] = None
            if broker_id not in fields["broker_order_ids"]:
                fields["broker_order_ids"] += (broker_id,)
        elif kind == EventKind.ORDER_FINAL:
            broker_id = data["broker_order_id"]
            fields["final_broker_orders"] = fields["final_broker_orders"] | {broker_id}
            if broker_id == fields["live_broker_order_id"]:
                fields["live_broker_order_id"] = None
                fields["live_client_order_id"] = None
            if data.get("external"):
                fields["ended_at_broker"] = {"broker_order_id": broker_id, "status": data["status"]}
        elif kind in _ANSWERED_UNSENT_KINDS:
            fields["pending_intent"] = None
        elif kind == EventKind.CANCEL_INTENT:
            fields["pending_cancel"] = data["broker_order_id"]
            fields["cancels_sent"] = fields["cancels_sent"] | {data["broker_order_id"]}
        elif kind == EventKind.CANCEL_ACK:
            fields["pending_cancel"] = None
        elif kind == EventKind.RESIZED:
            fields["target_qty"] = Decimal(data["qty"])
        elif kind == EventKind.STOP_REQUESTED:
            fields["stop_reason"] = data["reason"]

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

_FAILED, _QUOTED, _MARKET = (
    OrderState.FAILED.value,
    OrderState.QUOTED.value,
    OrderState.MARKET.value,
)
_INTENT_KINDS = frozenset({EventKind.SUBMIT_INTENT, EventKind.REPLACE_INTENT})
_ACK_KINDS = frozenset({EventKind.SUBMIT_ACK, EventKind.REPLACE_ACK})
# an intent the broker refused, or one a stop withdrew because the broker never had it
_ANSWERED_UNSENT_KINDS = frozenset({EventKind.REJECTED, EventKind.INTENT_WITHDRAWN})


# the figures a broker refusal carries beside its message (engine/brokers/alpaca/errors.py FIGURES,
# the simulator's alike): what the broker counted, worth a reader's eye
_BROKER_FIGURES = ("buying_power", "cost_basis", "available", "existing_qty", "held_for_orders")
# data of a FAILED transition that says nothing a reader of the detail needs
_QUIET_FIELDS = frozenset({"trigger", "reason", "message", "quote", "status", "code"})


def failure_detail(record: OrderRecord, data: Mapping[str, Any]) -> str | None:
    """One line (at most about `DETAIL_LIMIT` characters) saying why `record` FAILED, from
    its FAILED transition's `data`: the message journaled with it (a broker's refusal, an
    invalid intent's problem), else a sentence built from its figures.

    The one place the detail comes from, for the live record and the audit's replay alike;
    a message is journaled already redacted (the Alpaca adapter strips keys)."""
    message = data.get("message")
    if not message:
        text = _detail_from_figures(record, data)
        return None if text is None else _one_line(text)
    figures = [f"{name} {data[name]}" for name in _BROKER_FIGURES if data.get(name) is not None]
    return _one_line(f"{message}; {', '.join(figures)}" if figures else str(message))


def _detail_from_figures(record: OrderRecord, data: Mapping[str, Any]) -> str | None:
    """The sentence for a FAILED transition journaled without a message."""
    symbol, reason = record.intent.symbol, data.get("reason")
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
    every collection pass it triggers scans the growing heap and frees nothing (a third
    of resuming 10,000 orders went there). Freed memory is still freed by reference
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
    in place (`OrderRecord._apply_in_place`) rather than into a copy per event.
    """
    records: dict[str, OrderRecord] = {}
    with _collector_paused():
        for seq, order_id, plan_id, at, kind, to_state, data in rows:
            if kind == EventKind.CREATED:
                records[order_id] = OrderRecord._started(order_id, plan_id, data, at, seq)
            else:
                records[order_id]._apply_in_place(kind, to_state, data, at, seq)
    return records
