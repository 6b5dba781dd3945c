"""Order intents and rebalance plans: what the caller wants, validated before anything is sent."""

from __future__ import annotations

import difflib
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
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from .errors import InvalidIntent, InvalidPlan, first_validation_error
from .jsonfile import read_json, shown
from .numbers import ZERO

__all__ = [
    "DEFAULT_MAX_PLAN_ORDERS",
    "MAX_NOTIONAL_DECIMALS",
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
# dollars to the cent, as Alpaca takes a notional order
# (https://docs.alpaca.markets/docs/fractional-trading)
MAX_NOTIONAL_DECIMALS = 2
MAX_NOTIONAL = Decimal(10) ** 12
MAX_WEIGHT_DECIMALS = 9
# each way to size an order: at most so many decimal places, and at most so much
_SIZE_LIMITS = {
    "quantity": (MAX_QUANTITY_DECIMALS, MAX_QUANTITY),
    "notional": (MAX_NOTIONAL_DECIMALS, MAX_NOTIONAL),
}
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
LATER_FIELDS = ("strategies", "notional")
# ... and RebalancePlan's
LATER_PLAN_FIELDS = ("targets", "cash_weight")


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


def _symbol(value: str) -> str:
    """ASCII is checked before upper-casing, which maps "ß" to "SS" and "ﬀ" to "FF"."""
    if not value.isascii():
        raise ValueError(f"malformed symbol {shown(value)}: not ASCII")
    symbol = value.strip().upper()
    if not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"malformed symbol {shown(value)}")
    return symbol


