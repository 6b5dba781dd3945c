"""The durable journal: append-only events with a hash chain and an `orders` projection.

Every append is one SQLite transaction holding the event row and, when given,
the new projection row of its order, so the projection can never disagree with
the events it was built from.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Unpack
from urllib.parse import quote

from .chain import (
    GENESIS_HASH,
    ChainBreak,
    body_json,
    canonical_json,
    decode_json,
    first_chain_break,
    hash_body,
)
from .errors import JournalCorrupt, JournalError, JournalUnavailable, JournalWriteConflict
from .lock import JournalLock
from .schema import MUTABLE_ORDER_COLUMNS, ORDER_COLUMNS, check_schema, migrate, table_names

if TYPE_CHECKING:
    from .follow import FollowOptions

__all__ = [
    "Event",
    "HistoryRow",
    "Journal",
    "NewEvent",
    "Synchronous",
    "readonly_uri",
    "stamp",
]

Synchronous = Literal["FULL", "NORMAL"]
# An order event as a fold reads it (`Journal.order_history`):
# seq, order_id, plan_id, at, kind, to_state and the decoded data.
HistoryRow = tuple[int, str, str | None, str, str, str | None, dict[str, Any]]

HEARTBEAT_INTERVAL_SECONDS = 5.0
BUSY_TIMEOUT_MS = 5000
# Orders whose last order_seq a writer keeps in memory, the most recently appended to last;
# an older order's is read from UNIQUE(order_id, order_seq) again, so a writer that runs
# for months does not keep one entry per order it ever wrote.
ORDER_SEQS_KEPT = 10_000

_EVENT_FIELDS = (
    "seq", "order_id", "order_seq", "plan_id", "at", "kind",
    "from_state", "to_state", "data", "prev_hash", "hash",
)  # fmt: skip
_EVENT_COLUMNS = ", ".join(_EVENT_FIELDS)
_HISTORY_COLUMNS = "seq, order_id, plan_id, at, kind, to_state, data"
_INSERT_EVENT = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' for _ in _EVENT_FIELDS)})"
)
# A projection row's values in this order, then the seq the journal gives its event.
_PROJECTED_COLUMNS = tuple(c for c in ORDER_COLUMNS if c != "last_seq")
_ORDER_ROW = (*_PROJECTED_COLUMNS, "last_seq")
_UPSERT_ORDER = (
    f"INSERT INTO orders ({', '.join(_ORDER_ROW)}) "
    f"VALUES ({', '.join('?' for _ in _ORDER_ROW)}) "
    f"ON CONFLICT(order_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in MUTABLE_ORDER_COLUMNS)
)
# The same change for an order whose row exists: binds a dozen values instead of twenty
# and skips the insert attempt; where it finds no row, the upsert runs.
_UPDATE_ORDER = (
    f"UPDATE orders SET {', '.join(f'{c} = ?' for c in MUTABLE_ORDER_COLUMNS)} WHERE order_id = ?"
)
_MUTABLE_AT = tuple(_ORDER_ROW.index(c) for c in MUTABLE_ORDER_COLUMNS)


def stamp(at: datetime) -> str:
    """The journal's text form of a time: ISO 8601 in UTC."""
    return (at if at.tzinfo is UTC else at.astimezone(UTC)).isoformat()


