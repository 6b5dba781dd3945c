"""The journal's schema, applied as named sqlite-utils migrations.

A journal records which migrations built it; one we do not know means a newer
walkbook wrote the file, and we refuse it rather than guess.

sqlite-utils is imported only when a file actually has a migration pending: importing
it imports pandas and numpy whenever they are installed (alpaca-py installs them),
which would cost every `walkbook resume` most of a second and tens of MB for nothing.
Checking a journal's schema is plain SQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from functools import cache
from typing import TYPE_CHECKING

from .errors import JournalCorrupt, JournalSchemaTooNew

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

__all__ = [
    "APPEND_ONLY_TRIGGERS",
    "FORMAT_NAME",
    "MIGRATION_NAMES",
    "MUTABLE_ORDER_COLUMNS",
    "ORDER_COLUMNS",
    "SCHEMA_VERSION",
    "check_schema",
    "migrate",
    "missing_triggers",
    "refuse_newer",
    "table_names",
]

FORMAT_NAME = "walkbook-journal"
SCHEMA_VERSION = 2
MIGRATION_SET = "walkbook"
MIGRATIONS_TABLE = "_sqlite_migrations"

ORDER_COLUMNS = (
    "order_id",
    "plan_id",
    "symbol",
    "side",
    "close_type",
    "urgency",
    "quantity",
    "correlation_id",
    "strategy_id",
    "state",
    "reason",
    "filled_qty",
    "notional",
    "avg_price",
    "live_broker_order_id",
    "live_client_order_id",
    "steps_used",
    "created_at",
    "updated_at",
    "last_seq",
)

# What an event can change in its order's row (the rest comes from `created`): an
# update that sets only these leaves the row's other columns, and the index on
# plan_id, untouched.
MUTABLE_ORDER_COLUMNS = (
    "quantity",
    "state",
    "reason",
    "filled_qty",
    "notional",
    "avg_price",
    "live_broker_order_id",
    "live_client_order_id",
    "steps_used",
    "updated_at",
    "last_seq",
)


# the triggers that refuse UPDATE and DELETE on `events`, by name
APPEND_ONLY_TRIGGERS = ("events_refuse_update", "events_refuse_delete")

_APPEND_ONLY_TRIGGERS = (
    """
    CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'walkbook journal events are append-only'); END
    """,
    """
    CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'walkbook journal events are append-only'); END
    """,
)

_INITIAL_STATEMENTS = (
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        order_id TEXT,
        order_seq INTEGER,
        plan_id TEXT,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        UNIQUE (order_id, order_seq)
    )
    """,
    """
    CREATE INDEX events_by_plan ON events (plan_id, seq)
    """,
    *_APPEND_ONLY_TRIGGERS,
    """
    CREATE TABLE orders (
        order_id TEXT PRIMARY KEY,
        plan_id TEXT,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        close_type TEXT NOT NULL,
        urgency TEXT NOT NULL,
        quantity TEXT NOT NULL,
        correlation_id TEXT,
        strategy_id TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        filled_qty TEXT NOT NULL,
        notional TEXT NOT NULL,
        avg_price TEXT,
        live_broker_order_id TEXT,
        live_client_order_id TEXT,
        steps_used INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_seq INTEGER NOT NULL REFERENCES events (seq)
    )
    """,
    """
    CREATE INDEX orders_by_plan ON orders (plan_id)
    """,
    """
    CREATE INDEX orders_by_state ON orders (state)
    """,
    """
    CREATE TABLE owner (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        acquired_at TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL
    )
    """,
)


def _initial(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT first and break the
    # migration's transaction, so a crash could leave a half-built journal.
    for statement in _INITIAL_STATEMENTS:
        db.execute(statement)
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('format', ?), ('schema_version', ?)",
        [FORMAT_NAME, str(SCHEMA_VERSION)],
    )


