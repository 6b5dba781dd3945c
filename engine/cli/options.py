"""Parameter types and options the commands share: a journal's path, a finite float range,
the log level and the plan size limit."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click

from journal import JournalUnavailable
from journal.location import is_database_url, valid_database_url

from ..intents import DEFAULT_MAX_PLAN_ORDERS

__all__ = [
    "LEASE_SECONDS_OPTION",
    "LOG_LEVEL_OPTION",
    "MAX_PLAN_ORDERS_OPTION",
    "FiniteFloatRange",
    "JournalFile",
]

LOG_LEVEL_OPTION = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
MAX_PLAN_ORDERS_OPTION = click.option(
    "--max-plan-orders",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PLAN_ORDERS,
    show_default=True,
    help="Refuse a plan with more orders than this.",
)


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that refuses NaN and the infinities: NaN compares as inside any range."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class JournalFile(click.Path):
    """A journal's path: a file name, not a directory (its lock and WAL files sit beside it);
    or a PostgreSQL database's `postgresql://USER@HOST:PORT/DB` URL, kept as a str."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and is_database_url(value):
            try:
                return valid_database_url(value)
            except JournalUnavailable as exc:
                self.fail(str(exc), param, ctx)
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        if not path.name:
            self.fail(f"{value!r} names no file.", param, ctx)
        if path.exists() and not path.is_file():
            # a FIFO would block the open until something writes to it; a device is no journal
            self.fail(f"{value!r} is not a regular file.", param, ctx)
        return path


LEASE_SECONDS_OPTION = click.option(
    "--lease-seconds",
    type=FiniteFloatRange(min=0, min_open=True),
    help="A PostgreSQL journal's owner lease: how long it outlives its owner's last renewal "
    "(default 10). See docs/scale-out.md.",
)