@dataclass(frozen=True)
class NewEvent:
    """A fact to append; the journal assigns seq, order_seq, at and the hashes.

    `data` is a JSON object: str keys, JSON values (Decimals are written as strings).
    """

    kind: str
    order_id: str | None = None
    plan_id: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A journaled fact exactly as stored."""

    seq: int
    order_id: str | None
    order_seq: int | None
    plan_id: str | None
    at: str
    kind: str
    from_state: str | None
    to_state: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        return cls(
            seq=row["seq"],
            order_id=row["order_id"],
            order_seq=row["order_seq"],
            plan_id=row["plan_id"],
            at=row["at"],
            kind=row["kind"],
            from_state=row["from_state"],
            to_state=row["to_state"],
            data=decode_json(row["data"]),
            prev_hash=row["prev_hash"],
            hash=row["hash"],
        )

    @classmethod
    def from_values(cls, row: Sequence[Any]) -> Event:
        """From a row selected as `seq, order_id, ..., prev_hash, hash` (the stored order)."""
        return cls._filled(row, decode_json(row[8]))

    @classmethod
    def _filled(cls, row: Sequence[Any], data: dict[str, Any]) -> Event:
        """The event of a stored row and its decoded data, its fields set as one dict
        rather than through the frozen `__init__`: every append and every row a resume
        reads builds one (docs/benchmarks.md, "Speed tricks")."""
        seq, order_id, order_seq, plan_id, at, kind, from_state, to_state, _, prev, hash_ = row
        event = object.__new__(cls)
        object.__setattr__(
            event,
            "__dict__",
            {
                "seq": seq,
                "order_id": order_id,
                "order_seq": order_seq,
                "plan_id": plan_id,
                "at": at,
                "kind": kind,
                "from_state": from_state,
                "to_state": to_state,
                "data": data,
                "prev_hash": prev,
                "hash": hash_,
            },
        )
        return event

    @property
    def at_datetime(self) -> datetime:
        return datetime.fromisoformat(self.at)


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
    """SQLite's URI for `path`, escaped so a `?`, `#` or `%` in it stays part of the name."""
    return f"file:{quote(str(path))}" + (f"?{query}" if query else "")


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


def _order_filter(
    plan_id: str | None, unless_state: Collection[str], table: str = ""
) -> tuple[str, list[str]]:
    """The WHERE clause (and its parameters) choosing `orders` rows of a plan, or not in
    some states; `table` prefixes the columns ("o.")."""
    where, params = [], []
    if plan_id is not None:
        where.append(f"{table}plan_id = ?")
        params.append(plan_id)
    if unless_state:
        where.append(f"{table}state NOT IN ({', '.join('?' for _ in unless_state)})")
        params += list(unless_state)
    return (f" WHERE {' AND '.join(where)}" if where else ""), params


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


