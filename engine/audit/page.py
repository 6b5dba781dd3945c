"""The execution report as one self-contained HTML page, for the trader the morning after.

Everything is inline (CSS, SVG; no script, no font, no URL), so the file can be mailed,
archived beside the journal and opened offline years later. The plan and order tables
come first, then a section per plan with its charts, small multiples in a grid on the
plan's one price scale (see `charts`), which stays readable at a hundred orders.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from decimal import Decimal
from html import escape
from pathlib import Path

from ..files import write_private_text
from .charts import OrderSeries, PlanScale, clock_text, order_chart
from .quality import (
    SUMMARY_COLUMNS,
    TEXT_COLUMNS,
    ExecutionReport,
    OrderQuality,
    PlanQuality,
    cell_text,
    percent,
    summarize,
)
from .timeline import OrderTimeline, replay

__all__ = ["render_html", "report_html"]

CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }
td { white-space: nowrap; } td .detail { white-space: normal; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.FAILED, .FAILURE { color: #b00020; } .VALIDATED, .SUCCESS { color: #1b5e20; }
.IN_PROGRESS, .PARTIAL_SUCCESS { color: #e65100; font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(410px, 1fr)); gap: 8px; }
figure { margin: 0; padding: 4px; border: 1px solid #ddd; border-radius: 4px; }
figcaption { font-size: 12px; }
p.why { margin: 2px 0; font-size: 12px; color: #b00020; }
svg text { font-size: 9px; fill: #555; } svg .fill text { fill: #222; }
.bid { stroke: #1565c0; color: #1565c0; } .ask { stroke: #c62828; color: #c62828; }
.limit { stroke: #ef6c00; color: #ef6c00; }
.key span { display: inline-block; margin-right: 1.2em; }
@media print { figure { break-inside: avoid; } }
"""
KEY = (
    '<p class="key"><span class="bid">&#9644; bid</span><span class="ask">&#9644; ask</span>'
    '<span class="limit">- - step limit (L1…)</span><span>&#9679; fill, size @ price</span>'
    "<span>&#8942; M: escalated to market</span></p><p>Price axis: bps from each order's "
    "arrival mid (left; one scale for the whole plan) and that order's price (right). "
    "Time axis: the journal's clock, HH:MM:SS UTC.</p>"
)


def _when(at: str | None) -> str:
    """A journal time with its day, in UTC: `2026-11-23 14:30:05`; blank for None."""
    if at is None:
        return ""
    return f"{datetime.fromisoformat(at).date()} {clock_text(datetime.fromisoformat(at))}"


def _dollars(value: Decimal | None) -> str:
    """`1,234.50`, `-0.12`; blank for None."""
    return "" if value is None else f"{value:,.2f}"


def _signed_dollars(value: Decimal) -> str:
    """`+$1.50`, `-$0.12`: a signed cost, as the bps beside it are written."""
    return f"{'-' if value < 0 else '+'}${_dollars(abs(value))}"


def _shares(shares: dict[str, Decimal]) -> str:
    return ", ".join(f"{k} {percent(v)}" for k, v in shares.items())


def _table(headers: list[str], rows: Iterable[list[str]], left: Collection[str]) -> str:
    """A plain table; columns named in `left` hold text, the others numbers (right-aligned)."""
    align = [' class="l"' if h in left else "" for h in headers]

    def row(tag: str, cells: list[str]) -> str:
        pairs = zip(align, cells, strict=True)
        return "<tr>" + "".join(f"<{tag}{a}>{c}</{tag}>" for a, c in pairs) + "</tr>"

    body = "".join(row("td", cells) for cells in rows)
    return f"<table>{row('th', [escape(h) for h in headers])}{body}</table>"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _status(status: str) -> str:
    return f'<span class="{escape(status)}">{escape(status)}</span>'


def _plans_table(report: ExecutionReport, anchors: dict[str, str]) -> str:
    headers = ["plan", "status", "started (UTC)", "ended (UTC)", "orders", "traded value $",
               "cost $", "slippage bps (value-weighted)", "ladder (share of value)",
               "quotes"]  # fmt: skip
    rows = (
        [
            f'<a href="#{anchors[p.plan_id]}">{escape(p.plan_id)}</a>',
            _status(p.status),
            _when(p.result.started_at),
            _when(p.result.ended_at),
            str(len(p.orders)),
            _dollars(p.result.traded_value),
            _dollars(p.cost_dollars),
            cell_text(p.result.slippage_bps),
            _shares(p.value_share_by_step),
            escape(", ".join(f"{k} {v}" for k, v in p.result.quote_counters.items() if v)),
        ]
        for p in report.plans
    )
    return _table(headers, rows, left={"plan", "status", "ladder (share of value)", "quotes"})


def _order_row(index: int, order: OrderQuality, anchor: str) -> list[str]:
    """The summary cells, escaped; the number links to the chart, the plan to its section,
    the state is coloured and a FAILED order's reason carries its detail."""
    cells = [escape(cell) for cell in order.summary_cells()]
    plan, state = SUMMARY_COLUMNS.index("plan"), SUMMARY_COLUMNS.index("state")
    cells[plan] = f'<a href="#{anchor}">{cells[plan]}</a>'
    cells[state] = _status(order.result.state)
    failure = order.result.failure
    cells[SUMMARY_COLUMNS.index("reason")] = (
        f'<span class="detail">{escape(failure)}</span>' if failure else ""
    )
    return [f'<a href="#{escape(order.result.order_id)}">{index}</a>', *cells]


