"""The PostgreSQL recorder: one journal in one database, reached by a `postgresql://` URL.

The rows, the hash chain and the canonical JSON are the SQLite journal's, so a journal
exported from either verifies the same way. The schema is built by versioned migrations
recorded in `walkbook_migrations`, each in its own transaction; triggers refuse UPDATE,
DELETE and TRUNCATE on `events`; every append is one transaction holding its events and
their orders' projection rows (from migration 0006 in the events' own rows, read through
the `orders` view). A writer owns the journal through a fenced lease
(journal/lease.py): an owner that stops renewing it loses it to the next, and every append
checks inside its transaction that the lease is still the writer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, LiteralString

import msgspec
import psycopg

from .errors import (
    JournalCorrupt,
    JournalError,
    JournalLocked,
    JournalUnavailable,
    JournalWriteConflict,
)
from .lease import LEASE_TABLE, Lease, create_lease_table, lease_holder
from .location import redacted, valid_database_url
from .recorder import EVENT_FIELDS, HISTORY_FIELDS, EventRow, OrderWrite, Recorder
from .schema import (
    FORMAT_NAME,
    MUTABLE_ORDER_COLUMNS,
    ORDER_COLUMNS,
    SCHEMA_VERSION,
    refuse_newer,
)
from .sqlite import (
    TAKE_META,
    events_up_to_sql,
    fold_stream_sql,
    order_filter,
    order_ids_of_kind_sql,
    unfinished_orders_sql,
)

__all__ = ["APPEND_ONLY_TRIGGERS", "MIGRATION_NAMES", "PostgresRecorder"]

CONNECT_TIMEOUT_SECONDS = 5
# The transaction-level advisory lock two writers migrating at once take in turn
# (pg_advisory_xact_lock(class, object)); one database holds one journal, so one key serves.
_MIGRATION_LOCK = (0x77616C6B, 2)  # 'walk'
_BATCH_ROWS = 2000
MIGRATIONS_TABLE = "walkbook_migrations"

APPEND_ONLY_TRIGGERS = ("events_refuse_update", "events_refuse_delete", "events_refuse_truncate")
_REFUSE_EDIT = "walkbook_refuse_edit"
_REFUSE_EDIT_BODY = "BEGIN RAISE EXCEPTION 'walkbook journal events are append-only'; END"

# Version 1 of the PostgreSQL store holds what the SQLite journal's schema version 2 holds;
# meta says schema_version 2 in both, so an export reads the same. An applied migration's
# SQL never changes: a later change is a new migration.
_INITIAL: tuple[LiteralString, ...] = (
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    # `data` is TEXT, not JSONB: the hash covers the canonical JSON's exact characters, and
    # JSONB would store a parsed form (keys reordered, numbers and spacing normalised) whose
    # text no longer hashes to the stored hash. The times are TEXT for the same reason.
    """
    CREATE TABLE events (
        seq BIGINT PRIMARY KEY,
        order_id TEXT,
        order_seq BIGINT,
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
    f"""
    CREATE FUNCTION {_REFUSE_EDIT}() RETURNS trigger LANGUAGE plpgsql
    AS $$ {_REFUSE_EDIT_BODY} $$
    """,
    f"""
    CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION {_REFUSE_EDIT}()
    """,
    f"""
    CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION {_REFUSE_EDIT}()
    """,
    f"""
    CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION {_REFUSE_EDIT}()
    """,
    # `position` keeps the order rows were created in (SQLite's rowid); it is never read
    # out with the row. The foreign key on last_seq is dropped by 0005 (the append
    # functions check it instead).
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
        last_seq BIGINT NOT NULL REFERENCES events (seq),
        position BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
    )
    """,
    "CREATE INDEX orders_by_plan ON orders (plan_id)",
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


def _initial(conn: psycopg.Connection[Any]) -> None:
    for statement in _INITIAL:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('format', %s), ('schema_version', %s)",
        [FORMAT_NAME, str(SCHEMA_VERSION)],
    )


# What every append function checks first, in its own transaction: the lease is this
# writer's and live by the database clock (row locked until commit: WB001), and the first
# new event follows the stored tail (no gap, no fork: WB002). One text for every
# migration that creates such a function; a function applied by an older migration keeps
# its body byte for byte, which verify compares (`missing_guards`).
_APPEND_CHECKS = """        IF lease_epoch IS NOT NULL THEN
            PERFORM FROM lease WHERE id = 1 AND epoch = lease_epoch AND token = lease_token
                AND expires_at > clock_timestamp() FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'the lease is not this writer''s' USING ERRCODE = 'WB001';
            END IF;
        END IF;
        IF {seq} > 1 THEN
            SELECT hash INTO stored FROM events WHERE seq = {seq} - 1;
            IF stored IS NULL THEN
                RAISE EXCEPTION 'no event before it (a gap)' USING ERRCODE = 'WB002';
            ELSIF stored <> {prev_hash} THEN
                RAISE EXCEPTION 'it does not link' USING ERRCODE = 'WB002';
            END IF;
        END IF;
"""

# One append in one statement, so in one round trip and its own transaction: the lease row
# checked (when an epoch is given) and locked until the commit, so a taker waits for the
# append rather than slipping in before it commits; the first row's link to the stored last
# event checked; then the events, their orders' rows and the heartbeat. An order's row is
# updated, or inserted where there is none yet, one row at a time in order (a commit may
# carry two of one order, which one multi-row upsert could not touch twice). The rows
# arrive as JSONB arrays of arrays, in EVENT_FIELDS order and an OrderWrite's
# (ORDER_COLUMNS, last_seq last); each refusal has a SQLSTATE of its own (_LEASE_LOST,
# _UNLINKED).
_APPEND_FUNCTION: LiteralString = (
    """
    CREATE FUNCTION walkbook_append(
        lease_epoch BIGINT, lease_token TEXT, event_rows JSONB, order_rows JSONB,
        heartbeat_at TEXT
    ) RETURNS VOID LANGUAGE plpgsql AS $$
    DECLARE
        r JSONB;
        first_seq BIGINT := (event_rows->0->>0)::BIGINT;
        stored TEXT;
    BEGIN
