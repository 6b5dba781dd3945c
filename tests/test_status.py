"""`walkbook status` as an operator reads it at 9:31: is anything walking these orders, which
are in flight, and in the order the plan listed them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from walk_support import kill_after, resting, steady

from engine import Engine, MarketSpec, SimBroker, VirtualClock, parse_plan
from engine.cli import main
from journal import Journal

PLAN = {
    "plan_id": "day-2",
    "orders": [
        {"symbol": "ZZZ", "side": "buy", "quantity": "1"},
        {"symbol": "AAPL", "side": "buy", "quantity": "1"},
    ],
}


# both symbols with a fixed mid: nothing fills passively, so killed orders stay resting
STILL = steady() | {"ZZZ": steady("50")["AAPL"]}


def status(journal: Path, *flags: str) -> Any:
    return CliRunner().invoke(main, ["status", "--journal", str(journal), *flags])


def killed_run(tmp_path: Path) -> Path:
    """A journal with plan day-1 finished, then a run of day-2 that died with both its
    orders resting at the broker."""
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting(symbols=STILL)), clock)
    path = tmp_path / "j.db"
    with Engine(broker, path, clock=clock) as engine:
        engine.execute_plan_sync(parse_plan({**PLAN, "plan_id": "day-1"}))
    kill_after(Engine(broker, path, clock=clock), clock, parse_plan(PLAN), 3)
    return path


def test_a_dead_run_s_orders_are_flagged_not_walking(tmp_path: Path) -> None:
    journal = killed_run(tmp_path)
    shown = status(journal)
    assert shown.exit_code == 0, shown.output
    first = shown.stdout.splitlines()[0]
    assert first.startswith("NOT WALKING: no process holds this journal, and 2 order(s)")
    listed = status(journal, "--json")
    assert listed.stderr.startswith("NOT WALKING")
    rows = [r for r in json.loads(listed.stdout) if r["plan_id"] == "day-2"]
    assert [r["symbol"] for r in rows] == ["ZZZ", "AAPL"]  # the plan's order, not the hash's
    assert all(r["live_broker_order_id"] and r["live_client_order_id"] for r in rows)
    # where each stands in its walk: the step's limit price and since when
    assert all(r["limit_price"] and r["state_since"] for r in rows)
    finished = [r for r in json.loads(listed.stdout) if r["plan_id"] == "day-1"]
    assert all(r["limit_price"] is None and r["state_since"] is None for r in finished)


def test_a_held_journal_is_shown_walking_with_its_holder(tmp_path: Path) -> None:
    journal = killed_run(tmp_path)
    with Journal.open(journal):
        shown = status(journal)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[0].startswith("walking: held by pid ")
    assert status(journal).stdout.startswith("NOT WALKING")  # released again


def test_status_filters_in_flight_and_by_plan(tmp_path: Path) -> None:
    journal = killed_run(tmp_path)
    assert len(json.loads(status(journal, "--json").stdout)) == 4
    rows = json.loads(status(journal, "--json", "--in-flight").stdout)
    assert [(r["plan_id"], r["state"]) for r in rows] == [("day-2", "LIMIT_STEP_1")] * 2
    day_1 = json.loads(status(journal, "--json", "--plan", "day-1").stdout)
    assert {r["state"] for r in day_1} == {"VALIDATED"}
    assert json.loads(status(journal, "--json", "--plan", "day-9").stdout) == []


def test_an_idle_journal_says_so(tmp_path: Path) -> None:
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting(symbols=STILL)), clock)
    path = tmp_path / "j.db"
    with Engine(broker, path, clock=clock) as engine:
        engine.execute_plan_sync(parse_plan(PLAN))
    shown = status(path, "--in-flight")
    assert shown.stdout.splitlines()[0] == (
        "idle: no process holds this journal; nothing is in flight"
    )
