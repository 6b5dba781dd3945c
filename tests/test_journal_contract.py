"""One journal contract, two stores: every test here runs against a SQLite file and a
PostgreSQL database (a throwaway cluster on 127.0.0.1, a fresh database per test).

The contract is the recorder seam's (journal/recorder.py): the same events and hash
chain, seqs that follow the stored end or are refused, (order_id, order_seq) unique by the
database, events the database refuses to change, and the projection committed with its
event or not at all.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine import audit
from journal import (
    ORDER_COLUMNS,
    Event,
    Journal,
    JournalCorrupt,
    JournalLocked,
    JournalSchemaTooNew,
    JournalUnavailable,
    JournalWriteConflict,
    NewEvent,
    decode_json,
    first_chain_break,
)
from journal.trust import check_before_acting

AT = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
STORES = ["sqlite", "postgresql"]


def projection(order_id: str, plan_id: str = "plan-1", **changes: Any) -> dict[str, Any]:
    """A complete `orders` row (last_seq is the journal's to fill in)."""
    row: dict[str, Any] = dict.fromkeys(ORDER_COLUMNS)
    row.update(order_id=order_id, plan_id=plan_id, symbol="AAPL", side="buy",
               close_type="none", urgency="medium", quantity="10", state="PENDING",
               filled_qty="0", notional="0", steps_used=0, created_at=AT.isoformat(),
               updated_at=AT.isoformat(), last_seq=0)  # fmt: skip
    row.update(changes)
    return row


def walk(journal: Journal) -> None:
    """Two plans' orders created, moved, one filled, with an order-less event between,
    data holding what canonical JSON must keep exactly (Unicode, nesting, big numbers)."""
    journal.append_many(
        [(NewEvent("created", f"o{i}", "plan-1", data={"i": i}), projection(f"o{i}"))
         for i in range(3)],
        at=AT,
    )  # fmt: skip
    journal.append(NewEvent("note", data={"text": "ü € 😀", "n": [1, 2.5, None]}), at=AT)
    for step in range(1, 4):
        for i in range(3):
            at = AT + timedelta(seconds=step * 10 + i)
            state = f"LIMIT_STEP_{step}"
            journal.append(
                NewEvent("transition", f"o{i}", "plan-1", "PENDING", state,
                         data={"limit_price": f"100.{step}{i}", "big": 10**30}),
                at=at,
                projection=projection(f"o{i}", state=state, steps_used=step,
                                      updated_at=at.isoformat()),
            )  # fmt: skip
    journal.append(
        NewEvent("created", "p0", "plan-2", data={"nested": {"b": 1, "a": [True]}}),
        at=AT + timedelta(minutes=2),
        projection=projection("p0", "plan-2", created_at=(AT + timedelta(minutes=2)).isoformat()),
    )
    journal.append(
        NewEvent("transition", "o1", "plan-1", "LIMIT_STEP_3", "VALIDATED", data={"fill": "10"}),
        at=AT + timedelta(minutes=3),
        projection=projection(
            "o1", state="VALIDATED", filled_qty="10", avg_price="100.31", steps_used=3
        ),
    )


@pytest.fixture(params=STORES)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a fresh journal goes: a file, or a new database of the session's cluster."""
    if request.param == "sqlite":
        return tmp_path / "journal.db"
    cluster = request.getfixturevalue("postgres")
    url: str = cluster.fresh_database()
    return url


@pytest.fixture
def journal(location: str | Path) -> Iterator[Journal]:
    with Journal.open(location) as opened:
        yield opened


def raw_execute(location: str | Path, statement: str, params: list[Any] | None = None) -> None:
    """Run one statement through the database's own driver, bypassing walkbook entirely
    (`?` placeholders, as SQLite writes them)."""
    if isinstance(location, Path):
        conn = sqlite3.connect(location, isolation_level=None)
        try:
            conn.execute(statement, params or [])
        finally:
            conn.close()
        return
    with psycopg.connect(location, autocommit=True) as pg:
        pg.execute(statement.replace("?", "%s"), params or [])


def refused(location: str | Path) -> tuple[type[Exception], ...]:
    return (sqlite3.DatabaseError,) if isinstance(location, Path) else (psycopg.Error,)


def contents(journal: Journal) -> tuple[list[Event], list[Any], list[dict[str, Any]]]:
    """Everything a reader gets: events, order history, orders."""
    return list(journal.events()), list(journal.order_history()), journal.orders()


def test_append_and_read_round_trip(location: str | Path) -> None:
    """What was appended reads back the same through every reading method, reopened."""
    with Journal.open(location) as journal:
        walk(journal)
        written = contents(journal)
        last = journal.last_seq
    with Journal.open_readonly(location) as reader:
        assert contents(reader) == written
        assert reader.last_seq == last == 15
        assert [e.seq for e in reader.events()] == list(range(1, 16))
        assert [e.seq for e in reader.events(after_seq=10)] == list(range(11, 16))
        assert [e.order_seq for e in reader.events(order_id="o1")] == [1, 2, 3, 4, 5]
        assert {e.plan_id for e in reader.events(plan_id="plan-2")} == {"plan-2"}
        assert reader.events(order_id="o0").__next__().data == {"i": 0}
        assert [r["order_id"] for r in reader.orders()] == ["o0", "o1", "o2", "p0"]
        assert [r["order_id"] for r in reader.orders(plan_id="plan-2")] == ["p0"]
        in_flight = reader.orders(unless_state=("VALIDATED",))
        assert [r["order_id"] for r in in_flight] == ["o0", "o2", "p0"]
        assert {r[1] for r in reader.order_history(unless_state=("VALIDATED",))} == {
            "o0", "o2", "p0"
        }  # fmt: skip
        order = reader.order("o1")
        assert order is not None
        assert (order["state"], order["last_seq"], order["steps_used"]) == ("VALIDATED", 15, 3)
        first = reader.first_event_of_plan("plan-2")
        assert first is not None
        assert first.order_id == "p0"
        assert reader.first_event_of_plan("nope") is None
        assert reader.last_at() == AT + timedelta(minutes=3)
        assert reader.verify_chain() is None
        owner = reader.owner()
        assert owner is not None
        assert isinstance(owner["pid"], int)


def test_a_second_writer_is_refused_while_the_first_owns_the_journal(journal: Journal) -> None:
    """One owner at a time: a second writer is refused, naming this process; a reader
    sees who holds it."""
    location = journal.location
    with pytest.raises(JournalLocked, match=r"pid \d+ on "):
        Journal.open(location)
    with Journal.open_readonly(location) as reader:
        assert reader.holder() == f"pid {reader.owner()['pid']} on {reader.owner()['host']}"  # type: ignore[index]
    journal.close()
    with Journal.open_readonly(location) as reader:
        assert reader.holder() is None


def test_a_stale_writer_is_refused_a_gap_or_a_fork(location: str | Path) -> None:
    """A writer whose idea of the end is behind collides with a stored seq; one whose idea
    is ahead would leave a gap: both refused inside the transaction, nothing stored."""
    with Journal.open(location, lock=False) as first, Journal.open(location, lock=False) as stale:
        first.append(NewEvent("note"), at=AT)
        first.append(NewEvent("note"), at=AT)
        with pytest.raises(JournalWriteConflict):
            stale.append(NewEvent("note"), at=AT)  # seq 1 again
        stale._last_seq, stale._last_hash = 5, first._last_hash
        with pytest.raises(JournalWriteConflict, match="gap"):
            stale.append(NewEvent("note"), at=AT)  # seq 6 after 2
        stale._last_seq, stale._last_hash = 2, "0" * 64
        with pytest.raises(JournalWriteConflict, match="does not link"):
            stale.append(NewEvent("note"), at=AT)  # seq 3 onto another seq 2
        assert [e.seq for e in first.events()] == [1, 2]
        assert first.verify_chain() is None


def test_a_duplicate_order_seq_is_refused_by_the_database(
    journal: Journal, location: str | Path
) -> None:
    """UNIQUE (order_id, order_seq): at the recorder seam and through raw SQL."""
    stored = journal.append(NewEvent("created", "o1"), at=AT)
    duplicate = (2, "o1", 1, None, stored.at, "again", None, None, "{}", stored.hash, "h")
    with pytest.raises(JournalWriteConflict):
        journal.recorder.insert([duplicate], [], None)
    with pytest.raises(refused(location)):
        raw_execute(location, "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    list(duplicate))  # fmt: skip
    assert [e.seq for e in journal.events()] == [1]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET data = '{\"i\":99}' WHERE seq = 2",
        "UPDATE events SET hash = 'x'",
        "DELETE FROM events WHERE seq = 3",
        "DELETE FROM events",
    ],
)
def test_events_are_append_only_in_the_database(
    journal: Journal, location: str | Path, statement: str
) -> None:
    """The database itself refuses to change or remove an event, from any connection."""
    walk(journal)
    before = list(journal.events())
    with pytest.raises(refused(location), match="append-only"):
        raw_execute(location, statement)
    assert list(journal.events()) == before
    assert journal.recorder.missing_guards() == []


