"""One typed payload per journal event kind: what the walk writes and every reader reads.

The journal stores a payload as the JSON object of its event's `data`; `payload_of` turns
a stored object back into its type, so the fold, hooks, metrics, audit and CLI read named
fields rather than dict keys written in another module. A transition's payload depends on
its trigger. docs/journal-format.md describes each event.

Decoding is lenient in one direction only: fields a payload does not declare are ignored
(a journal written by a later walkbook still reads), and a missing required field raises
`msgspec.ValidationError` (a `ValueError`), which the audit reports as a malformed event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, ClassVar

import msgspec

from .fsm import Trigger
from .numbers import decimal_text

__all__ = [
    "EVENT_KINDS",
    "Ack",
    "CancelAck",
    "CancelIntent",
    "Created",
    "Errored",
    "Escalated",
    "EventKind",
    "Failed",
    "Fill",
    "Intent",
    "IntentWithdrawn",
    "OrderFinal",
    "OutcomeUnknown",
    "Payload",
    "PlacementHeld",
    "PositionRead",
    "Quoted",
    "Rejected",
    "ReplaceAck",
    "ReplaceIntent",
    "Resized",
    "Settled",
    "StepEntered",
    "StopRequested",
    "SubmitAck",
    "SubmitIntent",
    "Transition",
    "Validated",
    "payload_of",
]


class EventKind:
    """Every event kind the engine writes."""

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
    PLACEMENT_HELD = "placement_held"


EVENT_KINDS: tuple[str, ...] = tuple(
    value for name, value in vars(EventKind).items() if name.isupper()
)


class Payload(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An event's data. Optional fields at their default are not written."""

    KIND: ClassVar[str]

    def to_data(self) -> dict[str, Any]:
        """The JSON object the journal stores: decimals as their shortest exact text."""
        data: dict[str, Any] = msgspec.to_builtins(self, builtin_types=(Decimal,))
        return {k: decimal_text(v) if isinstance(v, Decimal) else v for k, v in data.items()}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Any:
        return msgspec.convert(data, cls)


class Created(Payload, frozen=True, kw_only=True):
    """An order begins: its intent and the walk configuration it keeps for life."""

    KIND = EventKind.CREATED
    intent: dict[str, Any]
    config: dict[str, Any] = {}
    plan_digest: str | None = None
    # a plan line tried again after a failure that sent nothing: the order it retries
    retry_of: str | None = None
    attempt: int | None = None
    # what the plan asked for when preflight rounded a whole-share asset's quantity down
    requested_qty: Decimal | None = None
    # a dollar order's notional, and how it or a target plan's order was sized (docs/plans.md)
    notional: Decimal | None = None
    sizing: dict[str, Any] | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Any:
        """The intent and configuration are taken as stored, not copied: OrderIntent and
        EngineConfig validate them where they are read, and copying the configuration every
        order carries was most of the cost of reading a `created` event."""
        facts = msgspec.convert({**data, "intent": {}, "config": {}}, cls)
        config = data.get("config", {})
        return msgspec.structs.replace(facts, intent=data["intent"], config=config)


class Transition(Payload, frozen=True, kw_only=True):
    """A move of the order's state machine; `trigger` says which, and so which subtype."""

    KIND = EventKind.TRANSITION
    trigger: str


class Quoted(Transition, frozen=True, kw_only=True):
    """PENDING -> QUOTED at the arrival quote (none only for a HIGH order sent to market)."""

    quote: dict[str, Any] | None
    quote_missing: str | None = None


class StepEntered(Transition, frozen=True, kw_only=True):
    """Into LIMIT_STEP_k: the ladder fraction, the limit price and the quote it came from."""

    ratio: Decimal
    limit_price: Decimal
    quote: dict[str, Any]
    wait_seconds: float


class Escalated(Transition, frozen=True, kw_only=True):
    """Into MARKET, with the quote at the escalation when there was one."""

    quote: dict[str, Any] | None


class Settled(Transition, frozen=True, kw_only=True):
    """Into SETTLING: nothing more is placed."""


class Validated(Transition, frozen=True, kw_only=True):
    """SETTLING -> VALIDATED: the position the broker reported."""

    position: Decimal


