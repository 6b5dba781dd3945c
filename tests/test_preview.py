"""The priced preview (engine/preview.py, `walkbook preview`): its figures checked by hand on
a steady simulated market, every limit's breach shown as a verdict, and nothing journaled
or sent, counted at the journal file and at the sim-server through the real alpaca-py SDK."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alpaca_support import KEYS, WALKBOOK, keyed_env, market, rest
from click.testing import CliRunner

from engine import (
    DEFAULT_LADDER,
    EngineConfig,
    FailReason,
    InvalidIntent,
    InvalidPlan,
    MarketSpec,
    OrderSide,
    SymbolSpec,
    parse_plan,
)
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer
from engine.cli import main
from engine.cli.exits import EXIT_BAD_INPUT, EXIT_OK, EXIT_WOULD_REFUSE
from engine.preview import Outcome, PlanPreview, VerdictStatus, preview_plan
from engine.pricing import limit_price
from engine.risk import traded_on

# a steady book: AAPL 99.90 / 100.10 (mid 100, 20 bps), MSFT 399.80 / 400.20 (mid 400, 10 bps)
SYMBOLS = {
    "AAPL": SymbolSpec(price=Decimal(100), spread_bps=20, volatility_bps=0, fractionable=False),
    "MSFT": SymbolSpec(price=Decimal(400), spread_bps=10, volatility_bps=0),
}
STEADY: dict[str, Any] = {"latency_seconds": 0.0, "stream_gap_probability": 0.0}


def spec(**fields: Any) -> MarketSpec:
    return MarketSpec(**({"symbols": SYMBOLS} | STEADY | fields))


def plan(*orders: tuple[str, str, str], plan_id: str = "preview") -> Any:
    lines = [{"symbol": s, "side": side, "quantity": q} for s, side, q in orders]
    return parse_plan({"plan_id": plan_id, "orders": lines})


def preview(make_rig: Any, orders: list[tuple[str, str, str]], **config: Any) -> PlanPreview:
    """The library form on a fresh simulator: no journal anywhere."""
    cash = config.pop("cash", Decimal(1_000_000))
    positions = config.pop("positions", {})
    rig = make_rig(spec(cash=cash, positions=positions))
    coroutine = preview_plan(rig.broker, plan(*orders), EngineConfig(**config), rig.clock)
    found: PlanPreview = rig.clock.run(coroutine)
    return found


def verdict(found: PlanPreview, check: str, index: int | None = None) -> Any:
    verdicts = found.verdicts if index is None else found.orders[index].verdicts
    (match,) = [v for v in verdicts if v.check == check]
    return match


def test_each_step_is_priced_at_the_quote_it_shows_and_costed_at_the_first(make_rig: Any) -> None:
    found = preview(make_rig, [("AAPL", "buy", "10"), ("MSFT", "sell", "2")], positions={"MSFT": 2})
    buy, sell = found.orders
    assert buy.quote is not None
    assert (buy.quote.bid, buy.quote.ask, buy.quote.mid) == (
        Decimal("99.90"),
        Decimal("100.10"),
        Decimal(100),
    )
    assert [s.step for s in buy.steps] == ["L1", "L2", "L3", "M"]
    for order in (buy, sell):
        assert order.quote is not None
        expected = [
            limit_price(order.side, order.quote.bid, order.quote.ask, ratio)
            for ratio in DEFAULT_LADDER
        ]
        assert [s.limit_price for s in order.steps] == [*expected, None]
    # by hand: a buy at bid + 0.75 of the 0.20 spread; a sell at ask - 0.75 of the 0.40 spread
    assert [s.limit_price for s in buy.steps[:3]] == [
        Decimal("100.05"),
        Decimal("100.07"),
        Decimal("100.09"),
    ]
    assert sell.steps[0].limit_price == Decimal("399.90")
    # filled at L1: 10 x 0.05 over the mid = $0.50, 5 bps; 2 x 0.10 under the mid = $0.20, 2.5 bps
    assert (buy.expected_cost, buy.expected_cost_bps) == (Decimal("0.50"), Decimal("5.00"))
    assert (sell.expected_cost, sell.expected_cost_bps) == (Decimal("0.20"), Decimal("2.50"))
    assert (found.gross_buy_notional, found.gross_sell_notional) == (
        Decimal("1000.50"),
        Decimal("799.80"),
    )
    assert found.net_cash == Decimal("-200.70")
    assert found.expected_cost == Decimal("0.70")
    assert found.accepted
    assert [o.outcome for o in found.orders] == [Outcome.SENT] * 2


def test_urgency_high_goes_to_market_at_the_far_touch(make_rig: Any) -> None:
    rig = make_rig(spec())
    urgent = parse_plan(
        {
            "plan_id": "u",
            "orders": [{"symbol": "AAPL", "side": "buy", "quantity": "4", "urgency": "high"}],
        }
    )
    (order,) = rig.clock.run(preview_plan(rig.broker, urgent, EngineConfig(), rig.clock)).orders
    assert [(s.step, s.limit_price) for s in order.steps] == [("M", None)]
    assert order.expected_price == Decimal("100.10")
    assert order.expected_cost == Decimal("0.40")


def test_a_sells_proceeds_fund_a_buy(make_rig: Any) -> None:
    """$1,000 of cash cannot pay for 20 AAPL (20 x 100.10 x 1.005 = 2012.01), but with the
    sale of 5 MSFT at the bid (1999.00) first it can."""
    alone = preview(make_rig, [("AAPL", "buy", "20")], cash=Decimal(1000))
    assert alone.orders[0].outcome is Outcome.REFUSED
    assert alone.orders[0].reason == "insufficient_funds"
    both = preview(
        make_rig,
        [("AAPL", "buy", "20"), ("MSFT", "sell", "5")],
        cash=Decimal(1000),
        positions={"MSFT": 5},
    )
    assert [o.outcome for o in both.orders] == [Outcome.SENT, Outcome.SENT]
    assert both.orders[0].qty == 20
    assert both.orders[0].verdicts == ()
    funds = both.funds
    assert funds.funds_from == "non_marginable_buying_power"
    assert not funds.use_margin
    assert funds.figures["non_marginable_buying_power"] == 1000
    assert (funds.sell_proceeds, funds.after_sells) == (Decimal("1999.00"), Decimal("2999.00"))
    assert funds.after_buys == Decimal("986.99")


def test_the_testers_5000_aapl_against_1000_does_not_fit(make_rig: Any) -> None:
    """`preflight` accepted it and said nothing; the preview shows it failing, or shrunk to
    the 9 shares $1,000 pays for (1000 / (100.10 x 1.005) = 9.94), and a run does just that."""
    orders = [("AAPL", "buy", "5000")]
    failing = preview(make_rig, orders, cash=Decimal(1000))
    (order,) = failing.orders
    assert order.outcome is Outcome.REFUSED
    assert order.reason is FailReason.INSUFFICIENT_FUNDS
    assert order.qty == 0
    funds = verdict(failing, "funds", 0)
    assert funds.status is VerdictStatus.BREACHED
    assert (funds.limit_value, funds.figure) == (Decimal("1000.00"), Decimal("503002.50"))
    assert "9 fit" in funds.message
    assert not failing.accepted

    rig = make_rig(spec(cash=Decimal(1000)), EngineConfig(insufficient_funds="shrink"))
    shrunk = rig.clock.run(rig.engine.preview(plan(*orders)))
    (order,) = shrunk.orders
    assert (order.outcome, order.qty, order.requested_qty) == (Outcome.SHRUNK, 9, 5000)
    assert "shrunk to 9" in verdict(shrunk, "funds", 0).message
    assert shrunk.accepted
    result = rig.engine.execute_plan_sync(plan(*orders))
    assert result.orders[0].quantity == 9
    assert result.orders[0].resized


LIMIT_CASES = [
    # (limit, its setting, orders, by-hand figure, on the order (index) or the plan (None))
    ("max_order_notional", "1000", [("AAPL", "buy", "20")], Decimal("2002.00"), 0),
    ("min_order_notional", "500", [("AAPL", "buy", "1")], Decimal("100.10"), 0),
    ("max_position_weight", "0.1", [("AAPL", "buy", "20")], Decimal("0.2002"), 0),
    (
        "max_plan_notional",
        "1500",
        [("AAPL", "buy", "10"), ("MSFT", "buy", "2")],
        Decimal("1801.40"),
        None,
    ),
]


@pytest.mark.parametrize(("limit", "setting", "orders", "figure", "index"), LIMIT_CASES)
def test_each_limit_breached_is_a_verdict_with_its_figures(
    make_rig: Any, limit: str, setting: str, orders: Any, figure: Decimal, index: int | None
) -> None:
    """Equity is the $10,000 of cash: 20 AAPL at the ask is 0.2002 of it. An order under
    min_order_notional is skipped, which refuses nothing (the run reports it skipped and
    fails nothing of the plan); every other breach refuses."""
    skips = limit == "min_order_notional"
    for validation in ("all_or_nothing", "skip_invalid"):
        config = {limit: Decimal(setting), "validation": validation}
        found = preview(make_rig, orders, cash=Decimal(10_000), **config)
        breach = verdict(found, limit, index)
        assert breach.status is VerdictStatus.BREACHED
        assert (breach.limit_value, breach.figure) == (Decimal(setting), figure)
        assert limit in breach.message
        assert setting in breach.message
        assert found.accepted is skips
    if index is not None:  # the order is refused; all_or_nothing refuses the plan for a risk_limit
        expected = Outcome.SKIPPED if skips else Outcome.REFUSED
        assert found.orders[index].outcome is expected
        assert found.orders[index].reason in ("risk_limit", "below_min_notional")


def test_a_risk_limit_under_all_or_nothing_refuses_the_plan(make_rig: Any) -> None:
    found = preview(
        make_rig, [("AAPL", "buy", "20"), ("MSFT", "buy", "1")], max_order_notional=1000
    )
    assert verdict(found, "validation").status is VerdictStatus.BREACHED
    assert "order 0 (AAPL buy 20)" in verdict(found, "validation").message
    assert verdict(found, "max_order_notional", 1).status is VerdictStatus.OK
    assert [o.outcome for o in found.orders] == [Outcome.REFUSED, Outcome.SENT]


def test_daily_traded_notional_counts_the_engines_journal(make_rig: Any) -> None:
    """Without a journal it is not checked; through Engine.preview, today's fills count."""
    orders = [("AAPL", "buy", "10")]
    alone = preview(make_rig, orders, daily_traded_notional=1500)
    assert verdict(alone, "daily_traded_notional").status is VerdictStatus.NOT_CHECKED
    rig = make_rig(spec(), EngineConfig(daily_traded_notional=Decimal(1500)))
    rig.engine.execute_plan_sync(plan(*orders, plan_id="earlier"))
    before = traded_on(rig.journal, rig.clock.now().date())
    assert before > 0
    found = rig.clock.run(rig.engine.preview(plan(*orders)))
    daily = verdict(found, "daily_traded_notional")
    assert daily.status is VerdictStatus.BREACHED
    assert daily.figure == (before + Decimal("1001.00")).quantize(Decimal("0.01"))


