"""A PostgreSQL append in one statement (`walkbook_append`, migration 0003): the checks the
database makes inside it refuse what the old multi-statement transaction refused, and a
refused append leaves nothing behind: no event, no projection row, no heartbeat.

The contract suite (tests/test_journal_contract.py) holds the stores to the same results;
these tests are about the owner's path through the lease, and the migration itself.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from test_journal_contract import AT, projection

from journal import Journal, JournalCorrupt, JournalLeaseLost, JournalWriteConflict, NewEvent
from journal.postgres import MIGRATION_NAMES
from journal.trust import check_before_acting


def _stored(url: str) -> tuple[list[Any], list[Any], Any]:
    """Everything an append can write, read past walkbook: events, orders, the heartbeat."""
    with psycopg.connect(url) as conn:
        events = conn.execute("SELECT seq, hash FROM events ORDER BY seq").fetchall()
        orders = conn.execute("SELECT * FROM orders ORDER BY position").fetchall()
        beat = conn.execute("SELECT heartbeat_at FROM owner").fetchone()
    return events, orders, beat


def _due_heartbeat(journal: Journal) -> None:
    """Make the owner's next append carry a heartbeat (one is due every few seconds)."""
    journal._last_heartbeat = 0.0


def test_a_stale_owner_is_refused_and_writes_nothing(postgres: Any) -> None:
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
            _due_heartbeat(owner)
            with pytest.raises(JournalWriteConflict, match=refusal):
                owner.append(
                    NewEvent("transition", "o1", to_state="QUOTED"), at=AT, projection=moved
                )
            assert _stored(url) == before
        owner._last_seq, owner._last_hash = other.last_seq, other._last_hash
        again = owner.append(
            NewEvent("transition", "o1", to_state="QUOTED"), at=AT, projection=moved
        )
        assert (again.seq, again.order_seq) == (3, 2)
        assert [(r["order_id"], r["state"], r["last_seq"]) for r in owner.orders()] == [
            ("o1", "QUOTED", 3)
        ]
        assert owner.verify_chain() is None


def test_a_fenced_owner_writes_nothing_not_even_its_projection_or_heartbeat(
    postgres: Any,
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
        _due_heartbeat(owner)
        moved = projection("o1", state="QUOTED")
        with pytest.raises(JournalLeaseLost) as lost:
            owner.append(NewEvent("transition", "o1", to_state="QUOTED"), at=AT, projection=moved)
        assert lost.value.fields["epoch"] == 1
        assert lost.value.fields["owner"] is None  # nobody has taken it over yet
        assert "no process has taken it over yet" in str(lost.value)
        assert _stored(url) == before
        with pytest.raises(JournalLeaseLost):  # fenced for good: refused before the database
            owner.append(NewEvent("note"), at=AT)
        assert _stored(url) == before
    finally:
        owner.close()


def test_a_journal_from_before_the_one_statement_append_is_migrated(postgres: Any) -> None:
    """A journal written before migration 0003 (its function and record gone) gets it on
    the next writer's open, and appends go on the chain unbroken."""
    url = postgres.fresh_database()
    with Journal.open(url) as journal:
        journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP FUNCTION walkbook_append")
        admin.execute("DELETE FROM walkbook_migrations WHERE name = '0003_append_function'")
    with Journal.open(url) as journal:
        journal.append(NewEvent("transition", "o1", to_state="QUOTED"), at=AT,
                       projection=projection("o1", state="QUOTED"))  # fmt: skip
        assert [e.seq for e in journal.events()] == [1, 2]
        assert journal.verify_chain() is None
    with psycopg.connect(url) as conn:
        applied = conn.execute("SELECT name FROM walkbook_migrations ORDER BY applied_seq")
        assert tuple(row[0] for row in applied) == MIGRATION_NAMES
        assert MIGRATION_NAMES[-1] == "0003_append_function"


def test_one_commit_of_an_orders_creation_and_its_moves_matches_sqlite(
    postgres: Any, tmp_path: Any
) -> None:
    """Two events of one order in one commit: its row is inserted with the first, then
    updated by the next, as the SQLite store does it row by row."""
    rows = []
    for location in (tmp_path / "journal.db", postgres.fresh_database()):
        with Journal.open(location) as journal:
            journal.append_many(
                [(NewEvent("created", "o1"), projection("o1")),
                 (NewEvent("transition", "o1", to_state="QUOTED"),
                  projection("o1", state="QUOTED", quantity="12", steps_used=1)),
                 (NewEvent("created", "o2"), projection("o2", symbol="MSFT"))],
                at=AT,
            )  # fmt: skip
            rows.append(journal.orders())
    sqlite_rows, postgres_rows = rows
    assert postgres_rows == sqlite_rows
    assert [(r["order_id"], r["state"], r["quantity"], r["last_seq"]) for r in postgres_rows] == [
        ("o1", "QUOTED", "12", 2),
        ("o2", "PENDING", "10", 3),
    ]


def test_a_replaced_append_function_is_a_missing_guard(postgres: Any) -> None:
    """An append function replaced by one that checks nothing is named by verify's guard
    check, and a writer refuses to act on the journal, as for a dropped trigger."""
    url = postgres.fresh_database()
    with Journal.open(url) as journal:
        journal.append(NewEvent("created", "o1"), at=AT, projection=projection("o1"))
        assert journal.recorder.missing_guards() == []
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "CREATE OR REPLACE FUNCTION walkbook_append(lease_epoch BIGINT, lease_token "
            "TEXT, event_rows JSONB, order_rows JSONB, heartbeat_at TEXT) "
            "RETURNS VOID LANGUAGE plpgsql AS $$ BEGIN END $$"
        )
    with Journal.open_readonly(url) as journal:
        assert journal.recorder.missing_guards() == ["function walkbook_append"]
    with Journal.open(url) as journal, pytest.raises(JournalCorrupt, match="walkbook_append"):
        check_before_acting(journal)
