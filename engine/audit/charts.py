"""One inline SVG chart per order: bid, ask, step limits and fills, on a plan's common scale.

The price axis is in bps from each order's own arrival mid (0), one scale for every order
of a plan so a cent on SPY and a cent on a $1 stock look as small or as large as they
are; each tick also gives the order's absolute price. The time axis is the journal's clock
(HH:MM:SS UTC). Every label is placed inside the chart's viewBox, so none is clipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import escape

from ..events import EventKind
from ..fsm import OrderState, is_limit_step, step_number
from ..numbers import decimal_text
from .timeline import OrderTimeline

__all__ = ["MIN_SPAN_BPS", "OrderSeries", "PlanScale", "clock_text", "order_chart"]

WIDTH, HEIGHT = 400, 180
LEFT, RIGHT, TOP, BOTTOM = 34, 48, 16, 18
FONT_PX = 9
# wider than a 9px DejaVu Sans digit (5.7px), so an estimated label box holds the real one
CHAR_PX = 6.0
# the narrowest price axis a plan gets: a 2-cent move on a $600 stock stays a small move
MIN_SPAN_BPS = 20.0
PAD_SHARE = 0.08
BPS = Decimal(10_000)
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
CLOCK_PX = 8 * CHAR_PX  # HH:MM:SS


def clock_text(at: datetime) -> str:
    """A journal time as the charts and tables print it: HH:MM:SS in UTC."""
    return at.astimezone(UTC).strftime("%H:%M:%S")


@dataclass
class OrderSeries:
    """What one order's chart draws: prices over seconds since its first quote.

    `mid` is the arrival mid (the quote of the move into QUOTED), the chart's 0 bps.
    """

    start: datetime
    mid: Decimal
    end: float = 0.0
    quotes: list[tuple[float, Decimal, Decimal]] = field(default_factory=list)
    limits: list[tuple[float, float, Decimal, str]] = field(default_factory=list)
    fills: list[tuple[float, Decimal, Decimal]] = field(default_factory=list)
    market_at: float | None = None

    @classmethod
    def of(cls, timeline: OrderTimeline) -> OrderSeries | None:
        """The order's series; None before its first quote (or for a quote with no mid)."""
        moves = [e for e in timeline.entries if e.kind == EventKind.TRANSITION]
        first = next((e for e in moves if e.quote), None)
        if first is None or first.quote is None:
            return None
        mid = (Decimal(first.quote["bid"]) + Decimal(first.quote["ask"])) / 2
        if mid <= 0:
            return None
        series = cls(datetime.fromisoformat(first.at), mid)
        series.end = series.seconds(timeline.entries[-1].at)
        for entry, following in zip(moves, [*moves[1:], None], strict=True):
            at = series.seconds(entry.at)
            quote = entry.move_quote
            if quote is not None:
                series.quotes.append((at, Decimal(quote["bid"]), Decimal(quote["ask"])))
            if is_limit_step(entry.state) and entry.limit_price is not None:
                until = series.end if following is None else series.seconds(following.at)
                label = f"L{step_number(entry.state)}"
                series.limits.append((at, until, entry.limit_price, label))
            if entry.state == OrderState.MARKET:
                series.market_at = at
        for fill in timeline.fills:
            assert fill.fill_price is not None
            assert fill.fill_qty is not None
            series.fills.append((series.seconds(fill.at), fill.fill_price, fill.fill_qty))
        return series

    def seconds(self, at: str) -> float:
        return max(0.0, (datetime.fromisoformat(at) - self.start).total_seconds())

    def bps(self, price: Decimal) -> float:
        """Where a price sits against the arrival mid, in bps (above the mid is positive)."""
        return float((price - self.mid) / self.mid * BPS)

    def price(self, bps: float) -> Decimal:
        return self.mid * (1 + Decimal(repr(bps)) / BPS)

    def bps_range(self) -> tuple[float, float]:
        prices = [
            *(p for _, bid, ask in self.quotes for p in (bid, ask)),
            *(limit for *_, limit, _ in self.limits),
            *(price for _, price, _ in self.fills),
        ]
        points = [self.bps(p) for p in prices]
        return min(points, default=0.0), max(points, default=0.0)


