"""The journal on real SQLite files: append, hash chain, append-only triggers, lock, refusals."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import journal.schema as schema_module
from engine import parse_plan
from engine.order import OrderRecord, fold_orders
from journal import (
    GENESIS_HASH,
    ORDER_COLUMNS,
    SCHEMA_VERSION,
    ChainBreak,
    Journal,
    JournalCorrupt,
    JournalLocked,
    JournalSchemaTooNew,
    JournalUnavailable,
    JournalWriteConflict,
    NewEvent,
    canonical_json,
    chain_links,
    decode_canonical,
    decode_json,
    first_chain_break,
)
from journal.sqlite import SqliteRecorder

REPO_ROOT = Path(__file__).resolve().parent.parent
AT = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
EVENT_COLUMNS = (
    "seq, order_id, order_seq, plan_id, at, kind, from_state, to_state, data, prev_hash, hash"
)


def projection(order_id: str, **changes: Any) -> dict[str, Any]:
    """A complete `orders` row for `order_id` (last_seq is filled in by the journal)."""
    row: dict[str, Any] = {
        "order_id": order_id,
        "plan_id": "plan-1",
        "symbol": "AAPL",
        "side": "buy",
        "close_type": "none",
        "urgency": "medium",
        "quantity": "10",
        "correlation_id": None,
        "strategy_id": None,
        "state": "PENDING",
        "reason": None,
        "filled_qty": "0",
        "notional": "0",
        "avg_price": None,
        "live_broker_order_id": None,
        "live_client_order_id": None,
        "steps_used": 0,
        "created_at": AT.isoformat(),
        "updated_at": AT.isoformat(),
        "last_seq": 0,
    }
    row.update(changes)
    assert set(row) == set(ORDER_COLUMNS)
    return row


def sample_events(n: int) -> list[NewEvent]:
    """`n` events spread over two orders plus one order-less event."""
    events = []
    for i in range(n):
        order_id = None if i == 2 else f"o{i % 2}"
        events.append(NewEvent("fact", order_id, "plan-1", data={"i": i, "note": f"event {i}"}))
    return events


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to the journal file, bypassing the Journal class."""
    return sqlite3.connect(path, isolation_level=None)


