"""The execution report as one self-contained HTML file: tables and an inline SVG per order.

Everything is inline (CSS, SVG; no script, no font, no URL), so the file can be mailed,
archived beside the journal and opened offline years later. Charts are small multiples
in a grid, which stays readable at a hundred orders.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from html import escape
from pathlib import Path

from ..files import write_private_text
from ..fsm import OrderState, is_limit_step, step_number
from ..numbers import decimal_text
from ..order import EventKind
from .quality import (
    SUMMARY_COLUMNS,
    TEXT_COLUMNS,
    ExecutionReport,
    OrderQuality,
    cell_text,
    percent,
    summarize,
)
from .timeline import OrderTimeline, replay

__all__ = ["order_chart", "render_html", "report_html"]

WIDTH, HEIGHT = 300, 130
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 8, 16

CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.FAILED { color: #b00020; } .VALIDATED { color: #1b5e20; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(310px, 1fr)); gap: 8px; }
figure { margin: 0; padding: 4px; border: 1px solid #ddd; border-radius: 4px; }
figcaption { font-size: 12px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
svg text { font-size: 9px; fill: #555; }
.bid { stroke: #1565c0; color: #1565c0; } .ask { stroke: #c62828; color: #c62828; }
.limit { stroke: #ef6c00; color: #ef6c00; }
.key span { display: inline-block; margin-right: 1.2em; }
"""


def _seconds(at: str, start: datetime) -> float:
    return (datetime.fromisoformat(at) - start).total_seconds()


@dataclass
class _Series:
    """What one order's chart draws, in seconds since its first quote and in prices."""

    quotes: list[tuple[float, Decimal, Decimal]] = field(default_factory=list)
    limits: list[tuple[float, float, Decimal, str]] = field(default_factory=list)
    fills: list[tuple[float, Decimal, Decimal]] = field(default_factory=list)
    market_at: float | None = None
    end: float = 0.0

    @classmethod
    def of(cls, timeline: OrderTimeline) -> _Series | None:
        quoted = [e for e in timeline.entries if e.kind == EventKind.TRANSITION and e.quote]
        if not quoted:
            return None
        start = datetime.fromisoformat(quoted[0].at)
        series = cls(end=_seconds(timeline.entries[-1].at, start))
        moves = [e for e in timeline.entries if e.kind == EventKind.TRANSITION]
        for entry, following in zip(moves, [*moves[1:], None], strict=True):
            at = _seconds(entry.at, start)
            quote = entry.data.get("quote")
            if quote is not None:
                series.quotes.append((at, Decimal(quote["bid"]), Decimal(quote["ask"])))
            if is_limit_step(entry.state) and entry.limit_price is not None:
                until = series.end if following is None else _seconds(following.at, start)
                label = f"L{step_number(entry.state)}"
                series.limits.append((at, until, entry.limit_price, label))
            if entry.state == OrderState.MARKET:
                series.market_at = at
        for fill in timeline.fills:
            assert fill.fill_price is not None
            assert fill.fill_qty is not None
            series.fills.append((_seconds(fill.at, start), fill.fill_price, fill.fill_qty))
        return series

    def prices(self) -> list[Decimal]:
        return [
            *(p for _, bid, ask in self.quotes for p in (bid, ask)),
            *(limit for *_, limit, _ in self.limits),
            *(price for _, price, _ in self.fills),
        ]


class _Frame:
    """Maps seconds and prices onto the chart's plot area."""

    def __init__(self, series: _Series) -> None:
        prices = series.prices()
        self.low, self.high = min(prices), max(prices)
        span = self.high - self.low
        pad = (
            span * Decimal("0.08") if span else max(self.high * Decimal("0.0005"), Decimal("0.01"))
        )
        self.bottom, self.top = float(self.low - pad), float(self.high + pad)
        # the x axis spans the order's own life, however short (a market order: milliseconds)
        self.duration = series.end or 1.0

    def x(self, seconds: float) -> float:
        return round(LEFT + seconds / self.duration * (WIDTH - LEFT - RIGHT), 1)

    def y(self, price: Decimal) -> float:
        share = (float(price) - self.bottom) / (self.top - self.bottom)
        return round(TOP + (1 - share) * (HEIGHT - TOP - BOTTOM), 1)


def _step_path(frame: _Frame, points: list[tuple[float, Decimal]], end: float) -> str:
    """A step line: each price holds until the next quote, the last one until `end`."""
    parts = [f"M{frame.x(points[0][0])},{frame.y(points[0][1])}"]
    for at, price in points[1:]:
        parts.append(f"H{frame.x(at)}V{frame.y(price)}")
    parts.append(f"H{frame.x(end)}")
    return "".join(parts)


