"""A ledger an accountant can use (issue 17, item 7): the broker's own fill time beside the
journal's, plan, correlation and strategy columns, and fills split by strategy weights."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from walk_support import check_invariants, run_plan, steady

from engine import Engine, EngineConfig, export_ledger
from engine.audit import LEDGER_COLUMNS
from engine.crash import CrashPoints, SimulatedCrash
from engine.engine import plan_digest
from engine.errors import InvalidPlan
from engine.events import EventKind
from engine.intents import parse_plan

HUGE = 1e9


def ledger(path: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    export_ledger(path, "jsonl", out=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


# -- strategy weights -----------------------------------------------------------------------


def test_fills_are_split_by_the_orders_strategy_weights(make_rig: Any) -> None:
    rig = make_rig(seed=8, symbols=steady(spread_bps=20), fill_intensity=0.1)
    order = {
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "10",
        "correlation_id": "rebalance-42",
        "strategies": {"momo": "0.6", "value": "0.4"},
    }
    result = run_plan(rig, order)
    check_invariants(rig, result)

    rows = ledger(rig.journal_path)
    assert all(list(row) == list(LEDGER_COLUMNS) for row in rows)
    fills = [e for e in rig.journal.events() if e.kind == EventKind.FILL]
    assert len(rows) == 2 * len(fills) > 0
    for fill in fills:
        momo, value = (r for r in rows if r["seq"] == fill.seq)
        qty = Decimal(fill.data["qty"])
        assert (momo["strategy_id"], momo["strategy_weight"]) == ("momo", "0.6")
        assert (value["strategy_id"], value["strategy_weight"]) == ("value", "0.4")
        assert Decimal(momo["qty"]) == qty * Decimal("0.6")
        assert Decimal(momo["qty"]) + Decimal(value["qty"]) == qty
        for row in (momo, value):
            assert Decimal(row["notional"]) == Decimal(row["qty"]) * Decimal(row["price"])
            assert (row["plan_id"], row["correlation_id"]) == ("p1", "rebalance-42")
    by_strategy = {
        name: sum(Decimal(r["qty"]) for r in rows if r["strategy_id"] == name)
        for name in ("momo", "value")
    }
    assert by_strategy == {"momo": Decimal(6), "value": Decimal(4)}


def test_an_order_without_weights_is_one_row_per_fill_at_weight_one(make_rig: Any) -> None:
    rig = make_rig(symbols=steady(), fill_intensity=HUGE, partial_fill_probability=0.0)
    run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "3", "strategy_id": "carry"})
    (row,) = ledger(rig.journal_path)
    assert (row["strategy_id"], row["strategy_weight"], row["qty"]) == ("carry", "1", "3")


@pytest.mark.parametrize(
    ("strategies", "problem"),
    [
        ({"momo": "0.6", "value": "0.3"}, "add up to 0.9, not 1"),
        ({"momo": "1", "value": "0"}, "weight 0, not in (0, 1]"),
        ({"momo": "1.5", "value": "-0.5"}, "not in (0, 1]"),
        ({"momo": "NaN"}, "finite number"),
        ({}, "at least one strategy"),
    ],
)
def test_bad_weights_refuse_the_plan_in_one_line(strategies: dict[str, str], problem: str) -> None:
    order = {"symbol": "AAPL", "side": "buy", "quantity": "1", "strategies": strategies}
    with pytest.raises(InvalidPlan, match=problem.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_plan({"plan_id": "p", "orders": [order]})
    assert "\n" not in str(info.value)


def test_a_strategy_id_and_strategies_together_are_refused() -> None:
    order = {"symbol": "AAPL", "side": "buy", "quantity": "1", "strategy_id": "a"}
    order["strategies"] = {"b": "1"}  # type: ignore[assignment]
    with pytest.raises(InvalidPlan, match="strategy_id or strategies, not both"):
        parse_plan({"plan_id": "p", "orders": [order]})


def test_a_plan_without_weights_keeps_the_digest_it_had_before_them() -> None:
    """A plan journaled before `strategies` existed, delivered again, is the same plan."""
    plan = parse_plan(
        {"plan_id": "p", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": 1}]}
    )
    assert "strategies" not in plan.orders[0].model_dump(mode="json")
    # the digest of this plan as every walkbook before `strategies` computed it
    assert plan_digest(plan) == "d3b7287ee22b6e0878b18b21f413620a49f1bcc47a608f256a2872f837caf364"


# -- the broker's fill time ----------------------------------------------------------------


def test_a_fill_a_resume_learns_of_late_keeps_the_brokers_time(make_rig: Any) -> None:
    """Killed right after its order was acknowledged, the engine is resumed a minute
    later: the fill it then journals carries the time it happened at the broker, a second
    after the order was sent, not the time the resume learned of it."""
    rig = make_rig(symbols=steady(), fill_intensity=HUGE, partial_fill_probability=0.0)
    crashing = Engine(
        rig.broker,
        rig.journal_path.with_name("crash.db"),
        clock=rig.clock,
        crash_points=CrashPoints(armed="after_append.submit_ack"),
    )
    plan = parse_plan(
        {"plan_id": "p", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": 5}]}
    )
    with pytest.raises(SimulatedCrash):
        crashing.execute_plan_sync(plan)
    crashing.close()
    rig.clock.run(asyncio.sleep(60))
    with Engine(rig.broker, rig.journal_path.with_name("crash.db"), clock=rig.clock) as resumed:
        resumed.resume_sync()
        events = list(resumed.journal.events())
    (ack,) = [e for e in events if e.kind == EventKind.SUBMIT_ACK]
    (fill,) = [e for e in events if e.kind == EventKind.FILL]
    sent, learned = datetime.fromisoformat(ack.at), datetime.fromisoformat(fill.at)
    happened = datetime.fromisoformat(fill.data["broker_at"])
    assert learned - sent >= timedelta(seconds=60)
    assert timedelta(0) <= happened - sent <= timedelta(seconds=2)
    (row,) = ledger(rig.journal_path.with_name("crash.db"))
    assert (row["at"], row["broker_at"]) == (fill.at, fill.data["broker_at"])


def test_every_walked_fill_carries_a_broker_time(make_rig: Any) -> None:
    rig = make_rig(config=EngineConfig(), seed=8, symbols=steady(spread_bps=20), fill_intensity=0.1)
    run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "6"})
    fills = [e for e in rig.journal.events() if e.kind == EventKind.FILL]
    assert fills
    for fill in fills:
        happened = datetime.fromisoformat(fill.data["broker_at"])
        assert happened <= datetime.fromisoformat(fill.at)
