"""Where the CLI's output goes: tables on a console, logs as key=value lines on stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO, cast

import structlog
from rich.console import Console

__all__ = ["REPORT_WIDTH", "configure_output", "report_console", "to_devnull"]

REPORT_WIDTH = 160


def report_console() -> Console:
    """A console that does not squeeze the results table when output is piped."""
    console = Console()
    if not console.is_terminal:
        console.width = REPORT_WIDTH
    return console


def to_devnull(stream: TextIO) -> None:
    """`stream`'s descriptor now /dev/null, once its reader has gone: its buffered text, the
    next writes and the interpreter's flush at exit all go there, none failing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


class _OutlivingItsReader:
    """A text stream whose writer outlives its reader: once the pipe behind it breaks (a
    `| head`, a log shipper that died), what follows goes to /dev/null. Left alone, the
    BrokenPipeError would end a walk halfway, its orders live and unwatched (rich and click
    turn it into exit 1); the journal, not the output, is the record."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            to_devnull(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            to_devnull(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _outliving(stream: TextIO | None, fd: int) -> TextIO:
    """`stream` outliving its reader; a process started with the descriptor closed has
    none (Python's is None), and gets /dev/null's."""
    if isinstance(stream, _OutlivingItsReader):
        return cast(TextIO, stream)
    if stream is None:
        stream = open(fd, "w", closefd=False)  # noqa: SIM115 (the process's own stream)
    return cast(TextIO, _OutlivingItsReader(stream))


def _standard_descriptors_open() -> None:
    """Descriptors 0-2 open, on /dev/null where the process was started without them: else
    the journal's lock file or a socket would take one, and a write meant for stderr land
    in it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


def configure_output(level: str) -> None:
    """For a command that acts on orders: stdout and stderr outlive their readers, and the
    CLI, not the library, decides where logs go: key=value lines on stderr."""
    _standard_descriptors_open()
    sys.stdout, sys.stderr = _outliving(sys.stdout, 1), _outliving(sys.stderr, 2)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
    )
