"""A PostgreSQL append in one statement: a walk step's event INSERT alone (migration 0006
stores an order's row after an event in the event's row), `walkbook_append_event`
(migration 0004, its checks moved into the event's INSERT by 0005) for any other one event,
`walkbook_append` (migration 0003) for a group commit. The checks the database makes
inside each refuse what the old multi-statement transaction refused, what the foreign key
0005 dropped refused too, and a refused append leaves nothing behind: no event, no
projection row, no heartbeat.

The contract suite (tests/test_journal_contract.py) holds the stores to the same results;
these tests are about the owner's path through the lease, and the migration itself.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from test_journal_contract import AT, projection

from journal import (
    Event,
    Journal,
    JournalCorrupt,
    JournalLeaseLost,
    JournalUnavailable,
    JournalWriteConflict,
    NewEvent,
)
from journal.postgres import (
    _APPEND_EVENT_FUNCTION,
    _APPEND_EVENT_FUNCTION_0005,
    _APPEND_FUNCTION,
    _APPEND_FUNCTION_0005,
    MIGRATION_NAMES,
)
from journal.schema import MUTABLE_ORDER_COLUMNS
from journal.sqlite import PROJECTED_COLUMNS
from journal.trust import check_before_acting


def _stored(url: str) -> tuple[list[Any], list[Any], Any]:
    """Everything an append can write, read past walkbook: events, orders, the heartbeat."""
    with psycopg.connect(url) as conn:
        events = conn.execute("SELECT seq, hash FROM events ORDER BY seq").fetchall()
        orders = conn.execute("SELECT * FROM orders ORDER BY position").fetchall()
        beat = conn.execute("SELECT heartbeat_at FROM owner").fetchone()
    return events, orders, beat


# the append functions as migrations 0003, 0004 and 0005 created or replaced them, in order
OLD_FUNCTIONS = {
    "0003_append_function": [_APPEND_FUNCTION],
    "0004_append_event_function": [_APPEND_EVENT_FUNCTION],
    "0005_checks_in_the_insert": [_APPEND_FUNCTION_0005, _APPEND_EVENT_FUNCTION_0005],
}


def _due_heartbeat(journal: Journal) -> None:
    """Make the owner's next append carry a heartbeat (one is due every few seconds)."""
    journal._last_heartbeat = 0.0


# How a test appends: one event (a walk step's: the event's INSERT alone), one event with
# the owner's heartbeat due (walkbook_append_event), or that event and a note in one group
# commit, a heartbeat due too (walkbook_append).
APPENDS = ["one event", "one event and a heartbeat", "group commit"]


def _append(
    journal: Journal, how: str, event: NewEvent, row: dict[str, Any] | None = None
) -> Event:
    """`event` (and its order's row) appended `how`; the event as stored."""
    if how != "one event":
        _due_heartbeat(journal)
    if how != "group commit":
        return journal.append(event, at=AT, projection=row)
    return journal.append_many([(event, row), (NewEvent("note"), None)], at=AT)[0]


def _function_calls(journal: Journal, url: str) -> dict[str, int]:
    """How often each append function has run in this database, as counted on the
    journal's connection (track_functions on) and flushed to the statistics."""
    journal.recorder.conn.execute("SELECT pg_stat_force_next_flush()")  # type: ignore[attr-defined]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT funcname, calls FROM pg_stat_user_functions WHERE funcname LIKE 'walkbook%'"
        ).fetchall()
    return {str(name): int(calls) for name, calls in rows}