def rows_of(path: Path) -> list[dict[str, Any]]:
    """Every events row of the file, in seq order, as dicts."""
    conn = raw(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq")]
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where a test's journal file lives."""
    return tmp_path / "journal.db"


@pytest.fixture
def filled(path: Path) -> Path:
    """A closed journal file holding five chained events."""
    with Journal.open(path) as journal:
        for event in sample_events(5):
            journal.append(event, at=AT)
    return path


# -- appending and the chain ------------------------------------------------------------------


def test_append_assigns_seq_and_chains(path: Path) -> None:
    """Appends get seq 1..n, each prev_hash is the previous hash, and the chain verifies."""
    with Journal.open(path) as journal:
        stored = [
            journal.append(e, at=AT + timedelta(seconds=i)) for i, e in enumerate(sample_events(6))
        ]
        assert [e.seq for e in stored] == [1, 2, 3, 4, 5, 6]
        assert stored[0].prev_hash == GENESIS_HASH
        for before, after in itertools.pairwise(stored):
            assert after.prev_hash == before.hash
        assert len({e.hash for e in stored}) == 6
        assert journal.last_seq == 6
        assert journal.verify_chain() is None
        assert list(journal.events()) == stored
    assert first_chain_break(rows_of(path)) is None


def test_order_seq_counts_per_order_and_survives_reopen(path: Path) -> None:
    """order_seq is 1, 2, ... per order (None without one) and continues after a reopen."""
    with Journal.open(path) as journal:
        stored = [journal.append(e, at=AT) for e in sample_events(5)]
    assert [(e.order_id, e.order_seq) for e in stored] == [
        ("o0", 1), ("o1", 1), (None, None), ("o1", 2), ("o0", 2),
    ]  # fmt: skip
    with Journal.open(path) as journal:
        more = journal.append_many(
            [(NewEvent("fact", "o1"), None), (NewEvent("fact", "o1"), None)], at=AT
        )
        assert [(e.seq, e.order_seq) for e in more] == [(6, 3), (7, 4)]
        assert more[0].prev_hash == stored[-1].hash
        assert journal.verify_chain() is None


def test_a_long_lived_writer_keeps_a_bounded_order_seq_memory(path: Path) -> None:
    """A writer remembers the last order_seq of its most recent orders only; an order it
    forgot continues at the right order_seq, read again from the per-order index."""
    with Journal.open(path) as journal:
        journal.order_seqs_kept = 2
        for order_id in ("o1", "o2", "o3", "o1", "o4", "o5"):
            journal.append(NewEvent("fact", order_id), at=AT)
        assert list(journal._order_seqs) == ["o4", "o5"]
        again = [journal.append(NewEvent("fact", o), at=AT) for o in ("o1", "o2", "o5")]
        assert [(e.order_id, e.order_seq) for e in again] == [("o1", 3), ("o2", 2), ("o5", 2)]
        assert len(journal._order_seqs) == 2
        assert journal.verify_chain() is None


def test_stored_event_round_trips(path: Path) -> None:
    """What events() returns is exactly what was appended, with the time in UTC ISO form."""
    data = {"price": "100.08", "nested": {"b": [1, 2, None], "a": "ü"}, "flag": True}
    at = datetime(2026, 11, 23, 9, 30, tzinfo=UTC).astimezone()
    with Journal.open(path) as journal:
        event = journal.append(
            NewEvent("transition", "o1", "p1", "PENDING", "QUOTED", data=data), at=at
        )
        (read,) = list(journal.events(order_id="o1"))
    assert read == event
    assert (read.kind, read.order_id, read.plan_id) == ("transition", "o1", "p1")
    assert (read.from_state, read.to_state) == ("PENDING", "QUOTED")
    assert read.data == data
    assert read.at == "2026-11-23T09:30:00+00:00"
    assert read.at_datetime == at


def test_events_filters(filled: Path) -> None:
    """events() filters by order_id, plan_id and after_seq, always in seq order."""
    journal = Journal.open_readonly(filled)
    try:
        assert [e.seq for e in journal.events(order_id="o0")] == [1, 5]
        assert [e.seq for e in journal.events(order_id="o1")] == [2, 4]
        assert [e.seq for e in journal.events(plan_id="plan-1", after_seq=3)] == [4, 5]
        assert list(journal.events(plan_id="other")) == []
    finally:
        journal.close()


@settings(max_examples=40, deadline=None)
@given(
    owners=st.lists(st.integers(0, 5) | st.none(), min_size=1, max_size=30),
    states=st.lists(st.sampled_from(["QUOTED", "VALIDATED", "FAILED"]), min_size=6, max_size=6),
    plan_id=st.sampled_from([None, "plan-0", "plan-1", "plan-9"]),
)
def test_order_history_is_the_matching_orders_events_in_seq_order(
    owners: list[int | None], states: list[str], plan_id: str | None
) -> None:
    """order_history gives exactly the events of the orders whose row matches (by plan and
    not in a skipped state), in seq order, with their data decoded; orders interleave and
    order-less events fall in between."""
    with (
        tempfile.TemporaryDirectory() as directory,
        Journal.open(Path(directory) / "journal.db") as journal,
    ):
        for index, owner in enumerate(owners):
            order_id = None if owner is None else f"o{owner}"
            plan = None if owner is None else f"plan-{owner % 2}"
            row = None
            if owner is not None:
                row = projection(f"o{owner}", plan_id=plan, state=states[owner])
            event = NewEvent("fact", order_id, plan, data={"i": index, "of": [owner]})
            journal.append(event, at=AT, projection=row)
        skipped = ("VALIDATED", "FAILED")
        kept = {
            row["order_id"]
            for row in journal.orders(plan_id=plan_id)
            if row["state"] not in skipped
        }
        expected = [
            (e.seq, e.order_id, e.plan_id, e.at, e.kind, e.to_state, e.data)
            for e in journal.events()
            if e.order_id in kept
        ]
        assert list(journal.order_history(plan_id=plan_id, unless_state=skipped)) == expected
        every = [e.seq for e in journal.events() if e.order_id is not None]
        assert [row[0] for row in journal.order_history()] == every


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    datas=st.lists(
        st.dictionaries(st.text(max_size=6), json_values, max_size=4), min_size=1, max_size=6
    ),
    victim=st.integers(0, 100),
    column=st.sampled_from(["order_id", "plan_id", "at", "kind", "to_state", "data", "order_seq"]),
)
def test_any_single_edit_breaks_the_chain_at_that_row(
    datas: list[dict[str, Any]], victim: int, column: str
) -> None:
    """For any JSON data the chain verifies; editing one field of one row is reported at its seq."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        Journal.open(Path(tmp) / "j.db", synchronous="NORMAL") as journal,
    ):
        stored = journal.append_many(
            [(NewEvent("fact", "o1", "p1", data=d), None) for d in datas], at=AT
        )
        assert [e.data for e in journal.events()] == datas
        cursor = journal.conn.cursor()
        cursor.row_factory = sqlite3.Row
        rows = [dict(r) for r in cursor.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq")]
    assert [e.seq for e in stored] == list(range(1, len(datas) + 1))
    assert first_chain_break(rows) is None
    index = victim % len(rows)
    edited = dict(rows[index])
    original = edited[column]
    if column == "data":
        edited[column] = json.dumps({"tampered": json.loads(original)})
    elif column == "order_seq":
        edited[column] = original + 1000
    else:
        edited[column] = f"{original}x"
    rows[index] = edited
    found = first_chain_break(rows)
    assert found is not None
    assert found.seq == index + 1
    # the batch form every chain check runs: rows before the edit are links, then that problem
    stored_rows = [tuple(row[name] for name in EVENT_COLUMNS.split(", ")) for row in rows]
    assert chain_links(stored_rows, 1, GENESIS_HASH) == (index, (found.seq, found.problem))
    assert chain_links(stored_rows[:index], 1, GENESIS_HASH) == (index, None)


def test_verify_chain_reports_an_edited_row(filled: Path) -> None:
    """After dropping the UPDATE trigger and editing row 3's data, verify_chain reports seq 3."""
    conn = raw(filled)
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("""UPDATE events SET data = '{"i":99}' WHERE seq = 3""")
    conn.close()
    journal = Journal.open_readonly(filled)
    try:
        broken = journal.verify_chain()
    finally:
        journal.close()
    assert isinstance(broken, ChainBreak)
    assert broken.seq == 3
    assert "hash" in broken.problem
    assert first_chain_break(rows_of(filled)) == broken


