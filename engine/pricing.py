"""Limit prices for the walk: a ratio of the spread toward the aggressive side, on tick."""

from __future__ import annotations

from decimal import Decimal

from .intents import OrderSide
from .numbers import ceil_to, floor_to, round_to

__all__ = ["PENNY", "SUB_PENNY", "limit_price", "tick_size"]

PENNY = Decimal("0.01")
SUB_PENNY = Decimal("0.0001")
ONE_DOLLAR = Decimal(1)


def tick_size(price: Decimal, price_increment: Decimal | None = None) -> Decimal:
    """The asset's own increment when known, else 0.01 at or above $1 and 0.0001 below."""
    if price_increment is not None and price_increment > 0:
        return price_increment
    return PENNY if price >= ONE_DOLLAR else SUB_PENNY


def limit_price(
    side: OrderSide,
    bid: Decimal,
    ask: Decimal,
    ratio: Decimal,
    price_increment: Decimal | None = None,
) -> Decimal:
    """BUY: bid + ratio*(ask-bid); SELL: ask - ratio*(ask-bid); rounded to tick, kept in [bid, ask].

    Rounding is half-up on the raw price and the clamp is monotone, so a larger ratio
    never gives a less aggressive price for the same quote.
    """
    spread = ask - bid
    raw = bid + ratio * spread if side is OrderSide.BUY else ask - ratio * spread
    tick = tick_size(raw, price_increment)
    lowest = ceil_to(bid, tick_size(bid, price_increment))
    highest = floor_to(ask, tick_size(ask, price_increment))
    price = round_to(raw, tick)
    if lowest <= highest:
        price = min(max(price, lowest), highest)
    return price.normalize() if price == 0 else price
