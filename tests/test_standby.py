"""The fenced owner lease of a PostgreSQL journal, and `walkbook standby` taking over from an
owner that died or stopped: real processes, a throwaway PostgreSQL cluster, a real
`walkbook sim-server` and the real alpaca-py SDK (docs/scale-out.md).

Leases here are 1-2 s long, so a takeover costs a few seconds; the database's clock decides
when a lease has run out.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from alpaca_support import WALKBOOK, keyed_env, rest, sim_server_process
from click.testing import CliRunner

from engine import MarketSpec, VirtualClock
from engine.brokers.sim import SimBroker
from engine.cli import main as cli_main
from journal import Journal, JournalError, JournalLeaseLost, JournalLocked, NewEvent
from journal.location import journal_holder

AT = datetime(2026, 12, 1, 15, tzinfo=UTC)
POSITIONS = {"NVDA": "12", "AMD": "30"}
PLAN = {
    "plan_id": "standby",
    "orders": [
        {"symbol": "NVDA", "side": "sell", "quantity": "12", "close_type": "full"},
        {"symbol": "AMD", "side": "sell", "quantity": "10"},
        {"symbol": "AAPL", "side": "buy", "quantity": "8"},
        {"symbol": "MSFT", "side": "buy", "quantity": "3"},
    ],
}
# slow passive fills and half-second steps: the walk is in flight when the owner dies
MARKET = {"latency_seconds": 0, "fill_intensity": 1.0, "partial_fill_probability": 0.5,
          "stream_gap_probability": 0, "positions": POSITIONS}  # fmt: skip
CONFIG = {"medium_step_wait_seconds": 0.5, "market_wait_seconds": 3, "settle_timeout_seconds": 5,
          "stream_quote_wait_seconds": 0.5, "broker_retry_backoff_seconds": 0.05}  # fmt: skip
LEASE = "2"
# the routes that change the account: what a fenced owner must not call again
SENDS = ("POST /v2/orders", "PATCH /v2/orders/{order_id}", "DELETE /v2/orders/{order_id}",
         "DELETE /v2/positions/{symbol}")  # fmt: skip


def _lease_row(url: str) -> tuple[int, str, bool]:
    """The lease row: epoch, `pid N on host`, live by the database's clock."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT epoch, pid, host, expires_at > clock_timestamp() FROM lease"
        ).fetchone()
    assert row is not None
    return int(row[0]), f"pid {row[1]} on {row[2]}", bool(row[3])


# -- the lease in the recorder ----------------------------------------------------------


def test_a_live_lease_refuses_a_second_owner_in_one_line(postgres: Any) -> None:
    """While the owner renews its lease (longer than the lease's length here), a second
    writer is refused in one line naming the holder, its epoch and when its lease runs out."""
    url = postgres.fresh_database()
    with Journal.open(url, lease_seconds=1) as owner:
        time.sleep(1.5)  # renewed meanwhile: without renewal it would have run out
        with pytest.raises(JournalLocked) as refused:
            Journal.open(url, lease_seconds=1)
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"journal is in use by {owner.holder()} (its lease, epoch 1")
        assert "s from now unless renewed" in message
        assert refused.value.fields["epoch"] == 1
    assert journal_holder(url) is None  # a closed journal lets its lease go at once


def test_each_owner_takes_the_next_epoch(postgres: Any) -> None:
    url = postgres.fresh_database()
    epochs = []
    for _ in range(3):
        with Journal.open(url) as journal:
            epochs.append(_lease_row(url)[0])
            journal.append(NewEvent("note"), at=AT)
    assert epochs == [1, 2, 3]


def test_a_fenced_writer_is_refused_and_writes_nothing(postgres: Any) -> None:
    """The database's clock ends a lease (here: set to run out now, as if its owner had
    stopped renewing); the next owner takes epoch 2, and the old owner's append is refused
    inside its transaction (its own deadline has not passed: the database says no)."""
    url = postgres.fresh_database()
    stale = Journal.open(url, lease_seconds=30)
    try:
        stale.append(NewEvent("note", data={"by": "stale"}), at=AT)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("UPDATE lease SET expires_at = clock_timestamp()")
        with Journal.open(url, lease_seconds=30) as owner:
            assert _lease_row(url)[0] == 2
            with pytest.raises(JournalLeaseLost) as lost:
                stale.append(NewEvent("note", data={"by": "fenced"}), at=AT)
            assert lost.value.fields["epoch"] == 1
            assert lost.value.fields["owner_epoch"] == 2
            assert lost.value.fields["owner"] == owner.holder()
            assert f"now held by {owner.holder()} (epoch 2)" in str(lost.value)
            owner.append(NewEvent("note", data={"by": "owner"}), at=AT)
            assert [e.data["by"] for e in owner.events()] == ["stale", "owner"]
            with pytest.raises(JournalLeaseLost):  # fenced for good
                stale.append(NewEvent("note", data={"by": "fenced"}), at=AT)
    finally:
        stale.close()
    assert _lease_row(url)[0] == 2  # the fenced writer's close ended nobody's lease