def test_rehashing_an_edited_row_moves_the_break_to_the_next(filled: Path) -> None:
    """Recomputing the edited row's own hash does not hide it: the next row's prev_hash breaks."""
    from journal import event_hash

    conn = raw(filled)
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("""UPDATE events SET data = '{"i":99}' WHERE seq = 2""")
    row = next(r for r in rows_of(filled) if r["seq"] == 2)
    conn.execute("UPDATE events SET hash = ? WHERE seq = 2", [event_hash(row)])
    conn.close()
    broken = first_chain_break(rows_of(filled))
    assert broken is not None
    assert broken.seq == 3
    assert "prev_hash" in broken.problem


def test_verify_chain_reports_a_deleted_row(filled: Path) -> None:
    """After dropping the DELETE trigger and deleting seq 4, verify_chain reports the gap at 4."""
    conn = raw(filled)
    conn.execute("DROP TRIGGER events_refuse_delete")
    conn.execute("DELETE FROM events WHERE seq = 4")
    conn.close()
    with Journal.open(filled) as journal:
        broken = journal.verify_chain()
    assert broken is not None
    assert broken.seq == 4
    assert "missing" in broken.problem


# -- the file and its settings ----------------------------------------------------------------


def test_file_is_private(path: Path) -> None:
    """The journal, its WAL and its lock file are created readable by the owner only (0600)."""
    with Journal.open(path) as journal:
        journal.append(NewEvent("fact"), at=AT)
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + ".lock")):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_wal_and_synchronous_full_by_default(path: Path) -> None:
    """The journal runs in WAL mode with synchronous=FULL (2) unless told otherwise."""
    with Journal.open(path) as journal:
        assert journal.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert journal.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert journal.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    conn = raw(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_synchronous_normal_when_asked(path: Path) -> None:
    """synchronous='NORMAL' sets PRAGMA synchronous to 1."""
    with Journal.open(path, synchronous="NORMAL") as journal:
        assert journal.conn.execute("PRAGMA synchronous").fetchone()[0] == 1


# -- append-only at the database ---------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET kind = 'forged' WHERE seq = 2",
        "UPDATE events SET data = '{}'",
        "DELETE FROM events WHERE seq = 5",
        "DELETE FROM events",
    ],
)
def test_database_refuses_update_and_delete(filled: Path, statement: str) -> None:
    """The events table's triggers refuse UPDATE and DELETE from any connection."""
    before = rows_of(filled)
    conn = raw(filled)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    finally:
        conn.close()
    assert rows_of(filled) == before


