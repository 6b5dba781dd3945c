"""Pre-trade risk limits (issue 17, item 3): each limit lets a plan within it trade, and a
breach is refused naming the limit and the figures, before anything reaches the broker.

The market is fixed by hand: AAPL's mid is 100 and MSFT's 200, both 10 bps wide, no
volatility, so every order's cost is worked out here (buys at the ask, sells at the bid).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from engine import (
    Engine,
    EngineConfig,
    InvalidIntent,
    MarketSpec,
    RiskLimitBreached,
    SimBroker,
    SymbolSpec,
    VirtualClock,
    parse_plan,
)
from engine.cli import main as cli_main
from engine.crash import CrashPoints, SimulatedCrash
from engine.events import EventKind
from journal import Journal
from tests.conftest import START
from tests.walk_support import NEVER, check_invariants, events, run_one, run_plan, transitions

AAPL_ASK, AAPL_BID = Decimal("100.05"), Decimal("99.95")
MSFT_ASK, MSFT_BID = Decimal("200.10"), Decimal("199.90")
LIMITS = (
    "max_order_notional",
    "max_plan_notional",
    "max_position_weight",
    "daily_traded_notional",
    "min_order_notional",
    "sell_failure_gate",
    "oversell_tolerance",
)


def steady(price: str) -> SymbolSpec:
    return SymbolSpec(price=Decimal(price), spread_bps=10, volatility_bps=0)


def market(**overrides: Any) -> dict[str, Any]:
    """AAPL (mid 100) and MSFT (mid 200, 40 held) on a $100,000 margin account."""
    spec: dict[str, Any] = {
        "symbols": {"AAPL": steady("100"), "MSFT": steady("200"), "NVDA": steady("100")},
        "cash": Decimal(100_000),
        "positions": {"MSFT": Decimal(40)},
    }
    return spec | overrides


def buy(symbol: str, quantity: str, **fields: str) -> dict[str, str]:
    return {"symbol": symbol, "side": "buy", "quantity": quantity, **fields}


def sell(symbol: str, quantity: str, **fields: str) -> dict[str, str]:
    return {"symbol": symbol, "side": "sell", "quantity": quantity, **fields}


def refused(rig: Any, *orders: dict[str, str]) -> RiskLimitBreached:
    """Deliver the plan, which must be refused whole: nothing journaled, the book untouched."""
    positions = dict(rig.broker.positions)
    with pytest.raises(RiskLimitBreached) as caught:
        run_plan(rig, *orders)
    assert rig.journal.last_seq == 0
    assert rig.broker.orders == {}
    assert rig.broker.positions == positions
    return caught.value


def failed_with(rig: Any, order_id: str) -> dict[str, Any]:
    """The data of the order's FAILED transition, which must have sent the broker nothing."""
    (failed,) = [e for e in transitions(rig, order_id) if e.to_state == "FAILED"]
    assert not [e for e in events(rig, order_id) if e.kind == EventKind.SUBMIT_INTENT]
    return failed.data


def symbols_sent(rig: Any) -> set[str]:
    return {order.symbol for order in rig.broker.orders.values()}


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize("name", LIMITS)
def test_each_limit_is_off_by_default_and_validated(name: str) -> None:
    """Every limit is None (off) by default, oversell_tolerance 0; a value must be a finite
    number not below zero."""
    assert getattr(EngineConfig(), name) == (Decimal(0) if name == "oversell_tolerance" else None)
    assert getattr(EngineConfig.model_validate({name: "0.5"}), name) == Decimal("0.5")
    for bad in ("-1", "NaN", "Infinity", True):
        with pytest.raises(ValidationError, match=name):
            EngineConfig.model_validate({name: bad})


# -- max_order_notional ---------------------------------------------------------------


def test_an_order_at_max_order_notional_trades(make_rig: Any) -> None:
    """10 AAPL at the ask 100.05 cost 1000.50: exactly the limit, so it trades."""
    rig = make_rig(config=EngineConfig(max_order_notional=Decimal("1000.50")), **market())
    result = run_one(rig, **buy("AAPL", "10"))
    assert result.state == "VALIDATED"
    check_invariants(rig, result)