@pytest.mark.parametrize("how", APPENDS)
def test_a_stale_owner_is_refused_and_writes_nothing(postgres: Any, how: str) -> None:
    """The owner holds a live lease, but its idea of the journal's end is stale (another
    writer appended past it): a duplicate seq, a gap and a fork are each refused by the
    one statement, with its projection row and heartbeat, and the owner can go on once it
    knows the real end."""
    url = postgres.fresh_database()
    with Journal.open(url) as owner, Journal.open(url, lock=False) as other:
        owner.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
        other._last_seq, other._last_hash = owner.last_seq, owner._last_hash
        other.append(NewEvent("note"), at=AT)
        before = _stored(url)
        moved = projection("o1", state="QUOTED")
        stale_views = [
            ((1, owner._last_hash), "duplicate write"),  # seq 2 again
            ((5, other._last_hash), "no event before it \\(a gap\\)"),  # seq 6 after 2
            ((2, "0" * 64), "seq 3: it does not link"),  # seq 3 onto another seq 2
        ]
        for (seq, hash_), refusal in stale_views:
            owner._last_seq, owner._last_hash = seq, hash_
            with pytest.raises(JournalWriteConflict, match=refusal):
                _append(owner, how, NewEvent("transition", "o1", to_state="QUOTED"), moved)
            assert _stored(url) == before
        owner._last_seq, owner._last_hash = other.last_seq, other._last_hash
        again = _append(owner, how, NewEvent("transition", "o1", to_state="QUOTED"), moved)
        assert (again.seq, again.order_seq) == (3, 2)
        assert [(r["order_id"], r["state"], r["last_seq"]) for r in owner.orders()] == [
            ("o1", "QUOTED", 3)
        ]
        assert owner.verify_chain() is None


@pytest.mark.parametrize("how", APPENDS)
def test_a_fenced_owner_writes_nothing_not_even_its_projection_or_heartbeat(
    postgres: Any, how: str
) -> None:
    """The lease runs out by the database's clock while this process's own deadline has
    not passed: the database refuses the append (its SQLSTATE read as JournalLeaseLost),
    nothing of it is stored, and the owner stays fenced."""
    url = postgres.fresh_database()
    owner = Journal.open(url, lease_seconds=30)
    try:
        owner.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("UPDATE lease SET expires_at = clock_timestamp()")
        before = _stored(url)
        moved = projection("o1", state="QUOTED")
        with pytest.raises(JournalLeaseLost) as lost:
            _append(owner, how, NewEvent("transition", "o1", to_state="QUOTED"), moved)
        assert lost.value.fields["epoch"] == 1
        assert lost.value.fields["owner"] is None  # nobody has taken it over yet
        assert "no process has taken it over yet" in str(lost.value)
        assert _stored(url) == before
        with pytest.raises(JournalLeaseLost):  # fenced for good: refused before the database
            owner.append(NewEvent("note"), at=AT)
        assert _stored(url) == before
    finally:
        owner.close()


@pytest.mark.parametrize("how", APPENDS)
def test_an_append_on_a_connection_the_server_ended_is_unavailable(postgres: Any, how: str) -> None:
    """The server ends the writer's connection between two appends: the next one is
    JournalUnavailable naming the journal, the driver's error on one line, and nothing of
    it is stored."""
    url = postgres.fresh_database()
    with Journal.open(url) as owner:
        owner.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [owner.recorder.conn.info.backend_pid])  # type: ignore[attr-defined]
        before = _stored(url)
        moved = projection("o1", state="QUOTED")
        with pytest.raises(
            JournalUnavailable, match=f"^journal {re.escape(owner.location)}: [^\n]*$"
        ):
            _append(owner, how, NewEvent("transition", "o1", to_state="QUOTED"), moved)
        assert _stored(url) == before


# A journal as an older walkbook left it, before the named migration: the migrations from
# it on undone (the orders table back in place of the view, the foreign key back), the
# append functions the ones before them made. Its events carry no order rows.
BEFORE = ["0006", "0005", "0004", "0003"]
PROJECTED = ", ".join(f"DROP COLUMN projected_{column}" for column in MUTABLE_ORDER_COLUMNS[:-1])


def _as_before(url: str, before: str) -> None:
    kept = [name for name in MIGRATION_NAMES if name < before]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP FUNCTION walkbook_append, walkbook_append_event")
        admin.execute("DROP VIEW orders")
        admin.execute("ALTER TABLE order_baselines RENAME TO orders")
        admin.execute(f"ALTER TABLE events {PROJECTED}")  # type: ignore[arg-type]
        if before <= "0005":
            admin.execute("ALTER TABLE orders ADD FOREIGN KEY (last_seq) REFERENCES events (seq)")
        for migration, functions in OLD_FUNCTIONS.items():
            for function in functions if migration in kept else ():
                admin.execute(function)
        admin.execute("DELETE FROM walkbook_migrations WHERE NOT name = ANY(%s)", [kept])