def _plain_number(value: Any, name: str) -> Any:
    """A number written as text must be plain decimal notation: Decimal would also read
    "1_000", " 1e3", "+1" and "Infinity", none of which a plan should mean."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got a boolean")
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str) and not PLAIN_DECIMAL.fullmatch(value):
        raise ValueError(
            f"{name} must be a finite number in plain decimal notation (digits, maybe a "
            f"'.' and more digits), got {shown(value)}"
        )
    return value


def _exact(value: Decimal, name: str, places: int, largest: Decimal) -> Decimal:
    """A finite number above zero with at most `places` decimals, in the one form
    `decimal_text` writes (no exponent, no trailing zeros), so equal values compare, hash
    and journal alike.

    Checked against the exact value: `normalize` rounds to the decimal context's 28
    digits, so a value longer than that must be refused before it can be rounded.
    """
    if not value.is_finite():
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")
    if value > largest:
        raise ValueError(f"{name} {value} is larger than {largest}")
    # exact: at most 13 + 9 digits, well inside the context's precision
    if value.quantize(Decimal(10) ** -places) != value:
        raise ValueError(f"{name} {value} has more than {places} decimal places")
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    assert isinstance(exponent, int)  # a finite Decimal's exponent
    return normal.quantize(_ONE) if exponent >= 0 else normal


def _weight(value: Any, name: str) -> Decimal:
    """A weight of account equity: plain decimal notation, from 0 to 1."""
    plain = _plain_number(value, name)
    try:
        weight = Decimal(plain) if isinstance(plain, (str, int)) else plain
    except ArithmeticError:
        raise ValueError(f"{name} must be a number, got {shown(str(value))}") from None
    if not isinstance(weight, Decimal):
        raise ValueError(f"{name} must be a number, got {shown(str(value))}")
    if not weight.is_finite() or not 0 <= weight <= 1:
        raise ValueError(f"{name} is {weight}, not a weight from 0 to 1")
    return ZERO if weight == 0 else _exact(weight, name, MAX_WEIGHT_DECIMALS, _ONE)


class OrderIntent(BaseModel):
    """One order the caller wants executed; immutable once built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    symbol: str
    side: OrderSide
    # shares, or `notional` dollars that preflight turns into shares at the arrival quote
    quantity: Decimal | None = None
    close_type: CloseType = CloseType.NONE
    urgency: Urgency = Urgency.MEDIUM
    correlation_id: FreeText | None = None
    strategy_id: FreeText | None = None
    # an order shared by strategies: each one's share of its fills (the ledger splits them)
    strategies: dict[FreeText, Decimal] | None = None
    notional: Decimal | None = None

    @model_validator(mode="before")
    @classmethod
    def _quantity_or_notional(cls, data: Any) -> Any:
        """Exactly one of the two; with neither, a field the model does not know is most
        likely the one meant (a typo'd `qty`), and is named as such."""
        if not isinstance(data, dict):
            return data
        given = [name for name in ("quantity", "notional") if data.get(name) is not None]
        if len(given) == 2:
            raise ValueError("give quantity (shares) or notional (dollars), not both")
        if not given:
            unknown = [str(name) for name in data if name not in cls.model_fields]
            if unknown:
                guess = difflib.get_close_matches(unknown[0], ["quantity", "notional"], 1, 0.4)
                hint = f"; did you mean '{guess[0]}'?" if guess else ""
                raise ValueError(f"unknown field '{unknown[0]}'{hint}")
            raise ValueError("give quantity (shares) or notional (dollars)")
        return data

    @field_validator("side", "close_type", "urgency", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("symbol")
    @classmethod
    def _symbol_shape(cls, value: str) -> str:
        return _symbol(value)

    @field_validator("quantity", "notional", mode="before")
    @classmethod
    def _number_plain(cls, value: Any, info: ValidationInfo) -> Any:
        return _plain_number(value, str(info.field_name))

    @field_validator("quantity", "notional")
    @classmethod
    def _size_finite_positive(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        if value is None:
            return None
        name = str(info.field_name)
        places, largest = _SIZE_LIMITS[name]
        return _exact(value, name, places, largest)

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
        if self.notional is not None and self.close_type is CloseType.FULL:
            raise ValueError("a full close sells the whole position: give no notional")
        return self

    @model_serializer(mode="wrap")
    def _later_fields_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Fields added after plans were first journaled are written only when set, so the
        digest of a plan delivered before them, and its journaled intents, stay the same."""
        data = handler(self)
        # `quantity` too: a dollar order has none until preflight sizes it
        for name in (*LATER_FIELDS, "quantity"):
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
        quantity = self.quantity
        return quantity is not None and quantity != quantity.to_integral_value()

    @property
    def shares(self) -> Decimal:
        """The quantity in shares: zero for a dollar order preflight has not sized (one
        journaled unsized never trades)."""
        return ZERO if self.quantity is None else self.quantity

    def sized(self, quantity: Decimal) -> OrderIntent:
        """This dollar order as the `quantity` of shares its notional came to."""
        return OrderIntent.build(**{**self.model_dump(), "quantity": quantity, "notional": None})


PlanId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class RebalancePlan(BaseModel):
    """A set of intents executed together under one plan_id; one order per symbol.

    Or, instead of orders, `targets`: weights of account equity per symbol, from which the
    engine derives the orders when the plan is first delivered (engine/targets.py), with
    `cash_weight` the share it keeps in cash.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_id: PlanId
    orders: tuple[OrderIntent, ...] = ()
    targets: dict[str, Decimal] | None = None
    cash_weight: Decimal | None = None

    @field_validator("targets", mode="before")
    @classmethod
    def _target_weights(cls, value: Any) -> Any:
        """Symbols as orders spell them, each once; each weight from 0 to 1."""
        if not isinstance(value, dict):
            return value
        weights: dict[str, Decimal] = {}
        for name, weight in value.items():
            symbol = _symbol(name) if isinstance(name, str) else name
            if symbol in weights:
                raise ValueError(f"symbol {symbol} appears more than once")
            weights[symbol] = _weight(weight, f"weight of {symbol}")
        return weights

    @field_validator("cash_weight", mode="before")
    @classmethod
    def _cash_weight(cls, value: Any) -> Any:
        return None if value is None else _weight(value, "cash_weight")

    @model_validator(mode="after")
    def _orders_or_targets(self) -> RebalancePlan:
        if self.targets is None:
            if not self.orders:
                raise ValueError("orders: at least 1 order is required (or targets instead)")
            if self.cash_weight is not None:
                raise ValueError("cash_weight: only a target plan has one")
        else:
            if self.orders:
                raise ValueError("give orders or targets, not both")
            total = sum(self.targets.values(), self.cash_weight or ZERO)
            if total > 1:
                raise ValueError(f"targets and cash_weight add up to {total}, more than 1")
            if not self.targets and self.cash_weight != 1:
                raise ValueError(
                    'targets: name at least one symbol (or give cash_weight "1" to close '
                    "every position)"
                )
        return self

    @model_validator(mode="after")
    def _one_order_per_symbol(self) -> RebalancePlan:
        seen: set[str] = set()
        for intent in self.orders:
            if intent.symbol in seen:
                raise ValueError(f"symbol {intent.symbol} appears more than once in the plan")
            seen.add(intent.symbol)
        return self

    @model_serializer(mode="wrap")
    def _target_fields_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        """An orders plan is written as before target plans existed (its digest unchanged);
        a target plan without its empty `orders`."""
        data = handler(self)
        for name in LATER_PLAN_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        if self.is_target_plan:
            data.pop("orders", None)
        return data

    @property
    def is_target_plan(self) -> bool:
        return self.targets is not None


def _refuse_too_many_orders(payload: Any, max_orders: int) -> None:
    """Counted before any order is validated: a million-order file is refused at once (a
    target plan by its symbols, each at most one order)."""
    for name in ("orders", "targets"):
        lines = payload.get(name) if isinstance(payload, dict) else None
        if isinstance(lines, (list, dict)) and len(lines) > max_orders:
            raise InvalidPlan(
                f"invalid plan: {name}: {len(lines)} {name}, at most {max_orders} per plan"
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