def order_chart(timeline: OrderTimeline) -> str:
    """An inline SVG of the order's bid and ask over time, each step's limit and each fill."""
    series = _Series.of(timeline)
    record = timeline.record
    title = f"{record.intent.symbol} {record.intent.side.value} {decimal_text(record.quantity)}"
    head = (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img">'
        f"<title>{escape(title)}: bid, ask, step limits and fills</title>"
    )
    if series is None:
        return f'{head}<text x="{LEFT}" y="{HEIGHT // 2}">no quote journaled</text></svg>'
    frame = _Frame(series)
    body = [
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#bbb"/>',
        f'<text x="{LEFT - 3}" y="{frame.y(frame.high) + 3}" text-anchor="end">'
        f"{decimal_text(frame.high)}</text>",
        f'<text x="{LEFT - 3}" y="{frame.y(frame.low) + 3}" text-anchor="end">'
        f"{decimal_text(frame.low)}</text>",
        f'<text x="{LEFT}" y="{HEIGHT - 3}">0 s</text>',
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 3}" text-anchor="end">{series.end:.3g} s</text>',
    ]
    bids = [(at, bid) for at, bid, _ in series.quotes]
    asks = [(at, ask) for at, _, ask in series.quotes]
    for name, points in (("bid", bids), ("ask", asks)):
        path = _step_path(frame, points, frame.duration)
        body.append(f'<path class="{name}" d="{path}" fill="none" stroke-width="1.5"/>')
    for start, until, limit, label in series.limits:
        y = frame.y(limit)
        body.append(
            f'<line class="limit" x1="{frame.x(start)}" y1="{y}" x2="{frame.x(until)}" y2="{y}" '
            f'stroke-dasharray="4 2"><title>{label} limit {decimal_text(limit)}</title></line>'
            f'<text x="{frame.x(start) + 2}" y="{y - 2}">{label}</text>'
        )
    if series.market_at is not None:
        x = frame.x(series.market_at)
        body.append(
            f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{HEIGHT - BOTTOM}" stroke="#888" '
            f'stroke-dasharray="1 2"><title>escalated to market</title></line>'
            f'<text x="{x + 2}" y="{HEIGHT - BOTTOM - 2}">M</text>'
        )
    for at, price, qty in series.fills:
        body.append(
            f'<circle cx="{frame.x(at)}" cy="{frame.y(price)}" r="3" fill="#222">'
            f"<title>fill {decimal_text(qty)} @ {decimal_text(price)}</title></circle>"
        )
    return head + "".join(body) + "</svg>"


def _table(headers: list[str], rows: Iterable[list[str]], left: Collection[str]) -> str:
    """A plain table; columns named in `left` hold text, the others numbers (right-aligned)."""
    align = [' class="l"' if h in left else "" for h in headers]

    def row(tag: str, cells: list[str]) -> str:
        pairs = zip(align, cells, strict=True)
        return "<tr>" + "".join(f"<{tag}{a}>{c}</{tag}>" for a, c in pairs) + "</tr>"

    body = "".join(row("td", cells) for cells in rows)
    return f"<table>{row('th', [escape(h) for h in headers])}{body}</table>"


def _order_row(index: int, order: OrderQuality) -> list[str]:
    """The summary cells, escaped; the number links to the chart, the state is coloured and
    a FAILED order's reason carries its detail (a page wraps it; a terminal table would not)."""
    cells = [escape(cell) for cell in order.summary_cells()]
    state = SUMMARY_COLUMNS.index("state")
    cells[state] = f'<span class="{cells[state]}">{cells[state]}</span>'
    cells[SUMMARY_COLUMNS.index("reason")] = escape(order.result.failure or "")
    return [f'<a href="#{escape(order.result.order_id)}">{index}</a>', *cells]


def render_html(report: ExecutionReport, charts: list[str], title: str) -> str:
    """The whole page: summary tables, then one chart per order in report order."""
    plans = _table(
        ["plan", "status", "orders", "traded value", "slippage bps (value-weighted)", "quotes"],
        (
            [
                escape(p.plan_id),
                p.status.value,
                str(len(p.orders)),
                cell_text(p.traded_value),
                cell_text(p.slippage_bps),
                escape(", ".join(f"{k} {v}" for k, v in p.quote_counters.items())),
            ]
            for p in report.plans
        ),
        left={"plan", "status", "quotes"},
    )
    shares = report.fill_share_by_step
    levels = _table(
        ["level", *shares], [["share of filled qty", *map(percent, shares.values())]], {"level"}
    )
    orders = _table(
        ["#", *SUMMARY_COLUMNS],
        (_order_row(i, o) for i, o in enumerate(report.orders, 1)),
        left=TEXT_COLUMNS,
    )
    figures = "".join(
        f'<figure id="{escape(o.result.order_id)}"><figcaption>{i}. '
        f"{escape(o.result.symbol)} {o.result.side.value} {cell_text(o.result.quantity)}: "
        f'<span class="{escape(o.result.state)}">{escape(o.result.state)}</span>'
        f"{'' if o.result.slippage_bps is None else f', {o.result.slippage_bps} bps'}"
        f"</figcaption>{chart}</figure>"
        for i, (o, chart) in enumerate(zip(report.orders, charts, strict=True), 1)
    )
    sources = ", ".join(f"{k} {v}" for k, v in report.quote_sources.items())
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"<p>{len(report.orders)} orders, rebuilt from the journal's events alone. Slippage is "
        "against the arrival mid, positive when worse for the order's side.</p>"
        f"<h2>Plans</h2>{plans}"
        f"<h2>Ladder</h2>{levels}"
        f"<p>Escalated to market: {report.escalated_orders} of {report.quoted_orders} "
        f"quoted orders ({percent(report.escalated_share)}). "
        f"Quotes journaled: {escape(sources)}.</p>"
        f"<h2>Orders</h2>{orders}"
        '<h2>Charts</h2><p class="key"><span class="bid">&#9644; bid</span>'
        '<span class="ask">&#9644; ask</span><span class="limit">- - step limit (L1…)</span>'
        "<span>&#9679; fill</span><span>&#8942; M: escalated to market</span></p>"
        f'<div class="grid">{figures}</div></body></html>\n'
    )


def report_html(path: str | Path, out: str | Path) -> ExecutionReport:
    """Write the execution report of the journal at `path` as one HTML file at `out`."""
    charts: list[str] = []

    def charted(timeline: OrderTimeline) -> OrderTimeline:
        charts.append(order_chart(timeline))
        return timeline

    report = summarize(map(charted, replay(path)))
    page = render_html(report, charts, f"walkbook execution report: {Path(path).name}")
    write_private_text(Path(out), page)
    return report