def _has_foreign_key(url: str) -> bool:
    with psycopg.connect(url) as conn:
        query = "SELECT count(*) FROM pg_constraint WHERE conname = 'orders_last_seq_fkey'"
        return conn.execute(query).fetchone() == (1,)


def test_a_journal_an_older_walkbook_migrated_verifies_until_a_writer_migrates_it(
    postgres: Any,
) -> None:
    """A journal as a walkbook before migration 0005 left it (0003's and 0004's functions,
    the foreign key): a reader finds no guard missing, and the next writer's open replaces
    the functions and drops the key, its appends going on the chain unbroken."""
    url = postgres.fresh_database()
    with Journal.open(url) as journal:
        journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
    _as_before(url, "0005")
    with Journal.open_readonly(url) as reader:
        assert reader.recorder.missing_guards() == []
        assert reader.verify_chain() is None
    assert _has_foreign_key(url)
    with Journal.open(url) as journal:
        assert journal.recorder.missing_guards() == []
        moved = projection("o1", state="QUOTED")
        journal.append(NewEvent("transition", "o1", to_state="QUOTED"), at=AT, projection=moved)
        assert journal.verify_chain() is None
    assert not _has_foreign_key(url)


@pytest.mark.parametrize("before", BEFORE)
def test_a_journal_from_before_a_migration_is_migrated(postgres: Any, before: str) -> None:
    """A journal written before migration 0003, 0004, 0005 or 0006 gets what it lacks on the
    next writer's open, and appends of every kind go on the chain unbroken, the walk step's
    by its INSERT alone and the others each through its function, with no foreign key left
    to check; the order's row before the migration stays its row until an event moves it."""
    url = postgres.fresh_database()
    with Journal.open(url) as journal:
        journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
    _as_before(url, before)
    with Journal.open(url) as journal:
        assert journal.recorder.missing_guards() == []
        assert [(r["state"], r["last_seq"]) for r in journal.orders()] == [("PENDING", 1)]
        journal.recorder.conn.execute("SET track_functions = 'pl'")  # type: ignore[attr-defined]
        for steps, how in enumerate(APPENDS, 1):
            moved = projection("o1", state="QUOTED", steps_used=steps)
            _append(journal, how, NewEvent("transition", "o1", to_state="QUOTED"), moved)
            assert [(r["steps_used"], r["last_seq"]) for r in journal.orders()] == [
                (steps, steps + 1)
            ]
        assert [e.seq for e in journal.events()] == [1, 2, 3, 4, 5]
        assert journal.verify_chain() is None
        calls = _function_calls(journal, url)
    assert calls == {"walkbook_append": 1, "walkbook_append_event": 1}
    assert not _has_foreign_key(url)
    with psycopg.connect(url) as conn:
        applied = conn.execute("SELECT name FROM walkbook_migrations ORDER BY applied_seq")
        assert sorted(row[0] for row in applied) == list(MIGRATION_NAMES)
        assert MIGRATION_NAMES[-1] == "0006_projection_in_the_event"


def test_migration_0005_gives_up_on_a_long_read_rather_than_queue_the_owner_behind_it(
    postgres: Any,
) -> None:
    """Dropping the foreign key locks both tables. A read holding them (an audit's long
    transaction) fails the migrating open within its lock_timeout, typed, for the open to be
    tried again, rather than leaving the live owner's appends queued behind the migration;
    once the read ends, the same open migrates. A watchdog ends the read after 30 s, so a
    migration that waited instead fails this test rather than hanging it."""
    url = postgres.fresh_database()
    with Journal.open(url) as journal:
        journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
    _as_before(url, "0005")
    with psycopg.connect(url) as reader:
        reader.execute("SELECT count(*) FROM events").fetchone()  # its transaction holds a lock
        watchdog = threading.Timer(30, reader.close)
        watchdog.start()
        try:
            with pytest.raises(JournalUnavailable, match="lock timeout"):
                Journal.open(url)
        finally:
            watchdog.cancel()
        reader.rollback()
    with Journal.open(url) as journal:
        assert journal.recorder.missing_guards() == []
    assert not _has_foreign_key(url)