def test_engine_preview_journals_nothing_and_sends_nothing(make_rig: Any) -> None:
    rig = make_rig(spec(), EngineConfig(daily_traded_notional=Decimal(10**6)))
    rig.engine.execute_plan_sync(plan(("AAPL", "buy", "3"), plan_id="earlier"))
    # the journal and its write-ahead log; -shm is SQLite's shared index, which readers touch
    files = [rig.journal_path, rig.journal_path.with_name(rig.journal_path.name + "-wal")]
    before = {path: path.read_bytes() for path in files}
    seq, orders = rig.journal.last_seq, len(rig.broker.orders)
    found = rig.clock.run(rig.engine.preview(plan(("AAPL", "buy", "5"), ("MSFT", "buy", "1"))))
    assert found.accepted
    dollars = {"symbol": "MSFT", "side": "buy", "notional": "1000"}
    for payload in (
        {"plan_id": "dollars", "orders": [dollars]},
        {"plan_id": "weights", "targets": {"AAPL": "0.001"}},
    ):
        found = rig.clock.run(rig.engine.preview(parse_plan(payload)))
        assert found.accepted
        assert [o.outcome for o in found.orders] == [Outcome.SENT]
    assert rig.journal.last_seq == seq
    assert len(rig.broker.orders) == orders
    assert {path: path.read_bytes() for path in files} == before


