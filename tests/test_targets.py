"""Target-weight plans (issue 17, item 2): `{"plan_id", "targets": {symbol: weight},
"cash_weight"}` as weights of account equity. The engine derives the sells and buys from one
snapshot (equity, positions, quotes), closes what is held but not named, holds a change
worth less than the threshold, journals the derived orders under the plan and runs them
sells first; a redelivery is the journaled plan, never derived again."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alpaca_support import EAGER, RESTING, alpaca_rig, market
from click.testing import CliRunner
from walk_support import NEVER, check_invariants, events

from engine import (
    Engine,
    EngineConfig,
    MarketSpec,
    OrderSide,
    OrderState,
    PlanStatus,
    SymbolSpec,
    parse_plan,
)
from engine.broker import OrderRequest
from engine.cli import main
from engine.crash import CrashPoints, SimulatedCrash
from engine.errors import InvalidPlan
from engine.events import EventKind
from engine.intents import CloseType

ROOT = Path(__file__).resolve().parent.parent


def symbol(price: str, fractionable: bool = True) -> SymbolSpec:
    return SymbolSpec(
        price=Decimal(price), spread_bps=10, volatility_bps=0, fractionable=fractionable
    )


# Mids that never move, 10 bps wide: AAPL 99.95/100.05, MSFT 49.97/50.03 (whole shares),
# TSLA 199.90/200.10, NVDA 39.98/40.02 (whole shares), SPY 399.80/400.20.
# Equity = cash 10,000 + AAPL 10 x 100 + MSFT 20 x 50 + TSLA 5 x 200 + SPY 2 x 400 = 13,800.
ACCOUNT: dict[str, Any] = {
    "cash": "10000",
    "positions": {"AAPL": "10", "MSFT": "20", "TSLA": "5", "SPY": "2"},
    "symbols": {
        "AAPL": symbol("100"),
        "MSFT": symbol("50", fractionable=False),
        "TSLA": symbol("200"),
        "NVDA": symbol("40", fractionable=False),
        "SPY": symbol("400"),
    },
    # limit orders never fill: every order walks to market and fills whole at the touch
    "fill_intensity": NEVER,
    "market_partial_probability": 0.0,
}
TARGETS = {"AAPL": "0.30", "MSFT": "0.20", "NVDA": "0.25", "SPY": "0.05805"}
PLAN = {"plan_id": "rebalance", "targets": TARGETS, "cash_weight": "0.02"}
# worked by hand at equity 13,800 (buys at the ask, sells at the bid, rounded down):
EXPECTED = {
    # held, not named: closed in full
    "TSLA": (OrderSide.SELL, Decimal("5"), CloseType.FULL),
    # 0.30 x 13,800 = 4,140 / 100.05 = 41.379310344 (9 decimals); held 10
    "AAPL": (OrderSide.BUY, Decimal("31.379310344"), CloseType.NONE),
    # 0.20 x 13,800 = 2,760 / 50.03 = 55.17 -> 55 whole shares; held 20
    "MSFT": (OrderSide.BUY, Decimal("35"), CloseType.NONE),
    # 0.25 x 13,800 = 3,450 / 40.02 = 86.21 -> 86 whole shares; held none
    "NVDA": (OrderSide.BUY, Decimal("86"), CloseType.NONE),
}
# 0.05805 x 13,800 = 801.09 / 400.20 = 2.001724137 shares: 0.001724137 more than held,
# worth 0.69 at the ask, under the $1 default threshold: a HOLD
SPY_CHANGE = Decimal("0.001724137")


def trade_elsewhere(rig: Any, request: OrderRequest) -> None:
    """An order someone else places on the account, filled at once at market."""
    placed = rig.clock.run(rig.broker.submit_order(request))
    rig.clock.run(asyncio.sleep(1))
    assert rig.clock.run(rig.broker.get_order(placed.id)).filled_qty == request.qty


def rig_with(make_rig: Any, config: EngineConfig | None = None, **overrides: Any) -> Any:
    return make_rig(spec=MarketSpec(**(ACCOUNT | overrides)), config=config)


def deliver(rig: Any, payload: dict[str, Any] = PLAN) -> Any:
    return rig.engine.execute_plan_sync(parse_plan(payload))


def test_a_target_plan_derives_the_orders_worked_by_hand(make_rig: Any) -> None:
    rig = rig_with(make_rig)
    result = deliver(rig)
    derived = {
        o.symbol: (o.side, o.quantity, rig.journal.order(o.order_id)["close_type"])
        for o in result.orders
    }
    assert derived == {s: (side, qty, close.value) for s, (side, qty, close) in EXPECTED.items()}
    assert result.status is PlanStatus.SUCCESS
    assert all(o.filled_qty == o.quantity for o in result.orders)
    assert rig.broker.positions == {
        "AAPL": Decimal("41.379310344"),
        "MSFT": Decimal("55"),
        "NVDA": Decimal("86"),
        "SPY": Decimal("2"),
    }
    (hold,) = result.holds
    assert (hold.symbol, hold.target_weight, hold.held) == ("SPY", Decimal("0.05805"), 2)
    assert (hold.change, hold.value, hold.threshold) == (SPY_CHANGE, Decimal("0.69"), 1)
    check_invariants(rig, result)


def test_each_derived_order_journals_its_weight_and_the_snapshot(make_rig: Any) -> None:
    rig = rig_with(make_rig)
    result = deliver(rig)
    created = {e.data["intent"]["symbol"]: e.data for e in events(rig) if e.kind == "created"}
    assert set(created) == set(EXPECTED)
    aapl = created["AAPL"]["sizing"]
    assert aapl["method"] == "target_weight"
    assert (aapl["target_weight"], aapl["equity"], aapl["held"]) == ("0.3", "13800", "10")
    assert (aapl["target_qty"], aapl["price"], aapl["side_of_book"]) == (
        "41.379310344",
        "100.05",
        "ask",
    )
    tsla = created["TSLA"]["sizing"]
    assert (tsla["target_weight"], tsla["target_qty"], tsla["side_of_book"]) == ("0", "0", "bid")
    # every order of the plan carries the plan's digest; the first also its holds
    first = next(e for e in events(rig) if e.kind == "created")
    assert [h["symbol"] for h in first.data["sizing"]["plan_holds"]] == ["SPY"]
    assert {r.plan_id for r in result.orders} == {"rebalance"}


def test_sells_run_before_buys(make_rig: Any) -> None:
    rig = rig_with(make_rig)
    result = deliver(rig)
    sell = next(o.order_id for o in result.orders if o.side is OrderSide.SELL)
    journal = list(events(rig))
    sell_done = max(e.seq for e in journal if e.order_id == sell)
    buys_sent = [
        e.seq
        for e in journal
        if e.kind == EventKind.SUBMIT_INTENT and e.data["client_order_id"].split("-")[1] != sell
    ]
    assert buys_sent
    assert min(buys_sent) > sell_done


def test_a_redelivery_trades_nothing_more_and_reports_the_same_plan(make_rig: Any) -> None:
    rig = rig_with(make_rig)
    first = deliver(rig)
    placed = len(rig.broker.orders)
    positions = dict(rig.broker.positions)
    again = deliver(rig)
    assert len(rig.broker.orders) == placed
    assert rig.broker.positions == positions
    assert [(o.order_id, o.quantity, o.state) for o in again.orders] == [
        (o.order_id, o.quantity, o.state) for o in first.orders
    ]
    assert again.holds == first.holds
    assert len([e for e in events(rig) if e.kind == "created"]) == len(EXPECTED)


def test_other_targets_under_the_same_plan_id_are_refused(make_rig: Any) -> None:
    rig = rig_with(make_rig)
    deliver(rig)
    placed = len(rig.broker.orders)
    changed = PLAN | {"targets": TARGETS | {"AAPL": "0.31"}}
    with pytest.raises(InvalidPlan, match="already delivered with different contents"):
        deliver(rig, changed)
    assert len(rig.broker.orders) == placed


def test_a_crash_between_deriving_and_walking_walks_the_derived_orders(make_rig: Any) -> None:
    """Killed as the derived orders are journaled: someone else then buys 5 AAPL. Resumed,
    and the plan delivered again, the engine walks the orders it derived, not new ones
    derived from the positions as they are now (which would buy 5 AAPL fewer)."""
    rig = rig_with(make_rig)
    path = rig.journal_path.with_name("crash.db")
    crashing = Engine(
        rig.broker, path, clock=rig.clock, crash_points=CrashPoints(armed="after_append.created")
    )
    with pytest.raises(SimulatedCrash):
        crashing.execute_plan_sync(parse_plan(PLAN))
    crashing.close()
    assert not rig.broker.orders
    trade_elsewhere(rig, OrderRequest("someone-else", "AAPL", OrderSide.BUY, Decimal(5), "market"))
    assert rig.broker.positions["AAPL"] == Decimal(15)
    with Engine(rig.broker, path, clock=rig.clock) as resumed:
        report = resumed.resume_sync()
        walked = {o.symbol: o.result.filled_qty for o in report.orders}
        assert walked == {s: qty for s, (_, qty, _) in EXPECTED.items()}
        placed = len(rig.broker.orders)
        again = resumed.execute_plan_sync(parse_plan(PLAN))
        assert len(rig.broker.orders) == placed
        assert {o.symbol: o.state for o in again.orders} == dict.fromkeys(
            EXPECTED, OrderState.VALIDATED
        )
        assert [h.symbol for h in again.holds] == ["SPY"]
    assert rig.broker.positions["AAPL"] == Decimal("46.379310344")


def test_min_order_notional_sets_the_hold_threshold(make_rig: Any) -> None:
    """With min_order_notional 1,100 the MSFT buy (35 x 50.03 = 1,751.05) still trades, the
    TSLA close (5 x 199.90 = 999.50) is a HOLD like the SPY change."""
    rig = rig_with(make_rig, EngineConfig(min_order_notional=Decimal(1100)))
    result = deliver(rig)
    assert {o.symbol for o in result.orders} == {"AAPL", "MSFT", "NVDA"}
    holds = {h.symbol: h for h in result.holds}
    assert set(holds) == {"SPY", "TSLA"}
    assert (holds["TSLA"].change, holds["TSLA"].value) == (Decimal(-5), Decimal("999.50"))
    assert holds["TSLA"].threshold == Decimal(1100)
    assert rig.broker.positions["TSLA"] == Decimal(5)


def test_an_account_at_its_targets_journals_nothing_and_is_all_holds(make_rig: Any) -> None:
    """AAPL 10 at 100 of 13,800 is 0.0724...: weight 0.0725 lies inside the spread (10 x
    100.05 / 13,800 = 0.07250 > 0.0725 > 10 x 99.95 / 13,800), so nothing is bought or sold."""
    rig = rig_with(make_rig, positions={"AAPL": "10"}, cash="12800")
    result = deliver(rig, {"plan_id": "still", "targets": {"AAPL": "0.0725"}})
    assert result.orders == ()
    (hold,) = result.holds
    assert (hold.symbol, hold.change, hold.value) == ("AAPL", 0, 0)
    assert result.status is PlanStatus.SUCCESS
    assert not rig.broker.orders
    assert not list(events(rig))


def test_a_short_position_refuses_the_plan(make_rig: Any) -> None:
    rig = rig_with(make_rig)
    trade_elsewhere(rig, OrderRequest("short-it", "NVDA", OrderSide.SELL, Decimal(3), "market"))
    with pytest.raises(InvalidPlan, match="NVDA is held short"):
        deliver(rig)
    assert not list(events(rig))


def test_an_unknown_target_symbol_refuses_the_plan(make_rig: Any) -> None:
    rig = rig_with(make_rig, unknown_symbols=["ZZZZ"])
    with pytest.raises(InvalidPlan, match="targets: ZZZZ: unknown symbol"):
        deliver(rig, {"plan_id": "x", "targets": {"ZZZZ": "0.1"}})
    assert not rig.broker.orders
    assert not list(events(rig))


def test_the_planner_docs_embedding_md_shows_runs_on_the_broker_reads(make_rig: Any) -> None:
    """docs/embedding.md's "Broker reads a planner may use" sketch, run as written: 0.30 x
    13,800 / 100.05 = 41.38 -> 41 AAPL, 10 held; 0.25 x 13,800 / 40.02 = 86.2 -> 86 NVDA."""
    section = (ROOT / "docs" / "embedding.md").read_text().split("## Broker reads a planner")[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ")[0], flags=re.S)
    namespace: dict[str, Any] = {}
    exec(compile(code, "embedding.md", "exec"), namespace)
    rig = rig_with(make_rig)
    weights = {"AAPL": Decimal("0.30"), "NVDA": Decimal("0.25")}
    plan = rig.clock.run(namespace["plan_for"](rig.broker, weights, "by-hand"))
    assert [(o.symbol, o.quantity) for o in plan.orders] == [("AAPL", 31), ("NVDA", 86)]
    assert rig.engine.execute_plan_sync(plan).status is PlanStatus.SUCCESS


def test_the_plans_docs_show_parse() -> None:
    """Every plan docs/plans.md shows is a plan parse_plan takes."""
    text = (ROOT / "docs" / "plans.md").read_text()
    shown = [b for b in re.findall(r"```json\n(.*?)```", text, flags=re.S) if "plan_id" in b]
    plans = [parse_plan(json.loads(block)) for block in shown]
    assert [p.is_target_plan for p in plans] == [False, False, True]
    assert plans[1].orders[0].notional == Decimal(1500)
    assert plans[2].targets == {s: Decimal(w) for s, w in TARGETS.items()}


# -- the command line -----------------------------------------------------------------------

ONE_ORDER = [{"symbol": "AAPL", "side": "buy", "quantity": 1}]
BAD_TARGET_FILES = [
    ("sum above 1", {"targets": {"AAPL": "0.6", "MSFT": "0.3"}, "cash_weight": "0.2"}, "than 1"),
    ("negative", {"targets": {"AAPL": "-0.1"}}, "not a weight from 0 to 1"),
    ("nan text", {"targets": {"AAPL": "NaN"}}, "plain decimal notation"),
    ("nan literal", '{"plan_id": "t", "targets": {"AAPL": NaN}}', "NaN"),
    ("above one", {"targets": {"AAPL": "1.5"}}, "not a weight from 0 to 1"),
    ("both", {"targets": {"AAPL": "0.1"}, "orders": ONE_ORDER}, "orders or targets, not both"),
    ("empty", {"targets": {}}, "name at least one symbol"),
    ("twice", {"targets": {"AAPL": "0.1", "aapl": "0.2"}}, "AAPL appears more than once"),
    ("stray cash", {"orders": ONE_ORDER, "cash_weight": "0.1"}, "only a target plan has one"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "payload", "needle"), BAD_TARGET_FILES, ids=[c[0] for c in BAD_TARGET_FILES]
)
def test_a_bad_target_file_exits_2_with_one_line(
    tmp_path: Path, case: str, payload: Any, needle: str
) -> None:
    plan = tmp_path / "plan.json"
    text = payload if isinstance(payload, str) else json.dumps({"plan_id": "t"} | payload)
    plan.write_text(text)
    journal = tmp_path / "j.db"
    result = CliRunner().invoke(main, ["run", str(plan), "--journal", str(journal)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("walkbook: error:"), lines[0]
    assert needle in lines[0], lines[0]
    assert not journal.exists() or not list(_events(journal))


def test_walkbook_run_executes_a_target_plan_and_reports_its_holds(tmp_path: Path) -> None:
    spec = ACCOUNT | {
        "symbols": {s: v.model_dump(mode="json") for s, v in ACCOUNT["symbols"].items()}
    }
    (tmp_path / "market.json").write_text(json.dumps(spec))
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    out = tmp_path / "result.json"
    args = ["run", str(tmp_path / "plan.json"), "--journal", str(tmp_path / "j.db")]
    args += ["--market", str(tmp_path / "market.json"), "--result-json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["status"] == "SUCCESS"
    assert {o["symbol"]: o["quantity"] for o in payload["orders"]} == {
        s: str(qty) for s, (_, qty, _) in EXPECTED.items()
    }
    assert [(h["symbol"], h["change"]) for h in payload["holds"]] == [("SPY", str(SPY_CHANGE))]
    (hold_row,) = [line for line in result.stdout.splitlines() if "HOLD" in line]
    assert "SPY" in hold_row
    assert "$0.69 < $1" in hold_row


def _events(journal: Path) -> Any:
    from journal import Journal

    with Journal.open_readonly(journal) as opened:
        yield from opened.events()


# -- end to end through alpaca-py -----------------------------------------------------------


def test_a_target_plan_through_alpaca_py_against_the_sim_server(tmp_path: Path) -> None:
    """The account read over Alpaca's REST routes (GET /v2/account, /v2/positions), quotes
    over its data stream, the derived orders walked by the real SDK: the same orders as
    worked by hand above, and delivered again, nothing more sent."""
    spec = market(
        EAGER,
        cash=Decimal(ACCOUNT["cash"]),
        positions={s: Decimal(q) for s, q in ACCOUNT["positions"].items()},
        symbols=ACCOUNT["symbols"],
    )
    with alpaca_rig(tmp_path, spec, config=RESTING) as rig:
        plan = parse_plan(PLAN)
        result = rig.engine.execute_plan_sync(plan)
        rig.check(result)
        assert result.status is PlanStatus.SUCCESS
        assert {o.symbol: (o.side, o.filled_qty) for o in result.orders} == {
            s: (side, qty) for s, (side, qty, _) in EXPECTED.items()
        }
        assert [h.symbol for h in result.holds] == ["SPY"]
        positions = rig.book().positions
        assert positions["AAPL"] == Decimal("41.379310344")
        assert "TSLA" not in positions
        sent = len(rig.events(EventKind.SUBMIT_INTENT))
        again = rig.engine.execute_plan_sync(plan)
        assert [o.order_id for o in again.orders] == [o.order_id for o in result.orders]
        assert len(rig.events(EventKind.SUBMIT_INTENT)) == sent


def test_a_target_plans_walks_start_from_its_one_read_of_every_position(tmp_path: Path) -> None:
    """The derivation's `GET /v2/positions` is also preflight's and the walks' "before"
    read (issue 16), and the walks validate from the positions trade_updates reported with
    their fills: one read in all, counted at sim-server. A partial sell of MSFT (20 held,
    11 wanted) and a buy of AAPL (10 held)."""
    spec = market(
        EAGER,
        cash=Decimal(10000),
        positions={"AAPL": Decimal(10), "MSFT": Decimal(20)},
        symbols={"AAPL": symbol("100"), "MSFT": symbol("50", fractionable=False)},
    )
    with alpaca_rig(tmp_path, spec) as rig:
        plan = {"plan_id": "one-read", "targets": {"AAPL": "0.2", "MSFT": "0.05"}}
        result = rig.engine.execute_plan_sync(parse_plan(plan))
        rig.check(result)
        assert {o.symbol: (o.side, o.state) for o in result.orders} == {
            "MSFT": (OrderSide.SELL, "VALIDATED"),
            "AAPL": (OrderSide.BUY, "VALIDATED"),
        }
        symbols = {o.order_id: o.symbol for o in result.orders}
        before = {
            symbols[str(e.order_id)]: e.data["qty"]
            for e in rig.events(EventKind.POSITION_READ)
            if e.data["phase"] == "before"
        }
        assert before == {"MSFT": "20", "AAPL": "10"}
        stats = rig.server.app.stats
        assert stats["GET /v2/positions"] == 1
        assert "GET /v2/positions/{symbol}" not in stats