def test_a_removed_guard_is_noticed_before_acting(journal: Journal, location: str | Path) -> None:
    """Dropping the update trigger (to edit history) is found before a writer acts."""
    walk(journal)
    check_before_acting(journal)
    trigger = "events_refuse_update"
    on_table = "" if isinstance(location, Path) else " ON events"
    raw_execute(location, f"DROP TRIGGER {trigger}{on_table}")
    assert journal.recorder.missing_guards() == [trigger]
    with pytest.raises(JournalCorrupt, match=trigger):
        check_before_acting(journal)


def test_a_migration_this_walkbook_does_not_know_is_refused_by_name(
    location: str | Path,
) -> None:
    """A journal a newer walkbook migrated, its schema version unchanged (a migration need
    not change it): a writer's and a reader's open refuse it, naming the migration, and
    nothing is written."""
    with Journal.open(location) as journal:
        walk(journal)
        written = contents(journal)
    if isinstance(location, Path):
        record = "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)"
        raw_execute(location, record, ["walkbook", "0099_from_the_future", AT.isoformat()])
    else:
        record = "INSERT INTO walkbook_migrations (name, applied_at) VALUES (?, ?)"
        raw_execute(location, record, ["0099_from_the_future", AT.isoformat()])
    newer = "journal holds migrations a newer walkbook applied: 0099_from_the_future$"
    with pytest.raises(JournalSchemaTooNew, match=newer):
        Journal.open(location)
    with pytest.raises(JournalSchemaTooNew, match=newer):
        Journal.open_readonly(location)
    table = "_sqlite_migrations" if isinstance(location, Path) else "walkbook_migrations"
    raw_execute(location, f"DELETE FROM {table} WHERE name = ?", ["0099_from_the_future"])
    with Journal.open_readonly(location) as journal:
        assert contents(journal) == written