def test_preflight_problems_raise_as_preflight_does_or_show_refused(make_rig: Any) -> None:
    orders = [("ZZZZ", "buy", "1"), ("AAPL", "buy", "1")]
    with pytest.raises(InvalidIntent, match=r"order 0 \(ZZZZ buy 1\): unknown symbol"):
        preview(make_rig, orders)
    found = preview(make_rig, orders, validation="skip_invalid")
    assert [(o.outcome, o.reason) for o in found.orders] == [
        (Outcome.REFUSED, "invalid_intent"),
        (Outcome.SENT, None),
    ]


def test_rounding_and_trimming_show_the_quantity_preflight_leaves(make_rig: Any) -> None:
    found = preview(
        make_rig,
        [("AAPL", "buy", "2.5"), ("MSFT", "sell", "10.1")],
        positions={"MSFT": 10},
        fractional_on_whole_share_asset="round_down",
        oversell_tolerance=Decimal("0.05"),
    )
    rounded, trimmed = found.orders
    assert (rounded.requested_qty, rounded.checked_qty, rounded.qty) == (
        Decimal("2.5"),
        Decimal(2),
        Decimal(2),
    )
    assert (trimmed.requested_qty, trimmed.checked_qty) == (Decimal("10.1"), Decimal(10))
    assert verdict(found, "oversell_tolerance", 1).status is VerdictStatus.OK
    assert found.orders[1].side is OrderSide.SELL
    assert found.accepted


