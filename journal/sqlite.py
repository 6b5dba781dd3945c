"""The SQLite recorder: a journal in one WAL file beside its flock, the embedded default.

Every append is one `BEGIN IMMEDIATE` transaction holding the event rows and their
orders' projection rows; the schema and its append-only triggers are journal/schema.py's.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from .errors import (
    JournalCorrupt,
    JournalError,
    JournalMoved,
    JournalUnavailable,
    JournalWriteConflict,
)
from .lock import JournalLock, lock_holder
from .recorder import EVENT_FIELDS, FOLD_FIELDS, HISTORY_FIELDS, EventRow, OrderWrite, Recorder
from .schema import (
    MUTABLE_ORDER_COLUMNS,
    ORDER_COLUMNS,
    check_schema,
    migrate,
    missing_triggers,
    table_names,
)

__all__ = [
    "BUSY_TIMEOUT_MS",
    "EVENTS_UP_TO",
    "EVENT_COLUMNS",
    "INSERT_EVENT",
    "PROJECTED_COLUMNS",
    "TAKE_META",
    "UPSERT_ORDER",
    "SqliteRecorder",
    "Synchronous",
    "events_up_to_sql",
    "fold_stream_sql",
    "order_ids_of_kind_sql",
    "readonly_uri",
    "unfinished_orders_sql",
]

Synchronous = Literal["FULL", "NORMAL"]
BUSY_TIMEOUT_MS = 5000

EVENT_COLUMNS = ", ".join(EVENT_FIELDS)
_HISTORY_COLUMNS = ", ".join(HISTORY_FIELDS)
INSERT_EVENT = (
    f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({', '.join('?' for _ in EVENT_FIELDS)})"
)
# A projection row's values in this order, then the seq the journal gives its event.
PROJECTED_COLUMNS = tuple(c for c in ORDER_COLUMNS if c != "last_seq")
ORDER_ROW = (*PROJECTED_COLUMNS, "last_seq")
UPSERT_ORDER = (
    f"INSERT INTO orders ({', '.join(ORDER_ROW)}) "
    f"VALUES ({', '.join('?' for _ in ORDER_ROW)}) "
    f"ON CONFLICT(order_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in MUTABLE_ORDER_COLUMNS)
)
# The same change for an order whose row exists: binds a dozen values instead of twenty
# and skips the insert attempt; where it finds no row, the upsert runs.
_UPDATE_ORDER = (
    f"UPDATE orders SET {', '.join(f'{c} = ?' for c in MUTABLE_ORDER_COLUMNS)} WHERE order_id = ?"
)
MUTABLE_AT = tuple(ORDER_ROW.index(c) for c in MUTABLE_ORDER_COLUMNS)


def events_up_to_sql(after: str = ":after", last_seq: str = ":last_seq") -> str:
    """`Recorder.event_batches`' query, written once for both drivers: `after` and
    `last_seq` are the driver's named placeholders; sqlite3's are the ones the audit's
    helper process (engine/audit/feed.py) binds when it runs the same text."""
    return (
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > {after} AND seq <= {last_seq} ORDER BY seq"
    )


def fold_stream_sql(
    ends: Collection[str], after: str = ":after", last_seq: str = ":last_seq"
) -> str:
    """`Recorder.fold_batches`' query, as `events_up_to_sql`'s: `events_after` counted
    through UNIQUE(order_id, order_seq)."""
    columns = ["CASE WHEN order_seq = 1 THEN plan_id END" if c == "plan_id" else c
               for c in FOLD_FIELDS[:-1]]  # fmt: skip
    final = ", ".join("'" + state.replace("'", "''") + "'" for state in sorted(ends))
    return (
        f"SELECT {', '.join(columns)}, CASE WHEN to_state IN ({final}) THEN "
        "(SELECT count(*) FROM events AS mine WHERE mine.order_id = events.order_id "
        f"AND mine.seq <= {last_seq}) - order_seq END "
        f"FROM events WHERE seq > {after} AND seq <= {last_seq} ORDER BY seq"
    )


EVENTS_UP_TO = events_up_to_sql()


def order_ids_of_kind_sql(
    kind: str, order_id: str | None, plan_id: str | None, mark: str = "?"
) -> tuple[str, list[str]]:
    """`Recorder.order_ids_of_kind`'s query and its parameters."""
    where, params = [f"kind = {mark}"], [kind]
    for column, value in (("order_id", order_id), ("plan_id", plan_id)):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    return f"SELECT order_id FROM events WHERE {' AND '.join(where)} ORDER BY seq", params


