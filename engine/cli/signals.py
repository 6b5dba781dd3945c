"""SIGINT and SIGTERM while a command walks orders: the first halts, a second exits at once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from ..engine import Engine
from .exits import EXIT_WORK_LIVE

__all__ = ["halting_on_signals"]

HALT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


async def halting_on_signals(engine: Engine, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; the first SIGINT or SIGTERM halts the engine (live orders cancelled, each
    order FAILED `cancelled`), a second one exits at once with code 4."""
    loop = asyncio.get_running_loop()
    halts: list[asyncio.Future[Any]] = []

    def second(name: str) -> None:
        click.echo(f"walkbook: {name} again: exiting now, leaving the rest to resume", err=True)
        os._exit(EXIT_WORK_LIVE)

    def first(name: str) -> None:
        click.echo(
            f"walkbook: {name}: halting, cancelling live orders ({name} again to exit now)",
            err=True,
        )
        halts.append(asyncio.ensure_future(engine.halt()))
        for sig in HALT_SIGNALS:
            loop.add_signal_handler(sig, second, sig.name)

    for sig in HALT_SIGNALS:
        loop.add_signal_handler(sig, first, sig.name)
    try:
        return await work
    finally:
        try:
            for halt in halts:  # also when the work ended by the halt (PlanHalted)
                await halt
        finally:
            for sig in HALT_SIGNALS:
                loop.remove_signal_handler(sig)