def test_an_order_over_max_order_notional_refuses_the_plan(make_rig: Any) -> None:
    """One cent over: the whole plan is refused (all_or_nothing), naming order, limit and figure."""
    rig = make_rig(config=EngineConfig(max_order_notional=Decimal("1000.49")), **market())
    breach = refused(rig, sell("MSFT", "1"), buy("AAPL", "10"))
    assert (breach.limit, breach.limit_value, breach.figure) == (
        "max_order_notional",
        Decimal("1000.49"),
        Decimal("1000.50"),
    )
    assert breach.fields["orders"] == [1]
    assert "order 1 (AAPL buy 10): worth 1000.50 at the ask 100.05" in breach.message
    assert "over max_order_notional 1000.49" in breach.message


def test_max_order_notional_costs_a_sell_at_the_bid(make_rig: Any) -> None:
    """5 MSFT sold at the bid 199.90 are worth 999.50: within a limit of 999.50, not 999.49."""
    within = make_rig(config=EngineConfig(max_order_notional=Decimal("999.50")), **market())
    assert run_one(within, **sell("MSFT", "5")).state == "VALIDATED"
    over = make_rig(config=EngineConfig(max_order_notional=Decimal("999.49")), **market())
    breach = refused(over, sell("MSFT", "5"))
    assert breach.figure == Decimal("999.50")
    assert "at the bid 199.9" in breach.message


def test_max_order_notional_with_skip_invalid_fails_just_that_order_unsent(make_rig: Any) -> None:
    """skip_invalid: the order over the limit is FAILED risk_limit, never sent, the figures
    in its fail transition; the rest of the plan trades."""
    config = EngineConfig(max_order_notional=Decimal(1000), validation="skip_invalid")
    rig = make_rig(config=config, **market())
    result = run_plan(rig, buy("AAPL", "11"), sell("MSFT", "2"))
    aapl, msft = result.orders
    assert (aapl.state, aapl.reason) == ("FAILED", "risk_limit")
    assert msft.state == "VALIDATED"
    assert symbols_sent(rig) == {"MSFT"}
    data = failed_with(rig, aapl.order_id)
    assert (data["limit"], data["limit_value"], data["figure"]) == (
        "max_order_notional",
        "1000",
        "1100.55",
    )
    assert "worth 1100.55" in data["message"]
    check_invariants(rig, result)


# -- max_plan_notional ----------------------------------------------------------------


def test_a_plan_at_max_plan_notional_trades(make_rig: Any) -> None:
    """5 AAPL bought (500.25) and 2 MSFT sold (399.80) come to 900.05, buys and sells alike."""
    rig = make_rig(config=EngineConfig(max_plan_notional=Decimal("900.05")), **market())
    result = run_plan(rig, buy("AAPL", "5"), sell("MSFT", "2"))
    assert [o.state for o in result.orders] == ["VALIDATED", "VALIDATED"]
    check_invariants(rig, result)


def test_a_plan_over_max_plan_notional_is_refused_whole_even_with_skip_invalid(
    make_rig: Any,
) -> None:
    config = EngineConfig(max_plan_notional=Decimal("900.04"), validation="skip_invalid")
    rig = make_rig(config=config, **market())
    breach = refused(rig, buy("AAPL", "5"), sell("MSFT", "2"))
    assert (breach.limit, breach.limit_value, breach.figure) == (
        "max_plan_notional",
        Decimal("900.04"),
        Decimal("900.05"),
    )
    assert breach.message.startswith("plan p1 refused: its orders are worth 900.05")


def test_max_plan_notional_counts_only_the_orders_that_would_be_sent(make_rig: Any) -> None:
    """An order another limit stops (skip_invalid) is not part of what the plan trades."""
    config = EngineConfig(
        max_plan_notional=Decimal(1000),
        max_order_notional=Decimal(600),
        validation="skip_invalid",
    )
    rig = make_rig(config=config, **market())
    result = run_plan(rig, buy("AAPL", "5"), sell("MSFT", "2"), buy("NVDA", "7"))
    assert [(o.state, o.reason) for o in result.orders] == [
        ("VALIDATED", None),
        ("VALIDATED", None),
        ("FAILED", "risk_limit"),
    ]
    assert symbols_sent(rig) == {"AAPL", "MSFT"}


# -- min_order_notional ---------------------------------------------------------------