# Rows the functions refuse in place of the dropped foreign key: how they are appended,
# and the refusal. From 0006 on an order's row is stored in its event's row, so it must
# also be the row of that event's own order.
UNLINKED_ROWS = [
    ("one event", "its order's row names another event"),
    ("group commit", "an order's row names an event of another commit"),
    ("group commit out of sequence", "seq 5 does not follow the row before it"),
    ("one event, another order's row", "its order's row names another event"),
    ("group commit, another order's row", "an order's row names another order's event"),
]


@pytest.mark.parametrize(("how", "refusal"), UNLINKED_ROWS)
def test_a_projection_row_off_its_commit_is_refused_and_writes_nothing(
    postgres: Any, how: str, refusal: str
) -> None:
    """What the foreign key from an order's row to its last event held, the functions
    check: a row naming an event of another commit (here seq 1, which is stored) is
    refused, as is a group whose seqs skip one, and a row of another order (o2, stored)
    naming this commit's event of o1; nothing of the append is stored. A one-event append
    of an order that has its row is a walk step's: its INSERT adds nothing, and the
    function run for the reason refuses it."""
    url = postgres.fresh_database()
    with Journal.open(url) as journal:
        journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
        journal.append(NewEvent("created", "o2"), at=AT, projection=projection("o2"))
        before = _stored(url)
        seq, at, tail = journal.last_seq + 1, AT.isoformat(), journal._last_hash
        rows = [
            (seq, "o1", 2, None, at, "transition", None, "QUOTED", "{}", tail, "a" * 64),
            (seq + 1, None, None, None, at, "note", None, None, "{}", "a" * 64, "b" * 64),
        ]  # fmt: skip
        if how.startswith("one event"):
            rows = rows[:1]
        if how == "group commit out of sequence":
            rows[1] = (seq + 2, *rows[1][1:])
        moved = projection("o2" if "another order" in how else "o1", state="QUOTED")
        names_seq = 1 if how in ("one event", "group commit") else seq
        order_row = [*(moved[column] for column in PROJECTED_COLUMNS), names_seq]
        with pytest.raises(JournalWriteConflict, match=refusal):
            journal.recorder.insert(rows, [(False, order_row)], None)
        assert _stored(url) == before


def _waiting_on_a_lock(url: str, backend_pid: int) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [backend_pid]
        ).fetchone()
    return row == ("Lock",)


@pytest.mark.parametrize("how", APPENDS)
def test_an_append_waiting_on_a_taker_checks_the_lease_it_took(postgres: Any, how: str) -> None:
    """A taker changes the lease row while the owner's append is on its way: the append
    waits for the taker's commit, then checks the row the taker left (not the one its
    statement began by seeing), and is refused, writing nothing."""
    url = postgres.fresh_database()
    with Journal.open(url, lease_seconds=30) as owner:
        owner.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
        before = _stored(url)
        backend = owner.recorder.conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(url) as taker, ThreadPoolExecutor(1) as pool:
            taker.execute("UPDATE lease SET epoch = epoch + 1")
            moved = projection("o1", state="QUOTED")
            event = NewEvent("transition", "o1", to_state="QUOTED")
            appending = pool.submit(_append, owner, how, event, moved)
            deadline = time.monotonic() + 30
            while not _waiting_on_a_lock(url, backend) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _waiting_on_a_lock(url, backend)
            taker.commit()
            with pytest.raises(JournalLeaseLost):
                appending.result(timeout=30)
        assert _stored(url) == before


