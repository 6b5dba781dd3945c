"""Order intents and plans: bad input raises a typed error naming it; good input round-trips."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.errors import InputError, InvalidIntent, InvalidPlan
from engine.intents import (
    CloseType,
    OrderIntent,
    OrderSide,
    RebalancePlan,
    Urgency,
    load_plan,
    parse_plan,
)

GOOD: dict[str, Any] = {"symbol": "AAPL", "side": "buy", "quantity": "10"}


def intent_with(**changes: Any) -> dict[str, Any]:
    """A valid intent payload with some fields replaced."""
    return {**GOOD, **changes}


def test_errors_are_input_errors() -> None:
    """InvalidIntent and InvalidPlan are both InputError subclasses (CLI exit 2)."""
    assert issubclass(InvalidIntent, InputError)
    assert issubclass(InvalidPlan, InputError)


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"quantity": "-1"}, ["quantity", "greater than zero"]),
        ({"quantity": -5}, ["quantity", "greater than zero"]),
        ({"quantity": "0"}, ["quantity", "greater than zero"]),
        ({"quantity": Decimal(0)}, ["quantity", "greater than zero"]),
        ({"quantity": "NaN"}, ["quantity", "finite"]),
        ({"quantity": Decimal("NaN")}, ["quantity", "finite"]),
        ({"quantity": float("nan")}, ["quantity", "finite"]),
        ({"quantity": "Infinity"}, ["quantity", "finite"]),
        ({"quantity": "-Infinity"}, ["quantity", "finite"]),
        ({"quantity": float("inf")}, ["quantity", "finite"]),
        ({"quantity": "0.0000000001"}, ["quantity", "decimal places"]),
        ({"quantity": "1.1234567891"}, ["quantity", "decimal places"]),
        # longer than the decimal context's 28 digits: refused, not rounded to 1
        ({"quantity": "1.00000000000000000000000000001"}, ["quantity", "decimal places"]),
        ({"quantity": "123456789012345678901234567890"}, ["quantity", "larger than"]),
        ({"quantity": "1000000000000.5"}, ["quantity", "larger than"]),
        ({"quantity": "ten"}, ["quantity"]),
        ({"symbol": ""}, ["symbol", "malformed"]),
        ({"symbol": "aa pl"}, ["symbol", "malformed", "aa pl"]),
        ({"symbol": "TOOLONGSYMBOL1"}, ["symbol", "malformed", "TOOLONGSYMBOL1"]),
        ({"symbol": "1ABC"}, ["symbol", "malformed"]),
        ({"side": "buy", "close_type": "full"}, ["close_type full", "requires side sell"]),
        ({"side": "BUY", "close_type": "partial"}, ["close_type partial", "requires side sell"]),
        ({"side": "hold"}, ["side"]),
        ({"urgency": "asap"}, ["urgency"]),
        ({"venue": "NYSE"}, ["unknown field 'venue'"]),
    ],
)
def test_invalid_intent_is_refused(changes: dict[str, Any], needles: list[str]) -> None:
    """Each bad intent raises InvalidIntent with a message naming the field and the problem."""
    with pytest.raises(InvalidIntent) as info:
        OrderIntent.build(**intent_with(**changes))
    for needle in needles:
        assert needle in info.value.message, info.value.message
    assert "\n" not in info.value.message


def test_missing_required_field_is_named() -> None:
    """Leaving out the size names the two ways to give it."""
    with pytest.raises(InvalidIntent, match=r"^give quantity \(shares\) or notional \(dollars\)$"):
        OrderIntent.build(symbol="AAPL", side="buy")


def test_case_insensitive_enums_and_defaults() -> None:
    """Enums accept any case; urgency defaults to medium and close_type to none."""
    intent = OrderIntent.build(symbol="msft", side="BUY", quantity="10.50")
    assert intent.symbol == "MSFT"
    assert intent.side is OrderSide.BUY
    assert intent.urgency is Urgency.MEDIUM
    assert intent.close_type is CloseType.NONE
    assert intent.quantity == Decimal("10.5")
    assert str(intent.quantity) == "10.5"
    closing = OrderIntent.build(
        symbol="TSLA", side="Sell", quantity=3, close_type="FULL", urgency="Low"
    )
    assert (closing.side, closing.close_type, closing.urgency) == (
        OrderSide.SELL,
        CloseType.FULL,
        Urgency.LOW,
    )


def test_trailing_zeros_beyond_nine_places_are_accepted() -> None:
    """Precision counts significant decimals: 1.0000000000 is the whole number 1."""
    assert str(OrderIntent.build(**intent_with(quantity="1.0000000000")).quantity) == "1"


def test_float_quantity_is_read_by_its_repr() -> None:
    """A float like 0.1 becomes Decimal('0.1'), not its binary expansion."""
    assert OrderIntent.build(**intent_with(quantity=0.1)).quantity == Decimal("0.1")


def test_intent_is_frozen() -> None:
    """An OrderIntent cannot be changed after it is built."""
    intent = OrderIntent.build(**GOOD)
    with pytest.raises(ValidationError, match="frozen"):
        intent.quantity = Decimal(99)  # type: ignore[misc]
    assert intent.quantity == Decimal(10)


def test_plan_is_frozen() -> None:
    """A RebalancePlan cannot be changed after it is parsed."""
    plan = parse_plan({"plan_id": "p1", "orders": [GOOD]})
    with pytest.raises(ValidationError, match="frozen"):
        plan.plan_id = "p2"  # type: ignore[misc]
    assert plan.plan_id == "p1"


@given(
    quantity=st.decimals(
        min_value=0,
        max_value=Decimal("1e9"),
        places=9,
        allow_nan=False,
        allow_infinity=False,
    ).filter(lambda q: 0 < q < Decimal("1e9")),
    as_text=st.booleans(),
)
def test_any_valid_quantity_is_accepted_and_preserved(quantity: Decimal, as_text: bool) -> None:
    """Any quantity in (0, 1e9) with at most 9 decimals is accepted with the same value."""
    raw: Decimal | str = format(quantity, "f") if as_text else quantity
    intent = OrderIntent.build(**intent_with(quantity=raw))
    assert intent.quantity == quantity
    assert intent.quantity.normalize().as_tuple().exponent >= -9  # type: ignore[operator]
    assert intent.is_fractional == (quantity != quantity.to_integral_value())


@given(
    quantity=st.decimals(min_value=0, max_value=1000, places=12, allow_nan=False).filter(
        lambda q: q > 0 and q.normalize().as_tuple().exponent < -9  # type: ignore[operator]
    )
)
def test_any_over_precise_quantity_is_refused(quantity: Decimal) -> None:
    """A quantity with more than 9 significant decimal places is refused, never rounded."""
    with pytest.raises(InvalidIntent, match="more than 9 decimal places"):
        OrderIntent.build(**intent_with(quantity=quantity))


# -- plans -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "needles"),
    [
        ({"plan_id": "p1", "orders": []}, ["orders", "at least 1"]),
        ({"plan_id": "p1"}, ["orders", "required"]),
        ({"orders": [GOOD]}, ["plan_id", "required"]),
        ({"plan_id": "", "orders": [GOOD]}, ["plan_id"]),
        ({"plan_id": "has space", "orders": [GOOD]}, ["plan_id"]),
        (
            {"plan_id": "p1", "orders": [GOOD, {**GOOD, "symbol": "aapl", "quantity": "1"}]},
            ["AAPL", "more than once"],
        ),
        ({"plan_id": "p1", "orders": [GOOD], "note": "x"}, ["unknown field 'note'"]),
        (
            {"plan_id": "p1", "orders": [GOOD, {**GOOD, "symbol": "MSFT", "quantity": "-2"}]},
            [
                "orders.1.quantity",
                "greater than zero",
            ],
        ),
        ({"plan_id": "p1", "orders": [{**GOOD, "close_type": "full"}]}, ["requires side sell"]),
        ([GOOD], ["valid dictionary"]),
    ],
)
def test_invalid_plan_is_refused(payload: Any, needles: list[str]) -> None:
    """Each bad plan raises InvalidPlan with one line naming the problem."""
    with pytest.raises(InvalidPlan) as info:
        parse_plan(payload)
    message = info.value.message
    assert message.startswith("invalid plan: ")
    for needle in needles:
        assert needle in message, message
    assert "\n" not in message


def test_valid_plan_round_trips() -> None:
    """A valid plan keeps its plan_id and order sequence, each intent normalised like build()."""
    plan = parse_plan(
        {
            "plan_id": "rebal-2026-11-23",
            "orders": [
                {"symbol": "tsla", "side": "SELL", "quantity": "2.50", "close_type": "Partial"},
                {"symbol": "AAPL", "side": "buy", "quantity": 3, "urgency": "HIGH"},
            ],
        }
    )
    assert isinstance(plan, RebalancePlan)
    assert plan.plan_id == "rebal-2026-11-23"
    assert [o.symbol for o in plan.orders] == ["TSLA", "AAPL"]
    assert plan.orders[0] == OrderIntent.build(
        symbol="TSLA", side="sell", quantity=Decimal("2.5"), close_type="partial"
    )
    assert plan.orders[1].urgency is Urgency.HIGH
    assert plan.orders[1].close_type is CloseType.NONE


def write(tmp_path: Path, text: str) -> Path:
    """Write a plan file and return its path."""
    path = tmp_path / "plan.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_plan_reads_json_numbers_as_decimals(tmp_path: Path) -> None:
    """A JSON number 10.50 in a plan file becomes Decimal('10.5'), never a float."""
    path = write(
        tmp_path,
        '{"plan_id": "p1", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": 10.50}]}',
    )
    plan = load_plan(path)
    assert str(plan.orders[0].quantity) == "10.5"
    assert plan == load_plan(str(path))


def test_load_plan_malformed_json(tmp_path: Path) -> None:
    """A file that is not JSON raises InvalidPlan naming the file and the line."""
    path = write(tmp_path, '{"plan_id": "p1",\n "orders": [}')
    with pytest.raises(InvalidPlan) as info:
        load_plan(path)
    assert str(path) in info.value.message
    assert "not valid JSON" in info.value.message
    assert "line 2" in info.value.message


def test_load_plan_missing_file(tmp_path: Path) -> None:
    """A missing plan file raises InvalidPlan saying it does not exist."""
    path = tmp_path / "nope.json"
    with pytest.raises(InvalidPlan, match="does not exist") as info:
        load_plan(path)
    assert str(path) in info.value.message


def test_load_plan_directory(tmp_path: Path) -> None:
    """A directory given as the plan file raises InvalidPlan, not an OSError."""
    with pytest.raises(InvalidPlan, match="cannot read plan file"):
        load_plan(tmp_path)


def test_load_plan_nan_literal(tmp_path: Path) -> None:
    """A bare NaN literal in a plan file is refused: it is not JSON."""
    path = write(
        tmp_path,
        '{"plan_id": "p1", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": NaN}]}',
    )
    with pytest.raises(InvalidPlan, match="NaN is not a JSON number"):
        load_plan(path)


def test_load_plan_validates_contents(tmp_path: Path) -> None:
    """A well-formed JSON file with a duplicate symbol is refused like parse_plan refuses it."""
    orders = [GOOD, {**GOOD, "quantity": "2"}]
    path = write(tmp_path, json.dumps({"plan_id": "p1", "orders": orders}))
    with pytest.raises(InvalidPlan, match="symbol AAPL appears more than once"):
        load_plan(path)
