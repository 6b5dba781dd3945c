"""The journal's schema, applied as named sqlite-utils migrations.

A journal records which migrations built it; one we do not know means a newer
walkbook wrote the file, and we refuse it rather than guess.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .errors import JournalCorrupt, JournalSchemaTooNew

__all__ = [
    "FORMAT_NAME",
    "MIGRATIONS",
    "ORDER_COLUMNS",
    "SCHEMA_VERSION",
    "check_schema",
    "migrate",
]

FORMAT_NAME = "walkbook-journal"
SCHEMA_VERSION = 1

MIGRATIONS = Migrations("walkbook")

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
    """
    CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'walkbook journal events are append-only'); END
    """,
    """
    CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'walkbook journal events are append-only'); END
    """,
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


@MIGRATIONS(name="0001_initial")
def _initial(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT first and break the
    # migration's transaction, so a crash could leave a half-built journal.
    for statement in _INITIAL_STATEMENTS:
        db.execute(statement)
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('format', ?), ('schema_version', ?)",
        [FORMAT_NAME, str(SCHEMA_VERSION)],
    )


def check_schema(db: Database) -> None:
    """Refuse a file that is not a walkbook journal or was written by a newer schema."""
    tables = set(db.table_names())
    if tables <= {MIGRATIONS.migrations_table} and not list(MIGRATIONS.applied(db)):
        return  # a new file, or one whose creation was interrupted before the schema committed
    if "meta" not in tables or MIGRATIONS.migrations_table not in tables:
        raise JournalCorrupt(
            "not a walkbook journal (no walkbook meta table)", tables=sorted(tables)
        )
    meta = {row["key"]: row["value"] for row in db.query("SELECT key, value FROM meta")}
    if meta.get("format") != FORMAT_NAME:
        raise JournalCorrupt(
            "not a walkbook journal (wrong format marker)", format=meta.get("format")
        )
    version = int(meta.get("schema_version", "0"))
    known = {m.name for m in MIGRATIONS._migrations}
    unknown = [m.name for m in MIGRATIONS.applied(db) if m.name not in known]
    if version > SCHEMA_VERSION or unknown:
        raise JournalSchemaTooNew(
            f"journal schema version {version} is newer than this walkbook ({SCHEMA_VERSION})",
            schema_version=version,
            unknown_migrations=unknown,
        )


def migrate(db: Database) -> None:
    """Check, then bring a new or older journal up to the current schema."""
    check_schema(db)
    MIGRATIONS.apply(db)
