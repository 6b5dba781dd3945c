"""One writer per journal file, and a journal `run` and `resume` can trust before acting.

A hostile tester reached the same journal through a symlink and a hard link, truncated
it, dropped its triggers, deleted its last event and edited its projection; each time
walkbook acted on what the file said. Each case here is a real file and a real process
(or the CLI in-process), and each is refused before anything is journaled or sent.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from walk_support import kill_after, resting

import journal.sqlite
from engine import (
    Engine,
    MarketSpec,
    PlansInFlight,
    SimBroker,
    UnknownBrokerOrders,
    VirtualClock,
    parse_plan,
)
from engine.cli import main as cli_main
from journal import Journal, JournalCorrupt, JournalLocked, JournalUnavailable
from journal.trust import check_before_acting, recorded_check

WALKBOOK = str(Path(sys.executable).with_name("walkbook"))
PLAN = {"plan_id": "p1", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": "10"}]}


def edit(path: Path, *statements: str) -> None:
    """What a person with sqlite3 and the file could do to it."""
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def in_flight_journal(tmp_path: Path) -> tuple[VirtualClock, SimBroker, Path]:
    """A journal whose one order rests at the broker, its process gone (as after SIGKILL)."""
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting()), clock)
    path = tmp_path / "j.db"
    kill_after(Engine(broker, path, clock=clock), clock, parse_plan(PLAN), 3)
    return clock, broker, path


# -- one writer per file --------------------------------------------------------------------


def test_a_symlink_to_a_locked_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    link = tmp_path / "alias.db"
    link.symlink_to(path)
    with Journal.open(path), pytest.raises(JournalLocked):
        Journal.open(link)
    with Journal.open(link), pytest.raises(JournalLocked):
        Journal.open(path)


def test_a_journal_with_a_second_hard_link_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal.open(path).close()
    os.link(path, tmp_path / "twin.db")
    for name in (path, tmp_path / "twin.db"):
        with pytest.raises(JournalUnavailable, match="2 hard links"):
            Journal.open(name)


def test_a_second_run_through_a_symlink_exits_2_beside_a_live_run(tmp_path: Path) -> None:
    """The lock is the file's: a run through another spelling of a held journal is refused."""
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    path = tmp_path / "j.db"
    (tmp_path / "alias.db").symlink_to(path)
    with Journal.open(path):
        refused = subprocess.run(
            [WALKBOOK, "run", str(tmp_path / "plan.json"), "--journal", str(tmp_path / "alias.db")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("walkbook: error: journal is in use by pid")
    assert len(refused.stderr.strip().splitlines()) == 1


# -- a journal whole before anyone acts on it ------------------------------------------------


def test_a_clean_journal_passes_and_the_check_is_recorded(tmp_path: Path) -> None:
    _clock, _broker, path = in_flight_journal(tmp_path)
    with Journal.open(path) as journal:
        assert recorded_check(journal)[0] < journal.last_seq  # the run's own events unchecked
        check_before_acting(journal)
        last = journal.conn.execute("SELECT hash FROM events WHERE seq = ?", [journal.last_seq])
        assert recorded_check(journal) == (journal.last_seq, last.fetchone()[0])


TAMPERS: dict[str, tuple[str, ...]] = {
    "triggers dropped": ("DROP TRIGGER events_refuse_update",),
    "a trigger made harmless": (
        "DROP TRIGGER events_refuse_delete",
        "CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events BEGIN SELECT 1; END",
    ),
    "last event deleted": (
        "DROP TRIGGER events_refuse_delete",
        "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)",
        """CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'walkbook journal events are append-only'); END""",
    ),
    "an event rewritten": (
        "DROP TRIGGER events_refuse_update",
        "UPDATE events SET data = replace(data, '10', '99') WHERE seq = 1",
        """CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'walkbook journal events are append-only'); END""",
    ),
    "projection edited": ("UPDATE orders SET filled_qty = '10'",),
    "in-flight order marked failed": ("UPDATE orders SET state = 'FAILED'",),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_resume_refuses_a_tampered_journal_and_appends_nothing(tmp_path: Path, tamper: str) -> None:
    clock, broker, path = in_flight_journal(tmp_path)
    if tamper == "last event deleted":
        # the events a check already saw: deleting one of them must show
        with Journal.open(path) as journal:
            check_before_acting(journal)
    edit(path, *TAMPERS[tamper])
    placed = len(broker.orders)
    with Engine(broker, path, clock=clock) as engine:
        seq = engine.journal.last_seq
        with pytest.raises(JournalCorrupt):
            engine.resume_sync()
        # a new plan is refused too: by the check, or (the projection's in-flight order
        # being another plan's) as a plan delivered while another is in flight
        with pytest.raises((JournalCorrupt, PlansInFlight)):
            engine.execute_plan_sync(parse_plan({**PLAN, "plan_id": "p2"}))
        assert engine.journal.last_seq == seq
    assert len(broker.orders) == placed


def test_the_cli_refuses_a_tampered_journal_with_exit_2_naming_the_seq(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    path, state = tmp_path / "j.db", tmp_path / "sim.db"
    runner = CliRunner()
    first = runner.invoke(
        cli_main,
        ["run", str(tmp_path / "plan.json"), "--journal", str(path), "--sim-state", str(state)],
    )
    assert first.exit_code == 0, first.output
    edit(
        path,
        "DROP TRIGGER events_refuse_update",
        "UPDATE events SET hash = substr(hash, 2) || '0' WHERE seq = 3",
        """CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'walkbook journal events are append-only'); END""",
    )
    again: dict[str, Any] = {**PLAN, "plan_id": "p2"}
    (tmp_path / "p2.json").write_text(json.dumps(again))
    before = (
        path.stat().st_size,
        sqlite3.connect(path).execute("SELECT count(*) FROM events").fetchone(),
    )
    refused = runner.invoke(
        cli_main,
        ["run", str(tmp_path / "p2.json"), "--journal", str(path), "--sim-state", str(state)],
    )
    assert refused.exit_code == 2, refused.output
    assert "seq 3" in refused.stderr
    assert sqlite3.connect(path).execute("SELECT count(*) FROM events").fetchone() == before[1]
    # nothing is in flight, but a resume does not call an edited journal done
    resumed = runner.invoke(cli_main, ["resume", "--journal", str(path), "--sim-state", str(state)])
    assert resumed.exit_code == 2, resumed.output
    (line,) = resumed.stderr.strip().splitlines()
    assert "the hash chain breaks at seq 3" in line


def test_an_empty_journal_is_refused_while_the_broker_shows_its_orders(tmp_path: Path) -> None:
    """Truncated to 0 bytes (or copied without its -wal): the broker's open walkbook orders
    are unknown to it, so resume refuses instead of saying nothing is in flight."""
    clock, broker, path = in_flight_journal(tmp_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"")
    with Engine(broker, path, clock=clock) as engine, pytest.raises(UnknownBrokerOrders):
        engine.resume_sync()


def test_a_journal_held_mid_write_is_busy_not_called_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that waits out the busy timeout on a writer stopped mid-write is told the
    journal is busy, never that it is not a walkbook journal. The timeout is shortened to a
    tenth of a second: SQLite gives up the same way after 5 s, only later."""
    monkeypatch.setattr(journal.sqlite, "BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "j.db"
    Journal.open(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(JournalUnavailable, match="is busy"):
            Journal.open_readonly(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_an_order_marked_finished_in_its_row_alone_is_not_walked_away_from(
    tmp_path: Path,
) -> None:
    """The `orders` rows are a projection anyone can edit: an in-flight order marked FAILED
    there while its events say it is live (and nothing of it rests at the broker to give it
    away) is refused by resume, by a new plan and by the CLI's nothing-in-flight answer."""
    clock, broker, path = in_flight_journal(tmp_path)
    (live,) = [order for order in broker.orders.values() if not order.status.is_terminal]
    clock.run(broker.cancel_order(live.id))
    clock.run(clock.sleep(5))  # the cancel reaches the simulated venue
    assert clock.run(broker.get_order(live.id)).status.is_terminal
    edit(path, "UPDATE orders SET state = 'FAILED'")
    with Engine(broker, path, clock=clock) as engine:
        seq = engine.journal.last_seq
        with pytest.raises(JournalCorrupt, match="says it is finished"):
            engine.resume_sync()
        with pytest.raises(JournalCorrupt, match="says it is finished"):
            engine.execute_plan_sync(parse_plan({**PLAN, "plan_id": "p2"}))
        assert engine.journal.last_seq == seq
    resumed = CliRunner().invoke(cli_main, ["resume", "--journal", str(path)])
    assert resumed.exit_code == 2, resumed.output
    (line,) = resumed.stderr.strip().splitlines()
    assert "says it is finished and its events say otherwise" in line
