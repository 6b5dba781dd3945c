"""Stop signals while a command walks orders: the first halts, a second exits at once.

SIGHUP (the terminal or ssh session went away) and SIGQUIT (Ctrl-\\) stop walkbook as SIGINT
and SIGTERM do: left to their default they would end the process on the spot, its orders
live at the broker and unwatched, with nothing said. A signal the process was started
ignoring (`nohup` ignores SIGHUP) stays ignored.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from ..engine import Engine
from .exits import EXIT_WORK_LIVE

__all__ = ["halting_on_signals", "stop_signals"]

# handled whatever the process inherited, as always
ALWAYS_HANDLED = (signal.SIGINT, signal.SIGTERM)
# handled unless the process was started ignoring them
HANDLED_UNLESS_IGNORED = (signal.SIGHUP, signal.SIGQUIT)
T = TypeVar("T")


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a walkbook command: SIGINT, SIGTERM, and SIGHUP and SIGQUIT
    unless this process inherited them ignored."""
    return ALWAYS_HANDLED + tuple(
        sig for sig in HANDLED_UNLESS_IGNORED if signal.getsignal(sig) != signal.SIG_IGN
    )


async def halting_on_signals(engine: Engine, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; the first stop signal halts the engine (live orders cancelled, each
    order FAILED `cancelled`), a second one exits at once with code 4."""
    loop = asyncio.get_running_loop()
    halts: list[asyncio.Future[Any]] = []
    handled = stop_signals()

    def second(name: str) -> None:
        click.echo(f"walkbook: {name} again: exiting now, leaving the rest to resume", err=True)
        os._exit(EXIT_WORK_LIVE)

    def first(name: str) -> None:
        click.echo(
            f"walkbook: {name}: halting, cancelling live orders ({name} again to exit now)",
            err=True,
        )
        halts.append(asyncio.ensure_future(engine.halt()))
        for sig in handled:
            loop.add_signal_handler(sig, second, sig.name)

    for sig in handled:
        loop.add_signal_handler(sig, first, sig.name)
    try:
        return await work
    finally:
        try:
            for halt in halts:  # also when the work ended by the halt (PlanHalted)
                await halt
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
