"""Real processes killed with SIGKILL mid-walk, then `walkbook resume`, checked from both files.

`walkbook run --sim-state S` runs in a child process that is SIGKILLed at a seeded random
moment; `walkbook resume` (sometimes itself killed, then resumed again) must finish the plan.
The truth is read back from the journal and from the simulator's own state file, which
stands for the broker's book. Most kills fork a child that already imported walkbook (the
command is the same `engine.cli.main`), so many seeded kills fit in `make test`; a few run
the installed `walkbook` executable end to end. WALKBOOK_SOAK=long runs a longer soak.

The soak runs on a SQLite journal file (100 kills, 2,000 long) and on a PostgreSQL journal
in the session's throwaway cluster (20 kills, 400 long), the run and each resume owning it
by a lease of half a second (`--lease-seconds`): a killed owner's lease runs out within
it, and each restart first waits for that, as an operator's restart would. The kills are
dealt among forked drivers that run at once, each on journals of its own, so that the soak
keeps both cores busy and one driver's wait for a lease is another's time to walk. The long
form of both: `WALKBOOK_SOAK=long .venv/bin/pytest -m soak tests/test_kill_soak.py` (part of
`make soak`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest
from click.testing import CliRunner
from walk_support import check_invariants

from engine import MarketSpec, OrderSide, VirtualClock
from engine.brokers.sim import SimBroker
from engine.cli import main as cli_main
from engine.cli.exits import EXIT_WORK_LIVE
from journal import Journal, JournalError
from journal.location import is_database_url, journal_holder

LONG_SOAK = os.environ.get("WALKBOOK_SOAK") == "long"
KILLS = {"sqlite": 2000 if LONG_SOAK else 100, "postgresql": 400 if LONG_SOAK else 20}
# A PostgreSQL journal's lease: renewed every third of it, and a killed owner's runs out
# (and the next process may open the journal) within it: half a second, not a second,
# halves the waits (no run was fenced in 40 kills on a loaded machine, measured).
LEASE_SECONDS = "0.5"
# forked drivers sharing a soak's kills, one a core: the SQLite soak (CPU-bound) takes 0.6x
# the time it took alone, the PostgreSQL one (waiting out a killed owner's lease half its
# time) 0.6x as well; a third driver gains nothing more on two cores (measured)
DRIVERS = 2


class NewJournal(Protocol):
    """conftest's new_journal(): where a new journal goes, in the store a test is
    parametrized with; a forked driver asks in a slot of its own."""

    def __call__(self, slot: int = 0) -> str | Path: ...


class RunSeconds(Protocol):
    """The run_seconds fixture: how long a run walks on new_journal's store (measured anew
    with `again`)."""

    def __call__(self, new_journal: NewJournal, *, again: bool = False) -> float: ...


# kill(seed, driver) -> whether the kill left orders in flight
Kill = Callable[[int, int], bool]
EXEC_KILLS = 4
WALKBOOK = Path(sys.executable).with_name("walkbook")

PLAN = {
    "plan_id": "soak",
    "orders": [
        {"symbol": "TSLA", "side": "sell", "quantity": "5", "close_type": "full"},
        {"symbol": "MSFT", "side": "sell", "quantity": "4"},
        {"symbol": "AAPL", "side": "buy", "quantity": "10"},
        {"symbol": "SPY", "side": "buy", "quantity": "2.5"},
        {"symbol": "PNY", "side": "buy", "quantity": "300"},
        {"symbol": "NVDA", "side": "buy", "quantity": "3", "urgency": "high"},
    ],
}
MARKET = {
    "positions": {"TSLA": "5", "MSFT": "9"},
    "fill_intensity": 0.02,
    "partial_fill_probability": 0.6,
    "market_partial_probability": 0.3,
    "symbols": {
        "SPY": {"price": "480", "spread_bps": 4, "fractionable": True},
        "PNY": {"price": "0.4321", "spread_bps": 60, "fractionable": False},
    },
}


@dataclass(frozen=True)
class Files:
    plan: Path
    market: Path
    journal: str | Path  # a file, or a PostgreSQL database's URL
    sim_state: Path

    @classmethod
    def make(cls, root: Path, seed: int, journal: str | Path | None = None) -> Files:
        root.mkdir(parents=True, exist_ok=True)
        files = cls(
            root / "plan.json", root / "market.json", journal or root / "j.db", root / "sim.db"
        )
        files.plan.write_text(json.dumps(PLAN))
        files.market.write_text(json.dumps({**MARKET, "seed": seed}))
        return files

    def _journal_args(self) -> list[str]:
        lease = ["--lease-seconds", LEASE_SECONDS] if is_database_url(self.journal) else []
        return ["--journal", str(self.journal), *lease]

    def run_args(self) -> list[str]:
        return ["run", str(self.plan), *self._journal_args(),
                "--market", str(self.market), "--sim-state", str(self.sim_state)]  # fmt: skip

    def resume_args(self) -> list[str]:
        return ["resume", *self._journal_args(), "--sim-state", str(self.sim_state),
                "--offline-seconds", "3"]  # fmt: skip


def _fork_cli(args: list[str]) -> int:
    """Start `walkbook ARGS` in a forked child (already imported); return its pid."""
    pid = os.fork()
    if pid == 0:  # the child: run the command and leave without running pytest's cleanups
        code = 70
        try:
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives until _exit
            cli_main.main(args=args, prog_name="walkbook")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_after(pid: int, delay: float) -> int:
    """SIGKILL the child after `delay` seconds (unless it already finished); its exit code."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    return _wait(pid)