def _nice_step(span: float, count: int) -> float:
    """A 1, 2 or 5 times a power of ten near `span / count`: round tick values."""
    raw = span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


@dataclass(frozen=True)
class PlanScale:
    """The price axis every order of a plan shares, in bps from each order's arrival mid."""

    low: float
    high: float
    step: float
    ticks: tuple[float, ...]

    @classmethod
    def of(cls, series: Iterable[OrderSeries]) -> PlanScale:
        ranges = [s.bps_range() for s in series]
        low = min((lo for lo, _ in ranges), default=0.0)
        high = max((hi for _, hi in ranges), default=0.0)
        if high - low < MIN_SPAN_BPS:
            middle = (high + low) / 2
            low, high = middle - MIN_SPAN_BPS / 2, middle + MIN_SPAN_BPS / 2
        pad = (high - low) * PAD_SHARE
        low, high = low - pad, high + pad
        step = _nice_step(high - low, 4)
        first = math.ceil(low / step)
        ticks = tuple(n * step for n in range(first, math.floor(high / step) + 1))
        return cls(low, high, step, ticks)

    def y(self, bps: float) -> float:
        share = (bps - self.low) / (self.high - self.low)
        return round(TOP + (1 - share) * (HEIGHT - TOP - BOTTOM), 1)


def _price_text(price: Decimal, step: Decimal) -> str:
    """A tick's price with enough places to tell it from the next tick's (2 to 4)."""
    places = min(4, max(2, 1 - math.floor(math.log10(step))))
    return f"{price:.{places}f}"


def _bps_text(bps: float) -> str:
    text = f"{bps:+.10g}"
    return "0" if bps == 0 else text.replace("-", "\u2212")


class _Labels:
    """Places labels inside the plot area, each clear of those placed before it."""

    def __init__(self) -> None:
        self.boxes: list[tuple[float, float, float, float]] = []

    def place(self, text: str, x: float, y: float) -> str:
        """A `<text>` near (x, y) (baseline y): moved inside the plot, then up or down a line
        at a time until it overlaps no other label."""
        width = len(text) * CHAR_PX
        x = round(min(max(x, LEFT + 1), WIDTH - RIGHT - 1 - width), 1)
        lowest, highest = HEIGHT - BOTTOM - 2, TOP + FONT_PX
        for shift in (0, -10, 10, -20, 20, -30, 30):
            baseline = min(max(y + shift, highest), lowest)
            box = (x, baseline - FONT_PX, x + width, baseline + 2)
            if not any(_overlap(box, other) for other in self.boxes):
                break
        self.boxes.append((x, baseline - FONT_PX, x + width, baseline + 2))
        return f'<text x="{x}" y="{baseline}">{escape(text)}</text>'


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class _Frame:
    """Maps an order's seconds and prices onto the chart, on its plan's scale."""

    def __init__(self, series: OrderSeries, scale: PlanScale) -> None:
        self.series, self.scale = series, scale
        # the x axis spans the order's own life, a second at least (a market order: ms)
        self.duration = max(series.end, 1.0)

    def x(self, seconds: float) -> float:
        return round(LEFT + seconds / self.duration * (WIDTH - LEFT - RIGHT), 1)

    def y(self, price: Decimal) -> float:
        return self.scale.y(self.series.bps(price))

    def price_axis(self) -> list[str]:
        """Ticks in bps on the left, the order's own price at each on the right."""
        scale, series = self.scale, self.series
        step = series.mid * Decimal(repr(scale.step)) / BPS
        parts = [
            f'<text x="2" y="{FONT_PX}">bps</text>',
            f'<text x="{WIDTH - 2}" y="{FONT_PX}" text-anchor="end">price</text>',
        ]
        for tick in scale.ticks:
            y = scale.y(tick)
            colour = "#999" if tick == 0 else "#eee"
            parts.append(
                f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="{colour}"/>'
                f'<text class="bps" x="{LEFT - 3}" y="{y + 3}" text-anchor="end">'
                f"{_bps_text(tick)}</text>"
                f'<text class="price" x="{WIDTH - RIGHT + 3}" y="{y + 3}">'
                f"{_price_text(series.price(tick), step)}</text>"
            )
        return parts

    def time_axis(self) -> list[str]:
        """The clock (HH:MM:SS UTC) at the first quote, at the order's last event and at
        round times between them, no two labels overlapping or alike."""
        series, y = self.series, HEIGHT - 4
        start, end = clock_text(series.start), self.x(series.end)
        parts = [f'<text class="clock" x="{LEFT}" y="{y}">{start}</text>']
        taken: list[tuple[float, float]] = [(LEFT, LEFT + CLOCK_PX)]
        last = clock_text(series.start + timedelta(seconds=series.end))
        ends = last != start and end - CLOCK_PX > LEFT + CLOCK_PX
        if ends:
            taken.append((end - CLOCK_PX, end))
        epoch = series.start.timestamp()
        step = next((s for s in TIME_STEPS if self.duration / s <= 4), TIME_STEPS[-1])
        for at in range(math.ceil(epoch / step) * step, int(epoch + series.end) + 1, step):
            x = self.x(at - epoch)
            tick = (
                f'<line x1="{x}" y1="{HEIGHT - BOTTOM}" x2="{x}" y2="{y - FONT_PX}" stroke="#999"/>'
            )
            box = (x - CLOCK_PX / 2, x + CLOCK_PX / 2)
            label = clock_text(series.start + timedelta(seconds=at - epoch))
            clear = not any(box[0] < right + 4 and left - 4 < box[1] for left, right in taken)
            if clear and label != start and not (ends and label == last):
                taken.append(box)
                tick += f'<text class="clock" x="{x}" y="{y}" text-anchor="middle">{label}</text>'
            parts.append(tick)
        if ends:
            parts.append(f'<text class="clock" x="{end}" y="{y}" text-anchor="end">{last}</text>')
        return parts


