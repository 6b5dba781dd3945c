"""Stopping orders on purpose: which orders must stop and why, and halt requests between processes.

A stop is cooperative. A walk checks for a stop request before every new placement and
while it waits on the broker, and then cancels what it has live (write-ahead, like any
side effect) instead of being interrupted in the middle of a broker call whose answer
the journal would then lack. `walkbook halt` reaches a process that holds the journal
through a request every engine walking orders polls: a file beside a journal file, or a
`meta` row of a journal in a database (`HALT_REQUEST_KEY`), the server being the one
place both processes reach there.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from journal import Journal
from journal.location import is_database_url

from .files import open_private
from .fsm import FailReason

__all__ = [
    "HALT_REQUEST_KEY",
    "HaltRequest",
    "StopRequested",
    "StopRequests",
    "clear_halt_request",
    "halt_request_path",
    "read_halt_request",
    "take_halt_request",
    "write_halt_request",
]

T = TypeVar("T")
STOP_REASONS = frozenset({FailReason.CANCELLED, FailReason.ABANDONED})
# The meta key holding a journal-in-a-database's pending request ("" once taken).
HALT_REQUEST_KEY = "halt_request"


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

    def reason_for(self, order_id: str, plan_id: str | None) -> FailReason | None:
        """Why this order must stop, or None when it may walk on."""
        found = self.orders.get(order_id)
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
        self, call: Callable[[], Awaitable[T]], order_id: str, plan_id: str | None
    ) -> T:
        """The answer of a broker read, unless a stop for this order arrives first: then
        the read is abandoned (a read changes nothing at the broker) and StopRequested raised."""
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


def halt_request_path(journal_path: Path) -> Path:
    """`<journal>.halt`, beside the journal (resolved, so every spelling of it agrees)."""
    resolved = journal_path.resolve()
    return resolved.with_name(resolved.name + ".halt")


def write_halt_request(journal_path: str | Path, request: HaltRequest) -> None:
    """Create the request atomically: a file written aside, then renamed, readable only by
    us; or the meta row, through a connection of our own that never owns the journal."""
    if is_database_url(journal_path):
        _set_database_request(str(journal_path), json.dumps(request.to_json()))
        return
    path = halt_request_path(Path(journal_path))
    staging = path.with_name(f"{path.name}.{os.getpid()}")
    with open_private(staging) as out:
        json.dump(request.to_json(), out)
    os.replace(staging, path)


def read_halt_request(journal_path: Path) -> HaltRequest | None:
    """The pending request beside a journal file, or None. A request addressed to a
    process (`target_pid`) is for that process only: one left behind by a halt that died
    never stops a later run."""
    try:
        return _parsed(halt_request_path(journal_path).read_text())
    except FileNotFoundError:
        return None
    except OSError:
        return _UNREADABLE


def take_halt_request(journal: Journal) -> HaltRequest | None:
    """The owner's look: the request pending for the journal it holds, which it clears (a
    request for another process too, as the requester waits for its own to be taken)."""
    if journal.path is not None:
        request = read_halt_request(journal.path)
        if request is not None:
            clear_halt_request(journal.path)
        return request
    text = journal.recorder.meta([HALT_REQUEST_KEY]).get(HALT_REQUEST_KEY)
    if not text:
        return None
    journal.recorder.set_meta({HALT_REQUEST_KEY: ""})
    return _parsed(text)


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


def clear_halt_request(journal_path: str | Path) -> None:
    if is_database_url(journal_path):
        _set_database_request(str(journal_path), "")
    else:
        halt_request_path(Path(journal_path)).unlink(missing_ok=True)


def _set_database_request(url: str, text: str) -> None:
    with Journal.open(url, lock=False) as journal:
        journal.recorder.set_meta({HALT_REQUEST_KEY: text})