def test_an_order_under_min_order_notional_is_skipped_unsent(make_rig: Any) -> None:
    """Even with all_or_nothing: the small order is skipped (FAILED below_min_notional, never
    sent, its position untouched) and the rest of the plan trades."""
    rig = make_rig(config=EngineConfig(min_order_notional=Decimal(100)), **market())
    result = run_plan(rig, sell("MSFT", "0.5"), buy("AAPL", "1"))
    msft, aapl = result.orders
    assert (msft.state, msft.reason) == ("FAILED", "below_min_notional")
    assert aapl.state == "VALIDATED"  # 100.05: at least the minimum
    # reported as skipped, which fails nothing of the plan
    assert (msft.skipped, aapl.skipped, result.status) == (True, False, "SUCCESS")
    assert symbols_sent(rig) == {"AAPL"}
    assert rig.broker.positions["MSFT"] == Decimal(40)
    data = failed_with(rig, msft.order_id)
    assert (data["limit"], data["limit_value"], data["figure"]) == (
        "min_order_notional",
        "100",
        "99.95",
    )
    assert data["message"].endswith("under min_order_notional 100: skipped")
    check_invariants(rig, result)


@pytest.mark.parametrize("minimum", [None, Decimal(300)])
def test_a_buy_shrunk_below_min_order_notional_is_skipped_not_sent(
    make_rig: Any, minimum: Decimal | None
) -> None:
    """$250 of cash buys 2 of the 10 AAPL asked for (200.10): shrunk and sent without a
    minimum; with a minimum of 300 skipped, unsent, rather than sent for less."""
    config = EngineConfig(insufficient_funds="shrink", min_order_notional=minimum)
    rig = make_rig(config=config, **market(cash=Decimal(250), positions={}, account_type="cash"))
    result = run_one(rig, **buy("AAPL", "10"))
    if minimum is None:
        assert (result.state, result.quantity) == ("VALIDATED", Decimal(2))
        return
    assert (result.state, result.reason) == ("FAILED", "below_min_notional")
    assert rig.broker.orders == {}
    data = failed_with(rig, result.order_id)
    assert (data["limit"], Decimal(data["figure"])) == ("min_order_notional", Decimal("200.10"))


# -- sell_failure_gate ----------------------------------------------------------------


def gate_rig(make_rig: Any, gate: Decimal) -> Any:
    """Every market order fills in part and limit orders never fill: the AAPL sell (urgency
    high, one market attempt) fails partly unfilled."""
    config = EngineConfig(market_attempts=1, sell_failure_gate=gate)
    spec = market(
        positions={"AAPL": Decimal(10)}, fill_intensity=NEVER, market_partial_probability=1.0
    )
    return make_rig(config=config, **spec)


def run_gated(rig: Any) -> Any:
    return run_plan(rig, sell("AAPL", "10", urgency="high"), buy("MSFT", "2", urgency="high"))


def test_sell_failure_gate_blocks_every_buy_when_more_sells_failed(make_rig: Any) -> None:
    """The unfilled part of the sell at its arrival bid is the figure; one cent of it above
    the gate blocks the buy (FAILED blocked_by_sells, unsent); at the gate it goes."""
    probe = run_gated(gate_rig(make_rig, Decimal(0)))
    sold = probe.orders[0]
    assert sold.state == "FAILED"
    assert sold.arrival_bid == AAPL_BID
    unsold = (sold.quantity - sold.filled_qty) * AAPL_BID
    assert unsold > 0

    blocked_rig = gate_rig(make_rig, unsold - Decimal("0.01"))
    _, buy_result = run_gated(blocked_rig).orders
    assert (buy_result.state, buy_result.reason) == ("FAILED", "blocked_by_sells")
    assert symbols_sent(blocked_rig) == {"AAPL"}
    data = failed_with(blocked_rig, buy_result.order_id)
    assert (data["limit"], Decimal(data["figure"])) == ("sell_failure_gate", unsold)
    assert Decimal(data["limit_value"]) == unsold - Decimal("0.01")
    assert f"{unsold} of the plan's sells failed or went unfilled" in data["message"]

    open_rig = gate_rig(make_rig, unsold)
    _, buy_result = run_gated(open_rig).orders
    assert buy_result.reason != "blocked_by_sells"
    assert symbols_sent(open_rig) == {"AAPL", "MSFT"}


