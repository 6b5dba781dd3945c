"""Where a journal lives: a file path, or a PostgreSQL database named by its URL.

One database holds one journal, so several accounts share a server through several
databases. Kept apart from journal/postgres.py so telling the two apart imports no driver.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .errors import JournalUnavailable

__all__ = [
    "DATABASE_SCHEMES",
    "DEFAULT_LEASE_SECONDS",
    "is_database_url",
    "journal_holder",
    "redacted",
    "valid_database_url",
]

DATABASE_SCHEMES = ("postgresql", "postgres")
# how long a database journal's owner lease outlives its last renewal (journal/lease.py)
DEFAULT_LEASE_SECONDS = 10.0


def is_database_url(location: str | Path) -> bool:
    """Whether `location` names a PostgreSQL database rather than a file (a Path never
    does: it would have folded the URL's `//`)."""
    return isinstance(location, str) and location.partition("://")[0] in DATABASE_SCHEMES


def redacted(url: str) -> str:
    """The URL as messages show it: any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def valid_database_url(url: str) -> str:
    """`url`, if it names a host and a database (`postgresql://USER@HOST:PORT/DB`); else
    JournalUnavailable saying what is missing, in one line without the password."""
    shown = redacted(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise JournalUnavailable(f"journal URL {shown}: {exc}", location=shown) from exc
    database = parts.path.lstrip("/")
    if not parts.hostname:
        raise JournalUnavailable(f"journal URL {shown} names no host", location=shown)
    if not database or "/" in database:
        raise JournalUnavailable(
            f"journal URL {shown} names no database (postgresql://USER@HOST:PORT/DB)",
            location=shown,
        )
    if port == 0:
        raise JournalUnavailable(f"journal URL {shown}: port 0", location=shown)
    return url


def journal_holder(location: str | Path) -> str | None:
    """Who owns the journal at `location` now ("pid N on host"), or None when no live process
    does: a file's lock, asked without opening the file; a database's owner, asked of it."""
    if not is_database_url(location):
        from .lock import lock_holder

        return lock_holder(Path(location))
    from .store import Journal  # here: a database is asked through its recorder

    with Journal.open_readonly(location) as journal:
        return journal.holder()