def test_a_closed_market_and_a_missing_quote_are_verdicts(make_rig: Any) -> None:
    """Closed: every order would fail market_closed (unless wait_for_open reaches the open).
    A book both sources show crossed has no usable quote: under a priced limit the plan is
    refused; without one the order fails no_quote. A FULL close sells the position."""
    closed = make_rig(spec(market_open=False))
    orders = plan(("AAPL", "buy", "1"))
    found = closed.clock.run(preview_plan(closed.broker, orders, EngineConfig(), closed.clock))
    assert verdict(found, "market").status is VerdictStatus.BREACHED
    assert not found.accepted
    opening = make_rig(spec(opens_in_seconds=60))
    waits = EngineConfig(wait_for_open=True)
    found = opening.clock.run(preview_plan(opening.broker, orders, waits, opening.clock))
    assert verdict(found, "market").status is VerdictStatus.OK
    assert found.accepted

    crossed = SymbolSpec(price=Decimal(50), stream_quote=(51, 50), rest_quote=(51, 50))
    rig = make_rig(spec(symbols={**SYMBOLS, "XYZ": crossed}, positions={"MSFT": 3}))
    both = plan(("XYZ", "buy", "1"), ("MSFT", "sell", "1"))
    full = parse_plan({"plan_id": "f", "orders": [
        {"symbol": "XYZ", "side": "buy", "quantity": "1"},
        {"symbol": "MSFT", "side": "sell", "quantity": "1", "close_type": "full"}]})  # fmt: skip
    limited = EngineConfig(max_order_notional=Decimal(10**6))
    found = rig.clock.run(preview_plan(rig.broker, both, limited, rig.clock))
    assert verdict(found, "quote").status is VerdictStatus.BREACHED
    assert verdict(found, "max_order_notional", 0).status is VerdictStatus.NOT_CHECKED
    found = rig.clock.run(preview_plan(rig.broker, full, EngineConfig(), rig.clock))
    assert [(o.outcome, o.reason) for o in found.orders] == [
        (Outcome.REFUSED, FailReason.NO_QUOTE),
        (Outcome.SENT, None),
    ]
    assert found.orders[1].qty == 3
    assert found.gross_sell_notional == Decimal("1199.70")  # 3 at the L1 limit 399.90


