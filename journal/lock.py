"""Single-owner lock for a journal.

Exclusion comes from an OS lock (`flock`) on a sidecar file, which the kernel
releases when the owner dies, even by SIGKILL, so a crash never leaves a stale
lock. The owner's pid and host are recorded in the journal's `owner` table so
a refused process can say who holds it.

The lock belongs to the file, not to the spelling of its path: the sidecar sits beside
the journal's resolved path (every symlink followed), and a journal file with a second
hard link is refused, since each name would otherwise get a lock of its own.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import JournalLocked, JournalUnavailable

__all__ = ["JournalLock", "lock_holder"]


class JournalLock:
    """An exclusive, process-lifetime lock on `<journal>.lock`."""

    def __init__(self, journal_path: Path) -> None:
        self.journal_path = Path(os.path.realpath(journal_path))
        self.path = self.journal_path.with_name(self.journal_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self, describe_owner: str) -> None:
        """Take the lock or raise JournalLocked naming the current owner; refuse a journal
        file that more than one name (hard link) reaches."""
        _refuse_hard_links(self.journal_path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalUnavailable(
                f"cannot create lock file {self.path}: {exc.strerror}", path=str(self.path)
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise JournalLocked(
                f"journal is in use by {holder}", path=str(self.path), owner=holder
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, describe_owner.encode("utf-8"), 0)
        self._fd = fd
        try:
            _refuse_hard_links(self.journal_path)  # a link made while we waited for the lock
        except JournalUnavailable:
            self.release()
            raise

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder(journal_path: Path) -> str | None:
    """Who holds the journal's lock now ("pid N on host"), or None when no live process
    does; a reader's question, answered without creating or writing anything."""
    lock_path = JournalLock(journal_path).path
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None  # never locked here, or not ours to read: nobody we can see holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _refuse_hard_links(journal_path: Path) -> None:
    try:
        links = os.stat(journal_path).st_nlink
    except OSError:
        return  # a new journal, or a path opening it will report on
    if links > 1:
        raise JournalUnavailable(
            f"journal {journal_path} has {links} hard links: a journal must have one name, "
            "or two processes could each lock a name of their own and write at once",
            path=str(journal_path),
            links=links,
        )