"""
    + _APPEND_CHECKS.format(seq="first_seq", prev_hash="event_rows->0->>9")
    + """        FOR i IN 0 .. jsonb_array_length(event_rows) - 1 LOOP
            r := event_rows->i;
            INSERT INTO events (seq, order_id, order_seq, plan_id, at, kind, from_state,
                                to_state, data, prev_hash, hash)
            VALUES ((r->>0)::BIGINT, r->>1, (r->>2)::BIGINT, r->>3, r->>4, r->>5, r->>6,
                    r->>7, r->>8, r->>9, r->>10);
        END LOOP;
        FOR i IN 0 .. jsonb_array_length(order_rows) - 1 LOOP
            r := order_rows->i;
            UPDATE orders SET quantity = r->>6, state = r->>9, reason = r->>10,
                filled_qty = r->>11, notional = r->>12, avg_price = r->>13,
                live_broker_order_id = r->>14, live_client_order_id = r->>15,
                steps_used = (r->>16)::INTEGER, updated_at = r->>18,
                last_seq = (r->>19)::BIGINT
            WHERE order_id = r->>0;
            CONTINUE WHEN FOUND;
            INSERT INTO orders (order_id, plan_id, symbol, side, close_type, urgency,
                quantity, correlation_id, strategy_id, state, reason, filled_qty, notional,
                avg_price, live_broker_order_id, live_client_order_id, steps_used,
                created_at, updated_at, last_seq)
            VALUES (r->>0, r->>1, r->>2, r->>3, r->>4, r->>5, r->>6, r->>7, r->>8, r->>9,
                    r->>10, r->>11, r->>12, r->>13, r->>14, r->>15, (r->>16)::INTEGER,
                    r->>17, r->>18, (r->>19)::BIGINT)
            ON CONFLICT (order_id) DO UPDATE SET quantity = excluded.quantity,
                state = excluded.state, reason = excluded.reason,
                filled_qty = excluded.filled_qty, notional = excluded.notional,
                avg_price = excluded.avg_price,
                live_broker_order_id = excluded.live_broker_order_id,
                live_client_order_id = excluded.live_client_order_id,
                steps_used = excluded.steps_used, updated_at = excluded.updated_at,
                last_seq = excluded.last_seq;
        END LOOP;
        IF heartbeat_at IS NOT NULL THEN
            UPDATE owner SET heartbeat_at = walkbook_append.heartbeat_at WHERE id = 1;
        END IF;
    END
    $$
"""
)
# Migration 0005's group commit: 0003's, with what the dropped foreign key held checked
# by comparisons: the rows' seqs follow one another from the first (as Recorder.insert
# says they do), and each projection row's last_seq is one of them.
_APPEND_FUNCTION_0005: LiteralString = (
    _APPEND_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    .replace(
        "            r := event_rows->i;\n",
        """            r := event_rows->i;
            IF (r->>0)::BIGINT <> first_seq + i THEN
                RAISE EXCEPTION 'seq % does not follow the row before it', r->>0
                    USING ERRCODE = 'check_violation';
            END IF;
""",
    )
    .replace(
        "            r := order_rows->i;\n",
        """            r := order_rows->i;
            IF (r->>19)::BIGINT NOT BETWEEN first_seq
                    AND first_seq + jsonb_array_length(event_rows) - 1 THEN
                RAISE EXCEPTION 'an order''s row names an event of another commit'
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
""",
    )
)
_LEASE_LOST = "WB001"
_UNLINKED = "WB002"
_APPEND = "SELECT walkbook_append(%s, %s, %s::jsonb, %s::jsonb, %s)"

# The commonest append, one event and at most its order's row (every walk step), as
# walkbook_append makes it but with each value a typed parameter: no JSON to build here
# or to parse and pick apart there. With the libpq path below it cut the append's CPU at
# 8 writers on 2 cores by about a third (docs/benchmarks.md). The order's parameters are
# NULL for an event with no projection row; their last is the row's last_seq. Its parts
# are shared by migration 0004's text and 0005's.
_APPEND_EVENT_HEAD: LiteralString = """
    CREATE FUNCTION walkbook_append_event(
        lease_epoch BIGINT, lease_token TEXT, heartbeat_at TEXT,
        e_seq BIGINT, e_order_id TEXT, e_order_seq BIGINT, e_plan_id TEXT, e_at TEXT,
        e_kind TEXT, e_from_state TEXT, e_to_state TEXT, e_data TEXT, e_prev_hash TEXT,
        e_hash TEXT,
        o_order_id TEXT, o_plan_id TEXT, o_symbol TEXT, o_side TEXT, o_close_type TEXT,
        o_urgency TEXT, o_quantity TEXT, o_correlation_id TEXT, o_strategy_id TEXT,
        o_state TEXT, o_reason TEXT, o_filled_qty TEXT, o_notional TEXT, o_avg_price TEXT,
        o_live_broker_order_id TEXT, o_live_client_order_id TEXT, o_steps_used INTEGER,
        o_created_at TEXT, o_updated_at TEXT, o_last_seq BIGINT
    ) RETURNS VOID LANGUAGE plpgsql AS $$
    DECLARE
        stored TEXT;
    BEGIN
"""
# the projection row upserted and the heartbeat written, once the event is in
_APPEND_EVENT_TAIL: LiteralString = """        IF o_order_id IS NOT NULL THEN
            UPDATE orders SET quantity = o_quantity, state = o_state, reason = o_reason,
                filled_qty = o_filled_qty, notional = o_notional, avg_price = o_avg_price,
                live_broker_order_id = o_live_broker_order_id,
                live_client_order_id = o_live_client_order_id, steps_used = o_steps_used,
                updated_at = o_updated_at, last_seq = o_last_seq
            WHERE order_id = o_order_id;
            IF NOT FOUND THEN
                INSERT INTO orders (order_id, plan_id, symbol, side, close_type, urgency,
                    quantity, correlation_id, strategy_id, state, reason, filled_qty,
                    notional, avg_price, live_broker_order_id, live_client_order_id,
                    steps_used, created_at, updated_at, last_seq)
                VALUES (o_order_id, o_plan_id, o_symbol, o_side, o_close_type, o_urgency,
                    o_quantity, o_correlation_id, o_strategy_id, o_state, o_reason,
                    o_filled_qty, o_notional, o_avg_price, o_live_broker_order_id,
                    o_live_client_order_id, o_steps_used, o_created_at, o_updated_at,
                    o_last_seq)
                ON CONFLICT (order_id) DO UPDATE SET quantity = excluded.quantity,
                    state = excluded.state, reason = excluded.reason,
                    filled_qty = excluded.filled_qty, notional = excluded.notional,
                    avg_price = excluded.avg_price,
                    live_broker_order_id = excluded.live_broker_order_id,
                    live_client_order_id = excluded.live_client_order_id,
                    steps_used = excluded.steps_used, updated_at = excluded.updated_at,
                    last_seq = excluded.last_seq;
            END IF;
        END IF;
        IF heartbeat_at IS NOT NULL THEN
            UPDATE owner SET heartbeat_at = walkbook_append_event.heartbeat_at WHERE id = 1;
        END IF;
    END
    $$