def test_database_refuses_duplicate_order_seq(filled: Path) -> None:
    """A second row with an existing (order_id, order_seq) is refused by a UNIQUE constraint."""
    first = rows_of(filled)[0]
    conn = raw(filled)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(
                f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [100, first["order_id"], first["order_seq"], None, first["at"], "dup", None, None,
                 "{}", first["hash"], "f" * 64],
            )  # fmt: skip
    finally:
        conn.close()
    assert len(rows_of(filled)) == 5


def test_stale_second_writer_is_refused(path: Path) -> None:
    """Two unlocked writers: the one with a stale view gets JournalWriteConflict, nothing stored."""
    first = Journal.open(path, lock=False)
    second = Journal.open(path, lock=False)
    try:
        first.append(NewEvent("fact", "o1"), at=AT)
        with pytest.raises(JournalWriteConflict):
            second.append(NewEvent("forged", "o2"), at=AT)
        assert second.last_seq == 0
        assert [e.kind for e in first.events()] == ["fact"]
        assert first.verify_chain() is None
    finally:
        first.close()
        second.close()


# -- atomicity and the projection -------------------------------------------------------------


def test_projection_is_written_with_its_event(path: Path) -> None:
    """After an append with a projection, the orders row exists with last_seq == the event's seq."""
    with Journal.open(path) as journal:
        journal.append(NewEvent("fact"), at=AT)
        created = journal.append(
            NewEvent("created", "o1", "plan-1"), at=AT, projection=projection("o1")
        )
        row = journal.order("o1")
        assert row == projection("o1", last_seq=created.seq)
        moved = journal.append(
            NewEvent("transition", "o1", "plan-1", "PENDING", "QUOTED"),
            at=AT,
            projection=projection("o1", state="QUOTED"),
        )
        assert journal.order("o1") == projection("o1", state="QUOTED", last_seq=moved.seq)
        assert journal.orders(plan_id="plan-1") == [journal.order("o1")]
        assert journal.orders(plan_id="other") == []
    conn = raw(path)
    assert conn.execute("SELECT state, last_seq FROM orders").fetchall() == [("QUOTED", 3)]
    conn.close()


def test_append_many_is_all_or_nothing(path: Path) -> None:
    """A batch whose last projection lacks a column stores nothing; later appends chain on."""
    with Journal.open(path) as journal:
        first = journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
        bad = projection("o2")
        del bad["symbol"]
        with pytest.raises(KeyError, match="symbol"):
            journal.append_many(
                [
                    (NewEvent("fact", "o1"), projection("o1", state="QUOTED")),
                    (NewEvent("created", "o2"), bad),
                ],
                at=AT,
            )
        assert journal.last_seq == 1
        assert [e.seq for e in journal.events()] == [1]
        assert journal.order("o1") == projection("o1", last_seq=1)
        assert journal.order("o2") is None
        later = journal.append(NewEvent("fact", "o1"), at=AT)
        assert (later.seq, later.order_seq, later.prev_hash) == (2, 2, first.hash)
        assert journal.verify_chain() is None
    assert first_chain_break(rows_of(path)) is None


# -- opening: refusals and the lock ------------------------------------------------------------


HOLDER = """
import sys, time
from journal import Journal
journal = Journal.open(sys.argv[1])
print("ready", flush=True)
time.sleep(120)
"""


@dataclass
class Holder:
    """A real other process that has the journal open for writing."""

    process: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
