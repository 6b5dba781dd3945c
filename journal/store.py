"""The durable journal: append-only events with a hash chain and an `orders` projection.

Every append is one SQLite transaction holding the event row and, when given,
the new projection row of its order, so the projection can never disagree with
the events it was built from.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlite_utils import Database

from .chain import GENESIS_HASH, ChainBreak, canonical_json, event_hash, first_chain_break
from .errors import JournalCorrupt, JournalError, JournalUnavailable, JournalWriteConflict
from .lock import JournalLock
from .schema import ORDER_COLUMNS, check_schema, migrate

__all__ = ["Event", "Journal", "NewEvent", "Synchronous", "stamp"]

Synchronous = Literal["FULL", "NORMAL"]

HEARTBEAT_INTERVAL_SECONDS = 5.0
BUSY_TIMEOUT_MS = 5000

_EVENT_FIELDS = (
    "seq", "order_id", "order_seq", "plan_id", "at", "kind",
    "from_state", "to_state", "data", "prev_hash", "hash",
)  # fmt: skip
_EVENT_COLUMNS = ", ".join(_EVENT_FIELDS)
_INSERT_EVENT = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' for _ in _EVENT_FIELDS)})"
)
_UPSERT_ORDER = (
    f"INSERT INTO orders ({', '.join(ORDER_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in ORDER_COLUMNS)}) "
    f"ON CONFLICT(order_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ORDER_COLUMNS if c != "order_id")
)


def stamp(at: datetime) -> str:
    """The journal's text form of a time: ISO 8601 in UTC."""
    return at.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class NewEvent:
    """A fact to append; the journal assigns seq, order_seq, at and the hashes."""

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
            data=json.loads(row["data"]),
            prev_hash=row["prev_hash"],
            hash=row["hash"],
        )

    @property
    def at_datetime(self) -> datetime:
        return datetime.fromisoformat(self.at)


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    if create and not path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise JournalUnavailable(
                f"cannot create journal {path}: {exc.strerror}", path=str(path)
            ) from exc
    elif not path.exists():
        raise JournalUnavailable(f"journal {path} does not exist", path=str(path))
    uri = f"file:{path}" + ("" if create else "?mode=ro")
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise JournalUnavailable(f"cannot open journal {path}: {exc}", path=str(path)) from exc


def _unreadable(path: Path, exc: sqlite3.DatabaseError) -> JournalCorrupt:
    """SQLite could not read the file: a damaged journal, or not a database at all."""
    if "malformed" in str(exc):
        return JournalCorrupt(f"{path} is damaged (truncated or corrupted): {exc}", path=str(path))
    return JournalCorrupt(f"{path} is not a walkbook journal: {exc}", path=str(path))