@pytest.mark.parametrize(("gate", "blocked"), [("1199.39", True), ("1199.40", False)])
def test_a_sell_refused_before_trading_counts_against_the_gate(
    make_rig: Any, gate: str, blocked: bool
) -> None:
    """A sell failed unsent (12 AAPL against 10 held, skip_invalid) had no arrival quote: it
    is priced at a fresh bid, 12 x 99.95 = 1199.40."""
    config = EngineConfig(sell_failure_gate=Decimal(gate), validation="skip_invalid")
    rig = make_rig(config=config, **market(positions={"AAPL": Decimal(10)}))
    sold, bought = run_plan(rig, sell("AAPL", "12"), buy("MSFT", "1")).orders
    assert sold.reason == "invalid_intent"
    if blocked:
        assert bought.reason == "blocked_by_sells"
        assert rig.broker.orders == {}
    else:
        assert bought.state == "VALIDATED"
        assert symbols_sent(rig) == {"MSFT"}


def test_a_resume_applies_the_gate_its_buys_were_journaled_with(tmp_path: Path) -> None:
    """Killed once the sell was sent, the plan is resumed by an engine configured without a
    gate: the buy still does not start, by the gate journaled with it."""
    clock = VirtualClock(START)
    spec = market(
        positions={"AAPL": Decimal(10)}, fill_intensity=NEVER, market_partial_probability=1.0
    )
    broker = SimBroker(MarketSpec(**spec), clock)
    gated = EngineConfig(market_attempts=1, sell_failure_gate=Decimal(0))
    crash = CrashPoints(armed="after_broker.submit_order")
    path = tmp_path / "j.db"
    with Engine(broker, path, gated, clock, crash_points=crash) as crashed:
        plan = {"plan_id": "p1", "orders": [sell("AAPL", "10", urgency="high"), buy("MSFT", "2")]}
        with pytest.raises(SimulatedCrash):
            crashed.execute_plan_sync(parse_plan(plan))
    with Engine(broker, path, EngineConfig(market_attempts=1), clock) as resumed:
        report = resumed.resume_sync()
    sold, bought = (order.result for order in report.orders)
    assert sold.state == "FAILED"
    assert sold.filled_qty < sold.quantity
    assert (bought.state, bought.reason) == ("FAILED", "blocked_by_sells")
    assert {order.symbol for order in broker.orders.values()} == {"AAPL"}


# -- daily_traded_notional ------------------------------------------------------------


def engine_at(tmp_path: Path, at_hours: float, config: EngineConfig) -> tuple[Engine, SimBroker]:
    """An engine on the journal in tmp_path at START plus `at_hours`, on a fresh market."""
    clock = VirtualClock(START + timedelta(hours=at_hours))
    broker = SimBroker(MarketSpec(**market()), clock)
    return Engine(broker, tmp_path / "j.db", config, clock), broker


def deliver(engine: Engine, plan_id: str, *orders: dict[str, str]) -> Any:
    return engine.execute_plan_sync(parse_plan({"plan_id": plan_id, "orders": list(orders)}))


def test_daily_traded_notional_counts_the_days_fills_from_the_journal(tmp_path: Path) -> None:
    """The first plan's fills (about 1000 of AAPL) and the second plan (5 MSFT at the bid,
    999.50) exceed 1500 on the same UTC day: refused naming both figures, nothing sent.
    A day later the same plan trades: yesterday's fills do not count."""
    config = EngineConfig(daily_traded_notional=Decimal(1500))
    first, _ = engine_at(tmp_path, 0, config)
    with first:
        traded = deliver(first, "p1", buy("AAPL", "10")).orders[0]
        assert traded.state == "VALIDATED"
    later, broker = engine_at(tmp_path, 5, config)
    with later:
        seq = later.journal.last_seq
        with pytest.raises(RiskLimitBreached) as caught:
            deliver(later, "p2", sell("MSFT", "5"))
        assert later.journal.last_seq == seq
        assert broker.orders == {}
    breach = caught.value
    before = traded.traded_value.quantize(Decimal("0.01"))
    assert (breach.limit, breach.limit_value) == ("daily_traded_notional", Decimal(1500))
    assert breach.figure == before + Decimal("999.50")
    assert breach.fields["traded_before"] == before
    assert f"{before} traded on {START.date()} (UTC)" in breach.message
    next_day, _ = engine_at(tmp_path, 24, config)
    with next_day:
        assert deliver(next_day, "p2", sell("MSFT", "5")).orders[0].state == "VALIDATED"