"""

_APPEND_EVENT_FUNCTION: LiteralString = (
    _APPEND_EVENT_HEAD
    + _APPEND_CHECKS.format(seq="e_seq", prev_hash="e_prev_hash")
    + """        INSERT INTO events (seq, order_id, order_seq, plan_id, at, kind, from_state,
                            to_state, data, prev_hash, hash)
        VALUES (e_seq, e_order_id, e_order_seq, e_plan_id, e_at, e_kind, e_from_state,
                e_to_state, e_data, e_prev_hash, e_hash);
"""
    + _APPEND_EVENT_TAIL
)

# Migration 0005's one-event append: the lease and the link checked by the event's INSERT
# itself, one statement where 0004 ran three (each statement's executor start-up was most
# of the function's cost), and no foreign key trigger (its lookup locked the new event's
# row): the cluster's CPU per append at 8 writers fell from 265 to 227 µs (perf over
# bench.postgres_append's 8-writer round; the raw INSERT's was 124). The lease row is
# still locked until the commit (a FOR UPDATE in the INSERT's own subquery, rechecked
# against the row's newest version if a taker changed it meanwhile), so a taker still
# waits for the append. When the INSERT adds nothing, 0004's checks run to raise the
# refusal that names why. The projection row's last_seq must be the event's: what the
# dropped foreign key held, by a comparison instead of a trigger's lookup and row lock.
_APPEND_EVENT_CHECKED_INSERT: LiteralString = (
    """        INSERT INTO events (seq, order_id, order_seq, plan_id, at, kind, from_state,
                            to_state, data, prev_hash, hash)
        SELECT e_seq, e_order_id, e_order_seq, e_plan_id, e_at, e_kind, e_from_state,
               e_to_state, e_data, e_prev_hash, e_hash
        WHERE (lease_epoch IS NULL OR EXISTS (
                SELECT FROM lease WHERE id = 1 AND epoch = lease_epoch AND token = lease_token
                    AND expires_at > clock_timestamp() FOR UPDATE))
            AND (e_seq <= 1 OR EXISTS (
                SELECT FROM events WHERE seq = e_seq - 1 AND hash = e_prev_hash));
        IF NOT FOUND THEN
"""
    + "    "
    + _APPEND_CHECKS.format(seq="e_seq", prev_hash="e_prev_hash").rstrip().replace("\n", "\n    ")
    + """
            RAISE EXCEPTION 'it does not link' USING ERRCODE = 'WB002';
        END IF;
        IF o_order_id IS NOT NULL AND o_last_seq IS DISTINCT FROM e_seq THEN
            RAISE EXCEPTION 'its order''s row names another event'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
"""
)
_APPEND_EVENT_FUNCTION_0005: LiteralString = (
    _APPEND_EVENT_HEAD.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    + _APPEND_EVENT_CHECKED_INSERT
    + _APPEND_EVENT_TAIL
)

# Migration 0006: an order's row after an event is stored in the event's own row, so a walk
# step is one INSERT where it was an INSERT and an UPDATE (the UPDATE was the largest part
# of what an append cost the cluster beyond a raw INSERT: docs/benchmarks.md). `orders`
# becomes a view: each order's row as first written (`order_baselines`: its `created`'s, or
# for a journal migrated from 0005 its row then), overlaid by the newest later event that
# carries one. The projection is still written in the event's own transaction, by the
# event's own INSERT, and what the view overlays is append-only like every event.
_ADD_PROJECTED_COLUMNS: LiteralString = """
    ALTER TABLE events ADD COLUMN projected_quantity TEXT,
        ADD COLUMN projected_state TEXT, ADD COLUMN projected_reason TEXT,
        ADD COLUMN projected_filled_qty TEXT, ADD COLUMN projected_notional TEXT,
        ADD COLUMN projected_avg_price TEXT, ADD COLUMN projected_live_broker_order_id TEXT,
        ADD COLUMN projected_live_client_order_id TEXT, ADD COLUMN projected_steps_used INTEGER,
        ADD COLUMN projected_updated_at TEXT
"""
_ORDERS_VIEW: LiteralString = """
    CREATE VIEW orders AS
    SELECT r.order_id, r.plan_id, r.symbol, r.side, r.close_type, r.urgency,
        CASE WHEN e.seq IS NULL THEN r.quantity ELSE e.projected_quantity END AS quantity,
        r.correlation_id, r.strategy_id,
        CASE WHEN e.seq IS NULL THEN r.state ELSE e.projected_state END AS state,
        CASE WHEN e.seq IS NULL THEN r.reason ELSE e.projected_reason END AS reason,
        CASE WHEN e.seq IS NULL THEN r.filled_qty ELSE e.projected_filled_qty END
            AS filled_qty,
        CASE WHEN e.seq IS NULL THEN r.notional ELSE e.projected_notional END AS notional,
        CASE WHEN e.seq IS NULL THEN r.avg_price ELSE e.projected_avg_price END AS avg_price,
        CASE WHEN e.seq IS NULL THEN r.live_broker_order_id
            ELSE e.projected_live_broker_order_id END AS live_broker_order_id,
        CASE WHEN e.seq IS NULL THEN r.live_client_order_id
            ELSE e.projected_live_client_order_id END AS live_client_order_id,
        CASE WHEN e.seq IS NULL THEN r.steps_used ELSE e.projected_steps_used END
            AS steps_used,
        r.created_at,
        CASE WHEN e.seq IS NULL THEN r.updated_at ELSE e.projected_updated_at END
            AS updated_at,
        COALESCE(e.seq, r.last_seq) AS last_seq,
        r.position
    FROM order_baselines AS r LEFT JOIN LATERAL (
        SELECT * FROM events
        WHERE events.order_id = r.order_id AND events.seq > r.last_seq
            AND events.projected_state IS NOT NULL
        ORDER BY events.order_seq DESC LIMIT 1
    ) AS e ON true
"""


def _replaced(text: LiteralString, old: LiteralString, new: LiteralString) -> LiteralString:
    """`text` with `old` replaced, which must be there: a migration's text built from an
    older one's must not silently keep what it meant to change."""
    if old not in text:
        raise ValueError(f"migration text anchor not found: {old!r}")
    return text.replace(old, new)