def holder(filled: Path) -> Iterator[Holder]:
    """Start a subprocess that opens `filled` as writer and waits; kill it at teardown."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(filled)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"holder did not start: {line!r} {err}")
        yield Holder(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_second_writer_is_refused_naming_the_holder(filled: Path, holder: Holder) -> None:
    """Journal.open while another process holds it raises JournalLocked naming that pid."""
    with pytest.raises(JournalLocked) as info:
        Journal.open(filled)
    assert f"journal is in use by pid {holder.pid} " in str(info.value)
    with pytest.raises(JournalLocked):
        Journal.open(filled)


def test_readonly_open_works_while_locked(filled: Path, holder: Holder) -> None:
    """open_readonly reads events and the owner record while a writer holds the lock."""
    journal = Journal.open_readonly(filled)
    try:
        assert [e.seq for e in journal.events()] == [1, 2, 3, 4, 5]
        assert journal.verify_chain() is None
        owner = journal.owner()
        assert owner is not None
        assert owner["pid"] == holder.pid
    finally:
        journal.close()


def test_lock_is_freed_when_the_holder_is_killed(filled: Path, holder: Holder) -> None:
    """After SIGKILL of the holder, Journal.open succeeds and records this process as owner."""
    with pytest.raises(JournalLocked):
        Journal.open(filled)
    holder.process.send_signal(signal.SIGKILL)
    assert holder.process.wait() == -signal.SIGKILL
    with Journal.open(filled) as journal:
        assert journal.owner()["pid"] == os.getpid()  # type: ignore[index]
        event = journal.append(NewEvent("resumed"), at=AT)
        assert event.seq == 6
        assert journal.verify_chain() is None


def test_lock_is_released_on_close(path: Path) -> None:
    """Closing a writer lets the next writer open the same file."""
    Journal.open(path).close()
    with Journal.open(path) as journal:
        assert journal.last_seq == 0


def test_not_sqlite_is_corrupt(path: Path) -> None:
    """A file of random bytes raises JournalCorrupt for writer and reader, and is not changed."""
    garbage = random.Random(7).randbytes(8192)
    path.write_bytes(garbage)
    with pytest.raises(JournalCorrupt):
        Journal.open(path)
    with pytest.raises(JournalCorrupt):
        Journal.open(path)  # the failed open released its lock
    with pytest.raises(JournalCorrupt):
        Journal.open_readonly(path)
    assert path.read_bytes() == garbage


def make_foreign(path: Path) -> None:
    """A SQLite file that belongs to some other program."""
    conn = raw(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.close()


def test_other_sqlite_file_is_corrupt(path: Path) -> None:
    """A SQLite file with other tables raises JournalCorrupt; its tables are left as they were."""
    make_foreign(path)
    with pytest.raises(JournalCorrupt, match="not a walkbook journal"):
        Journal.open(path)
    with pytest.raises(JournalCorrupt, match="not a walkbook journal"):
        Journal.open_readonly(path)
    conn = raw(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"customers"}


def test_refused_foreign_file_keeps_its_journal_mode(path: Path) -> None:
    """Refusing someone else's SQLite file does not switch it to WAL mode."""
    make_foreign(path)
    with pytest.raises(JournalCorrupt):
        Journal.open(path)
    conn = raw(path)
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert mode == "delete"


def test_newer_schema_is_refused(filled: Path) -> None:
    """meta.schema_version bumped to 99 raises JournalSchemaTooNew for writer and reader."""
    conn = raw(filled)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(JournalSchemaTooNew, match="99"):
        Journal.open(filled)
    with pytest.raises(JournalSchemaTooNew, match="99"):
        Journal.open_readonly(filled)
    assert len(rows_of(filled)) == 5


def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    """A journal path in a directory that does not exist raises JournalUnavailable."""
    target = tmp_path / "no" / "such" / "journal.db"
    with pytest.raises(JournalUnavailable, match="does not exist"):
        Journal.open(target)
    with pytest.raises(JournalUnavailable):
        Journal.open_readonly(target)
    assert not target.parent.exists()


def test_readonly_missing_file_is_unavailable(path: Path) -> None:
    """open_readonly never creates a journal: a missing file raises JournalUnavailable."""
    with pytest.raises(JournalUnavailable, match="does not exist"):
        Journal.open_readonly(path)
    assert not path.exists()


# -- contract: the projection is the replay ----------------------------------------------------


SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "mixed": (
        {"positions": {"TSLA": 10}},
        {
            "plan_id": "mixed",
            "orders": [
                {"symbol": "TSLA", "side": "sell", "quantity": "4"},
                {"symbol": "AAPL", "side": "buy", "quantity": "3"},
                {"symbol": "MSFT", "side": "buy", "quantity": "2", "urgency": "high"},
                {"symbol": "NVDA", "side": "buy", "quantity": "1.5", "urgency": "low"},
            ],
        },
    ),
    "full_close": (
        {"positions": {"TSLA": 10, "AMD": 7}},
        {
            "plan_id": "close",
            "orders": [
                {"symbol": "TSLA", "side": "sell", "quantity": "1", "close_type": "full"},
                {"symbol": "AMD", "side": "sell", "quantity": "3", "close_type": "partial"},
            ],
        },
    ),
    "rough_market": (
        {
            "seed": 11,
            "positions": {"TSLA": 10},
            "reject_probability": 0.2,
            "submit_timeout_probability": 0.2,
        },
        {
            "plan_id": "rough",
            "orders": [
                {"symbol": "TSLA", "side": "sell", "quantity": "6"},
                {"symbol": "AAPL", "side": "buy", "quantity": "5"},
                {"symbol": "MSFT", "side": "buy", "quantity": "2.5"},
                {"symbol": "AMD", "side": "buy", "quantity": "4", "urgency": "high"},
            ],
        },
    ),
    "market_closed": (
        {"positions": {"TSLA": 10}, "market_open": False},
        {
            "plan_id": "closed",
            "orders": [
                {"symbol": "TSLA", "side": "sell", "quantity": "4"},
                {"symbol": "AAPL", "side": "buy", "quantity": "3"},
            ],
        },
    ),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_projection_equals_replay(make_rig: Any, scenario: str) -> None:
    """After a plan runs, every orders row equals the fold of the events for that order."""
    spec, plan = SCENARIOS[scenario]
    rig = make_rig(**spec)
    result = rig.engine.execute_plan_sync(parse_plan(plan))
    journal = rig.journal
    rows = journal.orders()
    replayed = fold_orders(journal.events())
    assert len(rows) == len(plan["orders"])
    assert {row["order_id"] for row in rows} == set(replayed)
    for row in rows:
        record: OrderRecord = replayed[row["order_id"]]
        assert row == record.projection()
    assert {r.order_id: r.state for r in result.orders} == {
        row["order_id"]: row["state"] for row in rows
    }
    assert all(row["state"] in ("VALIDATED", "FAILED") for row in rows)
    assert journal.verify_chain() is None
    if scenario == "market_closed":
        assert {row["reason"] for row in rows} == {"market_closed"}


REJECTION_RACES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    # market spec, orders: each run has a replace refused while the old order fills completely.
    "seed11": (SCENARIOS["rough_market"][0], SCENARIOS["rough_market"][1]["orders"]),
    "seed12": (
        {"seed": 12, "positions": {"TSLA": 10}, "reject_probability": 0.3},
        [
            {"symbol": "TSLA", "side": "sell", "quantity": "6"},
            {"symbol": "AAPL", "side": "buy", "quantity": "5"},
            {"symbol": "MSFT", "side": "buy", "quantity": "4"},
        ],
    ),
}


@pytest.mark.parametrize("race", sorted(REJECTION_RACES))
def test_fully_filled_order_is_never_failed(make_rig: Any, race: str) -> None:
    """An orders row whose filled_qty equals its quantity never ends in FAILED."""
    spec, orders = REJECTION_RACES[race]
    rig = make_rig(**spec)
    rig.engine.execute_plan_sync(parse_plan({"plan_id": race, "orders": orders}))
    rows = rig.journal.orders()
    assert len(rows) == len(orders)
    misreported = [
        (row["symbol"], row["reason"])
        for row in rows
        if row["state"] == "FAILED" and Decimal(row["filled_qty"]) == Decimal(row["quantity"])
    ]
    assert misreported == []