class Failed(Transition, frozen=True, kw_only=True):
    """Into FAILED: the reason code, the message that came with it (a broker's refusal, an
    invalid intent's problem), and the figures that explain it.

    The figures are an open set (a broker's refusal names its own: buying_power,
    existing_qty, ...; a risk limit its limit and figure), stored beside `reason` in
    the event's data and read back into `figures`.
    """

    reason: str
    message: str | None = None
    figures: dict[str, Any] = {}

    def to_data(self) -> dict[str, Any]:
        return _flattened(super().to_data())

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Any:
        return msgspec.convert(_gathered(cls, data), cls)


def _flattened(data: dict[str, Any]) -> dict[str, Any]:
    """A payload's open `figures` stored beside its named fields."""
    return {**data.pop("figures", {}), **data}


def _gathered(cls: type[Payload], data: Mapping[str, Any]) -> dict[str, Any]:
    """Stored data with every key the payload does not name gathered into `figures`."""
    named = set(cls.__struct_fields__)
    figures = {k: v for k, v in data.items() if k not in named}
    return {**{k: v for k, v in data.items() if k in named}, "figures": figures}


class PositionRead(Payload, frozen=True, kw_only=True):
    """The broker's position before the walk (and the close's target) or after settling."""

    KIND = EventKind.POSITION_READ
    phase: str
    qty: Decimal
    target_qty: Decimal | None = None
    expected: Decimal | None = None
    # the figure came with the order's latest fill (position_after), not from a read
    from_fill: bool = False


class Intent(Payload, frozen=True, kw_only=True):
    """Write-ahead: a broker side effect about to be made, under a client order id of its own.

    `step` and `attempt` name the walk step (L1.., M, C) and its try; journals written
    before intents carried them name them only inside the client order id.
    """

    client_order_id: str
    step: str | None = None
    attempt: int | None = None

    @property
    def walk_step(self) -> str:
        """The walk step the intent was journaled for (`wb-<order>-<step>-<n>`)."""
        return self.step if self.step is not None else self.client_order_id.split("-")[-2]


class SubmitIntent(Intent, frozen=True, kw_only=True):
    """A new order about to be sent."""

    KIND = EventKind.SUBMIT_INTENT
    order_type: str
    qty: Decimal
    limit_price: Decimal | None
    # a close-position order: the time after which the broker's order must have been made
    sent_after: str | None = None


class ReplaceIntent(Intent, frozen=True, kw_only=True):
    """A live broker order about to be replaced at a new price."""

    KIND = EventKind.REPLACE_INTENT
    broker_order_id: str
    qty: Decimal
    limit_price: Decimal


class Ack(Payload, frozen=True, kw_only=True):
    """The broker holds the order an intent described (sent now, or found and adopted)."""

    client_order_id: str
    broker_order_id: str
    status: str
    adopted: bool


class SubmitAck(Ack, frozen=True, kw_only=True):
    KIND = EventKind.SUBMIT_ACK


class ReplaceAck(Ack, frozen=True, kw_only=True):
    """The replacement, and the broker order it replaced when the broker said so."""

    KIND = EventKind.REPLACE_ACK
    replaces: str | None = None


class CancelIntent(Payload, frozen=True, kw_only=True):
    KIND = EventKind.CANCEL_INTENT
    broker_order_id: str


class CancelAck(Payload, frozen=True, kw_only=True):
    KIND = EventKind.CANCEL_ACK
    broker_order_id: str


class OutcomeUnknown(Payload, frozen=True, kw_only=True):
    """A side effect whose answer was lost: resolved later by its client order id."""

    KIND = EventKind.OUTCOME_UNKNOWN
    client_order_id: str
    operation: str
    error: str


class Rejected(Payload, frozen=True, kw_only=True):
    """The broker refused an intent: nothing was placed."""

    KIND = EventKind.REJECTED
    client_order_id: str
    reason: str
    message: str


class Fill(Payload, frozen=True, kw_only=True):
    """Shares the broker reported filled on one of the order's broker orders, counted once."""

    KIND = EventKind.FILL
    broker_order_id: str
    client_order_id: str
    qty: Decimal
    price: Decimal
    cum_qty: Decimal
    cum_avg_price: Decimal
    # when the broker says the order's latest fill happened (the event's own `at` is when
    # the journal learned of it: a resume may learn much later)
    broker_at: str | None = None
    # the account's position right after this fill as the broker reported it with the fill
    # (None: it did not): the walk's validation may take it instead of a read
    position_after: Decimal | None = None


