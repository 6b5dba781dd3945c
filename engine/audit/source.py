"""Reading a journal for audit: read-only, without the lock, from one consistent snapshot.

A writer may be appending while an auditor reads. One read transaction makes every
query of a replay, verify, export or report see the same commit, and a damaged file
surfaces as the journal's typed `JournalCorrupt` instead of a SQLite traceback.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from journal import Event, Journal, JournalCorrupt
from journal.recorder import EventRow

__all__ = ["EVENT_COLUMNS", "EventRow", "read_snapshot"]

EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Event))


@contextmanager
def read_snapshot(path: str | Path) -> Iterator[Journal]:
    """The journal opened read-only inside one read transaction; closed on exit."""
    journal = Journal.open_readonly(path)
    try:
        journal.recorder.begin_snapshot()
        yield journal
    except sqlite3.DatabaseError as exc:
        where = journal.location
        raise JournalCorrupt(f"{where} is damaged or truncated: {exc}", path=where) from exc
    finally:
        journal.close()