def test_a_plan_within_daily_traded_notional_trades(tmp_path: Path) -> None:
    config = EngineConfig(daily_traded_notional=Decimal(2500))
    engine, _ = engine_at(tmp_path, 0, config)
    with engine:
        assert deliver(engine, "p1", buy("AAPL", "10")).orders[0].state == "VALIDATED"
        assert deliver(engine, "p2", sell("MSFT", "5")).orders[0].state == "VALIDATED"


# -- max_position_weight --------------------------------------------------------------


def weight_rig(make_rig: Any, weight: str) -> tuple[Any, Decimal]:
    """100 AAPL held; the account's equity as the broker reports it."""
    config = EngineConfig(max_position_weight=Decimal(weight))
    rig = make_rig(config=config, **market(positions={"AAPL": Decimal(100)}))
    equity = rig.clock.run(rig.broker.get_account()).equity
    return rig, equity


def test_max_position_weight_refuses_a_buy_that_would_weigh_too_much(make_rig: Any) -> None:
    """100 more AAPL make 200 held, 20,010 at the ask: about 0.18 of the equity."""
    rig, equity = weight_rig(make_rig, "0.15")
    share = (200 * AAPL_ASK / equity).quantize(Decimal("0.0001"))
    breach = refused(rig, buy("AAPL", "100"))
    assert (breach.limit, breach.limit_value, breach.figure) == (
        "max_position_weight",
        Decimal("0.15"),
        share,
    )
    assert f"200 held would be {share} of equity (20010.00 of {equity:.2f})" in breach.message


def test_a_buy_within_max_position_weight_trades_and_sells_are_not_weighed(
    make_rig: Any,
) -> None:
    rig, equity = weight_rig(make_rig, "0.2")
    assert 200 * AAPL_ASK / equity < Decimal("0.2")
    assert run_one(rig, **buy("AAPL", "100")).state == "VALIDATED"
    # 200 AAPL held weigh more than 0.01 of equity; a sell only lightens them
    light, _ = weight_rig(make_rig, "0.01")
    assert run_one(light, **sell("AAPL", "10")).state == "VALIDATED"


# -- oversell_tolerance ---------------------------------------------------------------


def test_a_sell_within_oversell_tolerance_is_trimmed_to_the_position(make_rig: Any) -> None:
    """41 MSFT against 40 held, with 5% tolerance: sold 40, the 41 asked for journaled."""
    rig = make_rig(config=EngineConfig(oversell_tolerance=Decimal("0.05")), **market())
    result = run_one(rig, **sell("MSFT", "41"))
    assert (result.state, result.quantity) == ("VALIDATED", Decimal(40))
    assert rig.broker.positions.get("MSFT", Decimal(0)) == 0
    (created,) = [e for e in events(rig, result.order_id) if e.kind == EventKind.CREATED]
    assert created.data["requested_qty"] == "41"
    check_invariants(rig, result)


@pytest.mark.parametrize(("tolerance", "quantity"), [("0", "41"), ("0.05", "42.01")])
def test_a_sell_beyond_oversell_tolerance_is_refused(
    make_rig: Any, tolerance: str, quantity: str
) -> None:
    rig = make_rig(config=EngineConfig(oversell_tolerance=Decimal(tolerance)), **market())
    with pytest.raises(InvalidIntent, match=f"sell of {quantity} exceeds the position of 40"):
        run_plan(rig, sell("MSFT", quantity))
    assert rig.journal.last_seq == 0
    assert rig.broker.orders == {}


# -- through the command line -----------------------------------------------------------


def cli_files(tmp_path: Path, config: dict[str, Any], *orders: dict[str, str]) -> list[str]:
    """`walkbook run` arguments for a plan of `orders` on the market above, kept in a
    simulator state file, with `config` as --engine-config."""
    spec = MarketSpec(**market()).model_dump(mode="json")
    (tmp_path / "market.json").write_text(json.dumps(spec))
    (tmp_path / "config.json").write_text(json.dumps(config))
    plan = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*')))}.json"
    plan.write_text(json.dumps({"plan_id": plan.stem, "orders": list(orders)}))
    return [
        "run", str(plan), "--journal", str(tmp_path / "j.db"), "--market",
        str(tmp_path / "market.json"), "--sim-state", str(tmp_path / "sim.db"),
        "--engine-config", str(tmp_path / "config.json"),
    ]  # fmt: skip