def test_a_failed_append_leaves_neither_event_nor_projection(journal: Journal) -> None:
    """The projection is in its event's transaction: a projection row the database refuses
    (no symbol) takes its event, and the other events of the commit, with it."""
    journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
    items = [
        (NewEvent("transition", "o1", to_state="QUOTED"), projection("o1", state="QUOTED")),
        (NewEvent("created", "o2"), projection("o2", symbol=None)),
    ]
    with pytest.raises(JournalWriteConflict):
        journal.append_many(items, at=AT)
    assert [e.seq for e in journal.events()] == [1]
    assert [(r["order_id"], r["state"], r["last_seq"]) for r in journal.orders()] == [
        ("o1", "PENDING", 1)
    ]
    again = journal.append(NewEvent("created", "o2"), at=AT, projection=projection("o2"))
    assert (again.seq, again.order_seq) == (2, 1)
    assert journal.verify_chain() is None


def test_take_meta_removes_exactly_the_keys_of_its_prefix(journal: Journal) -> None:
    """Halt requests are meta keys taken by prefix; `_` in it is a character, not a LIKE
    wildcard, and a take leaves nothing for the next one."""
    recorder = journal.recorder
    recorder.set_meta({"halt_request:1-a": "one", "halt_request:2-b": "two", "haltXrequest:3": "x"})
    assert sorted(recorder.take_meta("halt_request:")) == ["one", "two"]
    assert recorder.take_meta("halt_request:") == []
    assert recorder.meta(["haltXrequest:3", "halt_request:1-a"]) == {"haltXrequest:3": "x"}


def test_follow_yields_every_event_in_order(journal: Journal) -> None:
    """A follower reads the same events, in batches, and stops when idle."""
    walk(journal)
    followed = list(journal.follow(0, until_idle=0))
    assert followed == list(journal.events())
    assert list(journal.follow(12, until_idle=0)) == list(journal.events(after_seq=12))