def _figure(index: int, order: OrderQuality, chart: str) -> str:
    """One order's chart with a caption: what it was, how it ended, and why it failed."""
    r, cost = order.result, order.cost_dollars
    figures = ["" if r.slippage_bps is None else f"{r.slippage_bps:+} bps",
               "" if cost is None else _signed_dollars(cost)]  # fmt: skip
    numbers = "".join(f", {text}" for text in figures if text)
    why = f'<p class="why">{escape(r.failure)}</p>' if r.failure else ""
    return (
        f'<figure id="{escape(r.order_id)}"><figcaption>{index}. {escape(_title(order))}: '
        f"{_status(r.state)}{numbers}</figcaption>"
        f"{why}{chart}</figure>"
    )


def _plan_section(
    plan: PlanQuality, anchor: str, numbers: dict[str, int], series: dict[str, OrderSeries | None]
) -> str:
    """A plan's heading, totals and charts, every chart on the plan's one price scale."""
    drawn = [series[o.result.order_id] for o in plan.orders]
    scale = PlanScale.of(s for s in drawn if s is not None)
    figures = "".join(
        _figure(numbers[o.result.order_id], o, order_chart(_title(o), s, scale))
        for o, s in zip(plan.orders, drawn, strict=True)
    )
    r, cost = plan.result, plan.cost_dollars
    ended = _when(r.ended_at) or "still running"
    slippage = "" if r.slippage_bps is None else f" ({r.slippage_bps} bps value-weighted)"
    costs = (
        "" if cost is None else f"; cost against the arrival mids {_signed_dollars(cost)}{slippage}"
    )
    return (
        f'<section id="{anchor}"><h2>Plan {escape(plan.plan_id)}: {_status(plan.status)}</h2>'
        f"<p>{_when(r.started_at)} to {ended} UTC; {_count(len(plan.orders), 'order')}; "
        f"traded value ${_dollars(r.traded_value)}{costs}; ladder by value: "
        f"{_shares(plan.value_share_by_step) or '-'}.</p>"
        f'{KEY}<div class="grid">{figures}</div></section>'
    )


def _title(order: OrderQuality) -> str:
    """`AAPL buy 40`; `KO sell 0 (requested 3)` for an order sized down (a FULL close of
    less, a buy shrunk to the buying power)."""
    r = order.result
    requested = (
        "" if r.requested_qty == r.quantity else f" (requested {cell_text(r.requested_qty)})"
    )
    return f"{r.symbol} {r.side.value} {cell_text(r.quantity)}{requested}"


def render_html(report: ExecutionReport, series: dict[str, OrderSeries | None], title: str) -> str:
    """The whole page: summary tables, then a section per plan with one chart per order
    (`series` by order id, as `OrderSeries.of` gives them)."""
    anchors = {p.plan_id: f"plan-{i}" for i, p in enumerate(report.plans, 1)}
    numbers = {o.result.order_id: i for i, o in enumerate(report.orders, 1)}
    shares = report.value_share_by_step
    levels = _table(
        ["level", *shares], [["share of traded value", *map(percent, shares.values())]], {"level"}
    )
    orders = _table(
        ["#", *SUMMARY_COLUMNS],
        (
            _order_row(numbers[o.result.order_id], o, anchors[o.result.plan_id or ""])
            for o in report.orders
        ),
        left=TEXT_COLUMNS,
    )
    sections = "".join(_plan_section(p, anchors[p.plan_id], numbers, series) for p in report.plans)
    sources = ", ".join(f"{k} {v}" for k, v in report.quote_sources.items())
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"<p>{len(report.orders)} orders in {_count(len(report.plans), 'plan')}, rebuilt from the "
        "journal's events alone; times are the journal's, in UTC. Slippage (bps) and cost "
        "($) are against the arrival mid, positive when worse for the order's side: cost = "
        "(average fill &minus; arrival mid) &times; filled for a buy, the reverse for a sell. "
        "A plan with an order still walking is IN_PROGRESS.</p>"
        f"<h2>Plans</h2>{_plans_table(report, anchors)}"
        f"<h2>Ladder</h2>{levels}"
        f"<p>Escalated to market: {report.escalated_orders} of {report.quoted_orders} "
        f"quoted orders ({percent(report.escalated_share)}). "
        f"Quotes journaled: {escape(sources)}.</p>"
        f"<h2>Orders</h2>{orders}{sections}</body></html>\n"
    )


def report_html(path: str | Path, out: str | Path) -> ExecutionReport:
    """Write the execution report of the journal at `path` as one HTML file at `out`.

    The replay streams; what each chart draws (`OrderSeries`, a few points an order) is
    kept until its plan's scale is known."""
    series: dict[str, OrderSeries | None] = {}

    def charted(timeline: OrderTimeline) -> OrderTimeline:
        series[timeline.record.order_id] = OrderSeries.of(timeline)
        return timeline

    report = summarize(map(charted, replay(path)))
    page = render_html(report, series, f"walkbook execution report: {Path(path).name}")
    write_private_text(Path(out), page)
    return report
