"""walkbook's commands on a PostgreSQL journal, as processes: `run` on the embedded
simulator journals into a database and `status` reads it back; a run SIGKILLed mid-walk
is finished by `resume` from another process, with no client order id sent twice.

The simulator keeps its book in a state file (`--sim-state`) so the resuming process
meets the broker the killed one left.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from walk_support import check_invariants

from engine import MarketSpec, VirtualClock
from engine.brokers.sim import SimBroker
from journal import Journal, JournalError
from journal.location import journal_holder

WALKBOOK = str(Path(sys.executable).with_name("walkbook"))
SYMBOLS = ("AAPL", "MSFT", "SPY", "NVDA", "AMZN", "GOOGL", "META", "QQQ", "IWM", "JPM")
PLAN = {
    "plan_id": "pg-plan",
    "orders": [{"symbol": s, "side": "buy", "quantity": str(2 + i)} for i, s in enumerate(SYMBOLS)],
}
MARKET = {"seed": 11, "fill_intensity": 0.02, "partial_fill_probability": 0.6}


class Desk:
    """A plan, a market and a simulator state file beside one PostgreSQL journal."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.url = url
        self.plan, self.market = tmp_path / "plan.json", tmp_path / "market.json"
        self.sim_state = tmp_path / "sim.db"
        self.plan.write_text(json.dumps(PLAN))
        self.market.write_text(json.dumps(MARKET))

    def run_args(self) -> list[str]:
        return [WALKBOOK, "run", str(self.plan), "--journal", self.url, "--lease-seconds", "1",
                "--market", str(self.market), "--sim-state", str(self.sim_state)]  # fmt: skip

    def walkbook(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [WALKBOOK, *args, "--journal", self.url], capture_output=True, text=True, timeout=120
        )

    def orders(self) -> list[dict[str, Any]]:
        with Journal.open_readonly(self.url) as journal:
            return journal.orders()

    def check(self) -> None:
        """Every invariant of the walk, read from the database and the simulator's file."""
        journal = Journal.open_readonly(self.url)
        broker = SimBroker.open(self.sim_state, MarketSpec(), VirtualClock())
        try:
            records = check_invariants(_Reader(journal, broker))
            assert len(records) == len(PLAN["orders"])
            assert all(record.is_terminal for record in records.values())
        finally:
            broker.close()
            journal.close()


class _Reader:
    def __init__(self, journal: Journal, broker: SimBroker) -> None:
        self.journal, self.broker = journal, broker


def test_run_and_status_on_a_postgresql_journal(postgres: Any, tmp_path: Path) -> None:
    """`walkbook run --journal postgresql://...` walks every order to VALIDATED; `status`
    on the same URL lists them and says nobody holds the journal; `journal follow` prints
    every event."""
    desk = Desk(tmp_path, postgres.fresh_database())
    run = subprocess.run(desk.run_args(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    status = desk.walkbook("status", "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert sorted(r["symbol"] for r in rows) == sorted(SYMBOLS)
    assert {r["state"] for r in rows} == {"VALIDATED"}
    assert status.stderr.startswith("idle: no process holds this journal")
    followed = desk.walkbook("journal", "follow", "--until-idle", "0")
    assert followed.returncode == 0, followed.stderr
    with Journal.open_readonly(desk.url) as journal:
        assert [json.loads(line)["seq"] for line in followed.stdout.splitlines()] == list(
            range(1, journal.last_seq + 1)
        )
    desk.check()


def test_a_run_killed_mid_walk_is_finished_by_resume(postgres: Any, tmp_path: Path) -> None:
    """SIGKILL once orders are live at the simulator; `resume` from a new process on the
    same database and state file finishes them all, no client order id twice."""
    desk = Desk(tmp_path, postgres.fresh_database())
    run = subprocess.Popen(desk.run_args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(row["live_client_order_id"] for row in _orders_if_any(desk)):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "no order went live"
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    assert run.wait(timeout=10) == -signal.SIGKILL
    in_flight = [r for r in desk.orders() if r["state"] not in ("VALIDATED", "FAILED")]
    assert in_flight, "the kill came after the walk ended"
    while journal_holder(desk.url) is not None:  # the killed owner's lease runs out first
        assert time.monotonic() < deadline, "the killed owner's lease never ran out"
        time.sleep(0.05)
    resumed = desk.walkbook("resume", "--sim-state", str(desk.sim_state))
    assert resumed.returncode in (0, 1), resumed.stderr
    assert {r["state"] for r in desk.orders()} <= {"VALIDATED", "FAILED"}
    again = desk.walkbook("resume", "--sim-state", str(desk.sim_state))
    assert again.returncode == 0, again.stderr
    assert "nothing in flight" in again.stdout
    desk.check()


def _orders_if_any(desk: Desk) -> list[dict[str, Any]]:
    """The orders once the run has created the journal's schema (none before)."""
    try:
        return desk.orders()
    except JournalError:  # the run has not created the schema yet
        return []


def test_a_bad_or_unreachable_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A URL naming no database, and a server nobody listens on: one `walkbook: error:`
    line, exit 2, the password never shown."""
    for url in ("postgresql://walkbook@127.0.0.1:5432/", "postgresql://u:pw@127.0.0.1:1/db"):
        done = subprocess.run(
            [WALKBOOK, "status", "--journal", url], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("walkbook: error:"), lines
        assert "pw" not in lines[0].replace("postgresql", ""), lines
