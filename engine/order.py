"""An engine order as a fold over its journal events.

The live engine and the audit replay use the same `apply`, so the `orders`
projection written beside each event is exactly what a replay reproduces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from journal import Event, NewEvent

from .fsm import OrderState, is_limit_step
from .intents import OrderIntent
from .numbers import ZERO, decimal_text

__all__ = [
    "EVENT_KINDS",
    "EventKind",
    "OrderRecord",
    "client_order_id",
    "fold_orders",
    "make_order_id",
]

CLIENT_ORDER_ID_MAX = 48


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
    ERROR = "error"


EVENT_KINDS: tuple[str, ...] = tuple(
    value for name, value in vars(EventKind).items() if name.isupper()
)


def make_order_id(plan_id: str, index: int, intent: OrderIntent) -> str:
    """Deterministic: the same plan line always maps to the same engine order."""
    digest = hashlib.blake2b(
        f"{plan_id}|{index}|{intent.symbol}|{intent.side.value}".encode(), digest_size=8
    ).hexdigest()
    return f"o{digest}"


def client_order_id(order_id: str, step: str, attempt: int) -> str:
    """`wb-<order>-<step>-<attempt>`: a retry reuses it, so the broker refuses a double."""
    value = f"wb-{order_id}-{step}-{attempt}"
    assert len(value) <= CLIENT_ORDER_ID_MAX, value
    return value


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
    pending_intent: dict[str, Any] | None = None
    pending_cancel: str | None = None
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

    @classmethod
    def created(cls, event: NewEvent, at: str) -> OrderRecord:
        data = event.data
        assert event.order_id is not None
        return cls(
            order_id=event.order_id,
            plan_id=event.plan_id,
            intent=OrderIntent.model_validate(data["intent"]),
            state=OrderState.PENDING,
            created_at=at,
            updated_at=at,
            config=dict(data.get("config", {})),
        )

    def apply(self, kind: str, to_state: str | None, data: dict[str, Any], at: str) -> OrderRecord:
        """The record after one more event. Pure: the live path and replay share it."""
        changes: dict[str, Any] = {"updated_at": at}
        if kind == EventKind.TRANSITION and to_state is not None:
            changes["state"] = to_state
            changes["state_entered_at"] = at
            limit = data.get("limit_price")
            changes["step_limit_price"] = None if limit is None else Decimal(limit)
            changes["step_quote"] = data.get("quote")
            if to_state == OrderState.FAILED:
                changes["reason"] = data["reason"]
            if to_state == OrderState.QUOTED:
                changes["arrival"] = data["quote"]
            if is_limit_step(to_state) or to_state == OrderState.MARKET:
                changes["steps_used"] = self.steps_used + 1
        elif kind == EventKind.POSITION_READ:
            qty = Decimal(data["qty"])
            if data["phase"] == "before":
                changes["position_before"] = qty
                if data.get("target_qty") is not None:
                    changes["target_qty"] = Decimal(data["target_qty"])
            else:
                changes["position_after"] = qty
        elif kind in (EventKind.SUBMIT_INTENT, EventKind.REPLACE_INTENT):
            changes["pending_intent"] = {"kind": kind, **data}
            changes["client_order_ids"] = (*self.client_order_ids, data["client_order_id"])
        elif kind in (EventKind.SUBMIT_ACK, EventKind.REPLACE_ACK):
            changes["live_broker_order_id"] = data["broker_order_id"]
            changes["live_client_order_id"] = data["client_order_id"]
            changes["pending_intent"] = None
            if data["broker_order_id"] not in self.broker_order_ids:
                changes["broker_order_ids"] = (*self.broker_order_ids, data["broker_order_id"])
        elif kind == EventKind.REJECTED:
            changes["pending_intent"] = None
        elif kind == EventKind.CANCEL_INTENT:
            changes["pending_cancel"] = data["broker_order_id"]
        elif kind == EventKind.CANCEL_ACK:
            changes["pending_cancel"] = None
        elif kind == EventKind.FILL:
            broker_id = data["broker_order_id"]
            qty, price = Decimal(data["qty"]), Decimal(data["price"])
            changes["filled_qty"] = self.filled_qty + qty
            changes["notional"] = self.notional + qty * price
            changes["broker_filled"] = {**self.broker_filled, broker_id: Decimal(data["cum_qty"])}
            changes["broker_notional"] = {
                **self.broker_notional,
                broker_id: self.broker_notional.get(broker_id, ZERO) + qty * price,
            }
        elif kind == EventKind.RESIZED:
            changes["target_qty"] = Decimal(data["qty"])
        elif kind == EventKind.ORDER_FINAL:
            broker_id = data["broker_order_id"]
            changes["final_broker_orders"] = self.final_broker_orders | {broker_id}
            if broker_id == self.live_broker_order_id:
                changes["live_broker_order_id"] = None
                changes["live_client_order_id"] = None
        return replace(self, **changes)

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
            "avg_price": None if avg is None else decimal_text(avg.quantize(Decimal("1e-9"))),
            "live_broker_order_id": self.live_broker_order_id,
            "live_client_order_id": self.live_client_order_id,
            "steps_used": self.steps_used,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_seq": self.last_seq,
        }


def fold_orders(events: Iterable[Event]) -> dict[str, OrderRecord]:
    """Rebuild every order's record from journal events alone (seq order)."""
    records: dict[str, OrderRecord] = {}
    for event in events:
        if event.order_id is None:
            continue
        if event.kind == EventKind.CREATED:
            record = OrderRecord.created(
                NewEvent(event.kind, event.order_id, event.plan_id, data=event.data), event.at
            )
        else:
            record = records[event.order_id].apply(event.kind, event.to_state, event.data, event.at)
        records[event.order_id] = replace(record, last_seq=event.seq)
    return records
