"""Where the CLI's output goes: tables on a console, logs as key=value lines on stderr."""

from __future__ import annotations

import logging
import sys

import structlog
from rich.console import Console

__all__ = ["REPORT_WIDTH", "configure_logging", "report_console"]

REPORT_WIDTH = 160


def report_console() -> Console:
    """A console that does not squeeze the results table when output is piped."""
    console = Console()
    if not console.is_terminal:
        console.width = REPORT_WIDTH
    return console


def configure_logging(level: str) -> None:
    """The CLI, not the library, decides where logs go: key=value lines on stderr."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
    )
