"""Limit prices for the walk: on tick, inside the quote, monotone in the ladder ratio."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.intents import OrderSide
from engine.pricing import limit_price, tick_size

CENT = Decimal("0.01")
SUB = Decimal("0.0001")
INCREMENTS = [Decimal("0.05"), Decimal("0.25"), Decimal("0.005")]

Quote = tuple[Decimal, Decimal, Decimal | None]


@st.composite
def quotes(draw: st.DrawFn) -> Quote:
    """(bid, ask, price_increment) with both sides on their tick and bid <= ask."""
    kind = draw(st.sampled_from(["sub_dollar", "dollar", "straddle", "increment"]))
    if kind == "sub_dollar":
        bid_ticks = draw(st.integers(1, 9_999))
        ask_ticks = draw(st.integers(bid_ticks, 9_999))
        return bid_ticks * SUB, ask_ticks * SUB, None
    if kind == "dollar":
        bid_ticks = draw(st.integers(100, 10_000_00))
        ask_ticks = bid_ticks + draw(st.integers(0, 500))
        return bid_ticks * CENT, ask_ticks * CENT, None
    if kind == "straddle":
        bid_ticks = draw(st.integers(9_000, 9_999))
        ask_ticks = draw(st.integers(100, 120))
        return bid_ticks * SUB, ask_ticks * CENT, None
    increment = draw(st.sampled_from(INCREMENTS))
    bid_ticks = draw(st.integers(1, 100_000))
    ask_ticks = bid_ticks + draw(st.integers(0, 200))
    return bid_ticks * increment, ask_ticks * increment, increment


ratios = st.integers(0, 10_000).map(lambda n: Decimal(n) / 10_000)
sides = st.sampled_from([OrderSide.BUY, OrderSide.SELL])


def on_tick(price: Decimal, increment: Decimal | None) -> bool:
    """True when `price` is a whole number of its own ticks."""
    return price % tick_size(price, increment) == 0


@given(quote=quotes(), side=sides, ratio=ratios)
def test_price_is_on_tick(quote: Quote, side: OrderSide, ratio: Decimal) -> None:
    """The limit price is a multiple of the tick that applies at that price."""
    bid, ask, increment = quote
    price = limit_price(side, bid, ask, ratio, increment)
    assert on_tick(price, increment), (price, tick_size(price, increment))


@given(quote=quotes(), side=sides, ratio=ratios)
def test_price_is_inside_the_quote(quote: Quote, side: OrderSide, ratio: Decimal) -> None:
    """The limit price never leaves [bid, ask] for a ratio in [0, 1]."""
    bid, ask, increment = quote
    assert bid <= limit_price(side, bid, ask, ratio, increment) <= ask


@given(
    quote=quotes(),
    side=sides,
    ratio=st.integers(-20_000, 30_000).map(lambda n: Decimal(n) / 10_000),
)
def test_out_of_range_ratio_is_clamped(quote: Quote, side: OrderSide, ratio: Decimal) -> None:
    """Even a ratio outside [0, 1] gives a price inside [bid, ask] and on tick."""
    bid, ask, increment = quote
    price = limit_price(side, bid, ask, ratio, increment)
    assert bid <= price <= ask
    assert on_tick(price, increment)


@given(quote=quotes(), side=sides, ladder=st.lists(ratios, min_size=2, max_size=8))
def test_more_aggressive_ratio_never_gives_a_worse_price(
    quote: Quote, side: OrderSide, ladder: list[Decimal]
) -> None:
    """Across increasing ratios on one quote, BUY prices never fall and SELL prices never rise."""
    bid, ask, increment = quote
    prices = [limit_price(side, bid, ask, r, increment) for r in sorted(ladder)]
    expected = sorted(prices) if side is OrderSide.BUY else sorted(prices, reverse=True)
    assert prices == expected


@given(quote=quotes())
def test_ratio_zero_is_passive_touch_and_one_is_far_touch(quote: Quote) -> None:
    """Ratio 0 joins the near touch (BUY bid, SELL ask); ratio 1 takes the far touch."""
    bid, ask, increment = quote
    assert limit_price(OrderSide.BUY, bid, ask, Decimal(0), increment) == bid
    assert limit_price(OrderSide.SELL, bid, ask, Decimal(0), increment) == ask
    assert limit_price(OrderSide.BUY, bid, ask, Decimal(1), increment) == ask
    assert limit_price(OrderSide.SELL, bid, ask, Decimal(1), increment) == bid


@given(quote=quotes(), ratio=ratios)
def test_buy_and_sell_are_within_a_tick_of_the_raw_price(quote: Quote, ratio: Decimal) -> None:
    """The result is the raw ratio price rounded: at most half a tick away from it."""
    bid, ask, increment = quote
    spread = ask - bid
    for side, raw in (
        (OrderSide.BUY, bid + ratio * spread),
        (OrderSide.SELL, ask - ratio * spread),
    ):
        price = limit_price(side, bid, ask, ratio, increment)
        tick = max(tick_size(raw, increment), tick_size(price, increment))
        assert abs(price - raw) <= tick / 2, (side, raw, price)


@pytest.mark.parametrize(
    ("side", "bid", "ask", "ratio", "increment", "expected"),
    [
        (OrderSide.BUY, "100.00", "100.10", "0.75", None, "100.08"),
        (OrderSide.SELL, "100.00", "100.10", "0.75", None, "100.03"),
        (OrderSide.BUY, "100.00", "100.10", "0.85", None, "100.09"),
        (OrderSide.SELL, "100.00", "100.10", "0.85", None, "100.02"),
        (OrderSide.BUY, "100.00", "100.10", "0.95", None, "100.10"),
        (OrderSide.SELL, "100.00", "100.10", "0.95", None, "100.01"),
        (OrderSide.BUY, "0.5000", "0.5010", "0.75", None, "0.5008"),
        (OrderSide.SELL, "0.5000", "0.5010", "0.75", None, "0.5003"),
        (OrderSide.BUY, "0.0512", "0.0520", "0.5", None, "0.0516"),
        (OrderSide.BUY, "10.00", "11.00", "0.75", "0.05", "10.75"),
        (OrderSide.SELL, "10.00", "11.00", "0.75", "0.05", "10.25"),
        (OrderSide.BUY, "10.00", "10.50", "0.75", "0.25", "10.50"),
        (OrderSide.BUY, "0.9990", "1.01", "0.5", None, "1.00"),
    ],
)
def test_known_examples(
    side: OrderSide, bid: str, ask: str, ratio: str, increment: str | None, expected: str
) -> None:
    """Worked examples from the design, including half-up rounding and sub-dollar ticks."""
    price = limit_price(
        side,
        Decimal(bid),
        Decimal(ask),
        Decimal(ratio),
        None if increment is None else Decimal(increment),
    )
    assert price == Decimal(expected)


def test_sub_dollar_buy_is_not_rounded_to_cents() -> None:
    """A sub-dollar BUY keeps 0.0001 precision instead of falling under the bid at a cent."""
    price = limit_price(OrderSide.BUY, Decimal("0.5001"), Decimal("0.5009"), Decimal("0.75"))
    assert price == Decimal("0.5007")
    assert price % SUB == 0
    assert price % CENT != 0


@pytest.mark.parametrize(
    ("price", "increment", "expected"),
    [
        ("1", None, "0.01"),
        ("1.00", None, "0.01"),
        ("250.37", None, "0.01"),
        ("0.9999", None, "0.0001"),
        ("0.5", None, "0.0001"),
        ("0.0001", None, "0.0001"),
        ("250.37", "0.05", "0.05"),
        ("0.5", "0.05", "0.05"),
        ("0.5", "0", "0.0001"),
        ("5", "0", "0.01"),
    ],
)
def test_tick_size(price: str, increment: str | None, expected: str) -> None:
    """0.01 at or above $1, 0.0001 below, unless a positive price increment overrides it."""
    inc = None if increment is None else Decimal(increment)
    assert tick_size(Decimal(price), inc) == Decimal(expected)
