"""`walkbook watch` as an operator uses it beside a running plan: a second, read-only process
that shows each in-flight order's walk as it commits, ends by itself when nothing is in
flight, says NOT WALKING (exit 4) when nobody walks what is in flight, and never writes to
the journal. Real processes: `walkbook run --broker alpaca` against `walkbook sim-server`
walks in real time, so the watch sees the orders move."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import sqlite3
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from alpaca_support import NEVER, WALKBOOK, keyed_env, sim_server_process, submitted
from click.testing import CliRunner
from rich.console import Console
from walk_support import kill_after, resting, steady

from engine import Engine, MarketSpec, SimBroker, VirtualClock, parse_plan
from engine.audit.live import LiveJournal
from engine.cli import main
from engine.cli.watch import ORDER_COLUMNS, PLAN_COLUMNS, watch_view
from engine.numbers import decimal_text
from engine.order import fold_orders
from journal import Journal

SYMBOLS = ("AAPL", "MSFT", "TSLA")
SLOW_PLAN = {
    "plan_id": "slow",
    "orders": [
        {"symbol": symbol, "side": "buy", "quantity": quantity, "urgency": "LOW"}
        for symbol, quantity in zip(SYMBOLS, ("5", "3", "4"), strict=True)
    ],
}
# steady mids, and resting orders never fill, each LOW step resting 1.5 s: every order walks
# its three limit steps and goes to market, several seconds in all, long after the watch
# has started
STEADY = {symbol: {"price": price, "spread_bps": 10, "volatility_bps": 0}
          for symbol, price in zip(SYMBOLS, ("190", "410", "250"), strict=True)}  # fmt: skip
SLOW_MARKET = {"latency_seconds": 0, "fill_intensity": NEVER, "partial_fill_probability": 0,
               "market_partial_probability": 0, "stream_gap_probability": 0,
               "symbols": STEADY}  # fmt: skip
SLOW_CONFIG = {"low_step_wait_seconds": 1.5, "market_wait_seconds": 3, "settle_timeout_seconds": 5,
               "stream_quote_wait_seconds": 0.5, "broker_retry_backoff_seconds": 0.05}  # fmt: skip
WATCHING = 60  # seconds a watch may take before the test gives up on it

KILLED_PLAN = {
    "plan_id": "day-2",
    "orders": [
        {"symbol": "ZZZ", "side": "buy", "quantity": "1"},
        {"symbol": "AAPL", "side": "buy", "quantity": "1"},
    ],
}
STILL = steady() | {"ZZZ": steady("50")["AAPL"]}  # nothing fills passively: orders stay resting


def watch(journal: Path) -> subprocess.CompletedProcess[str]:
    """`walkbook watch` with its output piped, as a script runs it."""
    return subprocess.run(
        [WALKBOOK, "watch", "--journal", str(journal)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WATCHING,
    )


def killed_run(tmp_path: Path) -> Path:
    """A journal with plan day-1 finished, then a run of day-2 that died with both its
    orders resting at the broker (LIMIT_STEP_1)."""
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting(symbols=STILL)), clock)
    path = tmp_path / "j.db"
    with Engine(broker, path, clock=clock) as engine:
        engine.execute_plan_sync(parse_plan({**KILLED_PLAN, "plan_id": "day-1"}))
    kill_after(Engine(broker, path, clock=clock), clock, parse_plan(KILLED_PLAN), 3)
    return path


def untouched(journal: Path) -> tuple[bytes, int, int, bytes | None]:
    """What a reader must leave as it was: the file's bytes, its mtime, its events, and the
    lock file's owner line (a lock taken would rewrite it)."""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        events = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    lock = journal.with_name(journal.name + ".lock")
    owner = lock.read_bytes() if lock.exists() else None
    return journal.read_bytes(), journal.stat().st_mtime_ns, events, owner


def journal_states(journal: Path) -> dict[str, list[str]]:
    """Each symbol's states, in the order its transitions were journaled."""
    with Journal.open_readonly(journal) as opened:
        records = fold_orders(opened.events())
        walked: dict[str, list[str]] = {}
        for event in opened.events():
            if event.kind == "transition" and event.to_state and event.order_id:
                symbol = records[event.order_id].intent.symbol
                walked.setdefault(symbol, []).append(event.to_state)
    return walked


def states_shown(lines: list[str], symbol: str) -> list[str]:
    """The states a watch's lines show `symbol` in, each once, in the order shown."""
    shown: list[str] = []
    for line in lines:
        fields = line.split()
        ours = len(fields) > 4 and fields[1] == "slow" and fields[2] == symbol
        if ours and (not shown or shown[-1] != fields[4]):
            shown.append(fields[4])
    return shown


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    remaining = iter(whole)
    return all(item in remaining for item in part)