STOPPING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import UTC, datetime
    from journal import Journal, JournalLeaseLost, NewEvent
    journal = Journal.open(sys.argv[1], lease_seconds=1)
    journal.append(NewEvent("note", data={"by": "stopped"}), at=datetime.now(UTC))
    print("appended", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    try:
        journal.append(NewEvent("note", data={"by": "woken"}), at=datetime.now(UTC))
    except JournalLeaseLost as lost:
        print(lost.message, flush=True)
        sys.exit(4)
    """
)


def test_a_stopped_writer_loses_its_lease_by_the_database_clock(postgres: Any) -> None:
    """A real process stops itself (SIGSTOP) holding a 1 s lease: the lease runs out by the
    database's clock, a writer waiting for it (`wait_for_lease`) takes epoch 2, and the
    stopped writer, continued, is refused its next append."""
    url = postgres.fresh_database()
    writer = subprocess.Popen(
        [sys.executable, "-c", STOPPING_WRITER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "appended\n"
        with pytest.raises(JournalLocked):  # stopped, but its lease has not run out yet
            Journal.open(url, lease_seconds=1)
        with Journal.open(url, lease_seconds=5, wait_for_lease=True, poll_seconds=0.05) as owner:
            epoch, holder, live = _lease_row(url)
            assert (epoch, live) == (2, True)
            assert holder == owner.holder()
            writer.send_signal(signal.SIGCONT)
            assert writer.wait(timeout=30) == 4
            printed = writer.stdout.read()
            assert f"now held by {holder} (epoch 2)" in printed, printed
            assert [e.data["by"] for e in owner.events()] == ["stopped"]
    finally:
        writer.kill()
        writer.wait()


def _order_facts(orders: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """What the server holds of each order, by client order id: status, qty, filled qty."""
    return {o["client_order_id"]: (o["status"], o["qty"], o["filled_qty"]) for o in orders}


# -- walkbook standby with real processes ----------------------------------------------


class Desk:
    """A plan, an engine config and a PostgreSQL journal beside one running sim-server."""

    def __init__(self, tmp_path: Path, url: str, server: str) -> None:
        self.url, self.server = url, server
        self.plan, self.config = tmp_path / "plan.json", tmp_path / "config.json"
        self.plan.write_text(json.dumps(PLAN))
        self.config.write_text(json.dumps(CONFIG))
        self.alpaca = ["--broker", "alpaca", "--alpaca-url", server,
                       "--engine-config", str(self.config), "--lease-seconds", LEASE]  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [WALKBOOK, *args, "--journal", self.url, *self.alpaca],
            env=keyed_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def owner(self) -> subprocess.Popen[str]:
        """`walkbook run` once both sells are live at the server (the buys wait for them)."""
        run = self.start("run", str(self.plan))
        deadline = time.monotonic() + 30
        while self.acknowledged() < 2:
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no order went live"
            time.sleep(0.02)
        return run

    def acknowledged(self) -> int:
        try:
            with Journal.open_readonly(self.url) as journal:
                return sum(e.kind == "submit_ack" for e in journal.events())
        except JournalError:  # the run has not created the schema yet
            return 0

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = rest(self.server, "/_sim/stats")
        return stats

    def check_finished(self) -> None:
        """Every order terminal in the journal and at the server, no client order id twice,
        and the server's positions what the journaled fills make of the starting ones."""
        with Journal.open_readonly(self.url) as journal:
            rows = journal.orders()
        assert len(rows) == len(PLAN["orders"])
        assert {row["state"] for row in rows} <= {"VALIDATED", "FAILED"}
        orders = rest(self.server, "/v2/orders?status=all&limit=500")
        cids = Counter(order["client_order_id"] for order in orders)
        assert max(cids.values()) == 1, cids
        assert all(o["status"] in ("filled", "canceled", "replaced") for o in orders), orders
        expected = {symbol: Decimal(qty) for symbol, qty in POSITIONS.items()}
        for row in rows:
            sign = 1 if row["side"] == "buy" else -1
            held = expected.get(row["symbol"], Decimal(0))
            expected[row["symbol"]] = held + sign * Decimal(row["filled_qty"])
        held = {p["symbol"]: Decimal(p["qty"]) for p in rest(self.server, "/v2/positions")}
        assert held == {symbol: qty for symbol, qty in expected.items() if qty}


@pytest.fixture
def desk(tmp_path: Path, postgres: Any) -> Iterator[Desk]:
    with sim_server_process(tmp_path, MARKET) as (server, _state):
        yield Desk(tmp_path, postgres.fresh_database(), server)


def test_standby_takes_over_from_a_killed_owner_and_finishes(desk: Desk) -> None:
    owner = desk.owner()
    standby = desk.start("standby", "--poll-seconds", "0.1")
    assert standby.stderr is not None
    waiting = f"waiting for the lease of pid {owner.pid} on "
    assert standby.stderr.readline().startswith(f"walkbook: standing by: {waiting}")
    owner.send_signal(signal.SIGKILL)
    assert owner.wait(timeout=10) == -signal.SIGKILL
    out, err = standby.communicate(timeout=90)
    assert standby.returncode == 0, out + err
    assert "found" in out
    assert _lease_row(desk.url)[0] == 2
    desk.check_finished()


def test_a_stopped_owner_continued_after_the_takeover_sends_nothing_and_exits_4(
    desk: Desk,
) -> None:
    owner = desk.owner()
    owner.send_signal(signal.SIGSTOP)
    try:
        standby = desk.start("standby", "--poll-seconds", "0.1")
        out, err = standby.communicate(timeout=90)
        assert standby.returncode == 0, out + err
        desk.check_finished()
        with Journal.open_readonly(desk.url) as journal:
            last_seq = journal.last_seq
        before = desk.stats()
        orders_before = rest(desk.server, "/v2/orders?status=all&limit=500")
    finally:
        owner.send_signal(signal.SIGCONT)
    out, err = owner.communicate(timeout=60)
    assert owner.returncode == 4, out + err
    # one line says why it stopped; the other is the adapter's REST counts every run prints
    line, counts = err.strip().splitlines()
    assert counts.startswith("walkbook: alpaca: "), err
    assert line.startswith("walkbook: stopped: journal lease lost: this process's epoch 1"), line
    assert f"taken over by pid {standby.pid} on " in line, line
    after = desk.stats()
    assert {route: after.get(route, 0) for route in SENDS} == {
        route: before.get(route, 0) for route in SENDS
    }
    assert after["orders"] == before["orders"]
    orders_after = rest(desk.server, "/v2/orders?status=all&limit=500")
    assert _order_facts(orders_after) == _order_facts(orders_before)
    with Journal.open_readonly(desk.url) as journal:
        assert journal.last_seq == last_seq
    desk.check_finished()


def test_standby_refuses_a_journal_file_and_exits_3_on_sigterm_while_waiting(
    tmp_path: Path, postgres: Any
) -> None:
    file = subprocess.run(
        [WALKBOOK, "standby", "--journal", str(tmp_path / "j.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert file.returncode == 2
    (line,) = file.stderr.strip().splitlines()
    assert line.startswith("walkbook: error: walkbook standby needs a PostgreSQL journal")
    url, sim_state = postgres.fresh_database(), tmp_path / "sim.db"
    SimBroker.open(sim_state, MarketSpec(), VirtualClock()).close()
    with Journal.open(url) as owner:
        command = ["standby", "--journal", url, "--sim-state", str(sim_state)]
        standby = subprocess.Popen(
            [WALKBOOK, *command, "--poll-seconds", "0.1"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert standby.stderr is not None
        announced = standby.stderr.readline()
        assert (
            announced
            == f"walkbook: standing by: waiting for the lease of {owner.holder()} to run out\n"
        )
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=30) == 3
        assert standby.stderr.read() == ""
        assert _lease_row(url)[0] == 1


def _lines(stream: IO[str]) -> queue.Queue[str]:
    """The lines `stream` yields, read by a thread, for a test to wait on each with a
    deadline ("" once it ends) rather than block on a line that never comes."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_a_standby_says_when_the_journal_goes_out_of_reach_and_comes_back(
    tmp_path: Path, postgres: Any
) -> None:
    """The journal's database refuses connections while the standby waits (as during a
    failover): it says so once, on one line naming the journal, waits it out, says when
    the journal is back, and goes on standing by (SIGTERM: exit 3, the lease untouched)."""
    url, sim_state = postgres.fresh_database(), tmp_path / "sim.db"
    database = url.rsplit("/", 1)[1]
    SimBroker.open(sim_state, MarketSpec(), VirtualClock()).close()
    admin = psycopg.connect(postgres.url("postgres"), autocommit=True)
    with Journal.open(url) as owner, admin:
        standby = subprocess.Popen(
            [WALKBOOK, "standby", "--journal", url, "--sim-state", str(sim_state),
             "--poll-seconds", "0.05"],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert standby.stderr is not None
            lines = _lines(standby.stderr)
            assert lines.get(timeout=30).startswith("walkbook: standing by: waiting for the lease")
            admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            try:
                gone = lines.get(timeout=30)
            finally:
                admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            assert gone.startswith(f"walkbook: standing by: cannot open journal {owner.location}: ")
            assert "not currently accepting connections" in gone
            assert gone.endswith("; trying again every 0.05 s\n")
            back = lines.get(timeout=30)
            assert back == "walkbook: standing by: the journal is within reach again\n"
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(timeout=30) == 3
            assert lines.get(timeout=30) == ""
        finally:  # a failed assertion must not leave the standby running
            if standby.poll() is None:
                standby.kill()
                standby.wait()
        assert _lease_row(url)[0] == 1


def test_lease_seconds_on_a_journal_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """A file's owner is its lock, which has no length: nothing is journaled."""
    plan, journal = tmp_path / "plan.json", tmp_path / "j.db"
    plan.write_text(json.dumps(PLAN))
    refused = CliRunner().invoke(
        cli_main, ["run", str(plan), "--journal", str(journal), "--lease-seconds", "5"]
    )
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == (
        "walkbook: error: --lease-seconds needs a PostgreSQL journal (postgresql://...)\n"
    )
    assert not journal.exists()