def _clean_run_seconds(files: Files) -> float:
    """How long a run walks, from its plan reaching the journal to its exit."""
    pid = _fork_cli(files.run_args())
    _wait_for_first_event(files, pid)
    started = time.monotonic()
    code = _wait(pid)
    assert code in (0, 1), code
    return time.monotonic() - started


def _warm_up_in_process(files: Files) -> None:
    """One clean run in this process, so that every module a run imports only when it needs
    it is loaded before the forks: creating a journal file imports sqlite-utils, and through
    it pandas, about half a second that every forked run would otherwise spend before its
    plan reaches the journal."""
    result = CliRunner().invoke(cli_main, files.run_args(), prog_name="walkbook")
    assert result.exit_code in (0, 1), result.output


@pytest.fixture(scope="module")
def run_seconds(tmp_path_factory: pytest.TempPathFactory) -> RunSeconds:
    """run_seconds(new_journal) -> how long a run walks on journals of new_journal's store,
    measured once per store (a database's walk is not a file's).

    The median of three clean runs after an untimed one, in this process. One run can
    measure slow (most likely the first on a fresh checkout, its files not yet cached), and
    kills timed on a slow measure land after most runs have finished (seen once in a fresh
    clone: 96 of 200 kills mid-walk against the 100 required). `again` measures anew, for
    a soak whose kills fell short of mid-walk."""
    measured: dict[bool, float] = {}

    def seconds(new_journal: NewJournal, *, again: bool = False) -> float:
        journal = new_journal()
        in_database = is_database_url(journal)
        if again or in_database not in measured:
            root = tmp_path_factory.mktemp("calibrate")
            _warm_up_in_process(Files.make(root / "warm-up", 0, journal))
            measured[in_database] = statistics.median(
                _clean_run_seconds(Files.make(root / f"run-{i}", 0, new_journal()))
                for i in range(3)
            )
        return measured[in_database]

    return seconds


def check_files(files: Files) -> None:
    check_files_for(files, len(PLAN["orders"]))


def check_files_for(files: Files, order_count: int) -> None:
    """Every invariant, read from the journal and the simulator's own state file."""
    journal = Journal.open_readonly(files.journal)
    broker = SimBroker.open(files.sim_state, MarketSpec(), VirtualClock())
    try:
        records = check_invariants(_Reader(journal, broker))
        assert len(records) == order_count
        for record in records.values():
            assert record.is_terminal, (record.order_id, record.state)
            start = broker.spec.positions.get(record.intent.symbol, Decimal(0))
            moved = broker.positions.get(record.intent.symbol, Decimal(0)) - start
            signed = record.quantity if record.intent.side is OrderSide.BUY else -record.quantity
            if record.state == "VALIDATED":
                assert moved == signed, record.intent.symbol
            else:
                assert record.reason is not None
    finally:
        broker.close()
        journal.close()


@dataclass
class _Reader:
    journal: Journal
    broker: SimBroker


