"""Order intents and rebalance plans: what the caller wants, validated before anything is sent."""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from .errors import InvalidIntent, InvalidPlan, first_validation_error
from .jsonfile import read_json, shown

__all__ = [
    "DEFAULT_MAX_PLAN_ORDERS",
    "MAX_TEXT_CHARS",
    "CloseType",
    "OrderIntent",
    "OrderSide",
    "RebalancePlan",
    "Urgency",
    "load_plan",
    "parse_plan",
]

MAX_QUANTITY_DECIMALS = 9
# far beyond any position, and small enough that a quantity's digits never exceed the
# decimal context's precision (28) and get rounded
MAX_QUANTITY = Decimal(10) ** 12
_QUANTITY_STEP = Decimal(10) ** -MAX_QUANTITY_DECIMALS
SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
# digits (ASCII only: Decimal also reads other scripts' digits), then maybe a fraction; the
# sign is let through so that "-1" is refused for what it is, a quantity not above zero
PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_ONE = Decimal(1)
MAX_TEXT_CHARS = 128
DEFAULT_MAX_PLAN_ORDERS = 10_000
FreeText = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Weights = dict[str, Decimal]
# OrderIntent's fields added after its first release, written only when set
LATER_FIELDS = ("strategies",)


class OrderSide(StrEnum):
    BUY = "buy"
    SELL = "sell"


class CloseType(StrEnum):
    """NONE opens or adds; PARTIAL reduces a position; FULL closes whatever the broker reports."""

    NONE = "none"
    PARTIAL = "partial"
    FULL = "full"


class Urgency(StrEnum):
    """HIGH goes to market at once; MEDIUM walks the ladder; LOW walks it with longer waits."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class OrderIntent(BaseModel):
    """One order the caller wants executed; immutable once built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    symbol: str
    side: OrderSide
    quantity: Decimal
    close_type: CloseType = CloseType.NONE
    urgency: Urgency = Urgency.MEDIUM
    correlation_id: FreeText | None = None
    strategy_id: FreeText | None = None
    # an order shared by strategies: each one's share of its fills (the ledger splits them)
    strategies: dict[FreeText, Decimal] | None = None

    @field_validator("side", "close_type", "urgency", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("symbol")
    @classmethod
    def _symbol_shape(cls, value: str) -> str:
        """ASCII is checked before upper-casing, which maps "ß" to "SS" and "ﬀ" to "FF"."""
        if not value.isascii():
            raise ValueError(f"malformed symbol {shown(value)}: not ASCII")
        symbol = value.strip().upper()
        if not SYMBOL_PATTERN.match(symbol):
            raise ValueError(f"malformed symbol {shown(value)}")
        return symbol

    @field_validator("quantity", mode="before")
    @classmethod
    def _quantity_plain(cls, value: Any) -> Any:
        """A quantity written as text must be plain decimal notation: Decimal would also read
        "1_000", " 1e3", "+1" and "Infinity", none of which a plan should mean."""
        if isinstance(value, bool):
            raise ValueError("quantity must be a number, got a boolean")
        if isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, str) and not PLAIN_DECIMAL.fullmatch(value):
            raise ValueError(
                "quantity must be a finite number in plain decimal notation (digits, maybe a "
                f"'.' and more digits), got {shown(value)}"
            )
        return value

    @field_validator("quantity")
    @classmethod
    def _quantity_finite_positive(cls, value: Decimal) -> Decimal:
        """The quantity in the one form `decimal_text` writes (no exponent, no trailing
        zeros), so equal quantities compare, hash and journal alike.

        Checked against the exact value: `normalize` rounds to the decimal context's 28
        digits, so a quantity longer than that must be refused before it can be rounded.
        """
        if not value.is_finite():
            raise ValueError(f"quantity must be a finite number, got {value}")
        if value <= 0:
            raise ValueError(f"quantity must be greater than zero, got {value}")
        if value > MAX_QUANTITY:
            raise ValueError(f"quantity {value} is larger than {MAX_QUANTITY}")
        # exact: at most 13 + 9 digits, well inside the context's precision
        if value.quantize(_QUANTITY_STEP) != value:
            raise ValueError(
                f"quantity {value} has more than {MAX_QUANTITY_DECIMALS} decimal places"
            )
        normal = value.normalize()
        exponent = normal.as_tuple().exponent
        assert isinstance(exponent, int)  # a finite Decimal's exponent
        return normal.quantize(_ONE) if exponent >= 0 else normal

    @field_validator("strategies")
    @classmethod
    def _weights_share_the_order(
        cls, value: dict[str, Decimal] | None
    ) -> dict[str, Decimal] | None:
        """Each weight in (0, 1], together exactly 1: the ledger splits every fill by them."""
        if value is None:
            return None
        if not value:
            raise ValueError("strategies must name at least one strategy")
        for name, weight in value.items():
            if not weight.is_finite() or not 0 < weight <= 1:
                raise ValueError(f"strategy {shown(name)} has weight {weight}, not in (0, 1]")
        total = sum(value.values(), Decimal(0))
        if total != 1:
            raise ValueError(f"strategy weights add up to {total}, not 1")
        return value

    @model_validator(mode="after")
    def _closing_requires_sell(self) -> OrderIntent:
        if self.close_type is not CloseType.NONE and self.side is not OrderSide.SELL:
            raise ValueError(f"close_type {self.close_type.value} requires side sell")
        if self.strategies is not None and self.strategy_id is not None:
            raise ValueError("give strategy_id or strategies, not both")
        return self

    @model_serializer(mode="wrap")
    def _later_fields_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Fields added after plans were first journaled are written only when set, so the
        digest of a plan delivered before them, and its journaled intents, stay the same."""
        data = handler(self)
        for name in LATER_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @classmethod
    def build(cls, **fields: Any) -> OrderIntent:
        """Validate like the constructor, but raise InvalidIntent with one readable line."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise InvalidIntent(first_validation_error(exc), symbol=fields.get("symbol")) from None

    @property
    def is_fractional(self) -> bool:
        return self.quantity != self.quantity.to_integral_value()


