"""Following a journal (`Journal.follow`, `walkbook journal follow`) and the alerting sink
docs/embedding.md shows: every event after the cursor, in seq order, nothing skipped, seen
as a writer commits it, from a second read-only process; the sink survives SIGKILL.

Waits in the library tests run on a fake clock (`sleep` advances it), so no test sleeps on
the wall clock to prove an idle end; the process tests use real `walkbook run` and sink
processes beside real writers."""

from __future__ import annotations

import json
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner

from engine import Engine, EngineConfig, MarketSpec, SimBroker, VirtualClock, parse_plan
from engine.audit import alert_sink
from engine.cli import main
from journal import Journal, JournalCorrupt, NewEvent
from journal.follow import BATCH_EVENTS, CursorRefused

ROOT = Path(__file__).resolve().parent.parent
WALKBOOK = str(Path(sys.executable).parent / "walkbook")
AT = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
WAITING = 60  # seconds a process may take before the test gives up on it
# invalid orders are journaled FAILED, not refused with the plan; a cent's worth is skipped
CONFIG = {"validation": "skip_invalid", "min_order_notional": "1"}
THRESHOLD = Decimal(1000)


def plan(plan_id: str) -> dict[str, Any]:
    """Two alerts' worth of FAILED orders (an unknown symbol, an order worth a cent) and one
    fill worth more than THRESHOLD (AAPL), beside a fill worth less (MSFT)."""
    orders = [("AAPL", "100"), ("MSFT", "2"), ("TSLA", "0.001"), ("ZZZZ", "1")]
    return {
        "plan_id": plan_id,
        "orders": [{"symbol": s, "side": "buy", "quantity": q} for s, q in orders],
    }


def trade_in_process(journal: Path, plan_id: str) -> None:
    """Walk `plan(plan_id)` into `journal` on the simulator, in this process (the quick way
    to give a journal real orders; the processes under test read it)."""
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(), clock)
    with Engine(broker, journal, config=EngineConfig(**CONFIG), clock=clock) as engine:
        engine.execute_plan_sync(parse_plan(plan(plan_id)))


