"""The fenced owner lease of a PostgreSQL journal: one row naming the owner, its epoch and
when its hold ends, by the database's clock, so no host's clock matters.

A writer takes the lease when it is free or has run out (the epoch goes up by one) and
renews it from a daemon thread on a connection of its own, every third of its length. A
process that stops (SIGSTOP, a partition, a stalled host) stops renewing, so its lease runs
out and a standby takes the next epoch. Every append checks, inside its own transaction,
that the lease is still this process's epoch and live; a renewal that finds another epoch,
or one that comes too late, fences this process for good (fail closed). docs/scale-out.md.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg

from .errors import JournalLeaseLost, JournalLocked

__all__ = [
    "LEASE_TABLE",
    "Lease",
    "LeaseHolder",
    "create_lease_table",
    "lease_holder",
]

LEASE_TABLE = "lease"

_CREATE: LiteralString = """
    CREATE TABLE lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        token TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        acquired_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )
"""
# Taken when there is no row or its lease has run out; ON CONFLICT locks the row, so two
# takers in a race get consecutive epochs, one after the other, never the same one.
_TAKE: LiteralString = """
    INSERT INTO lease AS held (id, pid, host, token, epoch, acquired_at, expires_at)
    VALUES (1, %(pid)s, %(host)s, %(token)s, 1, clock_timestamp(),
            clock_timestamp() + %(seconds)s * interval '1 second')
    ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, host = excluded.host,
        token = excluded.token, epoch = held.epoch + 1, acquired_at = excluded.acquired_at,
        expires_at = excluded.expires_at
    WHERE held.expires_at <= clock_timestamp()
    RETURNING epoch
"""
_HOLDER: LiteralString = """
    SELECT pid, host, epoch, expires_at,
           extract(epoch FROM expires_at - clock_timestamp())::float8
    FROM lease WHERE id = 1
"""
_RENEW: LiteralString = """
    UPDATE lease SET expires_at = clock_timestamp() + %(seconds)s * interval '1 second'
    WHERE id = 1 AND epoch = %(epoch)s AND token = %(token)s AND expires_at > clock_timestamp()
    RETURNING epoch
"""
_RELEASE: LiteralString = """
    UPDATE lease SET expires_at = clock_timestamp()
    WHERE id = 1 AND epoch = %(epoch)s AND token = %(token)s AND expires_at > clock_timestamp()
"""


def create_lease_table(conn: psycopg.Connection[Any]) -> None:
    """The migration's step (journal/postgres.py): the table, empty until a writer takes it."""
    conn.execute(_CREATE)


@dataclass(frozen=True)
class LeaseHolder:
    """Who held the lease when asked, and for how long yet (negative: it has run out)."""

    pid: int
    host: str
    epoch: int
    expires_at: str
    seconds_left: float

    @property
    def live(self) -> bool:
        return self.seconds_left > 0

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


def lease_holder(conn: psycopg.Connection[Any]) -> LeaseHolder | None:
    """The lease row as the database's clock sees it now, or None when none was ever taken."""
    row = conn.execute(_HOLDER).fetchone()
    if row is None:
        return None
    pid, host, epoch, expires_at, seconds_left = row
    return LeaseHolder(int(pid), str(host), int(epoch), expires_at.isoformat(), seconds_left)


