"""Every journal command on a PostgreSQL journal, as processes, says what it says of the
same journal in a file: one small run journaled into a database once per module, its
rows copied into a SQLite file through the recorder seam, each command run on both.

Then what only a live database shows: verify finding a dropped guard and an edited
event, `watch` and `abandon` on a run SIGKILLed mid-walk, `halt` of one still walking (the
request reaching the owner through the database), and bad URLs refused in one line.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alpaca_support import keyed_env, sim_server_process
from test_audit_cli import invoke
from test_journal_postgres import WALKBOOK, Desk
from test_stopping_processes import PLAN, RESTING_MARKET, assert_halted_clean, wait_until
from test_stopping_processes import Desk as StoppingDesk

from journal import Journal, JournalError, decode_json, first_chain_break
from journal.sqlite import PROJECTED_COLUMNS

# What each audit command prints is compared between the two stores (the file's, in
# this process: the database's side is the one under test).
AUDITS = (
    ("journal", "verify"),
    ("journal", "replay", "--plan", "pg-plan", "--json"),
    ("journal", "export", "--ledger", "--format", "csv"),
    ("report", "--json"),
)


def walkbook(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WALKBOOK, *args], capture_output=True, text=True, timeout=120)


def copied_to_a_file(url: str, path: Path) -> None:
    """The database's events and orders rows, stored in a new journal file as they are."""
    with Journal.open_readonly(url) as source, Journal.open(path) as copy:
        rows = list(source.recorder.event_rows())
        orders = [
            (True, [*map(row.__getitem__, PROJECTED_COLUMNS), row["last_seq"]])
            for row in source.orders()
        ]
        copy.recorder.insert(rows, orders, None)