def test_schema_creation_is_all_or_nothing(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A creation that fails part-way leaves no half-built schema; the next open builds it."""
    monkeypatch.setattr(
        schema_module, "_INITIAL_STATEMENTS", (*schema_module._INITIAL_STATEMENTS, "CREATE oops")
    )
    with pytest.raises(JournalCorrupt):
        Journal.open(path)
    conn = raw(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables <= {"_sqlite_migrations"}
    monkeypatch.undo()
    with Journal.open(path) as journal:
        journal.append(NewEvent("note"), at=AT)
        assert journal.last_seq == 1
        assert journal.verify_chain() is None


# -- schema versions ---------------------------------------------------------------------------


def schema_objects(path: Path) -> dict[str, str]:
    """name -> SQL of every index and trigger in the file (automatic indexes have no SQL)."""
    conn = raw(path)
    try:
        rows = conn.execute(
            "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type IN ('index', 'trigger')"
        )
        return dict(rows.fetchall())
    finally:
        conn.close()


def version_one_journal(path: Path) -> Journal:
    """A writer on a file at schema version 1, exactly as walkbook 1 created it: migration
    0001 only and schema_version 1 (0001 writes the current version, so it is set back)."""
    from sqlite_utils import Database

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    schema_module._migrations().apply(Database(conn), stop_before="0002_lean_indexes")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    return Journal(SqliteRecorder(path, conn, None))


def test_version_one_journal_is_migrated_on_open_and_still_verifies(
    path: Path, make_rig: Any
) -> None:
    """A v1 journal with real walks in it: Journal.open rebuilds it at v2 (no UNIQUE hash,
    events_by_plan or orders_by_state; the append-only triggers kept), every row and hash
    unchanged, the chain and the audit's verify still pass, and appends chain on."""
    from engine import Engine, MarketSpec, SimBroker, VirtualClock
    from engine.audit import verify

    old = version_one_journal(path)
    assert {"events_by_plan", "orders_by_state"} <= set(schema_objects(path))
    clock = VirtualClock(AT)
    broker = SimBroker(MarketSpec(seed=5, positions={"TSLA": Decimal(8)}), clock)
    plan = parse_plan(
        {
            "plan_id": "v1-plan",
            "orders": [
                {"symbol": "TSLA", "side": "sell", "quantity": "8", "close_type": "full"},
                {"symbol": "AAPL", "side": "buy", "quantity": "3"},
            ],
        }
    )
    with Engine(broker, old, clock=clock) as engine:
        engine.execute_plan_sync(plan)
    before = rows_of(path)
    assert len(before) > 10
    assert verify(path).ok

    with Journal.open(path) as journal:
        assert journal.conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone() == (str(SCHEMA_VERSION),)
        assert journal.verify_chain() is None
        later = journal.append(NewEvent("note"), at=AT)
        assert later.prev_hash == before[-1]["hash"]
    assert rows_of(path)[:-1] == before
    objects = schema_objects(path)
    assert not {"events_by_plan", "orders_by_state"} & set(objects)
    assert {"events_refuse_update", "events_refuse_delete", "orders_by_plan"} <= set(objects)
    conn = raw(path)
    events_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    applied = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations ORDER BY rowid")]
    conn.close()
    assert "hash TEXT NOT NULL," in events_sql
    assert "UNIQUE (order_id, order_seq)" in events_sql
    assert applied == ["0001_initial", "0002_lean_indexes"]
    result = verify(path)
    assert result.ok, result.summary()
    assert result.events_checked == len(before) + 1
    conn = raw(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = 1")
    finally:
        conn.close()


def test_a_new_journal_is_created_at_the_current_version(path: Path) -> None:
    """A fresh file gets every migration, in order, and the current schema_version."""
    Journal.open(path).close()
    conn = raw(path)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    applied = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations ORDER BY rowid")]
    conn.close()
    assert version == (str(SCHEMA_VERSION),)
    assert applied == list(schema_module.MIGRATION_NAMES)


# -- decoding ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=10,
    ),
    ascii_only=st.booleans(),
)
def test_decode_json_gives_exactly_what_json_loads_gives(value: Any, ascii_only: bool) -> None:
    """Integers of any size, NaN and infinities, escapes: the fast decoder or its fallback
    always returns json.loads's value; decode_canonical refuses what canonical_json cannot
    write."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert repr(decode_json(text)) == repr(json.loads(text))
    try:
        canonical = canonical_json(value)
    except ValueError:  # NaN or an infinity somewhere
        with pytest.raises(ValueError, match="malformed"):
            decode_canonical(text)
    else:
        assert repr(decode_canonical(canonical)) == repr(json.loads(canonical))


@pytest.mark.parametrize("name", [b"a?b#c%20.db", b"\xff\xfe.db", "ü [1].db".encode()])
def test_any_file_name_is_the_journal_s_own(tmp_path: Path, name: bytes) -> None:
    """A `?`, `#` or `%` stays part of the name SQLite opens, and a name that is not UTF-8
    (Linux allows any byte but / and NUL) is written and read under its own bytes: before,
    it was a UnicodeEncodeError after the lock file and an empty file were made."""
    path = tmp_path / os.fsdecode(name)
    with Journal.open(path) as journal:
        for event in sample_events(3):
            journal.append(event, at=AT)
    with Journal.open_readonly(path) as journal:
        assert [event.seq for event in journal.events()] == [1, 2, 3]
        assert journal.verify_chain() is None
    assert name in os.listdir(os.fsencode(tmp_path))