def test_both_stores_hold_the_same_chain(postgres: Any, tmp_path: Path) -> None:
    """The same events in a file and in a database: byte-identical exports, the same
    hashes, the same orders and histories; each export's chain verifies on its own."""
    exported, read = [], []
    for location in (tmp_path / "journal.db", postgres.fresh_database()):
        with Journal.open(location) as journal:
            walk(journal)
        out = io.StringIO()
        assert audit.export(location, "jsonl", out=out) == 15
        exported.append(out.getvalue())
        with Journal.open_readonly(location) as reader:
            read.append(contents(reader))
    assert exported[0] == exported[1]
    assert read[0] == read[1]
    rows = [decode_json(line) for line in exported[0].splitlines()]
    assert first_chain_break(rows) is None


def test_an_unreachable_or_empty_database_is_refused(postgres: Any) -> None:
    """A server nobody listens on, a database that does not exist, and a database holding
    no journal: typed errors in one line, the password never shown."""
    with pytest.raises(JournalUnavailable, match="cannot open journal") as closed:
        Journal.open_readonly("postgresql://walkbook:secret@127.0.0.1:1/journal")
    assert "secret" not in str(closed.value)
    assert "\n" not in str(closed.value)
    with pytest.raises(JournalUnavailable, match="does not exist"):
        Journal.open(postgres.url("no_such_database"))
    with pytest.raises(JournalCorrupt, match="no walkbook journal"):
        Journal.open_readonly(postgres.fresh_database())


def test_the_audit_reads_agree_in_both_stores(
    location: str | Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What verify and replay read of one snapshot (a database's in pages of two rows, so
    every paged read crosses a page's end): events, the replay's pass, orders rows and
    their claims."""
    monkeypatch.setattr("journal.postgres._BATCH_ROWS", 2)
    with Journal.open(location) as journal:
        walk(journal)
    with Journal.open_readonly(location) as reader:
        recorder = reader.recorder
        recorder.begin_snapshot()
        rows = [tuple(r) for batch in recorder.event_batches(0, 15) for r in batch]
        assert [Event.from_values(row) for row in rows] == list(reader.events())
        assert [r[0] for batch in recorder.event_batches(3, 7) for r in batch] == [4, 5, 6, 7]
        passed = [tuple(r) for b in recorder.fold_batches(0, 15, ["LIMIT_STEP_3"]) for r in b]
        assert [row[:9] for row in passed] == [
            (*row[:3], row[3] if row[2] == 1 else None, *row[4:9]) for row in rows
        ]
        # o1 reaches LIMIT_STEP_3 at seq 12 (its 4th event) and goes on once; o0 and o2 end there
        ends = {row[0]: row[9] for row in passed if row[9] is not None}
        assert ends == {11: 0, 12: 1, 13: 0}
        assert [r[9] for b in recorder.fold_batches(0, 12, ["LIMIT_STEP_3"]) for r in b][11] == 0
        assert recorder.order_ids_of_kind("created") == ["o0", "o1", "o2", "p0"]
        assert recorder.order_ids_of_kind("created", plan_id="plan-2") == ["p0"]
        assert recorder.order_ids_of_kind("created", order_id="o2") == ["o2"]
        # by the events alone: o1 is VALIDATED; o0 and o2 only stepped, p0 is new
        assert recorder.unfinished_order_ids(["VALIDATED", "FAILED"]) == {"o0", "o2", "p0"}
        assert recorder.unfinished_order_ids(["LIMIT_STEP_3"]) == {"p0"}
        assert [r[0] for r in recorder.order_event_rows("o1")] == [2, 6, 9, 12, 15]
        assert recorder.order_event_count("o1", 10) == 3
        assert list(recorder.row_claims()) == [("o0", 11), ("o2", 13), ("p0", 14), ("o1", 15)]
        stored = [tuple(r) for r in recorder.stored_rows()]
        assert [r[:2] for r in stored] == [("o0", 11), ("o1", 15), ("o2", 13), ("p0", 14)]
        o1 = reader.order("o1")
        assert o1 is not None
        assert stored[1][2:] == tuple(o1[c] for c in ORDER_COLUMNS)
        assert tuple(recorder.stored_row("o1") or ()) == stored[1]
        assert recorder.stored_row("nope") is None
        recorder.end_snapshot()
