"""Decimal helpers: money and quantities never pass through float."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

__all__ = [
    "BPS",
    "CENT",
    "ZERO",
    "ceil_to",
    "cents",
    "decimal_text",
    "floor_to",
    "money",
    "parse_decimal",
    "round_to",
]

ZERO = Decimal(0)
# basis points in one
BPS = Decimal(10_000)
CENT = Decimal("0.01")


def decimal_text(value: Decimal) -> str:
    """Shortest plain text for a decimal (no exponent, no trailing zeros): stable in the journal."""
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def parse_decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def round_to(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).quantize(Decimal(1), rounding=ROUND_HALF_UP) * step


def floor_to(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).quantize(Decimal(1), rounding=ROUND_FLOOR) * step


def ceil_to(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).quantize(Decimal(1), rounding=ROUND_CEILING) * step


def cents(value: Decimal) -> Decimal:
    """A dollar figure to the cent, as limits and previews show money."""
    return value.quantize(CENT)


def money(value: Decimal) -> str:
    return f"{value:.2f}"