def unfinished_orders_sql(ends: Collection[str], mark: str = "?") -> str:
    """`Recorder.unfinished_order_ids`' query: orders created and never moved into one of
    `ends`, by their events alone (two scans of events; no projection row is read)."""
    marks = ", ".join([mark] * len(ends))
    return (
        "SELECT order_id FROM events WHERE order_seq = 1 EXCEPT "
        f"SELECT order_id FROM events WHERE to_state IN ({marks})"
    )


# `Recorder.take_meta`'s statement (`?` as SQLite writes it); a prefix compared as text,
# not as a LIKE pattern, whose `_` would match any character.
TAKE_META = "DELETE FROM meta WHERE substr(key, 1, length(?)) = ? RETURNING value"


# An orders row as a verify reads it: last_seq CAST so a forged non-integer sorts and
# compares as a number (0) instead of after every seq.
STORED_ROW = "order_id, CAST(last_seq AS INTEGER), " + ", ".join(ORDER_COLUMNS)


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    if create:
        _create_private(path)
    elif not path.exists():
        raise JournalUnavailable(f"journal {path} does not exist", path=str(path))
    uri = _uri(path) if create else readonly_uri(path)
    try:
        # isolation_level=None: no implicit transactions; every write says BEGIN and COMMIT.
        return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalUnavailable(f"cannot open journal {path}: {exc}", path=str(path)) from exc


def _create_private(path: Path) -> None:
    """Create a new journal file 0600 before SQLite opens it (SQLite would make it 0644, and
    gives its -wal and -shm the file's mode); through a symlink too, to the file it names."""
    if path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        raise JournalUnavailable(
            f"cannot create journal {path}: {exc.strerror}", path=str(path)
        ) from exc


def _uri(path: Path, query: str = "") -> str:
    """SQLite's URI for `path`, escaped so a `?`, `#` or `%` in it stays part of the name,
    and from the name's bytes, so a name that is not UTF-8 (a byte the file system allows)
    is the file's own name, not a UnicodeEncodeError."""
    return f"file:{quote(os.fsencode(path))}" + (f"?{query}" if query else "")


def _file_identity(path: Path) -> tuple[int, int] | None:
    """The device and inode of the file at `path` (through a symlink), None if none is."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK, effective_ids=True)


def readonly_uri(path: str | Path) -> str:
    """How a reader opens the journal at `path`: `mode=ro`, beside a writer if one runs; or,
    when the file or its directory cannot be written, `immutable=1`, without the -shm file
    SQLite would otherwise need to create there (no writer can exist then).

    Immutable reading skips a -wal file, so a non-empty one is refused (JournalUnavailable)
    rather than its committed events silently left out.
    """
    path, real = Path(path), Path(os.path.realpath(path))
    if _writable(real) and _writable(real.parent):
        return _uri(path, "mode=ro")
    wal = real.with_name(real.name + "-wal")
    try:
        wal_bytes = wal.stat().st_size
    except FileNotFoundError:
        wal_bytes = 0
    if wal_bytes:
        raise JournalUnavailable(
            f"journal {path} is read-only beside a write-ahead log ({wal.name}, {wal_bytes} "
            "bytes) that may hold committed events a read-only reader would leave out: "
            f"checkpoint it where it is writable (sqlite3 {path} 'PRAGMA wal_checkpoint"
            "(TRUNCATE)'), or copy the journal and its -wal file to a writable directory and "
            "read the copy",
            path=str(path),
        )
    return _uri(path, "immutable=1")


def _unreadable(path: Path, exc: sqlite3.DatabaseError) -> JournalError:
    """SQLite could not read the file: busy past the timeout (a writer stopped mid-commit),
    a damaged journal, or not a database at all."""
    if "locked" in str(exc) or "busy" in str(exc):
        return JournalUnavailable(
            f"{path} is busy: another process holds it mid-write ({exc}); try again",
            path=str(path),
        )
    if "malformed" in str(exc):
        return JournalCorrupt(f"{path} is damaged (truncated or corrupted): {exc}", path=str(path))
    return JournalCorrupt(f"{path} is not a walkbook journal: {exc}", path=str(path))


def order_filter(
    plan_id: str | None, unless_state: Collection[str], table: str = "", mark: str = "?"
) -> tuple[str, list[str]]:
    """The WHERE clause (and its parameters) choosing `orders` rows of a plan, or not in
    some states; `table` prefixes the columns ("o."), `mark` is the driver's placeholder."""
    where, params = [], []
    if plan_id is not None:
        where.append(f"{table}plan_id = {mark}")
        params.append(plan_id)
    if unless_state:
        where.append(f"{table}state NOT IN ({', '.join(mark for _ in unless_state)})")
        params += list(unless_state)
    return (f" WHERE {' AND '.join(where)}" if where else ""), params


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


