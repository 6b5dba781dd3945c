"""Order intents and rebalance plans: what the caller wants, validated before anything is sent."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidIntent, InvalidPlan, first_validation_error

__all__ = [
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
_ONE = Decimal(1)


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
    correlation_id: str | None = None
    strategy_id: str | None = None

    @field_validator("side", "close_type", "urgency", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("symbol")
    @classmethod
    def _symbol_shape(cls, value: str) -> str:
        symbol = value.strip().upper()
        if not SYMBOL_PATTERN.match(symbol):
            raise ValueError(f"malformed symbol {value!r}")
        return symbol

    @field_validator("quantity", mode="before")
    @classmethod
    def _quantity_not_float(cls, value: Any) -> Any:
        if isinstance(value, float):
            return Decimal(repr(value))
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

    @model_validator(mode="after")
    def _closing_requires_sell(self) -> OrderIntent:
        if self.close_type is not CloseType.NONE and self.side is not OrderSide.SELL:
            raise ValueError(f"close_type {self.close_type.value} requires side sell")
        return self

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


def parse_plan(payload: Any) -> RebalancePlan:
    """Build a plan from decoded JSON, raising InvalidPlan with one line naming the problem."""
    try:
        return RebalancePlan.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPlan(f"invalid plan: {first_validation_error(exc)}") from None


def load_plan(path: str | Path) -> RebalancePlan:
    """Read a plan file (see docs/plans.md)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidPlan(f"plan file {path} does not exist", path=str(path)) from None
    except OSError as exc:
        raise InvalidPlan(f"cannot read plan file {path}: {exc.strerror}", path=str(path)) from None
    try:
        payload = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise InvalidPlan(
            f"plan file {path} is not valid JSON: {exc.msg} at line {exc.lineno}", path=str(path)
        ) from None
    return parse_plan(payload)