def sim_orders(tmp_path: Path) -> list[Any]:
    spec = MarketSpec(**market())
    broker = SimBroker.open(tmp_path / "sim.db", spec, VirtualClock(START))
    try:
        return list(broker.orders.values())
    finally:
        broker.close()


def event_count(tmp_path: Path) -> int:
    with Journal.open_readonly(tmp_path / "j.db") as journal:
        return journal.last_seq


def test_the_cli_refuses_a_breach_with_exit_2_on_one_line(tmp_path: Path) -> None:
    """`walkbook run --engine-config` with max_order_notional: 11 AAPL (1100.55) over 1000 is
    exit 2, one line naming limit and figures, nothing journaled, no order at the simulator;
    9 AAPL (900.45) then trade."""
    runner = CliRunner()
    config = {"max_order_notional": "1000"}
    refused_run = runner.invoke(cli_main, cli_files(tmp_path, config, buy("AAPL", "11")))
    assert refused_run.exit_code == 2, refused_run.output
    (line,) = refused_run.stderr.strip().splitlines()
    assert line.startswith("walkbook: error: plan plan-0 refused: order 0 (AAPL buy 11)")
    assert "worth 1100.55 at the ask 100.05, over max_order_notional 1000" in line
    assert not (tmp_path / "j.db").exists() or event_count(tmp_path) == 0
    assert sim_orders(tmp_path) == []

    within = runner.invoke(cli_main, cli_files(tmp_path, config, buy("AAPL", "9")))
    assert within.exit_code == 0, within.output
    assert [o.symbol for o in sim_orders(tmp_path)] != []


def test_the_cli_counts_the_days_fills_for_daily_traded_notional(tmp_path: Path) -> None:
    runner = CliRunner()
    config = {"daily_traded_notional": 1500}
    first = runner.invoke(cli_main, cli_files(tmp_path, config, buy("AAPL", "10")))
    assert first.exit_code == 0, first.output
    seq, placed = event_count(tmp_path), len(sim_orders(tmp_path))
    second = runner.invoke(cli_main, cli_files(tmp_path, config, sell("MSFT", "5")))
    assert second.exit_code == 2, second.output
    (line,) = second.stderr.strip().splitlines()
    assert "over daily_traded_notional 1500; nothing sent" in line
    assert (event_count(tmp_path), len(sim_orders(tmp_path))) == (seq, placed)


def test_the_cli_refuses_a_negative_limit_in_the_engine_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_main, cli_files(tmp_path, {"sell_failure_gate": -500}, buy("AAPL", "1"))
    )
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "invalid engine config: sell_failure_gate" in line
    assert sim_orders(tmp_path) == []


# -- the example in docs/embedding.md ----------------------------------------------------


def test_the_embedding_docs_risk_limits_example_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The section's limits.json and plan.json through `walkbook run` on the default
    simulator: the line shown, exit 2, nothing journaled; with 1,000 AAPL it trades and the
    MSFT order is skipped."""
    doc = (Path(__file__).parent.parent / "docs" / "embedding.md").read_text()
    section = doc.split("## Risk limits")[1].split("\n## ")[0]
    limits, plan = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    (shown,) = re.findall(r"```text\n(.*?)\n```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    Path("limits.json").write_text(limits)
    Path("plan.json").write_text(plan)
    args = ["run", "plan.json", "--journal", "j.db", "--engine-config", "limits.json"]
    refused_run = CliRunner().invoke(cli_main, args)
    assert refused_run.exit_code == 2, refused_run.output
    assert refused_run.stderr.strip() == shown
    assert not Path("j.db").exists() or event_count(tmp_path) == 0

    smaller = json.loads(plan)
    smaller["orders"][1]["quantity"] = "1000"
    Path("plan.json").write_text(json.dumps(smaller))
    traded = CliRunner().invoke(cli_main, [*args, "--result-json", "result.json"])
    # the small order is skipped as the limit asks, which fails nothing: exit 0
    assert traded.exit_code == 0, traded.output
    (skipped_line,) = [line for line in traded.output.splitlines() if "SKIPPED below_" in line]
    assert skipped_line.startswith("MSFT ")
    result = json.loads(Path("result.json").read_text())
    assert result["status"] == "SUCCESS"
    assert [(o["symbol"], o["state"], o["reason"], o["skipped"]) for o in result["orders"]] == [
        ("MSFT", "FAILED", "below_min_notional", True),
        ("AAPL", "VALIDATED", None, False),
    ]