def _heartbeat_and_end(function: LiteralString) -> LiteralString:
    """An older append function's last lines: its heartbeat's UPDATE, END and $$."""
    return function[function.index("        IF heartbeat_at IS NOT NULL THEN") :]


def _first_order_row(function: LiteralString, last_value: LiteralString) -> LiteralString:
    """An older append function's INSERT of an order's row, up to its VALUES' `last_value`,
    as an INSERT of the order's first row that leaves a row already there as it is."""
    start = function.index("INSERT INTO orders (")
    end = function.index(last_value, start) + len(last_value)
    return (
        function[start:end].replace("INSERT INTO orders", "INSERT INTO order_baselines")
        + "\n            ON CONFLICT (order_id) DO NOTHING;"
    )


# 0006's one-event append: 0005's checked INSERT, the order's row after the event written
# in the event's row (the row must be of the event's own order: the view finds it by
# order_id), then the order's first row where it has none.
_APPEND_EVENT_FUNCTION_0006: LiteralString = (
    _APPEND_EVENT_HEAD.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    + _replaced(
        _replaced(
            _APPEND_EVENT_CHECKED_INSERT,
            """to_state, data, prev_hash, hash)
        SELECT e_seq, e_order_id, e_order_seq, e_plan_id, e_at, e_kind, e_from_state,
               e_to_state, e_data, e_prev_hash, e_hash
""",
            """to_state, data, prev_hash, hash, projected_quantity,
                            projected_state, projected_reason, projected_filled_qty,
                            projected_notional, projected_avg_price,
                            projected_live_broker_order_id, projected_live_client_order_id,
                            projected_steps_used, projected_updated_at)
        SELECT e_seq, e_order_id, e_order_seq, e_plan_id, e_at, e_kind, e_from_state,
               e_to_state, e_data, e_prev_hash, e_hash, o_quantity, o_state, o_reason,
               o_filled_qty, o_notional, o_avg_price, o_live_broker_order_id,
               o_live_client_order_id, o_steps_used, o_updated_at
""",
        ),
        "IF o_order_id IS NOT NULL AND o_last_seq IS DISTINCT FROM e_seq THEN",
        """IF o_order_id IS NOT NULL AND (o_last_seq IS DISTINCT FROM e_seq
                OR o_order_id IS DISTINCT FROM e_order_id) THEN""",
    )
    + """        IF o_order_id IS NOT NULL THEN
            """
    + _first_order_row(_APPEND_EVENT_TAIL, "o_last_seq)")
    + """
        END IF;
"""
    + _heartbeat_and_end(_APPEND_EVENT_TAIL)
)

# 0006's group commit: 0005's checks; each order's row after its event, found by the
# event's seq (one lookup in an object built once), written in that event's row; then each
# order's first row where it has none (an order with two events in the commit: the first's
# row, the second's in its event, which the view shows).
_APPEND_FUNCTION_0006: LiteralString = (
    """
    CREATE OR REPLACE FUNCTION walkbook_append(
        lease_epoch BIGINT, lease_token TEXT, event_rows JSONB, order_rows JSONB,
        heartbeat_at TEXT
    ) RETURNS VOID LANGUAGE plpgsql AS $$
    DECLARE
        r JSONB;
        o JSONB;
        first_seq BIGINT := (event_rows->0->>0)::BIGINT;
        stored TEXT;
        projections JSONB;
    BEGIN
"""
    + _APPEND_CHECKS.format(seq="first_seq", prev_hash="event_rows->0->>9")
    + """        FOR i IN 0 .. jsonb_array_length(order_rows) - 1 LOOP
            IF (order_rows->i->>19)::BIGINT NOT BETWEEN first_seq
                    AND first_seq + jsonb_array_length(event_rows) - 1 THEN
                RAISE EXCEPTION 'an order''s row names an event of another commit'
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
        END LOOP;
        SELECT jsonb_object_agg(order_row->>19, order_row) INTO projections
        FROM jsonb_array_elements(order_rows) AS order_row;
        FOR i IN 0 .. jsonb_array_length(event_rows) - 1 LOOP
            r := event_rows->i;
            IF (r->>0)::BIGINT <> first_seq + i THEN
                RAISE EXCEPTION 'seq % does not follow the row before it', r->>0
                    USING ERRCODE = 'check_violation';
            END IF;
            o := projections->(r->>0);
            IF o IS NOT NULL AND o->>0 IS DISTINCT FROM r->>1 THEN
                RAISE EXCEPTION 'an order''s row names another order''s event'
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            INSERT INTO events (seq, order_id, order_seq, plan_id, at, kind, from_state,
                                to_state, data, prev_hash, hash, projected_quantity,
                                projected_state, projected_reason, projected_filled_qty,
                                projected_notional, projected_avg_price,
                                projected_live_broker_order_id,
                                projected_live_client_order_id, projected_steps_used,
                                projected_updated_at)
            VALUES ((r->>0)::BIGINT, r->>1, (r->>2)::BIGINT, r->>3, r->>4, r->>5, r->>6,
                    r->>7, r->>8, r->>9, r->>10, o->>6, o->>9, o->>10, o->>11, o->>12,
                    o->>13, o->>14, o->>15, (o->>16)::INTEGER, o->>18);
        END LOOP;
        FOR i IN 0 .. jsonb_array_length(order_rows) - 1 LOOP
            r := order_rows->i;
            """
    + _first_order_row(_APPEND_FUNCTION, "(r->>19)::BIGINT)")
    + """
        END LOOP;
"""
    + _heartbeat_and_end(_APPEND_FUNCTION)
)