def _step_path(frame: _Frame, points: list[tuple[float, Decimal]], end: float) -> str:
    """A step line: each price holds until the next quote, the last one until `end`."""
    parts = [f"M{frame.x(points[0][0])},{frame.y(points[0][1])}"]
    for at, price in points[1:]:
        parts.append(f"H{frame.x(at)}V{frame.y(price)}")
    parts.append(f"H{frame.x(end)}")
    return "".join(parts)


def order_chart(title: str, series: OrderSeries | None, scale: PlanScale) -> str:
    """An inline SVG of the order's bid and ask over time, each step's limit and each fill
    (labelled `size @ price`), on its plan's scale."""
    head = (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img">'
        f"<title>{escape(title)}: bid, ask, step limits and fills</title>"
    )
    if series is None:
        return f'{head}<text x="{LEFT}" y="{HEIGHT // 2}">no quote journaled</text></svg>'
    frame, labels = _Frame(series, scale), _Labels()
    body = [
        *frame.price_axis(),
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#bbb"/>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" '
        'stroke="#bbb"/>',
        *frame.time_axis(),
    ]
    bids = [(at, bid) for at, bid, _ in series.quotes]
    asks = [(at, ask) for at, _, ask in series.quotes]
    for name, points in (("bid", bids), ("ask", asks)):
        path = _step_path(frame, points, frame.duration)
        body.append(f'<path class="{name}" d="{path}" fill="none" stroke-width="1.5"/>')
    for start, until, limit, label in series.limits:
        x, y = frame.x(start), frame.y(limit)
        body.append(
            f'<line class="limit" x1="{x}" y1="{y}" x2="{frame.x(until)}" y2="{y}" '
            f'stroke-dasharray="4 2"><title>{label} limit {decimal_text(limit)}</title></line>'
            + labels.place(label, x + 2, y - 2)
        )
    if series.market_at is not None:
        x = frame.x(series.market_at)
        body.append(
            f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{HEIGHT - BOTTOM}" stroke="#888" '
            f'stroke-dasharray="1 2"><title>escalated to market</title></line>'
            + labels.place("M", x + 2, HEIGHT - BOTTOM - 2)
        )
    for at, price, qty in series.fills:
        x, y = frame.x(at), frame.y(price)
        text = f"{decimal_text(qty)} @ {decimal_text(price)}"
        body.append(
            f'<circle cx="{x}" cy="{y}" r="3" fill="#222"><title>fill {text}</title></circle>'
            f'<g class="fill">{labels.place(text, x + 4, y - 4)}</g>'
        )
    return head + "".join(body) + "</svg>"