def test_the_embedding_docs_preview_example_prints_what_it_shows(tmp_path: Path) -> None:
    """docs/embedding.md's "Preview" example, run as written, prints its text block."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "embedding.md").read_text()
    section = doc.split("\n## Preview\n")[1].split("\n## ")[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (shown,) = re.findall(r"```text\n(.*?)```", section, flags=re.S)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == shown
    assert "shrunk 29" in shown
    assert "max_order_notional breached" in shown


# -- the command ------------------------------------------------------------------


def write(path: Path, payload: Any) -> Path:
    path.write_text(json.dumps(payload, default=str))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    market_spec = spec(cash=Decimal(1000)).model_dump(mode="json")
    return {
        "market": write(tmp_path / "market.json", market_spec),
        "fits": write(
            tmp_path / "fits.json",
            {"plan_id": "a", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": "5"}]},
        ),
        "too_big": write(
            tmp_path / "big.json",
            {"plan_id": "b", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": "5000"}]},
        ),
    }


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(main, ["preview", *map(str, args)])


def test_the_command_exits_0_when_everything_fits_and_5_when_not(
    files: dict[str, Path], tmp_path: Path
) -> None:
    made = set(tmp_path.iterdir())
    ok = invoke(files["fits"], "--market", files["market"])
    assert ok.exit_code == EXIT_OK, ok.output
    assert "every order would be sent" in ok.output
    assert "L1 100.05" in ok.output
    refused = invoke(files["too_big"], "--market", files["market"], "--json")
    assert refused.exit_code == EXIT_WOULD_REFUSE, refused.output
    shown = json.loads(refused.output)
    assert shown["accepted"] is False
    assert shown["orders"][0]["reason"] == "insufficient_funds"
    shrink = write(tmp_path / "shrink.json", {"insufficient_funds": "shrink"})
    shrunk = invoke(
        files["too_big"], "--market", files["market"], "--engine-config", shrink, "--json"
    )
    assert shrunk.exit_code == EXIT_OK
    assert json.loads(shrunk.output)["orders"][0]["qty"] == "9"
    assert set(tmp_path.iterdir()) == made | {shrink}  # no journal, no state file


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"plan_id": "x", "orders": []}, "invalid plan"),
        (
            {"plan_id": "x", "orders": [{"symbol": "ZZZZ", "side": "buy", "quantity": "1"}]},
            "unknown symbol",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, payload: Any, message: str) -> None:
    market_spec = write(tmp_path / "m.json", {"unknown_symbols": ["ZZZZ"]})
    result = invoke(write(tmp_path / "p.json", payload), "--market", market_spec)
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.output.count("\n") == 1
    assert message in result.output
    bad_config = write(tmp_path / "c.json", {"ladder": ["2"]})
    plan_file = write(tmp_path / "ok.json", {"plan_id": "x", "orders": [
        {"symbol": "AAPL", "side": "buy", "quantity": "1"}]})  # fmt: skip
    refused = invoke(plan_file, "--engine-config", bad_config)
    assert refused.exit_code == EXIT_BAD_INPUT
    assert refused.output.startswith("walkbook: error:")


# -- through alpaca-py against the sim-server ---------------------------------------


def test_preview_over_alpaca_sends_no_write_request(tmp_path: Path) -> None:
    """`walkbook preview --broker alpaca` in its own process, then a dollar plan and a target
    plan (in this process: the same command, without a second start-up): the server counts
    every request it answers, and not one is a POST, PATCH or DELETE; the account has no
    order."""
    server = SimServer(
        tmp_path / "sim.db", market(positions={"MSFT": Decimal(5)}), FaultSpec(), KEYS
    )
    plan_file = write(tmp_path / "plan.json", {"plan_id": "over-alpaca", "orders": [
        {"symbol": "MSFT", "side": "sell", "quantity": "5"},
        {"symbol": "AAPL", "side": "buy", "quantity": "10"}]})  # fmt: skip
    dollars = write(tmp_path / "dollars.json", {"plan_id": "dollars", "orders": [
        {"symbol": "MSFT", "side": "sell", "notional": "1000"},
        {"symbol": "AAPL", "side": "buy", "notional": "1500"}]})  # fmt: skip
    targets = write(tmp_path / "targets.json", {"plan_id": "weights", "targets": {"AAPL": "0.01"}})
    config = write(tmp_path / "fast.json", {"stream_quote_wait_seconds": 0.5})
    with ServerThread(server) as thread:
        broker = ["--broker", "alpaca", "--alpaca-url", thread.url]
        options = [*broker, "--engine-config", str(config), "--json"]
        command = [WALKBOOK, "preview", str(plan_file), *options]
        run = subprocess.run(command, env=keyed_env(), capture_output=True, text=True, timeout=60)
        assert run.returncode == EXIT_OK, run.stderr
        shown = json.loads(run.stdout)
        sized, derived = (
            CliRunner(env=keyed_env()).invoke(main, ["preview", str(path), *options])
            for path in (dollars, targets)
        )
        stats = rest(thread.url, "/_sim/stats")
        listed = rest(thread.url, "/v2/orders?status=all")
    assert [o["outcome"] for o in shown["orders"]] == ["sent", "sent"]
    assert shown["orders"][1]["quote"]["mid"] == "190"
    for result in (sized, derived):
        assert result.exit_code == EXIT_OK, result.output
    # to 9 decimals: 1000 / 409.83 (the bid, 410 less 4 bps, on the cent) and 1500 / 190.10
    assert [(o["notional_requested"], o["qty"]) for o in json.loads(sized.stdout)["orders"]] == [
        ("1000", "2.440036112"),
        ("1500", "7.890583903"),
    ]
    # MSFT held and not named: closed in full; AAPL bought to 0.01 of the equity of 1,002,050
    # (the cash and 5 MSFT at 410): 10,020.50 / 190.10
    assert [(o["symbol"], o["side"], o["qty"]) for o in json.loads(derived.stdout)["orders"]] == [
        ("MSFT", "sell", "5"),
        ("AAPL", "buy", "52.711730668"),
    ]
    writes = {k: v for k, v in stats.items() if k.split(" ")[0] in ("POST", "PATCH", "DELETE")}
    assert writes == {}
    assert stats["GET /v2/account"] >= 1
    assert stats["GET /v2/positions"] == 3  # one read per preview, the target plan's included
    assert listed == []
    assert stats["orders"] == 0


# -- dollar orders and target plans, sized and derived by the engine's own functions -------

# a whole-share symbol a $99 order buys no share of (199.80 / 200.20), and one no source
# quotes usably (its book crossed on both)
GOOG = SymbolSpec(price=Decimal(200), spread_bps=20, volatility_bps=0, fractionable=False)
XYZ = SymbolSpec(price=Decimal(50), stream_quote=(51, 50), rest_quote=(51, 50))
DOLLARS = {"plan_id": "dollars", "orders": [
    {"symbol": "AAPL", "side": "buy", "notional": "1500"},
    {"symbol": "MSFT", "side": "sell", "notional": "1000"},
    {"symbol": "GOOG", "side": "buy", "notional": "99"}]}  # fmt: skip


def test_a_dollar_order_is_sized_as_the_engine_sizes_it(make_rig: Any) -> None:
    """By hand: 1500 / 100.10 = 14.98, 14 whole AAPL; 1000 / 399.80 = 2.501250625 MSFT (9
    decimals, at the bid); $99 of GOOG at 200.20 is no share: skipped, below_min_notional.
    The engine then trades exactly those sizes, and fails the third as the preview said."""
    rig = make_rig(spec(symbols=SYMBOLS | {"GOOG": GOOG}, positions={"MSFT": 5}))
    found = rig.clock.run(rig.engine.preview(parse_plan(DOLLARS)))
    assert rig.journal.last_seq == 0
    assert [(o.notional_requested, o.requested_qty, o.qty) for o in found.orders] == [
        (Decimal(1500), Decimal(14), Decimal(14)),
        (Decimal(1000), Decimal("2.501250625"), Decimal("2.501250625")),
        (Decimal(99), Decimal(0), Decimal(0)),
    ]
    buy, sell, small = found.orders
    assert buy.expected_value == Decimal("1400.70")  # 14 at the L1 limit 100.05
    assert sell.expected_value == Decimal("1000.25")  # at the L1 limit 399.90
    sized = verdict(found, "notional", 0)
    assert sized.status is VerdictStatus.OK
    assert "notional 1500 comes to 14 whole shares at the ask 100.1" in sized.message
    unsized = verdict(found, "notional", 2)
    assert unsized.status is VerdictStatus.BREACHED
    assert "order 2 (GOOG buy $99): notional 99 comes to no share at the ask 200.2" in (
        unsized.message
    )
    assert (unsized.limit_value, unsized.figure) == (Decimal("200.2"), Decimal(99))
    assert (small.outcome, small.reason) == (Outcome.REFUSED, FailReason.BELOW_MIN_NOTIONAL)
    assert not found.accepted
    result = rig.engine.execute_plan_sync(parse_plan(DOLLARS))
    assert [(o.quantity, o.filled_qty, o.reason) for o in result.orders] == [
        (o.qty, o.qty, o.reason) for o in found.orders
    ]


def test_a_dollar_order_with_no_quote_to_size_it_at_is_refused_as_preflight_refuses_it(
    make_rig: Any,
) -> None:
    rig = make_rig(spec(symbols=SYMBOLS | {"XYZ": XYZ}))
    plan = parse_plan({"plan_id": "blind", "orders": [
        {"symbol": "XYZ", "side": "buy", "notional": "500"},
        {"symbol": "AAPL", "side": "buy", "quantity": "1"}]})  # fmt: skip
    with pytest.raises(InvalidIntent) as previewed:
        rig.clock.run(rig.engine.preview(plan))
    with pytest.raises(InvalidIntent) as checked:
        rig.clock.run(rig.engine.preflight(plan))
    assert (
        previewed.value.message
        == checked.value.message
        == ("order 0 (XYZ buy $500): no usable quote to size the notional at")
    )
    skipping = EngineConfig(validation="skip_invalid")
    found = rig.clock.run(preview_plan(rig.broker, plan, skipping, rig.clock))
    assert [(o.outcome, o.reason) for o in found.orders] == [
        (Outcome.REFUSED, FailReason.INVALID_INTENT),
        (Outcome.SENT, None),
    ]


# Equity 13,800: cash 10,000, 10 AAPL at 100, 5 MSFT at 400, 4 NVDA at 50, 3 GOOG at 200
WEIGHTED = {
    "cash": Decimal(10_000),
    "positions": {"AAPL": 10, "MSFT": 5, "NVDA": 4, "GOOG": 3},
    "symbols": SYMBOLS | {"GOOG": GOOG, "NVDA": SymbolSpec(
        price=Decimal(50), spread_bps=20, volatility_bps=0, fractionable=False)},
}  # fmt: skip
TARGETS = {"plan_id": "weights", "targets": {"AAPL": "0.30", "MSFT": "0.10", "GOOG": "0.044"}}


def test_a_target_plan_is_derived_as_the_engine_derives_it(make_rig: Any) -> None:
    """By hand: AAPL 0.30 x 13,800 / 100.10 = 41.3 -> 41 whole shares, 10 held: buy 31;
    MSFT 1,380 / 399.80 = 3.451725862 at the bid, 5 held: sell 1.548274138; NVDA held, not
    named: closed; GOOG 607.20 / 200.20 = 3.03 -> 3, as held: a HOLD. Sells first, priced
    like any order; the engine then journals and trades the same orders and holds."""
    rig = make_rig(spec(**WEIGHTED))
    found = rig.clock.run(rig.engine.preview(parse_plan(TARGETS)))
    assert rig.journal.last_seq == 0
    shown = [(o.symbol, o.side, o.qty) for o in found.orders]
    assert shown == [
        ("MSFT", OrderSide.SELL, Decimal("1.548274138")),
        ("NVDA", OrderSide.SELL, Decimal(4)),
        ("AAPL", OrderSide.BUY, Decimal(31)),
    ]
    assert "target 0.3 of equity 13800.00 is 41 shares at the ask 100.1; 10 held" in (
        verdict(found, "targets", 2).message
    )
    assert "not named (or at 0): closed in full; 4 held" in verdict(found, "targets", 1).message
    (hold,) = found.holds
    assert (hold.symbol, hold.held, hold.change) == ("GOOG", 3, 0)
    # the sells' proceeds at the bid: 1.548274138 x 399.80 + 4 x 49.95
    assert found.funds.sell_proceeds == Decimal("818.80")
    assert all(o.steps and o.expected_cost is not None for o in found.orders)
    assert found.accepted
    result = rig.engine.execute_plan_sync(parse_plan(TARGETS))
    assert [(o.symbol, o.side, o.quantity) for o in result.orders] == shown
    assert result.holds == found.holds


def test_a_target_plan_the_engine_refuses_is_refused_alike(make_rig: Any) -> None:
    rig = make_rig(spec(**WEIGHTED, unknown_symbols=["ZZZZ"]))
    plan = parse_plan({"plan_id": "odd", "targets": {"ZZZZ": "0.1"}})
    with pytest.raises(InvalidPlan) as previewed:
        rig.clock.run(rig.engine.preview(plan))
    with pytest.raises(InvalidPlan) as executed:
        rig.engine.execute_plan_sync(plan)
    assert previewed.value.message == executed.value.message
    assert "targets: ZZZZ: unknown symbol" in previewed.value.message
    assert rig.journal.last_seq == 0
    assert not rig.broker.orders


def test_an_order_under_the_min_order_notional_set_is_skipped_not_refused(
    make_rig: Any,
) -> None:
    """With `min_order_notional` set, the $99 GOOG order that comes to no share is skipped,
    as the run reports it (OrderResult.skipped), and the preview still accepts the plan;
    without the limit it is refused (test_a_dollar_order_is_sized_as_the_engine_sizes_it)."""
    config = EngineConfig(min_order_notional=Decimal(50))
    rig = make_rig(spec(symbols=SYMBOLS | {"GOOG": GOOG}, positions={"MSFT": 5}), config=config)
    found = rig.clock.run(rig.engine.preview(parse_plan(DOLLARS)))
    buy, _, small = found.orders
    assert (small.outcome, small.reason) == (Outcome.SKIPPED, FailReason.BELOW_MIN_NOTIONAL)
    assert found.accepted
    assert found.gross_buy_notional == buy.expected_value  # the skipped one adds nothing
    result = rig.engine.execute_plan_sync(parse_plan(DOLLARS))
    assert [o.skipped for o in result.orders] == [False, False, True]
    assert result.status == "SUCCESS"


def test_the_command_says_an_order_is_skipped_and_exits_0(tmp_path: Path) -> None:
    market_spec = write(tmp_path / "m.json", spec(**WEIGHTED).model_dump(mode="json"))
    limits = write(tmp_path / "c.json", {"min_order_notional": "50"})
    dollars = write(tmp_path / "d.json", DOLLARS)
    shown = invoke(dollars, "--market", market_spec, "--engine-config", limits)
    assert shown.exit_code == EXIT_OK, shown.output
    assert "every order would be sent but 1 skipped" in shown.output.splitlines()[0]
    assert re.search(r"^2  GOOG  buy  \$99  0  skipped below_min_notional ", shown.output, re.M)


def test_the_command_shows_notionals_and_holds(tmp_path: Path) -> None:
    market_spec = write(tmp_path / "m.json", spec(**WEIGHTED).model_dump(mode="json"))
    dollars = invoke(write(tmp_path / "d.json", DOLLARS), "--market", market_spec)
    assert dollars.exit_code == EXIT_WOULD_REFUSE, dollars.output  # the $99 order is skipped
    assert re.search(r"^0  AAPL  buy  \$1500  14  sent ", dollars.output, flags=re.M)
    assert "refused below_min_notional" in dollars.output
    weights = invoke(write(tmp_path / "t.json", TARGETS), "--market", market_spec, "--json")
    assert weights.exit_code == EXIT_OK, weights.output
    assert json.loads(weights.output)["holds"] == [
        {"symbol": "GOOG", "target_weight": "0.044", "held": "3", "change": "0", "value": "0",
         "threshold": "1"}]  # fmt: skip
    plain = invoke(tmp_path / "t.json", "--market", market_spec)
    assert "HOLD GOOG: at target (target 0.044, 3 held)" in plain.output


HOSTILE = [
    ("weights over 1", {"targets": {"AAPL": "0.7", "MSFT": "0.4"}}, "add up to 1.1, more than 1"),
    ("notional NaN", {"orders": [{"symbol": "AAPL", "side": "buy", "notional": "NaN"}]}, "NaN"),
    ("notional < 0", {"orders": [{"symbol": "AAPL", "side": "buy", "notional": "-5"}]}, "zero"),
    ("notional 1e400", {"orders": [{"symbol": "AAPL", "side": "buy", "notional": "1e400"}]},
     "plain decimal notation"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "payload", "needle"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_a_hostile_plan_is_one_line_and_exit_2_as_run_says_it(
    tmp_path: Path, case: str, payload: dict[str, Any], needle: str
) -> None:
    plan_file = write(tmp_path / "p.json", {"plan_id": "h"} | payload)
    previewed = invoke(plan_file)
    ran = CliRunner().invoke(main, ["run", str(plan_file), "--journal", str(tmp_path / "j.db")])
    assert previewed.exit_code == ran.exit_code == EXIT_BAD_INPUT
    assert previewed.stderr == ran.stderr
    (line,) = previewed.stderr.splitlines()
    assert line.startswith("walkbook: error:")
    assert needle in line