class SqliteRecorder(Recorder):
    """A journal file. `conn` is the plain sqlite3 connection, in autocommit mode: writes
    are explicit BEGIN ... COMMIT transactions."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: JournalLock | None) -> None:
        self.path: Path = path
        self.location = str(path)
        self.conn = conn
        self._lock = lock
        # a writer's file, to notice it deleted, moved or replaced under it (None: a reader)
        self._identity: tuple[int, int] | None = None
        # where everything journaled was saved once the file was found gone
        self._saved: Path | None = None
        self._closed = False

    @classmethod
    def open(cls, path: Path, *, synchronous: Synchronous, lock: bool) -> SqliteRecorder:
        """The writer's recorder (creating the file if needed, migrating an older schema),
        holding the file lock when `lock`."""
        if not path.parent.exists():
            raise JournalUnavailable(f"directory {path.parent} does not exist", path=str(path))
        journal_lock = JournalLock(path) if lock else None
        if journal_lock is not None:
            journal_lock.acquire(f"pid {os.getpid()} on {socket.gethostname()}")
        try:
            conn = _connect(path, create=True)
            with _closed_on_error(conn, path):
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                check_schema(conn)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                migrate(conn)
            recorder = cls(path, conn, journal_lock)
            recorder._identity = _file_identity(path)
            return recorder
        except BaseException:
            if journal_lock is not None:
                journal_lock.release()
            raise

    @classmethod
    def open_readonly(cls, path: Path) -> SqliteRecorder:
        """A reader's recorder, without the lock; an older schema is read as it is."""
        conn = _connect(path, create=False)
        with _closed_on_error(conn, path):
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            check_schema(conn)
            if "events" not in table_names(conn):
                raise JournalCorrupt(
                    f"{path} is not a walkbook journal (empty file)", path=str(path)
                )
        return cls(path, conn, None)

    def close(self) -> None:
        """A writer whose file was deleted or moved meanwhile saves what it journaled first
        (closing drops the last reference to a deleted file), and puts it back at its path
        when nothing else is there. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._saved is None and self._moved():
            with suppress(JournalMoved):
                self._saved = self._save_copy(anywhere=False)
        self.conn.close()
        if self._saved is not None and not os.path.lexists(self.path):
            self._put_back(self._saved)
        if self._lock is not None:
            self._lock.release()

    def _put_back(self, saved: Path) -> None:
        """The saved copy at the journal's path, once free. A -wal or -shm left there is the
        deleted file's (SQLite uses none without its database) and would be read as the
        copy's: it goes first. Should something take the path meanwhile, the copy stays."""
        for suffix in ("-wal", "-shm"):
            with suppress(OSError):
                os.unlink(f"{self.path}{suffix}")
        with suppress(OSError):
            os.link(saved, self.path)
            os.unlink(saved)

    def _moved(self) -> bool:
        """Whether the writer's file is no longer the one at its path."""
        return self._identity is not None and _file_identity(self.path) != self._identity

    def _save_copy(self, *, anywhere: bool) -> Path:
        """Everything journaled, read through the open connection (which still reaches the
        file when no name does), into a new file beside where the journal was, else
        (`anywhere`: a live writer's, its directory deleted too) in the working directory."""
        name = f"{self.path.name}.saved-{os.getpid()}"
        places = (self.path.with_name(name), Path.cwd() / name)
        for saved in places if anywhere else places[:1]:
            try:
                _create_private(saved)
            except JournalUnavailable:
                continue
            try:
                copy = sqlite3.connect(_uri(saved), uri=True)
                try:
                    self.conn.backup(copy)
                finally:
                    copy.close()
            except sqlite3.Error:
                saved.unlink(missing_ok=True)
                continue
            return saved
        raise JournalMoved(
            f"journal {self.path} was deleted or moved while this process wrote it, and no "
            "copy could be saved: this process holds the only one until it ends",
            path=str(self.path),
        )

    def _refuse_if_moved(self) -> None:
        """Once the writer's file is found deleted, moved or replaced, no append lands in it
        again (so, write-ahead, nothing more is sent); what it holds is saved first."""
        if self._saved is None:
            if not self._moved():
                return
            self._saved = self._save_copy(anywhere=True)
        raise JournalMoved(
            f"journal {self.path} was deleted, moved or replaced while this process wrote "
            f"it: nothing more is journaled; everything journaled is saved to {self._saved}, "
            f"put back at {self.path} when this process ends if nothing else is there",
            path=str(self.path),
            saved_to=str(self._saved),
        )

    # -- writing -----------------------------------------------------------------

    def insert(
        self, rows: Sequence[EventRow], order_rows: Sequence[OrderWrite], heartbeat_at: str | None
    ) -> None:
        """One transaction: the event rows, then the projection rows (each inserted for an
        order's first event, else updated), then COMMIT; first, a writer looks that its
        file is still the one at its path (one stat)."""
        self._refuse_if_moved()
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self.follows_tail(rows[0])
                # execute per row: executemany's set-up costs more than it saves for the
                # one or few rows of an append
                for row in rows:
                    conn.execute(INSERT_EVENT, row)
                for first, values in order_rows:
                    if first or not self._updated(values):
                        conn.execute(UPSERT_ORDER, values)
                if heartbeat_at is not None:
                    conn.execute("UPDATE owner SET heartbeat_at = ? WHERE id = 1", [heartbeat_at])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    # a failing ROLLBACK must not hide why the append failed
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise JournalWriteConflict(f"journal refused a duplicate write: {exc}") from exc
        except sqlite3.Error as exc:
            raise JournalUnavailable(f"journal append failed: {exc}", path=str(self.path)) from exc

    def _updated(self, values: list[Any]) -> bool:
        """Rewrite the changing columns of an existing orders row; False if there is none."""
        changed = [values[i] for i in MUTABLE_AT]
        return self.conn.execute(_UPDATE_ORDER, [*changed, values[0]]).rowcount == 1

    def begin_snapshot(self) -> None:
        self.conn.execute("BEGIN")

    def record_owner(self, pid: int, host: str, at: str) -> None:
        self.conn.execute(
            "INSERT INTO owner (id, pid, host, acquired_at, heartbeat_at) "
            "VALUES (1, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, host = excluded.host, "
            "acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at",
            [pid, host, at, at],
        )

    def set_meta(self, values: Mapping[str, str]) -> None:
        """Every key in one transaction: a check is recorded whole or not at all."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def take_meta(self, prefix: str) -> list[str]:
        rows = self.conn.execute(TAKE_META, [prefix, prefix]).fetchall()
        return [str(value) for (value,) in rows]

    # -- reading -----------------------------------------------------------------

    def tail(self) -> tuple[int, str] | None:
        row = self.conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def last_at(self) -> str | None:
        row = self.conn.execute("SELECT at FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    def last_order_seq(self, order_id: str) -> int:
        row = self.conn.execute(
            "SELECT max(order_seq) FROM events WHERE order_id = ?", [order_id]
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def hash_at(self, seq: int) -> str | None:
        row = self.conn.execute("SELECT hash FROM events WHERE seq = ?", [seq]).fetchone()
        return None if row is None else str(row[0])

    def event_rows(
        self, *, after_seq: int = 0, order_id: str | None = None, plan_id: str | None = None
    ) -> Iterator[EventRow]:
        where, params = ["seq > ?"], [after_seq]
        if order_id is not None:
            where.append("order_id = ?")
            params.append(order_id)  # type: ignore[arg-type]
        if plan_id is not None:
            where.append("plan_id = ?")
            params.append(plan_id)  # type: ignore[arg-type]
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        return iter(self.conn.execute(sql, params))

    def event_batch(self, after_seq: int, limit: int) -> list[EventRow]:
        return self.conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            [after_seq, limit],
        ).fetchall()

    def history_rows(
        self, plan_id: str | None, unless_state: Collection[str]
    ) -> Iterator[Sequence[Any]]:
        """One range scan over the stretch of the journal the matching orders span, from
        the oldest one's `created` event (found through UNIQUE(order_id, order_seq)) to the
        newest `last_seq` among their rows, keeping their events."""
        matching, params = order_filter(plan_id, unless_state, "o.")
        # Each matching order with its `created` seq: one read of the rows, whose ids then
        # keep the scan's rows by a set lookup (cheaper than `order_id IN (SELECT ...)`).
        found = self.conn.execute(
            "SELECT o.order_id, e.seq, o.last_seq FROM orders AS o LEFT JOIN events AS e "
            f"ON e.order_id = o.order_id AND e.order_seq = 1{matching}",
            params,
        ).fetchall()
        created = [seq for _, seq, _ in found if seq is not None]
        if not created:
            return
        first, last = min(created), max(last_seq for _, _, last_seq in found)
        order_ids = {order_id for order_id, _, _ in found}
        rows = self.conn.execute(
            f"SELECT {_HISTORY_COLUMNS} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
            [first, last],
        )
        for row in rows:
            if row[1] in order_ids:
                yield row

    def first_event_of_plan(self, plan_id: str) -> EventRow | None:
        row: EventRow | None = self.conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE order_id = "
            "(SELECT order_id FROM orders WHERE plan_id = ? ORDER BY rowid LIMIT 1) "
            "ORDER BY order_seq LIMIT 1",
            [plan_id],
        ).fetchone()
        return row

    def orders(self, plan_id: str | None, unless_state: Collection[str]) -> list[dict[str, Any]]:
        matching, params = order_filter(plan_id, unless_state)
        return _dicts(
            self.conn.execute(f"SELECT * FROM orders{matching} ORDER BY created_at, rowid", params)
        )

    def order(self, order_id: str) -> dict[str, Any] | None:
        rows = _dicts(self.conn.execute("SELECT * FROM orders WHERE order_id = ?", [order_id]))
        return rows[0] if rows else None

    def owner(self) -> dict[str, Any] | None:
        rows = _dicts(self.conn.execute("SELECT pid, host, acquired_at, heartbeat_at FROM owner"))
        return rows[0] if rows else None

    def meta(self, keys: Collection[str]) -> dict[str, str]:
        marks = ", ".join("?" for _ in keys)
        rows = self.conn.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", list(keys))
        return {str(key): str(value) for key, value in rows}

    def missing_guards(self) -> list[str]:
        return missing_triggers(self.conn)

    def holder(self) -> str | None:
        return lock_holder(self.path)

    def change_marker(self) -> object:
        """`PRAGMA data_version`: tells, without reading a row, whether anything committed."""
        version: int = self.conn.execute("PRAGMA data_version").fetchone()[0]
        return version

    # -- reading for an audit ----------------------------------------------------------

    def end_snapshot(self) -> None:
        self.conn.execute("COMMIT")

    def event_batches(self, after_seq: int, last_seq: int) -> Iterator[Iterable[EventRow]]:
        """One batch: the cursor, read a row at a time."""
        yield self.conn.execute(EVENTS_UP_TO, {"after": after_seq, "last_seq": last_seq})

    def fold_batches(
        self, after_seq: int, last_seq: int, ends: Collection[str]
    ) -> Iterator[Iterable[Sequence[Any]]]:
        """One batch: the cursor, read a row at a time."""
        yield self.conn.execute(fold_stream_sql(ends), {"after": after_seq, "last_seq": last_seq})

    def order_ids_of_kind(
        self, kind: str, *, order_id: str | None = None, plan_id: str | None = None
    ) -> list[str]:
        sql, params = order_ids_of_kind_sql(kind, order_id, plan_id)
        return [row[0] for row in self.conn.execute(sql, params)]

    def unfinished_order_ids(self, ends: Collection[str]) -> set[str]:
        return {row[0] for row in self.conn.execute(unfinished_orders_sql(ends), sorted(ends))}

    def order_event_rows(self, order_id: str) -> Iterator[EventRow]:
        return iter(
            self.conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE order_id = ? ORDER BY order_seq",
                [order_id],
            )
        )

    def order_event_count(self, order_id: str, last_seq: int) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM events WHERE order_id = ? AND seq <= ?", [order_id, last_seq]
        ).fetchone()
        return int(row[0])

    def row_claims(self) -> Iterator[tuple[str, int]]:
        return iter(
            self.conn.execute(
                "SELECT order_id, CAST(last_seq AS INTEGER) FROM orders ORDER BY 2, rowid"
            )
        )

    def stored_rows(self) -> Iterator[Sequence[Any]]:
        return iter(self.conn.execute(f"SELECT {STORED_ROW} FROM orders ORDER BY rowid"))

    def stored_row(self, order_id: str) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self.conn.execute(
            f"SELECT {STORED_ROW} FROM orders WHERE order_id = ?", [order_id]
        ).fetchone()
        return row


@contextmanager
def _closed_on_error(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """Opening a journal: any failure closes the connection; SQLite's own becomes the
    typed error naming the file."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _unreadable(path, exc) from exc
    except JournalError:
        conn.close()
        raise
