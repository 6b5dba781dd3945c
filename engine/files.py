"""Files walkbook writes: created owner-only (0600), since they hold a trading history."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

__all__ = ["PRIVATE_MODE", "create_private", "open_private", "write_private_text"]

PRIVATE_MODE = 0o600


def create_private(path: Path) -> None:
    """Create `path` empty and 0600 unless it exists, before a library (SQLite) opens it
    with its own default mode."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_MODE))


def open_private(path: Path, *, newline: str | None = None) -> TextIO:
    """`path` opened to write UTF-8 text, truncated; created 0600 when it does not exist.

    An existing file keeps its mode (only its owner can change it).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    return os.fdopen(fd, "w", encoding="utf-8", newline=newline)


def write_private_text(path: Path, text: str) -> None:
    """Write `text` to `path` as UTF-8, the file created 0600 (see `open_private`)."""
    with open_private(path) as out:
        out.write(text)
