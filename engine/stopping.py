"""Stopping orders on purpose: which orders must stop and why, and halt requests between processes.

A stop is cooperative. A walk checks for a stop request before every new placement and
while it waits on the broker, and then cancels what it has live (write-ahead, like any
side effect) instead of being interrupted in the middle of a broker call whose answer
the journal would then lack. `walkbook halt` reaches a process that holds the journal
through a request every engine walking orders polls: a file beside a journal file, or a
`meta` row of a journal in a database (`HALT_REQUEST_PREFIX`), the server being the one
place both processes reach there. Each requester writes a request of its own name, and
the owner takes each one whole (read, then removed; in a database one DELETE ...
RETURNING), so no request overwrites, or is cleared with, another.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from journal import Journal
from journal.location import is_database_url

from .files import open_private
from .fsm import FailReason

__all__ = [
    "HALT_REQUEST_PREFIX",
    "HaltRequest",
    "StopRequested",
    "StopRequests",
    "clear_halt_request",
    "halt_request_paths",
    "take_halt_requests",
    "write_halt_request",
]

T = TypeVar("T")
STOP_REASONS = frozenset({FailReason.CANCELLED, FailReason.ABANDONED})
# The meta keys of a journal-in-a-database's pending requests, one per requester.
HALT_REQUEST_PREFIX = "halt_request:"
_STAGING = ".new"


class StopRequested(Exception):
    """Raised inside a walk that must stop; the walk then cancels what it has live."""

    def __init__(self, reason: FailReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class StopRequests:
    """The orders that must stop (all, by plan, by order) and the reason each ends with.

    Walks that wait on the broker wake when a request arrives. The wake-up event is made
    for the running event loop on first use, so one engine serves several `asyncio.run`s.
    """

    def __init__(self) -> None:
        self.everything: FailReason | None = None
        self.plans: dict[str, FailReason] = {}
        self.orders: dict[str, FailReason] = {}
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def reason_for(self, order_id: str | None, plan_id: str | None) -> FailReason | None:
        """Why this order (or, without one, this plan) must stop, or None when it may go on."""
        found = None if order_id is None else self.orders.get(order_id)
        if found is None and plan_id is not None:
            found = self.plans.get(plan_id)
        return found or self.everything

    def stop_all(self, reason: FailReason) -> None:
        self.everything = reason
        self._wake()

    def stop_plan(self, plan_id: str, reason: FailReason) -> None:
        self.plans[plan_id] = reason
        self._wake()

    def stop_order(self, order_id: str, reason: FailReason) -> None:
        self.orders[order_id] = reason
        self._wake()

    def _wake(self) -> None:
        # waiters hold the old event; a fresh one serves the next wait
        if self._changed is not None:
            self._changed.set()
        self._changed = None

    def _event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:
            self._changed, self._loop = asyncio.Event(), loop
        return self._changed

    async def wait_or_stop(
        self, call: Callable[[], Awaitable[T]], order_id: str | None, plan_id: str | None
    ) -> T:
        """The answer of a broker read (or of reads only), unless a stop for this order (or
        this plan) arrives first: then the read is abandoned (a read changes nothing at the
        broker) and StopRequested raised."""
        reason = self.reason_for(order_id, plan_id)
        if reason is not None:
            raise StopRequested(reason)
        read = asyncio.ensure_future(call())
        try:
            while True:
                woken = asyncio.ensure_future(self._event().wait())
                try:
                    await asyncio.wait({read, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
                if read.done():
                    return read.result()
                reason = self.reason_for(order_id, plan_id)
                if reason is not None:
                    raise StopRequested(reason)
        finally:
            if not read.done():
                read.cancel()


@dataclass(frozen=True)
class HaltRequest:
    """What `walkbook halt` or `walkbook abandon` asks of the process holding a journal."""

    plan_id: str | None
    reason: FailReason
    target_pid: int

    def to_json(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "reason": self.reason.value, "target_pid": self.target_pid}


def halt_request_paths(journal_path: Path) -> list[Path]:
    """The requests pending beside a journal file (resolved, so every spelling of it agrees):
    `<journal>.halt.<requester>`, one per requester."""
    resolved = journal_path.resolve()
    prefix = f"{resolved.name}.halt."
    # the prefix compared as text: as a glob pattern, a journal named `j[1].db` would look
    # for `j1.db.halt.*` and never see its own requests
    with os.scandir(resolved.parent) as entries:
        return sorted(
            resolved.parent / entry.name
            for entry in entries
            if entry.name.startswith(prefix) and not entry.name.endswith(_STAGING)
        )


def write_halt_request(journal_path: str | Path, request: HaltRequest) -> str:
    """Create the request atomically under a name of its own (a file written aside, then
    renamed, readable only by us; or a meta row, through a connection of our own that
    never owns the journal); the name, for `clear_halt_request`."""
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
    text = json.dumps(request.to_json())
    if is_database_url(journal_path):
        with Journal.open(str(journal_path), lock=False) as journal:
            journal.recorder.set_meta({HALT_REQUEST_PREFIX + name: text})
        return name
    resolved = Path(journal_path).resolve()
    path = resolved.with_name(f"{resolved.name}.halt.{name}")
    staging = path.with_name(path.name + _STAGING)
    with open_private(staging) as out:
        out.write(text)
    os.replace(staging, path)
    return name


def take_halt_requests(journal: Journal) -> list[HaltRequest]:
    """The owner's look: every request pending for the journal it holds, each taken whole
    (requests for other processes too: their requesters wait for them to be taken)."""
    if journal.path is None:
        return [_parsed(text) for text in journal.recorder.take_meta(HALT_REQUEST_PREFIX)]
    taken = []
    for path in halt_request_paths(journal.path):
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except OSError:
            text = ""
        path.unlink(missing_ok=True)
        taken.append(_parsed(text))
    return taken


def _parsed(text: str) -> HaltRequest:
    """A stored request; one that cannot be read halts everything with `cancelled`."""
    try:
        data = json.loads(text)
        plan_id = data.get("plan_id")
        reason = FailReason(data["reason"])
        return HaltRequest(
            None if plan_id is None else str(plan_id),
            reason if reason in STOP_REASONS else FailReason.CANCELLED,
            int(data["target_pid"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return _UNREADABLE


_UNREADABLE = HaltRequest(None, FailReason.CANCELLED, 0)


def clear_halt_request(journal_path: str | Path, name: str) -> None:
    """Withdraw this requester's own request, if the owner has not taken it."""
    if is_database_url(journal_path):
        with Journal.open(str(journal_path), lock=False) as journal:
            journal.recorder.take_meta(HALT_REQUEST_PREFIX + name)
        return
    resolved = Path(journal_path).resolve()
    resolved.with_name(f"{resolved.name}.halt.{name}").unlink(missing_ok=True)
