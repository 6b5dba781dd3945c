"""Stopping real processes: SIGTERM/SIGINT/SIGHUP to `walkbook run --broker alpaca` mid-walk against
a `walkbook sim-server` process, `walkbook halt` from a second process (with and without a
run holding the journal), a person's cancel through alpaca-py, a plan refused while another
is in flight, and exit code 4 on a journal that can no longer be written or was deleted.

The broker's book is read back over REST after each: no order may be left open.
"""

from __future__ import annotations

import json
import resource
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from alpaca_support import KEYS, WALKBOOK, keyed_env, rest, sim_server_process, submitted

# orders rest and never fill passively; a step waits long enough to be stopped mid-walk
STILL = {"spread_bps": 20, "volatility_bps": 0}
RESTING_MARKET = {
    "latency_seconds": 0,
    "fill_intensity": 1e-9,
    "stream_gap_probability": 0,
    "symbols": {"AAPL": {"price": "100", **STILL}, "MSFT": {"price": "300", **STILL}},
}
SLOW_STEPS = {"medium_step_wait_seconds": 30.0, "market_wait_seconds": 3,
              "settle_timeout_seconds": 5, "stream_quote_wait_seconds": 0.5,
              "broker_retry_backoff_seconds": 0.05}  # fmt: skip
PLAN = {
    "plan_id": "day-2",
    "orders": [
        {"symbol": "AAPL", "side": "buy", "quantity": "8"},
        {"symbol": "MSFT", "side": "buy", "quantity": "3"},
    ],
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with sim_server_process(tmp_path, RESTING_MARKET) as server:
        yield server


class Desk:
    """Files and commands of one journal against one sim-server."""

    def __init__(self, tmp_path: Path, url: str, **config: Any) -> None:
        self.url = url
        self.journal = tmp_path / "j.db"
        self.config = tmp_path / "config.json"
        self.config.write_text(json.dumps(SLOW_STEPS | config))
        self.tmp = tmp_path

    @property
    def alpaca(self) -> list[str]:
        return ["--broker", "alpaca", "--alpaca-url", self.url, "--engine-config", str(self.config)]

    def plan_file(self, plan: dict[str, Any]) -> Path:
        path = self.tmp / f"{plan['plan_id']}.json"
        path.write_text(json.dumps(plan))
        return path

    def start_resting(self) -> subprocess.Popen[str]:
        """`walkbook run` of PLAN, once both its orders rest at the broker."""
        run = self.start_run()
        wait_until(lambda: submitted(self.journal) >= 2, run)
        return run

    def killed_resting(self) -> None:
        """A run SIGKILLed while both its orders rest at the broker."""
        run = self.start_resting()
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)

    def start_run(self, plan: dict[str, Any] = PLAN, **popen: Any) -> subprocess.Popen[str]:
        command = [WALKBOOK, "run", str(self.plan_file(plan)), "--journal", str(self.journal)]
        return subprocess.Popen(
            [*command, *self.alpaca],
            env=keyed_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )

    def walkbook(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [WALKBOOK, *args, "--journal", str(self.journal), *self.alpaca],
            env=keyed_env(),
            capture_output=True,
            text=True,
            timeout=90,
        )

    def orders(self) -> list[dict[str, Any]]:
        with sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM orders ORDER BY order_id")]

    def open_at_broker(self) -> list[Any]:
        """The account's open orders, as alpaca-py reads them from the server."""
        client = TradingClient(KEYS[0], KEYS[1], paper=True, url_override=self.url)
        return list(client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)))


