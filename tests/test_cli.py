"""The walkbook command line: exit codes, one-line errors, demo, status, result JSON."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import main
from journal import Journal

WALKBOOK = str(Path(sys.executable).parent / "walkbook")
GOOD_ORDER = {"symbol": "AAPL", "side": "buy", "quantity": "3"}


def write_plan(tmp_path: Path, payload: Any) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def event_count(journal: Path) -> int:
    if not journal.exists():
        return 0
    with sqlite3.connect(journal) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return (
            conn.execute("SELECT count(*) FROM events").fetchone()[0] if "events" in tables else 0
        )


def plan_with(**fields: str) -> dict[str, Any]:
    """A one-order plan whose order is GOOD_ORDER with `fields` changed."""
    return {"plan_id": "p", "orders": [{**GOOD_ORDER, **fields}]}


BAD_PLANS = [
    ("negative", plan_with(quantity="-1"), "greater than zero"),
    ("zero", plan_with(quantity="0"), "greater than zero"),
    ("nan", plan_with(quantity="NaN"), "finite"),
    ("precise", plan_with(quantity="1.0000000001"), "9 decimal"),
    ("empty symbol", plan_with(symbol=""), "malformed symbol"),
    ("bad symbol", plan_with(symbol="A$PL"), "malformed symbol"),
    ("closing buy", plan_with(close_type="full"), "requires side sell"),
    ("unknown field", plan_with(qty="1"), "orders.0: unknown field 'qty'"),
    ("empty plan", {"plan_id": "p", "orders": []}, "orders"),
    ("malformed json", '{"plan_id": "p", "orders": [', "not valid JSON"),
]


@pytest.mark.parametrize(("case", "payload", "needle"), BAD_PLANS, ids=[c[0] for c in BAD_PLANS])
def test_bad_plan_exits_2_with_one_line_and_journals_nothing(
    tmp_path: Path, case: str, payload: Any, needle: str
) -> None:
    """Each bad input: exit 2, one line on stderr naming the problem, no event journaled."""
    journal = tmp_path / "j.db"
    result = invoke("run", str(write_plan(tmp_path, payload)), "--journal", str(journal))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("walkbook: error:")
    assert needle in lines[0]
    assert event_count(journal) == 0


def test_missing_plan_file_exits_2(tmp_path: Path) -> None:
    """A plan path that does not exist is bad input, named in the message."""
    result = invoke("run", str(tmp_path / "nope.json"), "--journal", str(tmp_path / "j.db"))
    assert result.exit_code == 2
    assert "nope.json does not exist" in result.stderr


def test_unwritable_journal_path_exits_2(tmp_path: Path) -> None:
    """A journal path under a regular file cannot be created: exit 2, nothing sent."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    plan = write_plan(tmp_path, {"plan_id": "p", "orders": [GOOD_ORDER]})
    result = invoke("run", str(plan), "--journal", str(blocker / "j.db"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr or "cannot" in result.stderr


def test_sell_beyond_position_is_refused_before_journaling(tmp_path: Path) -> None:
    """Preflight refuses a partial sell beyond the simulated position: exit 2, empty journal."""
    journal = tmp_path / "j.db"
    plan = write_plan(
        tmp_path,
        {"plan_id": "p", "orders": [{"symbol": "TSLA", "side": "sell", "quantity": "5"}]},
    )
    result = invoke("run", str(plan), "--journal", str(journal))
    assert result.exit_code == 2
    assert "exceeds the position" in result.stderr
    assert event_count(journal) == 0


def test_run_writes_result_json_and_exits_0(tmp_path: Path) -> None:
    """A good plan validates, exits 0 and writes a result JSON that matches the journal."""
    journal, out = tmp_path / "j.db", tmp_path / "result.json"
    plan = write_plan(tmp_path, {"plan_id": "p1", "orders": [GOOD_ORDER]})
    result = invoke("run", str(plan), "--journal", str(journal), "--result-json", str(out))
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["status"] == "SUCCESS"
    with Journal.open_readonly(journal) as j:
        (row,) = j.orders()
    assert payload["orders"][0]["filled_qty"] == row["filled_qty"] == "3"
    assert payload["orders"][0]["state"] == row["state"] == "VALIDATED"


def test_market_closed_exits_1(tmp_path: Path) -> None:
    """A run where an order fails exits 1 and the reason is in the result."""
    market = tmp_path / "market.json"
    market.write_text(json.dumps({"market_open": False}))
    plan = write_plan(tmp_path, {"plan_id": "p1", "orders": [GOOD_ORDER]})
    out = tmp_path / "r.json"
    result = invoke(
        "run", str(plan), "--journal", str(tmp_path / "j.db"), "--market", str(market),
        "--result-json", str(out),
    )  # fmt: skip
    assert result.exit_code == 1
    assert json.loads(out.read_text())["orders"][0]["reason"] == "market_closed"


def test_bad_market_spec_exits_2(tmp_path: Path) -> None:
    """A market spec with an unknown field is bad input."""
    market = tmp_path / "market.json"
    market.write_text(json.dumps({"cassh": 5}))
    plan = write_plan(tmp_path, {"plan_id": "p1", "orders": [GOOD_ORDER]})
    result = invoke("run", str(plan), "--journal", str(tmp_path / "j.db"), "--market", str(market))
    assert result.exit_code == 2
    assert "cassh" in result.stderr


def test_second_run_on_a_locked_journal_exits_2_naming_the_owner(tmp_path: Path) -> None:
    """While a process owns the journal, `walkbook run` on it refuses with the owner's pid."""
    journal = tmp_path / "j.db"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"from journal import Journal; j = Journal.open({str(journal)!r});"
         " print('ready', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        plan = write_plan(tmp_path, {"plan_id": "p1", "orders": [GOOD_ORDER]})
        run = subprocess.run(
            [WALKBOOK, "run", str(plan), "--journal", str(journal)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2
        assert f"journal is in use by pid {holder.pid}" in run.stderr
    finally:
        holder.kill()
        holder.wait()


def test_demo_then_status_shows_every_order_terminal(tmp_path: Path) -> None:
    """`walkbook demo` (a real process) exits 0; `status --json` lists >= 8 orders, all terminal."""
    journal = tmp_path / "demo" / "journal.db"
    demo = subprocess.run(
        [WALKBOOK, "demo", "--journal", str(journal)], capture_output=True, text=True, timeout=120
    )
    assert demo.returncode == 0, demo.stderr
    assert "SUCCESS" in demo.stdout
    status = subprocess.run(
        [WALKBOOK, "status", "--journal", str(journal), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    orders = json.loads(status.stdout)
    assert len(orders) >= 8
    assert {o["state"] for o in orders} <= {"VALIDATED", "FAILED"}
    assert all(o["state"] == "VALIDATED" for o in orders)


def test_demo_refuses_to_overwrite_a_file_that_is_not_a_journal(tmp_path: Path) -> None:
    """The demo replaces only its own journal; any other file at the path is left intact."""
    precious = tmp_path / "precious.db"
    precious.write_bytes(b"not a journal at all, keep me")
    result = invoke("demo", "--journal", str(precious))
    assert result.exit_code == 2
    assert precious.read_bytes() == b"not a journal at all, keep me"


def test_status_on_a_missing_journal_exits_2(tmp_path: Path) -> None:
    """status on a path with no journal is bad input, not a traceback."""
    result = invoke("status", "--journal", str(tmp_path / "none.db"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_plan_delivered_twice_trades_once_and_other_contents_exit_2(tmp_path: Path) -> None:
    """Re-running a completed plan prints its journaled result; a changed plan is refused."""
    journal, first, again = tmp_path / "j.db", tmp_path / "first.json", tmp_path / "again.json"
    plan = write_plan(tmp_path, {"plan_id": "p1", "orders": [GOOD_ORDER]})
    assert (
        invoke("run", str(plan), "--journal", str(journal), "--result-json", str(first)).exit_code
        == 0
    )
    events = event_count(journal)
    assert (
        invoke("run", str(plan), "--journal", str(journal), "--result-json", str(again)).exit_code
        == 0
    )
    assert json.loads(again.read_text())["orders"] == json.loads(first.read_text())["orders"]
    assert event_count(journal) == events

    changed = write_plan(tmp_path, {"plan_id": "p1", "orders": [{**GOOD_ORDER, "quantity": "4"}]})
    refused = invoke("run", str(changed), "--journal", str(journal))
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1
    assert "already delivered with different contents" in refused.stderr
    assert event_count(journal) == events