def start_run(tmp_path: Path, journal: Path, plan_id: str) -> subprocess.Popen[str]:
    """`walkbook run` of `plan(plan_id)` into `journal`, on the embedded simulator."""
    plan_file, config = tmp_path / f"{plan_id}.json", tmp_path / "config.json"
    plan_file.write_text(json.dumps(plan(plan_id)))
    config.write_text(json.dumps(CONFIG))
    command = [WALKBOOK, "run", str(plan_file), "--journal", str(journal)]
    return subprocess.Popen(
        [*command, "--engine-config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(run: subprocess.Popen[str]) -> None:
    """The run ended as a plan with FAILED orders does: exit 1."""
    _, stderr = run.communicate(timeout=WAITING)
    assert run.returncode == 1, stderr


class Lines:
    """A process's stdout, line by line, with a time limit on each line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put("")

    def next(self) -> str:
        return self.lines.get(timeout=WAITING)


class FakeTime:
    """A clock that moves only when `sleep` is called; each sleep first lets the next of
    `commits` write to the journal, as a writer committing during the wait would."""

    def __init__(self, *commits: Callable[[], object]) -> None:
        self.now = 0.0
        self.commits = list(commits)
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.commits:
            self.commits.pop(0)()


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "j.db"


@pytest.fixture
def writer(journal_path: Path) -> Iterator[Journal]:
    with Journal.open(journal_path) as journal:
        yield journal


@pytest.fixture
def reader(journal_path: Path, writer: Journal) -> Iterator[Journal]:
    with Journal.open_readonly(journal_path) as journal:
        yield journal


def append(writer: Journal, count: int) -> None:
    """`count` events in one commit, each numbered in its data."""
    first = writer.last_seq + 1
    items = [(NewEvent(kind="note", data={"n": first + i}), None) for i in range(count)]
    writer.append_many(items, at=AT)


def seqs(events: Iterator[Any]) -> list[int]:
    return [event.seq for event in events]


# -- the library form -------------------------------------------------------------------


def test_follow_from_zero_yields_every_event_as_stored(writer: Journal, reader: Journal) -> None:
    append(writer, 3)
    append(writer, 2)
    followed = list(reader.follow(0, until_idle=0))
    assert [e.seq for e in followed] == [1, 2, 3, 4, 5]
    assert followed == list(reader.events())


def test_from_seq_skips_exactly_the_events_at_or_before_it(
    writer: Journal, reader: Journal
) -> None:
    append(writer, 5)
    for cursor in range(6):
        assert seqs(reader.follow(cursor, until_idle=0)) == list(range(cursor + 1, 6))


def test_nothing_is_skipped_across_batches(writer: Journal, reader: Journal) -> None:
    """More events than one read takes, committed at once, and more after: all, in order."""
    append(writer, BATCH_EVENTS * 2 + 345)
    fake = FakeTime(lambda: append(writer, BATCH_EVENTS + 1))
    followed = reader.follow(7, until_idle=1, sleep=fake.sleep, clock=fake.clock)
    assert seqs(followed) == list(range(8, BATCH_EVENTS * 3 + 347))


def test_commits_made_while_following_are_seen_in_order(writer: Journal, reader: Journal) -> None:
    """A writer commits while the follower waits: each commit is handed out at the next look,
    and the follow ends only after `until_idle` seconds without an event."""
    append(writer, 2)
    fake = FakeTime(lambda: append(writer, 1), lambda: None, lambda: append(writer, 3))
    followed = reader.follow(0, poll_seconds=0.25, until_idle=0.625, sleep=fake.sleep,
                             clock=fake.clock)  # fmt: skip
    assert [next(followed).seq for _ in range(2)] == [1, 2]
    assert fake.slept == []  # nothing waited for yet: both were there
    assert next(followed).seq == 3
    assert [next(followed).seq for _ in range(3)] == [4, 5, 6]
    assert fake.now == 0.75  # three looks: the first write, nothing, the second
    assert list(followed) == []
    # idle from the last event on: 0.25 + 0.25 + 0.125, the last wait cut to the idle limit
    assert fake.slept[3:] == [0.25, 0.25, 0.125]


def test_a_look_that_finds_nothing_new_does_not_restart_the_idle_time(
    writer: Journal, reader: Journal
) -> None:
    """Another connection's commit without an event (the writer's heartbeat) wakes the
    follower, which reads, finds nothing and ends on time."""
    beats = iter(range(1, 4))

    def heartbeat() -> None:
        writer.conn.execute("UPDATE owner SET heartbeat_at = ?", [f"beat {next(beats)}"])

    reads: list[str] = []
    reader.conn.set_trace_callback(reads.append)
    fake = FakeTime(heartbeat, heartbeat, heartbeat)
    followed = reader.follow(0, poll_seconds=0.5, until_idle=1, sleep=fake.sleep, clock=fake.clock)
    assert list(followed) == []
    assert fake.now == 1
    assert sum(statement.startswith("SELECT seq,") for statement in reads) == 3  # woken twice


def test_stop_ends_the_follow_before_it_waits(writer: Journal, reader: Journal) -> None:
    append(writer, 2)
    asked: list[int] = []
    fake = FakeTime(lambda: append(writer, 1))

    def stop() -> bool:
        asked.append(len(asked))
        return len(asked) > 1

    followed = reader.follow(0, stop=stop, sleep=fake.sleep, clock=fake.clock)
    assert seqs(followed) == [1, 2, 3]
    assert len(fake.slept) == 1


def test_a_slow_consumer_holds_no_snapshot(writer: Journal, reader: Journal) -> None:
    """Between events handed out the follower reads nothing, so the writer's WAL checkpoints
    whole (a reader's open snapshot would make TRUNCATE report busy)."""
    append(writer, 10)
    followed = reader.follow(0, until_idle=0)
    assert next(followed).seq == 1
    busy, _, _ = writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert seqs(followed) == list(range(2, 11))


def test_a_cursor_it_cannot_follow_from_is_refused_at_once(
    writer: Journal, reader: Journal
) -> None:
    append(writer, 3)
    with pytest.raises(CursorRefused, match="last event is seq 3") as past:
        reader.follow(4)
    assert past.value.fields["last_seq"] == 3
    with pytest.raises(CursorRefused, match="below 0"):
        reader.follow(-1)


def test_a_gap_in_the_journal_is_refused_not_skipped(
    journal_path: Path, writer: Journal, reader: Journal
) -> None:
    append(writer, 5)
    with sqlite3.connect(journal_path) as conn:
        conn.execute("DROP TRIGGER events_refuse_delete")
        conn.execute("DELETE FROM events WHERE seq = 3")
    followed = reader.follow(0, until_idle=0)
    assert [next(followed).seq for _ in range(2)] == [1, 2]
    with pytest.raises(JournalCorrupt, match="seq 4 does not follow seq 2"):
        next(followed)


# -- the command ------------------------------------------------------------------------


def follow_process(journal: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [WALKBOOK, "journal", "follow", "--journal", str(journal), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_follow_prints_each_event_of_a_running_walk(tmp_path: Path, journal_path: Path) -> None:
    """`walkbook journal follow` started before a `walkbook run` prints every event the run
    commits, flushed line by line, as `journal export` writes them; SIGTERM ends it (0)."""
    trade_in_process(journal_path, "day-1")
    follow = follow_process(journal_path)
    lines = Lines(follow)
    printed = [lines.next()]  # the follower is up and reading before the run starts
    finish(start_run(tmp_path, journal_path, "day-2"))
    with Journal.open_readonly(journal_path) as journal:
        last_seq = journal.last_seq
    while json.loads(printed[-1])["seq"] < last_seq:
        printed.append(lines.next())
    follow.send_signal(signal.SIGTERM)
    _, stderr = follow.communicate(timeout=WAITING)
    assert follow.returncode == 0, stderr
    assert stderr == f"walkbook: followed {last_seq} event(s); resume with --from-seq {last_seq}\n"
    assert [json.loads(line)["seq"] for line in printed] == list(range(1, last_seq + 1))
    assert "day-2" in {json.loads(line)["plan_id"] for line in printed}
    exported = subprocess.run(
        [WALKBOOK, "journal", "export", "--journal", str(journal_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed == exported.stdout.splitlines(keepends=True)


def test_follow_from_a_cursor_until_idle_as_text(journal_path: Path, writer: Journal) -> None:
    append(writer, 4)
    result = CliRunner().invoke(
        main,
        ["journal", "follow", "--journal", str(journal_path), "--from-seq", "2",
         "--format", "text", "--until-idle", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["3", "4"]
    assert lines[0].split()[2:] == ["note", "-", "-", '{"n":3}']
    assert result.stderr == "walkbook: followed 2 event(s); resume with --from-seq 4\n"


def test_ctrl_c_ends_a_follow_without_a_traceback(journal_path: Path, writer: Journal) -> None:
    append(writer, 2)
    follow = follow_process(journal_path)
    lines = Lines(follow)
    assert [json.loads(lines.next())["seq"] for _ in range(2)] == [1, 2]
    follow.send_signal(signal.SIGINT)
    _, stderr = follow.communicate(timeout=WAITING)
    assert follow.returncode == 0
    assert stderr == "walkbook: followed 2 event(s); resume with --from-seq 2\n"


def test_a_reader_closing_the_pipe_ends_a_follow_without_a_traceback(
    journal_path: Path, writer: Journal
) -> None:
    """More events than the pipe holds: the follower is still writing when its reader goes."""
    append(writer, 5000)
    follow = follow_process(journal_path)
    assert follow.stdout is not None
    assert json.loads(follow.stdout.readline())["seq"] == 1
    follow.stdout.close()
    assert follow.wait(timeout=WAITING) == 0
    assert follow.stderr is not None
    stderr = follow.stderr.read()
    assert re.fullmatch(r"walkbook: followed \d+ event\(s\); resume with --from-seq \d+\n", stderr)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--journal", "{tmp}/nope.db"], "nope.db does not exist"),
        (["--journal", "{tmp}/plan.json"], "plan.json is not a walkbook journal"),
        (["--journal", "{tmp}/j.db", "--from-seq", "-1"], "'--from-seq': -1 is not in the range"),
        (["--journal", "{tmp}/j.db", "--from-seq", "3"], "from seq 3: its last event is seq 2"),
        (["--journal", "{tmp}/j.db", "--until-idle", "nan"], "'--until-idle'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, writer: Journal, args: list[str], problem: str
) -> None:
    append(writer, 2)
    (tmp_path / "plan.json").write_text(json.dumps(plan("p")))
    given = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(main, ["journal", "follow", *given])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("walkbook: error: ")
    assert problem in result.stderr


# -- the sink docs/embedding.md shows ---------------------------------------------------


def test_the_docs_show_the_sink_the_tests_run() -> None:
    """docs/embedding.md's "Following the journal" example is engine/audit/alert_sink.py."""
    section = (ROOT / "docs" / "embedding.md").read_text().split("## Following the journal")[1]
    (shown,) = re.findall(r"```python\n(.*?)```", section.split("\n## ")[0], flags=re.S)
    assert shown == Path(alert_sink.__file__).read_text()


def start_sink(tmp_path: Path, journal: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "engine.audit.alert_sink", "--journal", str(journal),
               "--cursor", str(tmp_path / "cursor"), "--alerts", str(tmp_path / "alerts"),
               "--threshold", str(THRESHOLD), *args]  # fmt: skip
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


def delivered(path: Path) -> list[tuple[int, str]]:
    """Each alert delivered to `path`, in order: its event's seq and its text (a line being
    written as this reads is left for the next read)."""
    text = path.read_text() if path.exists() else ""
    lines = text[: text.rfind("\n") + 1].splitlines()
    return [(int(seq), alert) for seq, alert in (line.split("\t", 1) for line in lines)]


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAITING
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)


def test_the_sink_survives_sigkill_mid_feed(tmp_path: Path, journal_path: Path) -> None:
    """The sink follows a journal a `walkbook run` writes, is SIGKILLed once it has delivered
    an alert of that run, and is restarted from its cursor file after more was written.

    With C the cursor the kill left: every alert of an event at seq <= C was delivered
    exactly once, before the kill. Before the kill at most one alert of an event after C was
    delivered: the one in flight, delivered but its cursor not yet written; if so, it is the
    last line delivered before the kill and the first after the restart, the only line
    delivered twice. Taking that one repeat out, the alerts delivered, in order, are exactly
    those an uninterrupted pass over the final journal delivers."""
    trade_in_process(journal_path, "day-1")
    alerts = tmp_path / "alerts"
    with Journal.open_readonly(journal_path) as journal:
        day_1_end = journal.last_seq
    sink = start_sink(tmp_path, journal_path)
    wait_for(lambda: len(delivered(alerts)) >= 1, sink)
    run = start_run(tmp_path, journal_path, "day-2")
    wait_for(lambda: any(seq > day_1_end for seq, _ in delivered(alerts)), sink)
    sink.send_signal(signal.SIGKILL)
    sink.wait(timeout=WAITING)
    finish(run)
    before, cursor = delivered(alerts), alert_sink.read_cursor(tmp_path / "cursor")
    trade_in_process(journal_path, "day-3")  # written while the sink is down

    restarted = start_sink(tmp_path, journal_path, "--until-idle", "0")
    _, stderr = restarted.communicate(timeout=WAITING)
    assert restarted.returncode == 0, stderr
    after = delivered(alerts)[len(before) :]

    reference_dir = tmp_path / "uninterrupted"
    reference_dir.mkdir()
    alert_sink.follow_alerts(
        journal_path, reference_dir / "cursor", reference_dir / "alerts", THRESHOLD, 0
    )
    uninterrupted = delivered(reference_dir / "alerts")
    failed = [alert for _, alert in uninterrupted if alert.startswith("FAILED")]
    assert sum("invalid_intent: order 3 (ZZZZ buy 1): unknown symbol" in a for a in failed) == 3
    assert sum("below_min_notional: order 2 (TSLA buy 0.001): worth" in a for a in failed) == 3
    fills = [alert for _, alert in uninterrupted if alert.startswith("FILL")]
    assert len(failed) + len(fills) == len(uninterrupted)
    assert len(fills) >= 3
    assert all(alert.startswith("FILL AAPL buy ") for alert in fills)  # MSFT's are worth less

    assert all(seq > cursor for seq, _ in after)
    in_flight = [alert for alert in before if alert[0] > cursor]
    assert len(in_flight) <= 1
    assert all(seq <= cursor for seq, _ in before[: len(before) - len(in_flight)])
    if in_flight:
        assert after[0] == in_flight[0] == before[-1]
        after = after[1:]
    assert before + after == uninterrupted
    assert any(seq > day_1_end for seq, _ in before)  # killed after delivering day-2 alerts
    assert after  # and it had more to deliver: day 3's at least
    assert alert_sink.read_cursor(tmp_path / "cursor") == alert_sink.read_cursor(
        reference_dir / "cursor"
    )