PlanId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class RebalancePlan(BaseModel):
    """A set of intents executed together under one plan_id; one order per symbol."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_id: PlanId
    orders: tuple[OrderIntent, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_order_per_symbol(self) -> RebalancePlan:
        seen: set[str] = set()
        for intent in self.orders:
            if intent.symbol in seen:
                raise ValueError(f"symbol {intent.symbol} appears more than once in the plan")
            seen.add(intent.symbol)
        return self


def _refuse_too_many_orders(payload: Any, max_orders: int) -> None:
    """Counted before any order is validated: a million-order file is refused at once."""
    orders = payload.get("orders") if isinstance(payload, dict) else None
    if isinstance(orders, list) and len(orders) > max_orders:
        raise InvalidPlan(
            f"invalid plan: orders: {len(orders)} orders, at most {max_orders} per plan"
        )


def parse_plan(payload: Any, *, max_orders: int = DEFAULT_MAX_PLAN_ORDERS) -> RebalancePlan:
    """Build a plan of at most `max_orders` orders from decoded JSON, raising InvalidPlan
    with one line naming the problem."""
    _refuse_too_many_orders(payload, max_orders)
    try:
        return RebalancePlan.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPlan(f"invalid plan: {first_validation_error(exc)}") from None


def _plain_json_number(text: str) -> Decimal:
    """A plan's JSON numbers (quantities) in plain decimal notation: 1e3 is refused, not
    read as 1000."""
    if "e" in text or "E" in text:
        raise ValueError(f"number {text} has an exponent: write it in plain decimal notation")
    return Decimal(text)


def load_plan(path: str | Path, *, max_orders: int = DEFAULT_MAX_PLAN_ORDERS) -> RebalancePlan:
    """Read a plan file of at most `max_orders` orders (see docs/plans.md)."""
    payload = read_json(path, "plan file", error=InvalidPlan, parse_float=_plain_json_number)
    return parse_plan(payload, max_orders=max_orders)