@pytest.fixture(scope="module")
def journals(postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A finished run's database, and a file holding the same rows."""
    directory = tmp_path_factory.mktemp("pg-cli")
    desk = Desk(directory, postgres.fresh_database())
    run = subprocess.run(desk.run_args(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    copied_to_a_file(desk.url, directory / "copy.db")
    return desk.url, directory / "copy.db"


def clone(postgres: Any, url: str) -> str:
    """A new database holding a copy of the one at `url` (nobody may be connected to it)."""
    name = url.rsplit("/", 1)[1]
    copy = postgres.fresh_database()
    copy_name = copy.rsplit("/", 1)[1]
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {copy_name}")
        admin.execute(f"CREATE DATABASE {copy_name} TEMPLATE {name}")
    return copy


@pytest.mark.parametrize("command", AUDITS, ids=" ".join)
def test_an_audit_command_says_the_same_of_both_stores(
    journals: tuple[str, Path], command: tuple[str, ...]
) -> None:
    url, path = journals
    in_database = walkbook(*command, "--journal", url)
    in_file = invoke(*command, "--journal", str(path))
    assert in_database.returncode == in_file.exit_code == 0, in_database.stderr
    assert in_database.stdout.replace(url, str(path)) == in_file.stdout
    assert in_database.stdout.strip()


def test_an_export_from_either_store_verifies_the_same_way(journals: tuple[str, Path]) -> None:
    """The same lines, holding the database's hashes, whose chain verifies on its own."""
    url, path = journals
    exported = walkbook("journal", "export", "--journal", url).stdout
    assert exported == invoke("journal", "export", "--journal", str(path)).stdout
    rows = [decode_json(line) for line in exported.splitlines()]
    assert first_chain_break(rows) is None
    with Journal.open_readonly(url) as journal:
        assert [row["hash"] for row in rows] == [e.hash for e in journal.events()]


def test_verify_finds_a_dropped_guard_then_an_edited_event(
    postgres: Any, journals: tuple[str, Path]
) -> None:
    """A copy of the journal whose update trigger is dropped fails on that alone (exit 1);
    once an event is edited through the gap, on that event's seq."""
    url = clone(postgres, journals[0])
    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute("DROP TRIGGER events_refuse_update ON events")
    dropped = walkbook("journal", "verify", "--journal", url)
    assert dropped.returncode == 1, dropped.stderr
    assert "FAILED: append-only trigger(s) events_refuse_update missing" in dropped.stdout
    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute("UPDATE events SET data = '{\"forged\":true}' WHERE seq = 5")
    edited = walkbook("journal", "verify", "--journal", url)
    assert edited.returncode == 1, edited.stderr
    assert "FAILED at seq 5:" in edited.stdout


def test_watch_on_a_journal_with_nothing_in_flight(journals: tuple[str, Path]) -> None:
    url = journals[0]
    watched = walkbook("watch", "--journal", url)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout == f"nothing in flight in {url}\n"


class DatabaseDesk(StoppingDesk):
    """test_stopping_processes' desk (a sim-server whose orders rest) on a database."""

    def __init__(self, tmp_path: Path, server_url: str, journal_url: str) -> None:
        super().__init__(tmp_path, server_url)
        self.journal = journal_url  # type: ignore[assignment]

    def start_run(self, plan: dict[str, Any] = PLAN, **popen: Any) -> subprocess.Popen[str]:
        """The run, owning the journal by a lease of 1 s (a killed owner's ends soon)."""
        command = [WALKBOOK, "run", str(self.plan_file(plan)), "--journal", str(self.journal),
                   "--lease-seconds", "1", *self.alpaca]  # fmt: skip
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        return subprocess.Popen(command, env=keyed_env(), text=True, **pipes, **popen)

    def start_resting(self) -> subprocess.Popen[str]:
        run = self.start_run()
        wait_until(lambda: sum(row["live_client_order_id"] is not None
                               for row in self.orders_if_any()) >= 2, run)  # fmt: skip
        return run

    def orders_if_any(self) -> list[dict[str, Any]]:
        try:
            return self.orders()
        except JournalError:  # the run has not created the schema yet
            return []

    def orders(self) -> list[dict[str, Any]]:
        with Journal.open_readonly(str(self.journal)) as journal:
            return sorted(journal.orders(), key=lambda row: row["order_id"])


@pytest.fixture
def resting(tmp_path: Path, postgres: Any) -> Iterator[DatabaseDesk]:
    with sim_server_process(tmp_path, RESTING_MARKET) as (server_url, _):
        yield DatabaseDesk(tmp_path, server_url, postgres.fresh_database())


def test_halt_reaches_the_run_walking_a_database_journal(resting: DatabaseDesk) -> None:
    """The request goes through the database: the run halts (exit 3), halt exits 0,
    nothing is left open at the broker and resume finds nothing to do."""
    run = resting.start_resting()
    halted = resting.walkbook("halt")
    assert halted.returncode == 0, halted.stdout + halted.stderr
    assert "halted" in halted.stdout
    out, err = run.communicate(timeout=30)
    assert run.returncode == 3, out + err
    assert_halted_clean(resting)


def test_watch_and_abandon_a_run_killed_mid_walk(resting: DatabaseDesk) -> None:
    """Orders in flight and nobody owning the journal: watch exits 4; abandon, run here,
    ends them FAILED abandoned; watch then finds nothing in flight."""
    run = resting.start_resting()
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    journal = str(resting.journal)
    watched = walkbook("watch", "--journal", journal)
    assert watched.returncode == 4, watched.stdout + watched.stderr
    assert "NOT WALKING" in watched.stderr
    abandoned = resting.walkbook("abandon", "--plan", "day-2")
    assert abandoned.returncode == 0, abandoned.stdout + abandoned.stderr
    assert abandoned.stdout.count("FAILED (abandoned)") == 2
    assert resting.open_at_broker() == []
    assert walkbook("watch", "--journal", journal).returncode == 0


def test_bad_urls_are_one_line_and_exit_2(postgres: Any) -> None:
    """Nobody listening, no such database, a database holding no journal, a URL naming no
    database: each with a password that is never shown, each to another command."""
    port = postgres.port
    commands = {
        "postgresql://walkbook:s3cret@127.0.0.1:1/journal": ("journal", "verify"),
        f"postgresql://walkbook:s3cret@127.0.0.1:{port}/no_such_database": ("report",),
        postgres.fresh_database().replace("walkbook@", "walkbook:s3cret@"): ("watch",),
        f"postgresql://walkbook:s3cret@127.0.0.1:{port}": ("journal", "export"),
    }
    for url, command in commands.items():
        done = walkbook(*command, "--journal", url)
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "s3cret" not in done.stderr + done.stdout