class Journal:
    """A walkbook journal file. Open with `Journal.open` (writer) or `Journal.open_readonly`.

    `conn` is the plain sqlite3 connection, in autocommit mode: writes are explicit
    BEGIN ... COMMIT transactions.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: JournalLock | None) -> None:
        self.path = path
        self.conn = conn
        self._lock = lock
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._order_seqs: OrderedDict[str, int] = OrderedDict()
        self.order_seqs_kept = ORDER_SEQS_KEPT
        self._last_heartbeat = 0.0
        # called after each commit with its seconds and the events it stored (engine/metrics.py
        # times commits with it); an observer must not raise: the events are already stored
        self.commit_observers: list[Callable[[float, list[Event]], None]] = []
        row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            self._last_seq, self._last_hash = int(row[0]), str(row[1])

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        lock: bool = True,
    ) -> Journal:
        """Open (creating if needed) a journal for writing, owned by this process.

        A journal written by an older walkbook is migrated to the current schema first.
        """
        path = Path(path)
        if not path.parent.exists():
            raise JournalUnavailable(f"directory {path.parent} does not exist", path=str(path))
        journal_lock = JournalLock(path) if lock else None
        if journal_lock is not None:
            journal_lock.acquire(f"pid {os.getpid()} on {socket.gethostname()}")
        try:
            conn = _connect(path, create=True)
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                check_schema(conn)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                migrate(conn)
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise _unreadable(path, exc) from exc
            except JournalError:
                conn.close()
                raise
            journal = cls(path, conn, journal_lock)
            if journal_lock is not None:
                journal._record_owner()
            return journal
        except BaseException:
            if journal_lock is not None:
                journal_lock.release()
            raise

    @classmethod
    def open_readonly(cls, path: str | Path) -> Journal:
        """Open an existing journal to read, without the lock: safe while another process writes.

        A read-only journal (file or directory) is read without writing anything beside it
        (`readonly_uri`). An older schema is read as it is (a reader never migrates); every
        query here reads both.
        """
        path = Path(path)
        conn = _connect(path, create=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            check_schema(conn)
            if "events" not in table_names(conn):
                raise JournalCorrupt(
                    f"{path} is not a walkbook journal (empty file)", path=str(path)
                )
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _unreadable(path, exc) from exc
        except JournalError:
            conn.close()
            raise
        return cls(path, conn, None)

    def close(self) -> None:
        self.conn.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------

    def _record_owner(self) -> None:
        now = datetime.now(UTC).isoformat()
        self.conn.execute(
            "INSERT INTO owner (id, pid, host, acquired_at, heartbeat_at) "
            "VALUES (1, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, host = excluded.host, "
            "acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at",
            [os.getpid(), socket.gethostname(), now, now],
        )
        self._last_heartbeat = time.monotonic()

    def _next_order_seq(self, order_id: str | None) -> int | None:
        if order_id is None:
            return None
        last = self._order_seqs.get(order_id)
        if last is None:
            row = self.conn.execute(
                "SELECT max(order_seq) FROM events WHERE order_id = ?", [order_id]
            ).fetchone()
            last = int(row[0]) if row and row[0] is not None else 0
        return last + 1

    def append(
        self,
        event: NewEvent,
        *,
        at: datetime,
        projection: Mapping[str, Any] | None = None,
    ) -> Event:
        """Durably append one event (and its order's projection) in one transaction.

        The event is stored as seq `last_seq + 1` or not at all: a journal that moved
        on under this writer refuses the append (`JournalWriteConflict`).
        """
        return self.append_many([(event, projection)], at=at)[0]

    def append_many(
        self,
        items: Sequence[tuple[NewEvent, Mapping[str, Any] | None]],
        *,
        at: datetime,
    ) -> list[Event]:
        """Append several events in one commit (group commit); all or none are stored.

        Each projection is its order's whole `orders` row; its `last_seq` is the seq
        its event is stored at. The row is inserted for a new order, and for a known
        one only the columns an event can change are rewritten.
        """
        at_text = stamp(at)
        seq, prev_hash = self._last_seq, self._last_hash
        order_seqs: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        order_rows: list[tuple[bool, list[Any]]] = []
        stored: list[Event] = []
        for event, projection in items:
            seq += 1
            order_id, order_seq = event.order_id, None
            if order_id is not None:
                order_seq = order_seqs.get(order_id) or self._next_order_seq(order_id)
                assert order_seq is not None
                order_seqs[order_id] = order_seq + 1
            data = dict(event.data)
            values = (
                seq, order_id, order_seq, event.plan_id, at_text, event.kind,
                event.from_state, event.to_state, canonical_json(data), prev_hash,
            )  # fmt: skip
            row = (*values, hash_body(prev_hash, body_json(*values)))
            rows.append(row)
            stored.append(Event._filled(row, data))
            prev_hash = row[-1]
            if projection is not None:
                row_values = [*map(projection.__getitem__, _PROJECTED_COLUMNS), seq]
                order_rows.append((order_seq == 1, row_values))
        started = time.perf_counter()
        self._commit(rows, order_rows)
        seconds = time.perf_counter() - started
        self._last_seq, self._last_hash = seq, prev_hash
        known = self._order_seqs
        for order_id, next_seq in order_seqs.items():
            known[order_id] = next_seq - 1
            known.move_to_end(order_id)
        while len(known) > self.order_seqs_kept:
            known.popitem(last=False)
        for observer in self.commit_observers:
            observer(seconds, stored)
        return stored

    def _commit(
        self, rows: list[tuple[Any, ...]], order_rows: list[tuple[bool, list[Any]]]
    ) -> None:
        """One transaction: the event rows, then the projection rows (each inserted for an
        order's first event, else updated), then COMMIT."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # execute per row: executemany's set-up costs more than it saves for the
                # one or few rows of an append
                for row in rows:
                    conn.execute(_INSERT_EVENT, row)
                for first, values in order_rows:
                    if first or not self._updated(values):
                        conn.execute(_UPSERT_ORDER, values)
                self._heartbeat_if_due()
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
        changed = [values[i] for i in _MUTABLE_AT]
        return self.conn.execute(_UPDATE_ORDER, [*changed, values[0]]).rowcount == 1

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if self._lock is not None and now - self._last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            self.conn.execute(
                "UPDATE owner SET heartbeat_at = ? WHERE id = 1", [datetime.now(UTC).isoformat()]
            )
            self._last_heartbeat = now

    # -- reading -----------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def last_at(self) -> datetime | None:
        """Time of the newest event, or None for an empty journal."""
        row = self.conn.execute("SELECT at FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

    def events(
        self,
        *,
        order_id: str | None = None,
        plan_id: str | None = None,
        after_seq: int = 0,
    ) -> Iterator[Event]:
        """Stream events in seq order, optionally for one order or one plan.

        By plan this scans the journal; `order_history` finds a plan's orders' events
        through the `orders` table instead.
        """
        where, params = ["seq > ?"], [after_seq]
        if order_id is not None:
            where.append("order_id = ?")
            params.append(order_id)  # type: ignore[arg-type]
        if plan_id is not None:
            where.append("plan_id = ?")
            params.append(plan_id)  # type: ignore[arg-type]
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        for row in self.conn.execute(sql, params):
            yield Event.from_values(row)

    def follow(self, from_seq: int = 0, **options: Unpack[FollowOptions]) -> Iterator[Event]:
        """Every event after `from_seq`, in seq order, as it commits (journal/follow.py)."""
        from .follow import follow  # here: journal.follow builds on this module

        return follow(self, from_seq, **options)

    def order_history(
        self, *, plan_id: str | None = None, unless_state: Collection[str] = ()
    ) -> Iterator[HistoryRow]:
        """What folding each order whose `orders` row matches needs of its events, in seq order.

        One range scan over the stretch of the journal those orders span, from the oldest
        one's `created` event (found through UNIQUE(order_id, order_seq)) to the newest
        `last_seq` among their rows, keeping their events; only the columns a fold reads
        and no `Event` per row (docs/benchmarks.md, "Speed tricks"). Orders interleave,
        each order's events in its own order: what a fold per order needs.
        """
        matching, params = _order_filter(plan_id, unless_state, "o.")
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
        for seq, order_id, plan, at, kind, to_state, data in rows:
            if order_id in order_ids:
                yield seq, order_id, plan, at, kind, to_state, decode_json(data)

    def first_event_of_plan(self, plan_id: str) -> Event | None:
        """The first event of the plan's first order (its `created`), or None for an unknown plan.

        Every order of a plan is created in one commit, so that first event carries
        what the plan was delivered with.
        """
        row = self.conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id = "
            "(SELECT order_id FROM orders WHERE plan_id = ? ORDER BY rowid LIMIT 1) "
            "ORDER BY order_seq LIMIT 1",
            [plan_id],
        ).fetchone()
        return None if row is None else Event.from_values(row)

    def orders(
        self, *, plan_id: str | None = None, unless_state: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """The `orders` projection, oldest first; of one plan, or without some states."""
        matching, params = _order_filter(plan_id, unless_state)
        return _dicts(
            self.conn.execute(f"SELECT * FROM orders{matching} ORDER BY created_at, rowid", params)
        )

    def order(self, order_id: str) -> dict[str, Any] | None:
        rows = _dicts(self.conn.execute("SELECT * FROM orders WHERE order_id = ?", [order_id]))
        return rows[0] if rows else None

    def owner(self) -> dict[str, Any] | None:
        rows = _dicts(self.conn.execute("SELECT pid, host, acquired_at, heartbeat_at FROM owner"))
        return rows[0] if rows else None

    def verify_chain(self) -> ChainBreak | None:
        """The first break in seq continuity or the hash chain, or None when intact."""
        cursor = self.conn.cursor()
        cursor.row_factory = sqlite3.Row
        rows = cursor.execute(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY seq")
        return first_chain_break(rows)
