"""Following a journal: every event as it commits, from a second, read-only process.

A hook runs in the writer's process after its commit, so a writer killed in between loses
that notice; a consumer outside the process (an alerting or ledger sink) follows the
file instead. The contract is at-least-once, in seq order, nothing skipped:

- `follow(journal, from_seq)` yields every event with seq > `from_seq`, in seq order,
  each seq exactly one more than the last, each `prev_hash` the `hash` before it; a gap
  or a broken link raises `JournalCorrupt` rather than pass an event over;
- the consumer stores its cursor (the seq of the last event it handled) after handling
  that event, and passes it back after a restart: an event handled but not yet recorded
  is handed out again, nothing past the cursor is lost;
- a cursor past the journal's end (another journal's, or one whose tail was lost after the
  consumer saw it) is refused (`CursorRefused`): following from it would skip the events
  that later take those seqs.

Events are read in batches, each its own short read (no snapshot is held while the
consumer works, so a slow consumer never keeps the writer's WAL from being checkpointed);
between batches `PRAGMA data_version` tells, without reading a row, whether anything
committed since.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypedDict

from .chain import GENESIS_HASH
from .errors import JournalCorrupt, JournalError
from .store import Event, Journal

__all__ = ["BATCH_EVENTS", "POLL_SECONDS", "CursorRefused", "FollowOptions", "follow"]

POLL_SECONDS = 0.2
BATCH_EVENTS = 1000


class CursorRefused(JournalError):
    """A cursor this journal cannot be followed from: below 0, or past its last event."""


class FollowOptions(TypedDict, total=False):
    """How `follow` waits and when it ends (`Journal.follow` passes them on)."""

    poll_seconds: float
    until_idle: float | None
    stop: Callable[[], bool] | None
    sleep: Callable[[float], None]
    clock: Callable[[], float]


@contextmanager
def _reading(journal: Journal) -> Iterator[None]:
    """SQLite's complaint about the file as the journal's typed error."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        path = journal.location
        raise JournalCorrupt(f"{path} is damaged or truncated: {exc}", path=path) from exc


def _start_hash(journal: Journal, from_seq: int) -> str:
    """The hash of the event at `from_seq`, which the next event must link to."""
    if from_seq < 0:
        raise CursorRefused(f"cannot follow from seq {from_seq}: below 0", from_seq=from_seq)
    if from_seq == 0:
        return GENESIS_HASH
    found = journal.recorder.hash_at(from_seq)
    if found is None:
        last = (journal.recorder.tail() or (0, ""))[0]
        raise CursorRefused(
            f"cannot follow {journal.location} from seq {from_seq}: its last event is seq "
            f"{last} (a cursor of another journal, or of events this file no longer has)",
            path=journal.location,
            from_seq=from_seq,
            last_seq=last,
        )
    return found


def follow(
    journal: Journal,
    from_seq: int = 0,
    *,
    poll_seconds: float = POLL_SECONDS,
    until_idle: float | None = None,
    stop: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Event]:
    """Every event with seq > `from_seq`, in seq order, waiting for new commits.

    Ends once `until_idle` seconds (of `clock`) passed with no new event after the last
    one was handed out (None: never; 0: when caught up), or when `stop()` says so (asked
    before each wait). `sleep` waits between looks, `poll_seconds` at most each time.
    A cursor the journal cannot be followed from is refused here, before the first event.
    """
    with _reading(journal):
        prev_hash = _start_hash(journal, from_seq)
    return _events(
        journal, from_seq, prev_hash, poll_seconds, until_idle, stop or _never, sleep, clock
    )


def _never() -> bool:
    return False


def _events(
    journal: Journal,
    after: int,
    prev_hash: str,
    poll_seconds: float,
    until_idle: float | None,
    stop: Callable[[], bool],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> Iterator[Event]:
    """`follow`'s events, from the one after seq `after`, whose hash is `prev_hash`."""
    idle_since: float | None = None
    while True:
        with _reading(journal):
            version = journal.recorder.change_marker()
            rows = journal.recorder.event_batch(after, BATCH_EVENTS)
        for row in rows:
            event = Event.from_values(row)
            if event.seq != after + 1 or event.prev_hash != prev_hash:
                raise JournalCorrupt(
                    f"{journal.location}: seq {event.seq} does not follow seq {after} "
                    "(a gap or a broken hash chain)",
                    path=journal.location,
                    seq=event.seq,
                )
            yield event
            after, prev_hash = event.seq, event.hash
        if len(rows) == BATCH_EVENTS:
            continue
        # idle from the last event handed out: a look that found nothing new changes nothing
        idle_since = None if rows else idle_since
        while True:
            now = clock()
            idle_since = now if idle_since is None else idle_since
            if until_idle is not None and now - idle_since >= until_idle:
                return
            if stop():
                return
            wait = poll_seconds
            if until_idle is not None:
                wait = min(wait, until_idle - (now - idle_since))
            sleep(wait)
            with _reading(journal):
                if journal.recorder.change_marker() != version:
                    break