def kill_and_resume(files: Files, rng: random.Random, run_seconds: float, fork: bool) -> bool:
    """Kill a run at a random moment, resume (maybe killing that too), then resume to the end.

    True when the kill left orders in flight (so resume had real work to do).
    """
    launch = _fork_cli if fork else _exec_cli

    def start(args: list[str]) -> int:
        _wait_until_free(files)  # a killed owner's lease runs out first
        return launch(args)

    # a database journal's owner that stalls past its lease (a loaded machine) is
    # fenced: it stops, sends nothing more and exits 4, and the next resume carries on
    fenced = (EXIT_WORK_LIVE,) if is_database_url(files.journal) else ()
    pid = start(files.run_args())
    if not fork or rng.random() < 0.8:  # most kills mid-walk, some anywhere from the start
        _wait_for_first_event(files, pid)
    code = _kill_after(pid, rng.uniform(0.0, run_seconds))
    assert code in (0, 1, -signal.SIGKILL, *fenced), code
    orders = _journaled_orders(files)
    in_flight = any(row["state"] not in ("VALIDATED", "FAILED") for row in orders)
    if not orders:
        # killed before the plan reached the journal: nothing was sent; deliver it again
        assert _wait(start(files.run_args())) in (0, 1, *fenced)
    if rng.random() < 0.3:
        _kill_after(start(files.resume_args()), rng.uniform(0.0, run_seconds * 0.5))
    code = _wait(start(files.resume_args()))
    for _ in range(3 if fenced else 0):
        if code not in fenced:
            break
        code = _wait(start(files.resume_args()))
    assert code in (0, 1), code
    assert _wait(start(files.resume_args())) == 0, "a second resume found work to do"
    check_files(files)
    return in_flight


def in_drivers(drivers: int, seeds: range, kill: Kill, reports: Path) -> int:
    """kill(seed, driver) for every seed of `seeds`, dealt among `drivers` forked drivers
    that run at once (`driver`: whose journal slot); how many returned True. A driver that
    fails fails the test with its traceback. Each reports in a file under `reports`, which
    (unlike a pipe) no process it left running holds open."""
    pids: dict[int, int] = {}
    reports.mkdir(parents=True, exist_ok=True)
    try:
        for driver in range(drivers):
            report = reports / f"driver-{driver}.txt"
            pids[driver] = _fork_driver(kill, driver, seeds[driver::drivers], report)
        codes = {driver: _wait(pids.pop(driver)) for driver in range(drivers)}
    finally:
        for pid in pids.values():  # interrupted: no driver outlives the test
            os.kill(pid, signal.SIGKILL)
            _wait(pid)
    texts = {driver: _report(reports / f"driver-{driver}.txt") for driver in codes}
    failures = [f"driver {d} exited {codes[d]}: {text}" for d, text in texts.items() if codes[d]]
    assert not failures, "\n".join(failures)
    return sum(int(text) for text in texts.values())


def _fork_driver(kill: Kill, driver: int, seeds: range, report: Path) -> int:
    """A forked child that kills `seeds` in turn, writes how many landed mid-walk (or the
    failing seed and its traceback) to `report` and leaves without running pytest's
    cleanups; its pid."""
    pid = os.fork()
    if pid == 0:
        code, text, mid_walk = 1, "no report", 0
        try:
            for seed in seeds:
                text = f"seed {seed}: "
                mid_walk += kill(seed, driver)
            text, code = str(mid_walk), 0
        except BaseException:  # reported to the parent: the child must not unwind into pytest
            text += traceback.format_exc()
        finally:
            try:
                report.write_text(text)
            finally:
                os._exit(code)
    return pid


def _report(path: Path) -> str:
    return path.read_text() if path.exists() else "no report"


def seeded_kills(root: Path, new_journal: NewJournal, run_seconds: float, fork: bool) -> Kill:
    """kill(seed, driver): kill_and_resume on files of the seed's own under `root`, its
    journal in the driver's slot."""

    def kill(seed: int, driver: int) -> bool:
        files = Files.make(root / f"kill-{seed}", seed, new_journal(driver))
        return kill_and_resume(files, random.Random(seed), run_seconds, fork)

    return kill


def _wait_until_free(files: Files) -> None:
    """Until no live process owns the journal: at once for a file (a killed process's lock
    goes with it), within a lease's length for a database (a killed owner's runs out)."""
    deadline = time.monotonic() + 30
    while _holder(files) is not None:
        assert time.monotonic() < deadline, "the journal's owner never let it go"
        time.sleep(0.02)


def _holder(files: Files) -> str | None:
    """The journal's live owner; none before the journal (its file, its schema) exists."""
    try:
        return journal_holder(files.journal)
    except JournalError:
        return None


