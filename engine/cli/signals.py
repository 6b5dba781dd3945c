"""Stop signals while a command walks or stops orders: the first halts (or lets a halt
finish), a second exits at once.

SIGHUP (the terminal or ssh session went away) and SIGQUIT (Ctrl-\\) stop walkbook as SIGINT
and SIGTERM do: left to their default they would end the process on the spot, its orders
live at the broker and unwatched, with nothing said. A signal the process was started
ignoring (`nohup` ignores SIGHUP) stays ignored.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from ..engine import Engine
from .exits import EXIT_WORK_LIVE

__all__ = ["finishing_on_signals", "halting_on_signals", "stop_signals"]

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
    return await _on_stop_signals(work, engine.halt)


async def finishing_on_signals(stopping: Coroutine[Any, Any, T]) -> T:
    """Run `stopping` (a halt, a plan's cancel or abandon) to its end: the first stop signal
    only says so (stopping more than was asked would be worse), a second one exits at once
    with code 4."""
    return await _on_stop_signals(stopping, None)


async def _on_stop_signals(
    work: Coroutine[Any, Any, T], halt: Callable[[], Coroutine[Any, Any, Any]] | None
) -> T:
    """Run `work`; the first stop signal starts `halt` (None: the work is a stop already),
    a second one exits at once with code 4, saying what may be left live."""
    loop = asyncio.get_running_loop()
    halts: list[asyncio.Future[Any]] = []
    handled = stop_signals()

    def second(name: str) -> None:
        click.echo(f"walkbook: {name} again: exiting now, leaving the rest to resume", err=True)
        os._exit(EXIT_WORK_LIVE)

    def first(name: str) -> None:
        doing = "halting, cancelling live orders" if halt else "finishing the stop first"
        click.echo(f"walkbook: {name}: {doing} ({name} again to exit now)", err=True)
        if halt is not None:
            halts.append(asyncio.ensure_future(halt()))
        for sig in handled:
            loop.add_signal_handler(sig, second, sig.name)

    for sig in handled:
        loop.add_signal_handler(sig, first, sig.name)
    try:
        return await work
    finally:
        try:
            for running in halts:  # also when the work ended by the halt (PlanHalted)
                await running
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
