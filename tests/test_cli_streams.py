"""A walking command outlives its output: a reader that went away (`| head`, a log shipper
that died) or a process started with stdout and stderr closed must not end a walk halfway,
and SIGHUP or SIGQUIT stop it as SIGTERM does (tests/test_stopping_processes.py has the
halt itself, against a real broker process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.cli.signals import stop_signals
from journal import Journal

WALKBOOK = str(Path(sys.executable).parent / "walkbook")
PLAN = {
    "plan_id": "streams",
    "orders": [
        {"symbol": "AAPL", "side": "buy", "quantity": "3"},
        {"symbol": "MSFT", "side": "buy", "quantity": "2"},
    ],
}


def run_plan(tmp_path: Path, **popen: Any) -> int:
    """`walkbook run` of PLAN on the embedded simulator, logging every step (info) to
    stderr; its exit code."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    command = [WALKBOOK, "run", str(plan), "--journal", str(tmp_path / "j.db")]
    done = subprocess.run([*command, "--log-level", "info"], timeout=120, check=False, **popen)
    return done.returncode


def assert_walked_to_the_end(tmp_path: Path) -> None:
    """Every order VALIDATED, and the journal verifies: nothing was written into it."""
    with Journal.open_readonly(tmp_path / "j.db") as journal:
        assert {row["state"] for row in journal.orders()} == {"VALIDATED"}
    verified = subprocess.run(
        [WALKBOOK, "journal", "verify", "--journal", str(tmp_path / "j.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@contextmanager
def reader_gone() -> Iterator[int]:
    """The write end of a pipe whose reader has already closed it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


def test_a_reader_gone_from_stdout_and_stderr_does_not_end_the_walk(tmp_path: Path) -> None:
    """Before, the first log line's BrokenPipeError ended the run with exit 1, its orders
    PENDING in the journal."""
    with reader_gone() as pipe:
        code = run_plan(tmp_path, stdout=pipe, stderr=pipe)
    assert code == 0
    assert_walked_to_the_end(tmp_path)


def _close_stdout_and_stderr() -> None:
    os.close(1)
    os.close(2)


def test_a_run_started_with_stdout_and_stderr_closed_walks_to_the_end(tmp_path: Path) -> None:
    """Before, it exited 1 with nothing journaled and nothing said; descriptors 1 and 2
    were free for the journal's lock file to take."""
    code = run_plan(tmp_path, preexec_fn=_close_stdout_and_stderr)
    assert code == 0
    assert_walked_to_the_end(tmp_path)
    assert "level=" not in (tmp_path / "j.db.lock").read_text()  # no log line landed in it


@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN])
def test_sighup_and_sigquit_stop_walkbook_unless_it_was_started_ignoring_them(
    inherited: signal.Handlers,
) -> None:
    """`nohup` starts a process with SIGHUP ignored: it must survive the hang-up."""
    previous = {sig: signal.signal(sig, inherited) for sig in (signal.SIGHUP, signal.SIGQUIT)}
    try:
        handled = set(stop_signals())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert {signal.SIGINT, signal.SIGTERM} <= handled
    hang_up_and_quit = {signal.SIGHUP, signal.SIGQUIT} & handled
    assert hang_up_and_quit == (
        {signal.SIGHUP, signal.SIGQUIT} if inherited == signal.SIG_DFL else set()
    )