def wait_until(
    condition: Callable[[], bool], run: subprocess.Popen[str], seconds: float = 30
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def journaled(journal: Path, kind: str) -> int:
    """How many events of `kind` the journal holds (0 before it exists)."""
    if not journal.exists():
        return 0
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM events WHERE kind = ?", [kind]).fetchone()[0])


def assert_halted_clean(desk: Desk) -> None:
    """Nothing open at the broker, every order FAILED cancelled, resume has nothing to do."""
    assert desk.open_at_broker() == []
    assert {(o["state"], o["reason"]) for o in desk.orders()} == {("FAILED", "cancelled")}
    resumed = desk.walkbook("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "nothing in flight" in resumed.stdout


def test_a_signal_while_the_plan_is_being_checked_exits_3_at_once(tmp_path: Path) -> None:
    """300 symbols off the broker's asset list, each read alone within the adapter's 190
    requests a minute: preflight would read for a minute. SIGTERM ends it at once, exit 3,
    one line saying nothing was journaled or sent; the journal holds no order, the broker
    none."""
    market = {"universe": "any", "latency_seconds": 0, "stream_gap_probability": 0}
    with sim_server_process(tmp_path, market) as (url, _):
        desk = Desk(tmp_path, url)
        orders = [{"symbol": f"Q{i:03d}", "side": "buy", "quantity": "1"} for i in range(300)]
        run = desk.start_run({"plan_id": "wide", "orders": orders})
        wait_until(desk.journal.exists, run)
        # the journal is open and the server has answered a read of one of the plan's assets
        wait_until(lambda: rest(url, "/_sim/stats").get("GET /v2/assets/{symbol}", 0) > 0, run)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=20)
        assert run.returncode == 3, out + err
        assert "halted while it was being checked: nothing journaled, nothing sent" in err
        assert "Traceback" not in err
        assert desk.orders() == []
        assert desk.open_at_broker() == []


# SIGHUP: the terminal or ssh session went away (left to its default it ended the process
# on the spot, both orders live at the broker)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_halts_a_run_mid_walk_and_exits_3(
    tmp_path: Path, served: tuple[str, Path], signum: int
) -> None:
    desk = Desk(tmp_path, served[0])
    run = desk.start_resting()
    assert len(desk.open_at_broker()) == 2
    run.send_signal(signum)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 3, out + err
    assert "halting" in err
    assert "Traceback" not in err
    assert_halted_clean(desk)


def test_a_second_signal_exits_at_once_with_4_and_resume_finishes_the_halt(tmp_path: Path) -> None:
    slow_broker = RESTING_MARKET | {"latency_seconds": 0.3}
    with sim_server_process(tmp_path, slow_broker) as (url, _):
        desk = Desk(tmp_path, url)
        run = desk.start_resting()
        run.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=30)
        assert run.returncode == 4, out + err
        assert "exiting now" in err
        halted = desk.walkbook("halt")
        assert halted.returncode == 0, halted.stdout + halted.stderr
        assert_halted_clean(desk)