def test_watch_follows_a_running_walk_until_nothing_is_in_flight(tmp_path: Path) -> None:
    plan, config, journal = tmp_path / "plan.json", tmp_path / "config.json", tmp_path / "j.db"
    plan.write_text(json.dumps(SLOW_PLAN))
    config.write_text(json.dumps(SLOW_CONFIG))
    with sim_server_process(tmp_path, SLOW_MARKET) as (url, _):
        run = subprocess.Popen(
            [WALKBOOK, "run", str(plan), "--journal", str(journal), "--broker", "alpaca",
             "--alpaca-url", url, "--engine-config", str(config)],
            env=keyed_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        deadline = time.monotonic() + WATCHING
        while submitted(journal) < 1 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        watched = watch(journal)
        run_out, run_err = run.communicate(timeout=WATCHING)
    assert run.returncode == 0, run_out + run_err
    assert watched.returncode == 0, watched.stdout + watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[0].startswith(f"watching {journal}: walking: held by pid {run.pid} on ")
    walked = journal_states(journal)
    for symbol in SYMBOLS:
        shown = states_shown(lines, symbol)
        # seen resting in a limit step, then to market and to the end, as the journal has it
        assert shown[-3:] == ["MARKET", "SETTLING", "VALIDATED"], (symbol, shown)
        assert "LIMIT_STEP_3" in shown, (symbol, shown)
        assert is_subsequence(shown, walked[symbol]), (symbol, shown, walked[symbol])
    resting_lines = [line for line in lines if " LIMIT_STEP_" in line and " broker " in line]
    assert {line.split()[2] for line in resting_lines} == set(SYMBOLS)
    # each resting order's limit against the bid and ask its step was priced from
    assert all(" limit " in line and " bid " in line and " ask " in line for line in resting_lines)
    done = [line for line in lines if " VALIDATED " in line]
    assert sorted(line.split()[5:7] for line in done) == [
        ["filled", "3/3"],
        ["filled", "4/4"],
        ["filled", "5/5"],
    ]
    assert lines[-2].startswith("plan slow: 3/3 done (3 VALIDATED, 0 FAILED) in ")
    assert lines[-1] == "nothing in flight: 3 order(s) watched, 3 VALIDATED, 0 FAILED"
    # the run itself, piped, showed no progress: only its results
    assert "LIMIT_STEP" not in run_out
    assert "plan slow: SUCCESS" in run_out


def test_watch_never_writes_to_the_journal(tmp_path: Path) -> None:
    finished = tmp_path / "finished.db"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**SLOW_PLAN, "plan_id": "done"}))
    ran = CliRunner().invoke(main, ["run", str(plan), "--journal", str(finished)])
    assert ran.exit_code == 0, ran.output
    before = untouched(finished)
    watched = watch(finished)
    assert (watched.returncode, watched.stdout) == (0, f"nothing in flight in {finished}\n")
    assert untouched(finished) == before

    in_flight = killed_run(tmp_path)  # read through: every in-flight order folded and shown
    before = untouched(in_flight)
    assert watch(in_flight).returncode == 4
    assert untouched(in_flight) == before


def test_orders_in_flight_that_nobody_walks_end_the_watch_with_exit_4(tmp_path: Path) -> None:
    journal = killed_run(tmp_path)
    watched = watch(journal)
    assert watched.returncode == 4, watched.stdout + watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[0].startswith(f"watching {journal}: NOT WALKING: no process holds this journal")
    assert [line.split()[1:5] for line in lines[1:]] == [
        ["day-2", "ZZZ", "buy", "LIMIT_STEP_1"],
        ["day-2", "AAPL", "buy", "LIMIT_STEP_1"],
    ]
    assert watched.stderr.startswith("NOT WALKING: no process holds this journal, and 2 order(s)")
    assert "walkbook resume" in watched.stderr


def test_a_journal_that_is_missing_or_not_a_journal_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.db"
    shown = CliRunner().invoke(main, ["watch", "--journal", str(missing)])
    assert shown.exit_code == 2
    assert shown.stderr == f"walkbook: error: journal {missing} does not exist\n"
    assert shown.stdout == ""
    assert not missing.exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    shown = CliRunner().invoke(main, ["watch", "--journal", str(junk)])
    assert shown.exit_code == 2
    assert shown.stderr.startswith(f"walkbook: error: {junk} is not a walkbook journal")
    assert shown.stderr.count("\n") == 1


