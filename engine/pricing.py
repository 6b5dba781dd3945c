"""Limit prices for the walk: a ratio of the spread toward the aggressive side, on tick."""

from __future__ import annotations

from decimal import Decimal

from .intents import OrderSide
from .numbers import BPS, ceil_to, floor_to, round_to

__all__ = [
    "PENNY",
    "SUB_PENNY",
    "band_edge",
    "beyond_band",
    "held_to_band",
    "limit_price",
    "spread_bps",
    "tick_size",
]

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


def band_edge(side: OrderSide, arrival_mid: Decimal, band_bps: Decimal) -> Decimal:
    """The furthest price a price band lets an order pay (a buy) or accept (a sell)."""
    offset = arrival_mid * band_bps / BPS
    return arrival_mid + offset if side is OrderSide.BUY else arrival_mid - offset


def held_to_band(
    side: OrderSide, price: Decimal, edge: Decimal, price_increment: Decimal | None = None
) -> Decimal:
    """`price`, no further than `edge`: a buy's limit at most the edge rounded down to the
    tick, a sell's at least the edge rounded up."""
    tick = tick_size(edge, price_increment)
    if side is OrderSide.BUY:
        return min(price, floor_to(edge, tick))
    return max(price, ceil_to(edge, tick))


def beyond_band(
    side: OrderSide, bid: Decimal, ask: Decimal, edge: Decimal, *, crossing: bool = False
) -> bool:
    """Whether the market is past a price band's edge. Resting: a buy's best bid above it
    (no price inside the band is competitive), a sell's best ask below it. `crossing` (a
    market order, which trades at the far touch): a buy's ask above it, a sell's bid below."""
    if side is OrderSide.BUY:
        return (ask if crossing else bid) > edge
    return (bid if crossing else ask) < edge


def spread_bps(bid: Decimal, ask: Decimal) -> Decimal:
    """The spread in basis points of the mid."""
    mid = (bid + ask) / 2
    return (ask - bid) / mid * BPS if mid > 0 else BPS