def test_walkbook_halt_asks_the_running_process_and_waits_for_it(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    desk = Desk(tmp_path, served[0])
    run = desk.start_resting()
    halted = desk.walkbook("halt")
    assert halted.returncode == 0, halted.stdout + halted.stderr
    assert "halted" in halted.stdout
    out, err = run.communicate(timeout=30)
    assert run.returncode == 3, out + err
    assert_halted_clean(desk)


def test_walkbook_halt_with_nothing_running_cancels_what_a_killed_run_left_live(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    desk = Desk(tmp_path, served[0])
    desk.killed_resting()
    assert len(desk.open_at_broker()) == 2
    other = desk.walkbook("halt", "--plan", "day-1")
    assert other.returncode == 0, other.stdout + other.stderr
    assert "nothing in flight" in other.stdout
    assert len(desk.open_at_broker()) == 2
    halted = desk.walkbook("halt", "--plan", "day-2")
    assert halted.returncode == 0, halted.stdout + halted.stderr
    assert halted.stdout.count("FAILED (cancelled)") == 2
    assert "order.stopped" not in halted.stdout  # logs go to stderr, results to stdout
    assert_halted_clean(desk)


def test_a_signal_to_walkbook_halt_lets_its_halt_finish(tmp_path: Path) -> None:
    """Each cancel takes the server a second: SIGTERM lands mid-halt. Before, it ended
    `walkbook halt` on the spot (exit -15), one order cancelled, the other live."""
    slow_cancels = {"latency_seconds": 1.0, "only": ["DELETE /v2/orders"]}
    with sim_server_process(tmp_path, RESTING_MARKET, slow_cancels) as (url, _):
        desk = Desk(tmp_path, url)
        desk.killed_resting()
        halt = subprocess.Popen(
            [WALKBOOK, "halt", "--journal", str(desk.journal), *desk.alpaca],
            env=keyed_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: journaled(desk.journal, "cancel_intent") >= 1, halt)
        halt.send_signal(signal.SIGTERM)
        out, err = halt.communicate(timeout=60)
        assert halt.returncode == 0, out + err
        assert "SIGTERM: finishing the stop first" in err
        assert out.count("FAILED (cancelled)") == 2
        assert_halted_clean(desk)


def test_a_person_s_cancel_through_alpaca_py_is_never_traded_around(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    """Cancelled by a person while the walk runs, and again before a SIGKILL and resume:
    no new client order id for that engine order afterwards."""
    desk = Desk(tmp_path, served[0])
    person = TradingClient(KEYS[0], KEYS[1], paper=True, url_override=desk.url)
    run = desk.start_resting()
    first, second = sorted(desk.open_at_broker(), key=lambda o: o.symbol)
    person.cancel_order_by_id(first.id)
    wait_until(lambda: any(o["reason"] == "cancelled_externally" for o in desk.orders()), run)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    person.cancel_order_by_id(second.id)
    resumed = desk.walkbook("resume")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert {(o["symbol"], o["reason"]) for o in desk.orders()} == {
        ("AAPL", "cancelled_externally"),
        ("MSFT", "cancelled_externally"),
    }
    every = rest(desk.url, "/v2/orders?status=all&limit=500")
    assert sorted(o["client_order_id"] for o in every) == sorted(
        [first.client_order_id, second.client_order_id]
    )


def test_a_new_plan_while_another_is_in_flight_is_refused_then_abandon_clears_it(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    desk = Desk(tmp_path, served[0])
    desk.killed_resting()
    events_before = sqlite3.connect(desk.journal).execute("SELECT count(*) FROM events").fetchone()
    day3 = {"plan_id": "day-3", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": "1"}]}
    refused = desk.walkbook("run", str(desk.plan_file(day3)))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    *counters, error = refused.stderr.strip().splitlines()
    assert error.startswith("walkbook: error: plan day-3 refused")
    assert "day-2" in error
    assert all(line.startswith("walkbook: alpaca: ") for line in counters)
    after = sqlite3.connect(desk.journal).execute("SELECT count(*) FROM events").fetchone()
    assert after == events_before
    abandoned = desk.walkbook("abandon", "--plan", "day-2")
    assert abandoned.returncode == 0, abandoned.stdout + abandoned.stderr
    assert abandoned.stdout.count("FAILED (abandoned)") == 2
    assert desk.open_at_broker() == []


def test_a_journal_deleted_mid_walk_stops_the_run_with_4_and_is_put_back_whole(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    """Before, the run journaled on into the deleted file, and all of it went with the
    process: no journal to resume or audit, orders live at the broker."""
    desk = Desk(tmp_path, served[0])
    run = desk.start_resting()
    desk.journal.unlink()
    run.send_signal(signal.SIGTERM)  # the halt's first append finds the file gone
    out, err = run.communicate(timeout=30)
    assert run.returncode == 4, out + err
    assert "was deleted, moved or replaced while this process wrote it" in err
    assert "Traceback" not in err
    verified = subprocess.run(
        [WALKBOOK, "journal", "verify", "--journal", str(desk.journal)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert submitted(desk.journal) == 2  # both orders' submits came back with it
    halted = desk.walkbook("halt")
    assert halted.returncode == 0, halted.stdout + halted.stderr
    assert_halted_clean(desk)


def _small_files(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_journal_that_cannot_be_written_mid_walk_exits_4_and_resume_finishes(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    """The disk fills up mid-walk (the run may write no file beyond 300 kB: the
    new journal's write-ahead log takes 280 kB before the first order is placed): exit 4, one line
    saying to resume, and `walkbook resume` (with room again) leaves nothing live."""
    desk = Desk(tmp_path, served[0], medium_step_wait_seconds=0.5)
    run = desk.start_run(preexec_fn=_small_files(300_000))
    out, err = run.communicate(timeout=60)
    assert run.returncode == 4, out + err
    assert "run `walkbook resume`" in err
    assert "Traceback" not in err
    halted = desk.walkbook("halt")
    assert halted.returncode == 0, halted.stdout + halted.stderr
    assert desk.open_at_broker() == []
