"""The HTML report for a trader: plans, dollars, value-weighted ladder shares, IN_PROGRESS,
failures with their detail, charts on one bps scale per plan with clock time and labelled
fills; and the page opened in real headless Chromium (Debian's `chromium`, which `make
test` installs when missing: see the Makefile's `browser` step)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from audit_support import audit_market, write_hand_journal
from click.testing import CliRunner
from conftest import SCENARIO_CONFIG, START
from walk_support import kill_after

from engine import Engine, SimBroker, VirtualClock, parse_plan, replay, report, report_html
from engine.audit.charts import MIN_SPAN_BPS, OrderSeries, PlanScale
from engine.cli import main
from engine.numbers import decimal_text

SEED = 6  # its draws: AAPL fills within AFTERNOON_RUNS_FOR, MSFT and SPY do not
MORNING = [
    {"symbol": "AAPL", "side": "buy", "quantity": "10"},
    {"symbol": "KO", "side": "sell", "quantity": "3", "close_type": "full"},  # nothing to close
    {"symbol": "TSLA", "side": "sell", "quantity": "4"},
]
AFTERNOON = [
    {"symbol": "AAPL", "side": "buy", "quantity": "5"},
    {"symbol": "MSFT", "side": "buy", "quantity": "5"},
    {"symbol": "SPY", "side": "buy", "quantity": "2.5"},
]
# seconds into the afternoon plan: AAPL has filled, MSFT and SPY still wait at LIMIT_STEP_1
AFTERNOON_RUNS_FOR = 8.0
# the walk these plans were written against: the original ladder, 20 s steps, no re-pricing
TRADER_CONFIG = SCENARIO_CONFIG.model_copy(update={"medium_step_wait_seconds": 20.0})
CLOCK = re.compile(r"^[0-2][0-9]:[0-5][0-9]:[0-5][0-9]$")


@pytest.fixture(scope="module")
def trader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal through the engine on the simulator: the morning plan done (KO FAILED:
    no position to close), the afternoon plan killed mid-walk (AAPL again, in a new plan)."""
    path = tmp_path_factory.mktemp("trader") / "journal.db"
    clock = VirtualClock(START)
    market = SimBroker(audit_market().with_seed(SEED), clock)
    engine = Engine(market, path, config=TRADER_CONFIG, clock=clock)
    engine.execute_plan_sync(parse_plan({"plan_id": "morning", "orders": MORNING}))
    afternoon = parse_plan({"plan_id": "afternoon", "orders": AFTERNOON})
    kill_after(engine, clock, afternoon, AFTERNOON_RUNS_FOR)
    return path