class OrderFinal(Payload, frozen=True, kw_only=True):
    """A broker order seen in a final status; `external`: it ended without walkbook asking."""

    KIND = EventKind.ORDER_FINAL
    broker_order_id: str
    status: str
    filled_qty: Decimal
    external: bool = False


class Resized(Payload, frozen=True, kw_only=True):
    """A PENDING buy shrunk to fit the funds, with the figures that sized it (the funds
    it read, under names that depend on the account)."""

    KIND = EventKind.RESIZED
    qty: Decimal
    reason: str
    figures: dict[str, Any] = {}

    def to_data(self) -> dict[str, Any]:
        return _flattened(super().to_data())

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Any:
        return msgspec.convert(_gathered(cls, data), cls)


class IntentWithdrawn(Payload, frozen=True, kw_only=True):
    """A stop withdrew an intent the broker never had: it is never sent."""

    KIND = EventKind.INTENT_WITHDRAWN
    client_order_id: str


class StopRequested(Payload, frozen=True, kw_only=True):
    """A halt, cancel or abandon reached this order: it is wound down, never walked on."""

    KIND = EventKind.STOP_REQUESTED
    reason: str


class PlacementHeld(Payload, frozen=True, kw_only=True):
    """A limit step's placement held back: the spread is wider than `max_spread_bps`."""

    KIND = EventKind.PLACEMENT_HELD
    spread_bps: Decimal
    max_spread_bps: Decimal
    quote: dict[str, Any]


class Errored(Payload, frozen=True, kw_only=True):
    """Something the walk could not act on (a broker unreachable, an overfill)."""

    KIND = EventKind.ERROR
    error: str
    message: str | None = None
    filled_qty: Decimal | None = None


_BY_KIND: dict[str, type[Payload]] = {
    cls.KIND: cls
    for cls in (
        Created,
        PositionRead,
        SubmitIntent,
        SubmitAck,
        ReplaceIntent,
        ReplaceAck,
        CancelIntent,
        CancelAck,
        OutcomeUnknown,
        Rejected,
        Fill,
        OrderFinal,
        Resized,
        IntentWithdrawn,
        StopRequested,
        Errored,
        PlacementHeld,
    )
}
_BY_TRIGGER: dict[str, type[Transition]] = {
    Trigger.QUOTE: Quoted,
    Trigger.START_WALK: StepEntered,
    Trigger.NEXT_STEP: StepEntered,
    Trigger.REPEG: StepEntered,
    Trigger.ESCALATE: Escalated,
    Trigger.SETTLE: Settled,
    Trigger.VALIDATE: Validated,
    Trigger.FAIL: Failed,
}


# The payload types that read stored data their own way (`from_data`); every other one
# is msgspec's conversion, called with the type as a positional argument: passing it by
# keyword (as `functools.partial` would) doubles the cost of a small payload's read
# (docs/benchmarks.md, "Speed tricks").
_OWN_DECODE: dict[type[Payload], Callable[[Mapping[str, Any]], Any]] = {
    cls: cls.from_data
    for cls in (*_BY_KIND.values(), *_BY_TRIGGER.values())
    if "from_data" in vars(cls)
}


def payload_of(kind: str, data: Mapping[str, Any]) -> Payload:
    """The typed payload of a stored event; ValueError for an unknown kind or trigger, or
    for data its type cannot read."""
    if kind == EventKind.TRANSITION:
        trigger = data.get("trigger")
        cls: type[Payload] | None = _BY_TRIGGER.get(trigger) if isinstance(trigger, str) else None
        if cls is None:
            raise ValueError(f"a transition with unknown trigger {trigger!r}")
    else:
        cls = _BY_KIND.get(kind)
        if cls is None:
            raise ValueError(f"unknown event kind {kind!r}")
    own = _OWN_DECODE.get(cls)
    payload: Payload = msgspec.convert(data, cls) if own is None else own(data)
    return payload