# The walk step's append from 0006 on: one event of an order that has its row, no heartbeat
# due. The event's INSERT alone, no PL/pgSQL call: its WHERE checks the lease (locking its
# row until the commit) and the link as walkbook_append_event does, and that the order's
# row is there and is the event's. When it adds nothing the function is run instead, whose
# checks name the refusal (or which appends, should the lease have been renewed meanwhile).
# Parameters: the lease's epoch and token, the event's row, the order's row after it (its
# changing columns), then that row's order_id and last_seq.
_APPEND_STEP_NAME = b"walkbook_append_step"
_APPEND_STEP = b"""
    INSERT INTO events (seq, order_id, order_seq, plan_id, at, kind, from_state, to_state,
                        data, prev_hash, hash, projected_quantity, projected_state,
                        projected_reason, projected_filled_qty, projected_notional,
                        projected_avg_price, projected_live_broker_order_id,
                        projected_live_client_order_id, projected_steps_used,
                        projected_updated_at)
    SELECT $3::BIGINT, $4::TEXT, $5::BIGINT, $6::TEXT, $7::TEXT, $8::TEXT, $9::TEXT,
           $10::TEXT, $11::TEXT, $12::TEXT, $13::TEXT, $14::TEXT, $15::TEXT, $16::TEXT,
           $17::TEXT, $18::TEXT, $19::TEXT, $20::TEXT, $21::TEXT, $22::INTEGER, $23::TEXT
    WHERE ($1::BIGINT IS NULL OR EXISTS (
            SELECT FROM lease WHERE id = 1 AND epoch = $1::BIGINT AND token = $2::TEXT
                AND expires_at > clock_timestamp() FOR UPDATE))
        AND ($3::BIGINT <= 1 OR EXISTS (
            SELECT FROM events WHERE seq = $3::BIGINT - 1 AND hash = $12::TEXT))
        AND $24::TEXT = $4::TEXT AND $25::BIGINT = $3::BIGINT
        AND EXISTS (SELECT FROM order_baselines WHERE order_id = $4::TEXT)
"""
# where the step's parameters take an order's row (ORDER_COLUMNS order) from
_STEP_ORDER_AT = tuple(
    ORDER_COLUMNS.index(column) for column in (*MUTABLE_ORDER_COLUMNS[:-1], "order_id", "last_seq")
)
_STEP_APPENDED = b"INSERT 0 1"


def _projection_in_the_event(conn: psycopg.Connection[Any]) -> None:
    """Migration 0006: the projection columns added to `events`, `orders` renamed
    `order_baselines` (its rows kept as each order's row as of now) under the `orders` view,
    both append functions replaced. The tables are locked in the order an append takes
    them and for a bounded time, as 0005 does (`_check_in_the_insert`)."""
    conn.execute("SET LOCAL lock_timeout = '2s'")
    conn.execute("LOCK TABLE events, orders IN ACCESS EXCLUSIVE MODE")
    conn.execute(_ADD_PROJECTED_COLUMNS)
    conn.execute("ALTER TABLE orders RENAME TO order_baselines")
    conn.execute(_ORDERS_VIEW)
    conn.execute(_APPEND_FUNCTION_0006)
    conn.execute(_APPEND_EVENT_FUNCTION_0006)


# A server-side prepared statement of its own, run through libpq (psycopg.pq) with the
# values already text: psycopg's cursor machinery costs more client CPU than the append's
# own Python (docs/benchmarks.md). The casts pin the call to the one signature.
_APPEND_EVENT_NAME = b"walkbook_append_event"
# each parameter's type as the function declares it
_APPEND_EVENT_TYPES = [
    parameter.split()[1]
    for parameter in _APPEND_EVENT_FUNCTION.split("(", 1)[1].split(") RETURNS")[0].split(",")
]
_APPEND_EVENT = (
    "SELECT walkbook_append_event("
    + ", ".join(f"${i}::{kind}" for i, kind in enumerate(_APPEND_EVENT_TYPES, 1))
    + ")"
).encode()
_NO_ORDER_ROW = (None,) * len(ORDER_COLUMNS)
_SUCCEEDED = (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.TUPLES_OK)

# Each append function's body as each migration that creates or replaces it leaves it:
# verify and a writer's trust check expect the one of the newest migration applied, so a
# journal an older walkbook migrated keeps verifying until a writer migrates it on.
_APPEND_FUNCTION_BODIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("0003_append_function", {"walkbook_append": _APPEND_FUNCTION.split("$$")[1]}),
    (
        "0004_append_event_function",
        {"walkbook_append_event": _APPEND_EVENT_FUNCTION.split("$$")[1]},
    ),
    (
        "0005_checks_in_the_insert",
        {
            "walkbook_append": _APPEND_FUNCTION_0005.split("$$")[1],
            "walkbook_append_event": _APPEND_EVENT_FUNCTION_0005.split("$$")[1],
        },
    ),
    (
        "0006_projection_in_the_event",
        {
            "walkbook_append": _APPEND_FUNCTION_0006.split("$$")[1],
            "walkbook_append_event": _APPEND_EVENT_FUNCTION_0006.split("$$")[1],
        },
    ),
)
# the newest bodies
APPEND_FUNCTIONS = {
    name: body for _, bodies in _APPEND_FUNCTION_BODIES for name, body in bodies.items()
}


def _expected_functions(applied: Collection[str]) -> dict[str, str]:
    """Each append function's body as the `applied` migrations left it (the newest where
    none of them created it: a journal without it has a guard missing)."""
    expected = dict(APPEND_FUNCTIONS)
    for migration, bodies in _APPEND_FUNCTION_BODIES:
        if migration in applied:
            expected |= bodies
    return expected


def _create_append_function(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_APPEND_FUNCTION)


def _create_append_event_function(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_APPEND_EVENT_FUNCTION)


def _check_in_the_insert(conn: psycopg.Connection[Any]) -> None:
    """Migration 0005: both append functions replaced (same signatures, so a writer of the
    previous version appending meanwhile goes on through the new bodies) and the foreign
    key from an order's row to its last event dropped, the functions checking it instead.
    Dropping the key locks both tables: in the order an append takes them (events, then
    orders), so a live owner's append waits for this rather than deadlocking with it, and
    for a bounded time, so a long read holding them fails this open (to be tried again)
    rather than stalling the live owner's appends queued behind it."""
    conn.execute("SET LOCAL lock_timeout = '2s'")
    conn.execute("LOCK TABLE events, orders IN ACCESS EXCLUSIVE MODE")
    conn.execute("ALTER TABLE orders DROP CONSTRAINT orders_last_seq_fkey")
    conn.execute(_APPEND_FUNCTION_0005)
    conn.execute(_APPEND_EVENT_FUNCTION_0005)


_STEPS: tuple[tuple[str, Callable[[psycopg.Connection[Any]], None]], ...] = (
    ("0001_initial", _initial),
    ("0002_lease", create_lease_table),
    ("0003_append_function", _create_append_function),
    ("0004_append_event_function", _create_append_event_function),
    ("0005_checks_in_the_insert", _check_in_the_insert),
    ("0006_projection_in_the_event", _projection_in_the_event),
)
MIGRATION_NAMES = tuple(name for name, _ in _STEPS)

_EVENT_COLUMNS = ", ".join(EVENT_FIELDS)
_ORDER_COLUMNS = ", ".join(ORDER_COLUMNS)