@pytest.fixture(scope="module")
def trader_page(trader: Path) -> Path:
    page = trader.with_name("report.html")
    report_html(trader, page)
    return page


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    path = tmp_path / "hand.db"
    write_hand_journal(path).close()
    return path


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def table_rows(page: str, heading: str) -> list[list[str]]:
    """The cells (as text) of each row of the table under `<h2>heading</h2>`, header first."""
    table = page.split(f"<h2>{heading}</h2><table>", 1)[1].split("</table>", 1)[0]
    return [
        [text_of(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", table)
    ]


def figures(page: str) -> dict[str, str]:
    """Each order's figure (caption and chart), by order id."""
    return dict(re.findall(r'<figure id="([^"]+)">(.*?)</figure>', page))


def texts(fragment: str, css: str) -> list[str]:
    return [
        html.unescape(t) for t in re.findall(rf'<text class="{css}"[^>]*>([^<]*)</text>', fragment)
    ]


def sections(page: str) -> dict[str, str]:
    """Each plan's section, by plan id."""
    found = re.findall(r'<section id="plan-[0-9]+"><h2>Plan (.*?): (.*?)</section>', page)
    return {html.unescape(plan): body for plan, body in found}


# -- the figures, in plain Python --------------------------------------------------------


def test_cost_in_dollars_per_order_and_plan(hand: Path) -> None:
    """(avg - mid) x filled for a buy, (mid - avg) x filled for a sell: positive is worse,
    as the bps are; the plan's cost is the orders' sum."""
    result = report(hand)
    a, b, c = result.orders
    assert a.cost_dollars == Decimal("0.92")  # 10 x (100.092 - 100), +9.20 bps
    assert b.cost_dollars == Decimal("0.50")  # 5 x (49.5 - 49.4), a sell below the mid
    assert c.cost_dollars is None  # FAILED unfilled: no slippage, no cost
    (plan,) = result.plans
    assert plan.cost_dollars == Decimal("1.42")
    as_json = result.as_json()
    assert [o["cost_dollars"] for o in as_json["orders"]] == ["0.92", "0.50", None]
    assert as_json["plans"][0]["cost_dollars"] == "1.42"
    header, *rows = table_rows(_page(hand), "Orders")
    assert [row[header.index("cost $")] for row in rows] == ["0.92", "0.50", ""]


def _page(journal: Path) -> str:
    page = journal.with_name(journal.stem + ".html")
    report_html(journal, page)
    return page.read_text(encoding="utf-8")


def test_ladder_shares_weigh_traded_value_not_shares(hand: Path) -> None:
    """By quantity M held a third (5 of 15 shares); by value a fifth (5 x 49.4 of 1247.92)."""
    result = report(hand)
    assert result.value_share_by_step == {
        "L1": Decimal("0.3207"),  # 4 x 100.05 = 400.20
        "L2": Decimal("0.4814"),  # 6 x 100.12 = 600.72
        "M": Decimal("0.1979"),  # 5 x 49.4 = 247
    }
    assert result.plans[0].value_share_by_step == result.value_share_by_step
    assert result.as_json()["value_share_by_step"] == {
        "L1": "0.3207",
        "L2": "0.4814",
        "M": "0.1979",
    }
    header, shares = table_rows(_page(hand), "Ladder")
    assert (header, shares) == (
        ["level", "L1", "L2", "M"],
        ["share of traded value", "32.1%", "48.1%", "19.8%"],
    )


def test_a_plan_with_an_order_still_walking_is_in_progress(trader: Path, trader_page: Path) -> None:
    """Mid-run, AAPL done and MSFT, SPY at LIMIT_STEP_1: IN_PROGRESS everywhere, not the
    PARTIAL_SUCCESS its finished order alone would give; a finished plan keeps its status."""
    result = report(trader)
    states = {(o.result.plan_id, o.result.symbol): o.result.state for o in result.orders}
    assert states[("afternoon", "MSFT")] == states[("afternoon", "SPY")] == "LIMIT_STEP_1"
    assert states[("afternoon", "AAPL")] == "VALIDATED"
    statuses = {p.plan_id: p.status for p in result.plans}
    assert statuses == {"morning": "PARTIAL_SUCCESS", "afternoon": "IN_PROGRESS"}
    assert {p["plan_id"]: p["status"] for p in result.as_json()["plans"]} == statuses
    text = CliRunner().invoke(main, ["report", "--journal", str(trader)]).stdout
    assert "plan afternoon: IN_PROGRESS," in text
    page = trader_page.read_text(encoding="utf-8")
    plans = {row[0]: row[1] for row in table_rows(page, "Plans")[1:]}
    assert plans == statuses
    assert sections(page)["afternoon"].startswith('<span class="IN_PROGRESS">IN_PROGRESS</span>')


def test_the_orders_table_names_each_orders_plan(trader_page: Path) -> None:
    """AAPL twice, once in each plan, and each plan's start day and time in the plans table."""
    page = trader_page.read_text(encoding="utf-8")
    header, *rows = table_rows(page, "Orders")
    plan, symbol = header.index("plan"), header.index("symbol")
    assert [(row[plan], row[symbol]) for row in rows] == [
        ("morning", o["symbol"]) for o in MORNING
    ] + [("afternoon", o["symbol"]) for o in AFTERNOON]
    started = {row[0]: row[2] for row in table_rows(page, "Plans")[1:]}
    assert started["morning"].startswith(f"{START.date()} {START:%H:%M}")


def test_a_failed_orders_reason_and_detail_show_in_its_row_and_chart(trader_page: Path) -> None:
    page = trader_page.read_text(encoding="utf-8")
    header, *rows = table_rows(page, "Orders")
    (ko,) = [row for row in rows if row[header.index("symbol")] == "KO"]
    why = "no_position: no position in KO to close"
    assert (ko[header.index("state")], ko[header.index("reason")]) == ("FAILED", why)
    (figure,) = [f for f in figures(page).values() if " KO sell 0 (requested 3): " in f]
    assert f'<p class="why">{why}</p>' in figure


def test_a_plans_charts_share_one_bps_scale_with_each_orders_prices(trader_page: Path) -> None:
    """Every chart of a plan has the same bps ticks; the price beside each tick is that
    order's own (0 bps is its arrival mid); the time axis is the journal's clock."""
    page = trader_page.read_text(encoding="utf-8")
    for plan, section in sections(page).items():
        drawn = [f for f in figures(section).values() if "<path" in f]
        assert drawn, plan
        scales = {tuple(texts(f, "bps")) for f in drawn}
        assert len(scales) == 1, plan
        (ticks,) = scales
        assert "0" in ticks
        assert len(ticks) >= 3
        zero = ticks.index("0")
        mids = {texts(f, "price")[zero] for f in drawn}
        assert len(mids) == len(drawn), plan  # AAPL, MSFT, SPY, TSLA: each its own mid
        for figure in drawn:
            clocks = texts(figure, "clock")
            assert clocks
            assert all(CLOCK.match(c) for c in clocks), clocks
            assert clocks == sorted(clocks)


def test_charts_start_at_the_first_quote_on_the_clock_and_label_each_fill(hand: Path) -> None:
    """A (hand journal) is quoted at START + 1 s and last moves at START + 15 s; its two
    fills are printed beside their dots, not only in a hover title."""
    figure = figures(_page(hand))["o000000000000000a"]
    clocks = texts(figure, "clock")
    assert (clocks[0], clocks[-1]) == ("14:30:01", "14:30:15")
    fills = re.findall(r'<g class="fill"><text[^>]*>([^<]*)</text></g>', figure)
    assert fills == ["4 @ 100.05", "6 @ 100.12"]


def test_a_two_cent_move_on_a_600_dollar_stock_stays_small() -> None:
    """The scale spans MIN_SPAN_BPS at least: a 0.33 bps wiggle takes a sliver of the plot."""
    mid = Decimal("598.20")
    series = OrderSeries(START, mid)
    series.quotes = [(0.0, mid - Decimal("0.01"), mid + Decimal("0.01")),
                     (5.0, mid, mid + Decimal("0.02"))]  # fmt: skip
    scale = PlanScale.of([series])
    assert scale.high - scale.low >= MIN_SPAN_BPS
    low, high = series.bps_range()
    assert scale.y(low) - scale.y(high) < (scale.y(scale.low) - scale.y(scale.high)) / 10
    wide = OrderSeries(START, Decimal("14.20"))
    wide.quotes = [(0.0, Decimal("14.00"), Decimal("14.40"))]  # +-141 bps: the plan's scale
    both = PlanScale.of([series, wide])
    assert both.low <= wide.bps(Decimal("14.00"))
    assert both.high >= wide.bps(Decimal("14.40"))


# -- the page in headless Chromium -------------------------------------------------------

# Appended to a copy of the report (which has no script of its own): measures each chart
# as laid out and leaves the figures in a body attribute for --dump-dom.
PROBE = """<script>
const box = (e) => { const b = e.getBBox(); return [b.x, b.y, b.width, b.height]; };
document.body.dataset.probe = JSON.stringify([...document.querySelectorAll("figure")].map((f) => {
  const svg = f.querySelector("svg"), view = svg.viewBox.baseVal;
  const size = svg.getBoundingClientRect();
  const outside = [...svg.querySelectorAll("text")].filter((t) => {
    const [x, y, w, h] = box(t);
    return x < 0 || y < 0 || x + w > view.width || y + h > view.height;
  });
  return {
    id: f.id,
    size: [size.width, size.height],
    lines: [...svg.querySelectorAll("path.bid, path.ask")].map((p) => box(p)[2]),
    fills: [...svg.querySelectorAll("g.fill text")].map((t) => [t.textContent, box(t)[2]]),
    outside: outside.map((t) => t.textContent),
  };
}));
</script>"""


def open_in_chromium(page: Path, profile: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The probe's figures and the console messages of `page` with PROBE appended."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "chromium is not installed: run `make browser` (Debian: apt-get install chromium)"
        )
    probed = page.with_name(page.stem + "-probed.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    run = subprocess.run(
        [chromium, *flags, "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a timing assertion
        check=True,
    )
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    dumped = re.search(r'<body data-probe="([^"]*)"', run.stdout)
    assert dumped is not None, run.stdout[-2000:]
    return json.loads(html.unescape(dumped.group(1))), console


def test_every_chart_renders_in_headless_chromium_with_no_console_error(
    trader: Path, trader_page: Path, tmp_path: Path
) -> None:
    result = report(trader)
    probe, console = open_in_chromium(trader_page, tmp_path / "profile")
    assert console == []
    assert [f["id"] for f in probe] == [o.result.order_id for o in result.orders]
    quoted = {o.result.order_id for o in result.orders if o.result.arrival_mid is not None}
    assert len(quoted) == len(result.orders) - 1  # KO FAILED before any quote
    for figure in probe:
        width, height = figure["size"]
        assert width > 300, figure
        assert height > 150, figure
        assert figure["outside"] == [], figure  # every label inside the viewBox
        if figure["id"] in quoted:
            assert len(figure["lines"]) == 2, figure
            assert min(figure["lines"]) > 0, figure
        (timeline,) = replay(trader, order_id=figure["id"])
        fills = [(e.fill_qty, e.fill_price) for e in timeline.fills]
        filled = [f"{decimal_text(q)} @ {decimal_text(p)}" for q, p in fills if q and p]
        assert [text for text, _ in figure["fills"]] == filled
        assert all(width > 0 for _, width in figure["fills"])
    assert any(figure["fills"] for figure in probe)


def test_the_browser_check_sees_a_broken_chart_and_a_clipped_label(
    trader_page: Path, tmp_path: Path
) -> None:
    """The same check on a page with a bad path and a label pushed out of its chart fails."""
    page = trader_page.read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    page = page.replace('<path class="bid" d="M', '<path class="bid" d="Mx', 1)
    page = page.replace('<text class="clock" x="', '<text class="clock" x="9', 1)
    broken.write_text(page)
    probe, console = open_in_chromium(broken, tmp_path / "profile")
    assert any("attribute d" in line for line in console), console
    assert any(figure["outside"] for figure in probe)
