"""Errors raised by the journal; every one carries structured fields for logs and the CLI."""

from __future__ import annotations

from typing import Any

__all__ = [
    "JournalCorrupt",
    "JournalError",
    "JournalLeaseLost",
    "JournalLocked",
    "JournalMoved",
    "JournalSchemaTooNew",
    "JournalUnavailable",
    "JournalWriteConflict",
]


class JournalError(Exception):
    """Base of every journal failure; `fields` feed structured logs."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class JournalUnavailable(JournalError):
    """The journal file cannot be created, opened or written (path, permissions, disk)."""


class JournalMoved(JournalUnavailable):
    """The journal file was deleted, moved or replaced while this process wrote it: nothing
    more is journaled (so, write-ahead, nothing more is sent), and what was journaled is
    saved to `saved_to`."""


class JournalLocked(JournalError):
    """Another live process owns the journal; two writers would interleave orders."""


class JournalLeaseLost(JournalError):
    """This process's lease on a PostgreSQL journal ran out or was taken (`epoch` was ours,
    `owner`/`owner_epoch` hold it now, if anyone): the append was refused, nothing written,
    and because of write-ahead nothing more may be sent to the broker."""


class JournalCorrupt(JournalError):
    """The file is not a walkbook journal, or its contents fail an integrity check."""


class JournalSchemaTooNew(JournalError):
    """The journal was written by a newer walkbook; we refuse to guess its format."""


class JournalWriteConflict(JournalError):
    """An append collided on a unique key: a duplicate or concurrent write was refused."""