@pytest.mark.parametrize("how", APPENDS)
def test_an_append_holds_the_lease_row_until_its_commit(postgres: Any, how: str) -> None:
    """The lease is checked by the append's own statement, which locks the lease's row
    until the commit: a taker cannot change the lease while an append is in flight (it
    would wait; here its lock times out), and can once the append has committed."""
    url = postgres.fresh_database()
    expire = "UPDATE lease SET expires_at = clock_timestamp()"
    with Journal.open(url) as owner, psycopg.connect(url, autocommit=True) as taker:
        taker.execute("SET lock_timeout = '100ms'")
        with owner.recorder.conn.transaction():  # type: ignore[attr-defined]
            _append(owner, how, NewEvent("created", "o1"), projection("o1"))
            with pytest.raises(psycopg.errors.LockNotAvailable):
                taker.execute(expire)
        assert taker.execute(expire).rowcount == 1


@pytest.mark.parametrize("commits", ["one commit", "a commit each"])
def test_an_orders_creation_and_its_moves_match_sqlite(
    postgres: Any, tmp_path: Any, commits: str
) -> None:
    """Two events of one order, an order-less event, another order's creation, and a third
    order created with no row whose next event brings its first, in one commit (the
    order's row inserted with its first event, then updated by the next, as the SQLite
    store does it row by row) or each in its own (a walk step's INSERT, and the typed
    one-event function, its NULLs NULL, where the order has no row yet): the events and
    rows are SQLite's."""
    items = [
        (NewEvent("created", "o1", data={"qty": Decimal("10")}), projection("o1")),
        (NewEvent("transition", "o1", to_state="QUOTED"),
         projection("o1", state="QUOTED", quantity="12", steps_used=1)),
        (NewEvent("note", data={"text": "é ✓"}), None),
        (NewEvent("created", "o2"), projection("o2", symbol="MSFT", avg_price="1.5")),
        (NewEvent("created", "o3"), None),
        (NewEvent("transition", "o3", to_state="QUOTED"), projection("o3", state="QUOTED")),
    ]  # fmt: skip
    rows, events = [], []
    for location in (tmp_path / "journal.db", postgres.fresh_database()):
        with Journal.open(location) as journal:
            if commits == "one commit":
                journal.append_many(items, at=AT)
            for event, row in items if commits == "a commit each" else ():
                journal.append(event, at=AT, projection=row)
            rows.append(journal.orders())
            events.append(list(journal.events()))
    assert events[1] == events[0]
    sqlite_rows, postgres_rows = rows
    assert postgres_rows == sqlite_rows
    assert [(r["order_id"], r["state"], r["quantity"], r["last_seq"]) for r in postgres_rows] == [
        ("o1", "QUOTED", "12", 2),
        ("o2", "PENDING", "10", 4),
        ("o3", "QUOTED", "10", 6),
    ]


@pytest.mark.parametrize(
    ("function", "arguments"),
    [
        ("walkbook_append", None),
        ("walkbook_append_event", None),
        ("walkbook_append_event", "lease_epoch BIGINT"),  # an overload beside it
    ],
)
def test_a_replaced_append_function_is_a_missing_guard(
    postgres: Any, function: str, arguments: str | None
) -> None:
    """An append function replaced by one that checks nothing, or joined by an overload
    that does, is named by verify's guard check, and a writer refuses to act on the
    journal, as for a dropped trigger."""
    url = postgres.fresh_database()
    with Journal.open(url) as journal:
        journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
        assert journal.recorder.missing_guards() == []
    with psycopg.connect(url, autocommit=True) as admin:
        if arguments is None:
            arguments = admin.execute(
                "SELECT pg_get_function_arguments(%s::regproc)", [function]
            ).fetchone()[0]  # type: ignore[index]
        admin.execute(
            f"CREATE OR REPLACE FUNCTION {function}({arguments}) "
            "RETURNS VOID LANGUAGE plpgsql AS $$ BEGIN END $$"
        )
    with Journal.open_readonly(url) as journal:
        assert journal.recorder.missing_guards() == [f"function {function}"]
    with Journal.open(url) as journal, pytest.raises(JournalCorrupt, match=function):
        check_before_acting(journal)