def _exec_cli(args: list[str]) -> int:
    return subprocess.Popen(
        [str(WALKBOOK), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).pid


def _journaled_orders(files: Files) -> list[dict[str, Any]]:
    """The orders the journal holds; none while it (a file, or a database's schema) had not
    yet been created."""
    try:
        journal = Journal.open_readonly(files.journal)
    except JournalError:
        return []
    with journal:
        return journal.orders()


def _wait_for_first_event(files: Files, pid: int) -> None:
    """Past the executable's start-up: the journal holds the plan, so the walk is under way."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running(pid):
        if _journaled_orders(files):
            return
        time.sleep(0.005)


def _running(pid: int) -> bool:
    """The child has not exited; an exited one is left unreaped, its exit code kept for the
    caller's os.waitpid (reaped here, that call would find no child at all)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


@pytest.mark.soak
@pytest.mark.parametrize(("new_journal", "kills"), KILLS.items(), indirect=["new_journal"])
def test_sigkilled_runs_resume_without_duplicates_or_lost_fills(
    tmp_path: Path, run_seconds: RunSeconds, new_journal: NewJournal, kills: int
) -> None:
    """Every kill is checked in full (kill_and_resume), and at least half as many as `kills`
    must land mid-walk, so that resume had real work. A walk measured in a slow moment times
    the kills after most walks have ended: when the first `kills` fall short, the walk is
    measured again and as many more seeds are killed, the bar unchanged."""
    seconds = run_seconds(new_journal)
    kill = seeded_kills(tmp_path, new_journal, seconds, fork=True)
    mid_walk = in_drivers(DRIVERS, range(kills), kill, tmp_path / "first")
    tried = [f"{mid_walk} of {kills} with walks measured at {seconds:.3f} s"]
    if mid_walk < kills // 2:
        seconds = run_seconds(new_journal, again=True)
        kill = seeded_kills(tmp_path, new_journal, seconds, fork=True)
        more = in_drivers(DRIVERS, range(kills, 2 * kills), kill, tmp_path / "again")
        tried.append(f"{more} of {kills} more, measured again at {seconds:.3f} s")
        mid_walk += more
    assert mid_walk >= kills // 2, f"too few kills landed mid-walk: {'; '.join(tried)}"


def test_installed_walkbook_killed_mid_walk_resumes(
    tmp_path: Path, run_seconds: RunSeconds, new_journal: NewJournal
) -> None:
    """EXEC_KILLS kills of the installed executable, each process paying its own start-up;
    dealt among the drivers like the soak's."""
    kill = seeded_kills(tmp_path, new_journal, run_seconds(new_journal), fork=False)
    in_drivers(DRIVERS, range(EXEC_KILLS), kill, tmp_path)


def test_two_resumes_at_once_one_drives_the_other_says_in_use(tmp_path: Path) -> None:
    """A second resume while the first holds the journal exits 2 at once with one line; the
    first finishes the plan. The first is frozen (SIGSTOP) as soon as it holds the lock and
    continued once the second has answered, so the two overlap however fast either runs
    (started together, a quick first resume could finish before the second even opened the
    journal)."""
    files = Files.make(tmp_path, seed=5)
    many = [{"symbol": f"S{i:02d}", "side": "buy", "quantity": "3"} for i in range(40)]
    files.plan.write_text(json.dumps({"plan_id": "many", "orders": many}))
    files.market.write_text(json.dumps({**MARKET, "seed": 5, "universe": "any"}))
    crashed = subprocess.run(
        [str(WALKBOOK), *files.run_args()],
        env={**os.environ, "WALKBOOK_CRASH_AT": "after_broker.submit_order:3"},
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == 137  # died at the named crash point, orders in flight
    resume = [str(WALKBOOK), *files.resume_args()]
    first = subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = Path(f"{files.journal}.lock")  # a file journal's lock, beside it
    deadline = time.monotonic() + 60
    while not (lock.exists() and f"pid {first.pid} on" in lock.read_text()):
        assert first.poll() is None, "the first resume ended without taking the lock"
        assert time.monotonic() < deadline, "the first resume never took the lock"
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first resume finished before it could be frozen"
        second = subprocess.run(resume, capture_output=True, text=True, timeout=60)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1
    assert f"journal is in use by pid {first.pid}" in second.stderr
    _, errors = first.communicate(timeout=120)
    assert first.returncode == 0, errors
    check_files_for(files, len(many))