class Journal:
    """A walkbook journal file. Open with `Journal.open` (writer) or `Journal.open_readonly`."""

    def __init__(self, path: Path, db: Database, lock: JournalLock | None) -> None:
        self.path = path
        self.db = db
        self._lock = lock
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._order_seqs: dict[str, int] = {}
        self._last_heartbeat = 0.0
        row = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
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
        """Open (creating if needed) a journal for writing, owned by this process."""
        path = Path(path)
        if not path.parent.exists():
            raise JournalUnavailable(f"directory {path.parent} does not exist", path=str(path))
        journal_lock = JournalLock(path) if lock else None
        if journal_lock is not None:
            journal_lock.acquire(f"pid {os.getpid()} on {socket.gethostname()}")
        try:
            conn = _connect(path, create=True)
            db = Database(conn)
            try:
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                check_schema(db)
                db.execute("PRAGMA journal_mode = WAL")
                db.execute(f"PRAGMA synchronous = {synchronous}")
                migrate(db)
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise _unreadable(path, exc) from exc
            except JournalError:
                conn.close()
                raise
            journal = cls(path, db, journal_lock)
            if journal_lock is not None:
                journal._record_owner()
            return journal
        except BaseException:
            if journal_lock is not None:
                journal_lock.release()
            raise

    @classmethod
    def open_readonly(cls, path: str | Path) -> Journal:
        """Open an existing journal to read, without the lock: safe while another process writes."""
        path = Path(path)
        conn = _connect(path, create=False)
        db = Database(conn)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            check_schema(db)
            if "events" not in db.table_names():
                raise JournalCorrupt(
                    f"{path} is not a walkbook journal (empty file)", path=str(path)
                )
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _unreadable(path, exc) from exc
        except JournalError:
            conn.close()
            raise
        return cls(path, db, None)

    def close(self) -> None:
        self.db.conn.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------

    def _record_owner(self) -> None:
        now = datetime.now(UTC).isoformat()
        with self.db.atomic():
            self.db.execute(
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
            row = self.db.execute(
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
        """Durably append one event (and its order's projection) in one transaction."""
        return self.append_many([(event, projection)], at=at)[0]

    def append_many(
        self,
        items: Sequence[tuple[NewEvent, Mapping[str, Any] | None]],
        *,
        at: datetime,
    ) -> list[Event]:
        """Append several events in one commit (group commit); all or none are stored."""
        at_text = stamp(at)
        seq, prev_hash = self._last_seq, self._last_hash
        order_seqs: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        projections: list[Mapping[str, Any]] = []
        for event, projection in items:
            seq += 1
            order_seq: int | None = None
            if event.order_id is not None:
                order_seq = order_seqs.get(event.order_id) or self._next_order_seq(event.order_id)
                assert order_seq is not None
                order_seqs[event.order_id] = order_seq + 1
            row = {
                "seq": seq,
                "order_id": event.order_id,
                "order_seq": order_seq,
                "plan_id": event.plan_id,
                "at": at_text,
                "kind": event.kind,
                "from_state": event.from_state,
                "to_state": event.to_state,
                "data": canonical_json(dict(event.data)),
                "prev_hash": prev_hash,
            }
            row["hash"] = prev_hash = event_hash(row)
            rows.append(row)
            if projection is not None:
                projections.append({**projection, "last_seq": seq})
        try:
            with self.db.atomic():
                conn = self.db.conn
                for row in rows:
                    conn.execute(_INSERT_EVENT, [row[c] for c in _EVENT_FIELDS])
                for projection in projections:
                    conn.execute(_UPSERT_ORDER, [projection[c] for c in ORDER_COLUMNS])
                self._heartbeat_if_due()
        except sqlite3.IntegrityError as exc:
            raise JournalWriteConflict(f"journal refused a duplicate write: {exc}") from exc
        except sqlite3.Error as exc:
            raise JournalUnavailable(f"journal append failed: {exc}", path=str(self.path)) from exc
        self._last_seq, self._last_hash = seq, prev_hash
        for order_id, next_seq in order_seqs.items():
            self._order_seqs[order_id] = next_seq - 1
        return [Event.from_row(row) for row in rows]

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if self._lock is not None and now - self._last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            self.db.conn.execute(
                "UPDATE owner SET heartbeat_at = ? WHERE id = 1", [datetime.now(UTC).isoformat()]
            )
            self._last_heartbeat = now

    # -- reading -----------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def last_at(self) -> datetime | None:
        """Time of the newest event, or None for an empty journal."""
        row = self.db.execute("SELECT at FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

    def events(
        self,
        *,
        order_id: str | None = None,
        plan_id: str | None = None,
        after_seq: int = 0,
    ) -> Iterator[Event]:
        """Stream events in seq order, optionally for one order or one plan."""
        where, params = ["seq > ?"], [after_seq]
        if order_id is not None:
            where.append("order_id = ?")
            params.append(order_id)  # type: ignore[arg-type]
        if plan_id is not None:
            where.append("plan_id = ?")
            params.append(plan_id)  # type: ignore[arg-type]
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        for row in self.db.query(sql, params):
            yield Event.from_row(row)

    def orders(self, *, plan_id: str | None = None) -> list[dict[str, Any]]:
        """The `orders` projection, oldest first."""
        if plan_id is None:
            return list(self.db.query("SELECT * FROM orders ORDER BY created_at, order_id"))
        return list(
            self.db.query(
                "SELECT * FROM orders WHERE plan_id = ? ORDER BY created_at, order_id", [plan_id]
            )
        )

    def order(self, order_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM orders WHERE order_id = ?", [order_id]))
        return rows[0] if rows else None

    def owner(self) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT pid, host, acquired_at, heartbeat_at FROM owner"))
        return rows[0] if rows else None

    def verify_chain(self) -> ChainBreak | None:
        """The first break in seq continuity or the hash chain, or None when intact."""
        return first_chain_break(self.db.query(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY seq"))