def test_the_live_view_shows_each_in_flight_order_against_its_quote(tmp_path: Path) -> None:
    journal = killed_run(tmp_path)
    with Journal.open_readonly(journal) as opened:
        watched = LiveJournal(opened)
        records = watched.in_flight()
        console = Console(record=True, width=220)
        console.print(watch_view(watched, "walking: held by pid 1 on host", watched.now()))
    text = console.export_text()
    header, plans, *rows = [line for line in text.splitlines() if "│" in line or "┃" in line]
    assert [c.strip() for c in header.strip("┃").split("┃")] == list(PLAN_COLUMNS)
    assert [c.strip() for c in plans.strip("│").split("│")][:4] == ["day-2", "0/2", "0", "0"]
    order_header, *order_rows = rows
    assert [c.strip() for c in order_header.strip("┃").split("┃")] == list(ORDER_COLUMNS)
    assert len(order_rows) == len(records) == 2
    for row, record in zip(order_rows, records, strict=True):
        cells = dict(
            zip(ORDER_COLUMNS, (c.strip() for c in row.strip("│").split("│")), strict=True)
        )
        assert record.step_quote is not None
        assert record.step_limit_price is not None
        expected = {
            "plan": "day-2",
            "symbol": record.intent.symbol,
            "side": "buy",
            "state": "LIMIT_STEP_1",
            "limit": decimal_text(record.step_limit_price),
            "bid": record.step_quote["bid"],
            "ask": record.step_quote["ask"],
            "filled": "0/1",
            "avg price": "",
            "broker order id": record.live_broker_order_id,
        }
        assert {column: cells[column] for column in expected} == expected
        assert cells["in state"].endswith("s")
    assert text.splitlines()[0].startswith(f"{journal}: walking: held by pid 1 on host")
    assert "day-1" not in text  # a plan with nothing in flight is not watched


def test_followed_orders_fold_as_the_journal_does(tmp_path: Path) -> None:
    """Caught up on a killed run, then polled after a resume walked it to the end: each
    order's record is the one folding its whole history gives (nothing folded twice)."""
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting(symbols=STILL)), clock)
    path = tmp_path / "j.db"
    kill_after(Engine(broker, path, clock=clock), clock, parse_plan(KILLED_PLAN), 3)
    with Journal.open_readonly(path) as opened:
        watched = LiveJournal(opened)
        assert [r.state for r in watched.in_flight()] == ["LIMIT_STEP_1"] * 2
        with Engine(broker, path, clock=clock) as engine:
            engine.resume_sync()
        changed = watched.poll()
        assert watched.in_flight() == []
        assert {r.state for r in changed} >= {"LIMIT_STEP_2", "SETTLING", "VALIDATED"}
        assert watched.records == fold_orders(opened.events())
        assert all(r.filled_qty == Decimal(1) for r in watched.records.values())
        assert watched.poll() == []
        (plan,) = watched.plans()
        assert (plan.plan_id, plan.total, plan.validated, plan.failed) == ("day-2", 2, 2, 0)
        assert plan.ended_at is not None


def on_a_pty(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    """`walkbook ARGS` with stdin, stdout and stderr on a 200-column pseudo-terminal; the
    process and the terminal's master end."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen(
        [WALKBOOK, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(slave)
    return process, master


@contextmanager
def on_a_terminal(journal: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`walkbook watch` on a pseudo-terminal; yields it and the terminal's master end, once
    the live view has drawn the in-flight orders."""
    process, master = on_a_pty("watch", "--journal", str(journal))
    try:
        drawn = b""
        deadline = time.monotonic() + WATCHING
        while drawn.count(b"LIMIT_STEP_1") < 2 and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                drawn += os.read(master, 65536)
        assert drawn.count(b"LIMIT_STEP_1") >= 2, drawn
        assert b"broker order id" in drawn
        assert b"in state" in drawn
        yield process, master
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WATCHING)
        os.close(master)


def test_q_or_ctrl_c_leaves_the_live_view_with_exit_0(tmp_path: Path) -> None:
    journal = killed_run(tmp_path)
    with Journal.open(journal):  # a live holder: the orders are walking, so watch stays
        with on_a_terminal(journal) as (process, master):
            os.write(master, b"q")
            assert process.wait(timeout=WATCHING) == 0
        with on_a_terminal(journal) as (process, _):
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=WATCHING) == 0


def test_run_on_a_terminal_shows_orders_done_of_the_total(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**SLOW_PLAN, "plan_id": "shown"}))
    process, master = on_a_pty("run", str(plan), "--journal", str(tmp_path / "j.db"))
    drawn, deadline = b"", time.monotonic() + WATCHING
    try:
        while time.monotonic() < deadline:  # until the terminal closes with the process
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process and its terminal are gone
                break
            if not chunk:
                break
            drawn += chunk
        assert process.wait(timeout=WATCHING) == 0, drawn
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    assert b"plan shown: 3/3 orders done" in drawn, drawn
    assert b"plan shown: SUCCESS" in drawn