# Rows as `walkbook_append` takes them: one JSON array of arrays, encoded in one C call
# (no per-value adaptation by the driver); a value that is neither JSON's nor None (a
# Decimal) as its text.
_ROWS_JSON = msgspec.json.Encoder(enc_hook=str, decimal_format="string")


def _json_rows(rows: Sequence[Sequence[Any]]) -> str:
    return _ROWS_JSON.encode(rows).decode()


def _raise_failed(result: psycopg.pq.abc.PGresult, encoding: str) -> None:
    """A statement run through libpq that failed, as the error psycopg would raise."""
    if result.status not in _SUCCEEDED:
        raise psycopg.errors.error_from_result(result, encoding)


def _one_line(exc: BaseException) -> str:
    """The driver's message on one line (libpq's span several)."""
    return " ".join(str(exc).split())


class PostgresRecorder(Recorder):
    """A journal in a PostgreSQL database, through one psycopg 3 connection in autocommit
    mode: every write is an explicit transaction."""

    def __init__(self, url: str, conn: psycopg.Connection[Any], owning: bool) -> None:
        self.location = redacted(url)
        self.path = None
        self.conn = conn
        self._owning = owning
        self.lease: Lease | None = None
        self._encoding = conn.info.encoding
        # the append statements this connection has prepared, by name
        self._prepared: set[bytes] = set()

    @classmethod
    def _connect(
        cls, url: str, *, readonly: bool, lease_seconds: float | None = None
    ) -> psycopg.Connection[Any]:
        """An autocommit connection; a lease holder's is ended by the server if it stays
        idle inside a transaction for a lease's length (a stopped owner's row lock on the
        lease must not keep the next owner out)."""
        shown = redacted(valid_database_url(url))
        options = "-c default_transaction_read_only=on" if readonly else ""
        if lease_seconds is not None:
            idle_ms = max(1, int(lease_seconds * 1000))
            options += f" -c idle_in_transaction_session_timeout={idle_ms}"
        try:
            return psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                options=options.strip(),
            )
        except psycopg.Error as exc:
            raise JournalUnavailable(
                f"cannot open journal {shown}: {_one_line(exc)}", location=shown
            ) from exc

    @classmethod
    def open(
        cls,
        url: str,
        *,
        lock: bool,
        lease_seconds: float,
        wait_for_lease: float | None = None,
    ) -> PostgresRecorder:
        """The writer's recorder, its schema created or migrated, owning the journal (its
        lease, `lease_seconds` long) when `lock`. With `wait_for_lease` (seconds between
        tries) it waits while another process's lease is live; else that is JournalLocked."""
        held = lease_seconds if lock else None
        recorder = cls(url, cls._connect(url, readonly=False, lease_seconds=held), lock)
        try:
            with recorder._errors():
                recorder._migrate()
                if lock:
                    recorder.lease = recorder._take_lease(url, lease_seconds, wait_for_lease)
            return recorder
        except BaseException:
            recorder.close()
            raise

    @classmethod
    def open_readonly(cls, url: str) -> PostgresRecorder:
        """A reader's recorder, in read-only transactions, refusing a database that holds
        no walkbook journal."""
        recorder = cls(url, cls._connect(url, readonly=True), False)
        try:
            with recorder._errors():
                if "events" not in recorder._check_schema():
                    raise JournalCorrupt(
                        f"{recorder.location} holds no walkbook journal (no events table)",
                        location=recorder.location,
                    )
            return recorder
        except BaseException:
            recorder.close()
            raise

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release(self.conn)
        self.conn.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The driver's errors as the journal's typed ones, each on one line."""
        try:
            yield
        except JournalError:
            raise
        except psycopg.IntegrityError as exc:
            raise JournalWriteConflict(
                f"journal refused a duplicate write: {_one_line(exc)}", location=self.location
            ) from exc
        except psycopg.Error as exc:
            raise JournalUnavailable(
                f"journal {self.location}: {_one_line(exc)}", location=self.location
            ) from exc

    @contextmanager
    def _lease_errors(self) -> Iterator[None]:
        """An append the database failed, by a writer whose lease has run out meanwhile (the
        server ends a connection left stopped inside a transaction): the lease lost."""
        try:
            yield
        except JournalUnavailable:
            lost = None if self.lease is None else self.lease.overdue()
            if lost is not None:
                raise lost from None
            raise

    # -- ownership and schema ------------------------------------------------------

    def _take_lease(self, url: str, seconds: float, wait: float | None) -> Lease:
        """The lease with the next epoch; while another's is live, JournalLocked, or with
        `wait` a try every `wait` seconds until it runs out."""
        while True:
            try:
                return Lease.take(self.conn, url, self.location, seconds)
            except JournalLocked:
                if wait is None:
                    raise
            time.sleep(wait)

    def _tables(self) -> set[str]:
        rows = self.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {str(row[0]) for row in rows}

    def _applied(self, tables: set[str]) -> list[str]:
        if MIGRATIONS_TABLE not in tables:
            return []
        rows = self.conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY applied_seq")
        return [str(row[0]) for row in rows]

    def _check_schema(self) -> set[str]:
        """Refuse a database holding something else or a newer walkbook's journal; the
        tables found."""
        tables = self._tables()
        applied = self._applied(tables)
        if tables <= {MIGRATIONS_TABLE} and not applied:
            return tables  # an empty database, or one whose first migration never committed
        if "meta" not in tables or MIGRATIONS_TABLE not in tables:
            raise JournalCorrupt(
                f"{self.location} is not a walkbook journal (no walkbook meta table)",
                tables=sorted(tables),
            )
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT_NAME:
            raise JournalCorrupt(
                f"{self.location} is not a walkbook journal (wrong format marker)",
                format=meta.get("format"),
            )
        refuse_newer(int(meta.get("schema_version", "0")), applied, MIGRATION_NAMES)
        return tables

    def _migrate(self) -> None:
        """Apply each pending migration in its own transaction with the record of it,
        under a transaction lock so two writers never build the schema at once."""
        self._check_schema()
        for name, step in _STEPS:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _MIGRATION_LOCK)
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                    "name TEXT PRIMARY KEY, applied_at TEXT NOT NULL, "
                    "applied_seq BIGINT GENERATED ALWAYS AS IDENTITY)"
                )
                if name in self._applied(self._tables()):
                    continue
                step(self.conn)
                self.conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) VALUES (%s, %s)",
                    [name, datetime.now(UTC).isoformat()],
                )

    # -- writing -----------------------------------------------------------------

    def insert(
        self, rows: Sequence[EventRow], order_rows: Sequence[OrderWrite], heartbeat_at: str | None
    ) -> None:
        """One statement, one round trip, its own transaction: a walk step's event alone
        (`_APPEND_STEP`), else `walkbook_append_event` for one event, `walkbook_append` for
        more. Each checks the lease and the link to the stored last event, then writes the
        event rows with their orders' rows after them (and an order's first row, and the
        heartbeat); the database's refusals as the typed errors."""
        conn = self.conn
        epoch, token = (None, None) if self.lease is None else self.lease.check(conn)
        with self._lease_errors(), self._errors():
            try:
                if len(rows) == 1 and len(order_rows) <= 1:
                    order = order_rows[0][1] if order_rows else _NO_ORDER_ROW
                    step = bool(order_rows) and not order_rows[0][0] and heartbeat_at is None
                    if not (step and self._appended_step(epoch, token, rows[0], order)):
                        self._run_prepared(
                            _APPEND_EVENT_NAME,
                            _APPEND_EVENT,
                            (epoch, token, heartbeat_at, *rows[0], *order),
                        )
                else:
                    orders = _json_rows([values for _, values in order_rows])
                    conn.execute(_APPEND, (epoch, token, _json_rows(rows), orders, heartbeat_at))
            except psycopg.Error as exc:
                if exc.sqlstate == _LEASE_LOST and self.lease is not None:
                    raise self.lease.refused(conn) from None
                if exc.sqlstate == _UNLINKED:
                    raise JournalWriteConflict(
                        f"journal {self.location} refused seq {rows[0][0]}: "
                        f"{exc.diag.message_primary} to the stored last event",
                        seq=rows[0][0],
                    ) from None
                raise

    def _appended_step(
        self, epoch: int | None, token: str | None, row: EventRow, order: Sequence[Any]
    ) -> bool:
        """The walk step's event appended by `_APPEND_STEP`; False where it added nothing
        (a check refused it) and the caller runs the function for the reason."""
        values = (epoch, token, *row, *(order[i] for i in _STEP_ORDER_AT))
        return self._run_prepared(_APPEND_STEP_NAME, _APPEND_STEP, values).command_status == (
            _STEP_APPENDED
        )

    def _run_prepared(
        self, name: bytes, statement: bytes, params: Sequence[Any]
    ) -> psycopg.pq.abc.PGresult:
        """`statement` with these values, each as its text (or NULL), through the statement
        this connection prepares as `name` on its first use; the database's refusal as the
        driver's error."""
        pgconn, encoding = self.conn.pgconn, self._encoding
        if name not in self._prepared:
            _raise_failed(pgconn.prepare(name, statement), encoding)
            self._prepared.add(name)
        values = [None if value is None else str(value).encode(encoding) for value in params]
        # None is NULL here as in exec_params, whose annotation says so where this one's does not
        result = pgconn.exec_prepared(name, values)  # type: ignore[arg-type]
        _raise_failed(result, encoding)
        return result

    def begin_snapshot(self) -> None:
        with self._errors():
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def record_owner(self, pid: int, host: str, at: str) -> None:
        with self._errors():
            self.conn.execute(
                "INSERT INTO owner (id, pid, host, acquired_at, heartbeat_at) "
                "VALUES (1, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, host = excluded.host, "
                "acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at",
                [pid, host, at, at],
            )

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._errors(), self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    def take_meta(self, prefix: str) -> list[str]:
        with self._errors(), self.conn.transaction():
            rows = self.conn.execute(TAKE_META.replace("?", "%s"), [prefix, prefix]).fetchall()
        return [str(value) for (value,) in rows]

    # -- reading -----------------------------------------------------------------

    def _one(self, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._errors():
            return self.conn.execute(query, params).fetchone()

    def _all(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        with self._errors():
            return self.conn.execute(query, params).fetchall()

    def _dicts(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(zip(ORDER_COLUMNS, row, strict=True)) for row in self._all(query, params)]

    def tail(self) -> tuple[int, str] | None:
        row = self._one("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return None if row is None else (int(row[0]), str(row[1]))

    def last_at(self) -> str | None:
        row = self._one("SELECT at FROM events ORDER BY seq DESC LIMIT 1")
        return None if row is None else str(row[0])

    def last_order_seq(self, order_id: str) -> int:
        row = self._one("SELECT max(order_seq) FROM events WHERE order_id = %s", [order_id])
        return int(row[0]) if row and row[0] is not None else 0

    def hash_at(self, seq: int) -> str | None:
        row = self._one("SELECT hash FROM events WHERE seq = %s", [seq])
        return None if row is None else str(row[0])

    def event_rows(
        self, *, after_seq: int = 0, order_id: str | None = None, plan_id: str | None = None
    ) -> Iterator[EventRow]:
        """In batches of short reads, each after the last seq seen: no transaction stays
        open while the caller works through them."""
        where, params = ["seq > %s"], [after_seq]
        if order_id is not None:
            where.append("order_id = %s")
            params.append(order_id)  # type: ignore[arg-type]
        if plan_id is not None:
            where.append("plan_id = %s")
            params.append(plan_id)  # type: ignore[arg-type]
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY seq LIMIT {_BATCH_ROWS}"
        )
        while rows := self._all(query, params):
            yield from rows
            params[0] = rows[-1][0]

    def event_batch(self, after_seq: int, limit: int) -> list[EventRow]:
        return list(
            self._all(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
                [after_seq, limit],
            )
        )

    def history_rows(
        self, plan_id: str | None, unless_state: Collection[str]
    ) -> Iterator[Sequence[Any]]:
        """The SQLite recorder's range scan, read in batches."""
        matching, params = order_filter(plan_id, unless_state, "o.", "%s")
        found = self._all(
            "SELECT o.order_id, e.seq, o.last_seq FROM orders AS o LEFT JOIN events AS e "
            f"ON e.order_id = o.order_id AND e.order_seq = 1{matching}",
            params,
        )
        created = [seq for _, seq, _ in found if seq is not None]
        if not created:
            return
        after, last = min(created) - 1, max(last_seq for _, _, last_seq in found)
        order_ids = {order_id for order_id, _, _ in found}
        query = (
            f"SELECT {', '.join(HISTORY_FIELDS)} FROM events WHERE seq > %s AND seq <= %s "
            f"ORDER BY seq LIMIT {_BATCH_ROWS}"
        )
        while rows := self._all(query, [after, last]):
            for row in rows:
                if row[1] in order_ids:
                    yield row
            after = rows[-1][0]

    def first_event_of_plan(self, plan_id: str) -> EventRow | None:
        return self._one(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id = "
            "(SELECT order_id FROM orders WHERE plan_id = %s ORDER BY position LIMIT 1) "
            "ORDER BY order_seq LIMIT 1",
            [plan_id],
        )

    def orders(self, plan_id: str | None, unless_state: Collection[str]) -> list[dict[str, Any]]:
        matching, params = order_filter(plan_id, unless_state, mark="%s")
        return self._dicts(
            f"SELECT {_ORDER_COLUMNS} FROM orders{matching} ORDER BY created_at, position",
            params,
        )

    def order(self, order_id: str) -> dict[str, Any] | None:
        rows = self._dicts(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = %s", [order_id])
        return rows[0] if rows else None

    def owner(self) -> dict[str, Any] | None:
        row = self._one("SELECT pid, host, acquired_at, heartbeat_at FROM owner")
        names = ("pid", "host", "acquired_at", "heartbeat_at")
        return None if row is None else dict(zip(names, row, strict=True))

    def meta(self, keys: Collection[str]) -> dict[str, str]:
        rows = self._all("SELECT key, value FROM meta WHERE key = ANY(%s)", [list(keys)])
        return {str(key): str(value) for key, value in rows}

    def missing_guards(self) -> list[str]:
        """Each append-only trigger that is gone, disabled, or calls a function that no
        longer refuses (the trigger and its function as this module created them), and each
        append function when it is gone or not the one the newest applied migration that
        creates it (0003, 0004, 0005) left."""
        rows = self._all(
            "SELECT t.tgname, t.tgenabled, p.proname, p.prosrc FROM pg_trigger AS t "
            "JOIN pg_proc AS p ON p.oid = t.tgfoid "
            "WHERE t.tgrelid = 'events'::regclass AND NOT t.tgisinternal"
        )
        intact = {
            name
            for name, enabled, function, source in rows
            if enabled in ("O", "A")
            and function == _REFUSE_EDIT
            and source.split() == _REFUSE_EDIT_BODY.split()
        }
        missing = [name for name in APPEND_ONLY_TRIGGERS if name not in intact]
        # the appends' own checks (lease, tail) are a guard too: gone, replaced or joined
        # by an overload, an append could skip them
        functions = self._all(
            "SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(%s)", [list(APPEND_FUNCTIONS)]
        )
        with self._errors():
            applied = self._applied(self._tables())
        for name, body in _expected_functions(applied).items():
            sources = [source.split() for function, source in functions if function == name]
            if sources != [body.split()]:
                missing.append(f"function {name}")
        return missing

    def holder(self) -> str | None:
        """The lease's holder while its lease is live by the database's clock (a journal
        migrated before leases existed has no holder to name)."""
        with self._errors():
            if self.conn.execute("SELECT to_regclass(%s)", [LEASE_TABLE]).fetchone() == (None,):
                return None
            holder = lease_holder(self.conn)
        return str(holder) if holder is not None and holder.live else None

    def change_marker(self) -> object:
        """The last seq: each commit adds events, and one index probe reads it."""
        return self.tail()

    # -- reading for an audit: short reads in seq order, each after the last one seen ----

    def end_snapshot(self) -> None:
        with self._errors():
            self.conn.execute("COMMIT")

    def _pages(
        self,
        query: str,
        params: dict[str, Any],
        past: Callable[[tuple[Any, ...]], dict[str, Any]] = lambda row: {"after": row[0]},
    ) -> Iterator[list[tuple[Any, ...]]]:
        """`query` (ordered, its WHERE keeping the rows past the ones `params` name) a batch
        at a time, `params` moved `past` each batch's last row."""
        while rows := self._all(f"{query} LIMIT {_BATCH_ROWS}", params):
            yield rows
            params |= past(rows[-1])

    def event_batches(self, after_seq: int, last_seq: int) -> Iterator[Iterable[EventRow]]:
        query = events_up_to_sql("%(after)s", "%(last_seq)s")
        return self._pages(query, {"after": after_seq, "last_seq": last_seq})

    def fold_batches(
        self, after_seq: int, last_seq: int, ends: Collection[str]
    ) -> Iterator[Iterable[Sequence[Any]]]:
        query = fold_stream_sql(ends, "%(after)s", "%(last_seq)s")
        return self._pages(query, {"after": after_seq, "last_seq": last_seq})

    def order_ids_of_kind(
        self, kind: str, *, order_id: str | None = None, plan_id: str | None = None
    ) -> list[str]:
        query, params = order_ids_of_kind_sql(kind, order_id, plan_id, "%s")
        return [str(row[0]) for row in self._all(query, params)]

    def unfinished_order_ids(self, ends: Collection[str]) -> set[str]:
        return {str(row[0]) for row in self._all(unfinished_orders_sql(ends, "%s"), sorted(ends))}

    def order_event_rows(self, order_id: str) -> Iterator[EventRow]:
        query = f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id = %s ORDER BY order_seq"
        return iter(self._all(query, [order_id]))

    def order_event_count(self, order_id: str, last_seq: int) -> int:
        query = "SELECT count(*) FROM events WHERE order_id = %s AND seq <= %s"
        row = self._one(query, [order_id, last_seq])
        return 0 if row is None else int(row[0])

    def row_claims(self) -> Iterator[tuple[str, int]]:
        query = (
            "SELECT order_id, last_seq, position FROM orders "
            "WHERE (last_seq, position) > (%(after)s, %(position)s) ORDER BY last_seq, position"
        )
        start = {"after": -(2**63), "position": 0}
        for rows in self._pages(query, start, lambda row: {"after": row[1], "position": row[2]}):
            yield from ((row[0], row[1]) for row in rows)

    def stored_rows(self) -> Iterator[Sequence[Any]]:
        query = (
            f"SELECT order_id, last_seq, {_ORDER_COLUMNS}, position FROM orders "
            "WHERE position > %(after)s ORDER BY position"
        )
        for rows in self._pages(query, {"after": 0}, lambda row: {"after": row[-1]}):
            yield from (row[:-1] for row in rows)

    def stored_row(self, order_id: str) -> Sequence[Any] | None:
        query = f"SELECT order_id, last_seq, {_ORDER_COLUMNS} FROM orders WHERE order_id = %s"
        return self._one(query, [order_id])