class Lease:
    """This process's hold on one journal: taken by `take`, renewed by a daemon thread until
    `release`. `check` and `refused` fence an append; `lost` says why this process may no
    longer write."""

    def __init__(
        self, url: str, location: str, seconds: float, epoch: int, token: str, deadline: float
    ) -> None:
        self.location = location
        self.seconds = seconds
        self.epoch = epoch
        self._url = url
        self._token = token
        # by the monotonic clock, which runs on while the process is stopped: past it, the
        # database may have given the lease to another process, so this one writes nothing
        self._deadline = deadline
        self.lost: JournalLeaseLost | None = None
        self._losing = threading.Lock()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_stopped, daemon=True)

    @classmethod
    def take(cls, conn: psycopg.Connection[Any], url: str, location: str, seconds: float) -> Lease:
        """Take the lease with the next epoch, or JournalLocked naming the live holder and
        when its lease runs out; the renewing thread starts with it."""
        token = secrets.token_hex(16)
        started = time.monotonic()
        with conn.transaction():
            params = {"pid": os.getpid(), "host": socket.gethostname(), "token": token}
            row = conn.execute(_TAKE, {**params, "seconds": seconds}).fetchone()
            holder = None if row is not None else lease_holder(conn)
        if row is None:
            assert holder is not None  # the conflict was on its row
            raise JournalLocked(
                f"journal is in use by {holder} (its lease, epoch {holder.epoch}, runs to "
                f"{holder.expires_at}, {holder.seconds_left:.1f} s from now unless renewed)",
                location=location,
                owner=str(holder),
                epoch=holder.epoch,
                expires_at=holder.expires_at,
            )
        lease = cls(url, location, seconds, int(row[0]), token, started + seconds)
        lease._renewer.start()
        return lease

    @property
    def _params(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "token": self._token, "seconds": self.seconds}

    def check(self, conn: psycopg.Connection[Any]) -> tuple[int, str]:
        """Before an append: JournalLeaseLost when this process is fenced or its deadline
        has passed; else the epoch and token the append's own transaction checks the lease
        row against, live by the database's clock (journal/postgres.py, walkbook_append)."""
        if self.lost is None and time.monotonic() >= self._deadline:
            self._fence(conn)
        if self.lost is not None:
            raise self.lost
        return self.epoch, self._token

    def refused(self, conn: psycopg.Connection[Any]) -> JournalLeaseLost:
        """The database refused an append: the lease row is another epoch's, or it ran out by
        the database's clock. This process is fenced for good."""
        self._fence(conn)
        assert self.lost is not None  # _fence sets it
        return self.lost

    def _fence(self, conn: psycopg.Connection[Any]) -> None:
        """Give up the lease for good, naming who holds it now (as the database says)."""
        try:
            holder = lease_holder(conn)
        except psycopg.Error:
            holder = None
        self._set_lost(holder)

    def _set_lost(self, holder: LeaseHolder | None) -> None:
        """Fenced for good, naming the process that took the lease over, if one did."""
        if holder is None or holder.epoch == self.epoch:
            holder, now = None, "no process has taken it over yet"
        elif holder.live:
            now = f"now held by {holder} (epoch {holder.epoch})"
        else:
            now = f"taken over by {holder} (epoch {holder.epoch}), which has let it go since"
        with self._losing:
            if self.lost is None:
                self.lost = JournalLeaseLost(
                    f"journal lease lost: this process's epoch {self.epoch} ran out; {now}",
                    location=self.location,
                    epoch=self.epoch,
                    owner=None if holder is None else str(holder),
                    owner_epoch=None if holder is None else holder.epoch,
                    owner_live=holder is not None and holder.live,
                )
        self._stop.set()

    def overdue(self) -> JournalLeaseLost | None:
        """After an append failed in the database: the lease lost, when this process's
        deadline passed (a connection the server ended while this process stood stopped in a
        transaction), asked of the database on a connection of its own; else None."""
        if self.lost is None and time.monotonic() >= self._deadline:
            try:
                with self._connect() as conn:
                    holder = lease_holder(conn)
            except psycopg.Error:
                holder = None
            self._set_lost(holder)
        return self.lost

    def release(self, conn: psycopg.Connection[Any]) -> None:
        """Stop renewing and end the lease now on the writer's `conn`, if it is still this
        process's, so the next owner need not wait for it to run out. A renewal stuck on
        a network that went away is not waited for beyond a lease's length."""
        self._stop.set()
        if self._renewer.is_alive():
            self._renewer.join(self.seconds)
        if self.lost is not None:
            return
        with suppress(psycopg.Error):  # else it runs out on its own, by the database's clock
            conn.execute(_RELEASE, self._params)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=5)

    def _renew_until_stopped(self) -> None:
        """Every third of the lease: extend it, or fence this process when the lease is
        another's or ran out first. A failed renewal is tried again on a new connection
        until the deadline passes."""
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._stop.wait(self.seconds / 3):
                started = time.monotonic()
                try:
                    conn = conn or self._connect()
                    late = started >= self._deadline
                    if late or conn.execute(_RENEW, self._params).fetchone() is None:
                        self._set_lost(lease_holder(conn))
                        return
                except psycopg.Error:
                    if started >= self._deadline:
                        self._set_lost(None)
                        return
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                self._deadline = started + self.seconds
        finally:
            if conn is not None:
                conn.close()