# Version 2 drops what every commit paid for and no hot path reads: the UNIQUE index on
# events.hash (a random key, so a random index page per commit; a duplicate write is
# refused by seq's PRIMARY KEY and UNIQUE(order_id, order_seq), and an edit by the
# chain itself), events_by_plan (a plan's orders are found through orders_by_plan) and
# orders_by_state. SQLite cannot drop a UNIQUE constraint in place, so events is
# rebuilt, inside the migration's transaction, and its triggers created again. The
# table is written out in full rather than derived from 0001's: an applied migration's
# SQL must never change with a later edit.
_LEAN_STATEMENTS = (
    """
    CREATE TABLE events_v2 (
        seq INTEGER PRIMARY KEY,
        order_id TEXT,
        order_seq INTEGER,
        plan_id TEXT,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (order_id, order_seq)
    )
    """,
    """
    INSERT INTO events_v2
    SELECT seq, order_id, order_seq, plan_id, at, kind, from_state, to_state, data,
           prev_hash, hash
    FROM events ORDER BY seq
    """,
    "DROP TRIGGER IF EXISTS events_refuse_update",
    "DROP TRIGGER IF EXISTS events_refuse_delete",
    "DROP TABLE events",
    "ALTER TABLE events_v2 RENAME TO events",
    *_APPEND_ONLY_TRIGGERS,
    "DROP INDEX IF EXISTS orders_by_state",
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
)


def _lean_indexes(db: Database) -> None:
    for statement in _LEAN_STATEMENTS:
        db.execute(statement)


_STEPS: tuple[tuple[str, Callable[[Database], None]], ...] = (
    ("0001_initial", _initial),
    ("0002_lean_indexes", _lean_indexes),
)
MIGRATION_NAMES = tuple(name for name, _ in _STEPS)


@cache
def _migrations() -> Migrations:
    """The sqlite-utils migration set, imported and built the first time a file needs it."""
    from sqlite_utils.migrations import Migrations

    migrations = Migrations(MIGRATION_SET)
    for name, step in _STEPS:
        migrations(name=name)(step)
    return migrations


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _applied(conn: sqlite3.Connection, tables: set[str]) -> list[str]:
    """Names of the walkbook migrations applied to the file, in the order they ran."""
    if MIGRATIONS_TABLE not in tables:
        return []
    rows = conn.execute(
        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY rowid",
        [MIGRATION_SET],
    )
    return [row[0] for row in rows]


def missing_triggers(conn: sqlite3.Connection) -> list[str]:
    """The append-only triggers the file lacks, or has in another form than walkbook wrote
    them (dropped to edit history, or recreated to do nothing): each by name."""
    present = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    return [
        name
        for name, sql in zip(APPEND_ONLY_TRIGGERS, _APPEND_ONLY_TRIGGERS, strict=True)
        if _words(present.get(name) or "") != _words(sql)
    ]


def _words(sql: str) -> list[str]:
    return sql.split()


def check_schema(conn: sqlite3.Connection) -> None:
    """Refuse a file that is not a walkbook journal or was written by a newer schema."""
    tables = table_names(conn)
    applied = _applied(conn, tables)
    if tables <= {MIGRATIONS_TABLE} and not applied:
        return  # a new file, or one whose creation was interrupted before the schema committed
    if "meta" not in tables or MIGRATIONS_TABLE not in tables:
        raise JournalCorrupt(
            "not a walkbook journal (no walkbook meta table)", tables=sorted(tables)
        )
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT_NAME:
        raise JournalCorrupt(
            "not a walkbook journal (wrong format marker)", format=meta.get("format")
        )
    refuse_newer(int(meta.get("schema_version", "0")), applied, MIGRATION_NAMES)


def refuse_newer(version: int, applied: Collection[str], known: Collection[str]) -> None:
    """JournalSchemaTooNew for a journal a newer walkbook wrote: its schema version is past
    this one's, or it holds a migration this walkbook does not know (named, since the
    version alone says nothing when a migration left the tables' version as it was)."""
    unknown = [name for name in applied if name not in known]
    if version > SCHEMA_VERSION:
        problem = f"journal schema version {version} is newer than this walkbook ({SCHEMA_VERSION})"
    elif unknown:
        problem = f"journal holds migrations a newer walkbook applied: {', '.join(unknown)}"
    else:
        return
    raise JournalSchemaTooNew(problem, schema_version=version, unknown_migrations=unknown)


def migrate(conn: sqlite3.Connection) -> None:
    """Check, then bring a new or older journal up to the current schema.

    Each pending migration runs in its own transaction with the record of it, so a
    crash mid-way leaves the file at the last completed version, migrated on next open.
    """
    check_schema(conn)
    if _applied(conn, table_names(conn)) == list(MIGRATION_NAMES):
        return
    from sqlite_utils import Database

    _migrations().apply(Database(conn))
