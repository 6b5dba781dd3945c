"""Time behind one protocol: real time, and a virtual clock for tests, the demo and benchmarks.

The virtual clock is an asyncio event loop whose time jumps straight to the next
timer whenever no callback is ready and no I/O is pending, i.e. when every task is
waiting. `asyncio.sleep` and `asyncio.wait_for` therefore run in virtual time too,
so a 90-second walk finishes in milliseconds with every timeout intact.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

__all__ = ["MIN_WAIT_SECONDS", "Clock", "RealClock", "VirtualClock", "WrongEventLoop"]

# a wait shorter than this is over: float deadlines leave residues (1e-15 s) that virtual
# time cannot advance by, so a wait on one would spin without time passing
MIN_WAIT_SECONDS = 1e-6

T = TypeVar("T")


class WrongEventLoop(RuntimeError):
    """A VirtualClock used from an event loop it does not drive (`asyncio.run`, say): its
    time would never move and every wait would hang."""


class Clock(Protocol):
    """Wall time for journal stamps, monotonic time for waits, and a way to run a coroutine."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def run(self, coro: Coroutine[Any, Any, T]) -> T: ...


class RealClock:
    """The machine's clock; `run` is `asyncio.run`."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)


class _FastForwardSelector(selectors.DefaultSelector):
    """Never blocks while a timer is pending: reports idle time to the loop as elapsed."""

    def __init__(self, loop_time: _VirtualTime) -> None:
        super().__init__()
        self._time = loop_time

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        ready = super().select(0)
        if not ready:
            self._time.advance(timeout)
        return ready


class _VirtualTime:
    def __init__(self) -> None:
        self.elapsed = 0.0

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, virtual_time: _VirtualTime) -> None:
        super().__init__(_FastForwardSelector(virtual_time))
        self._virtual_time = virtual_time

    def time(self) -> float:
        return self._virtual_time.elapsed


class VirtualClock:
    """Virtual time starting at `start` (default: now); fast-forwards when all tasks wait."""

    def __init__(self, start: datetime | None = None) -> None:
        self.start = (start or datetime.now(UTC)).astimezone(UTC)
        self._time = _VirtualTime()

    def now(self) -> datetime:
        self._check_loop()
        return self.start + timedelta(seconds=self._time.elapsed)

    def monotonic(self) -> float:
        self._check_loop()
        return self._time.elapsed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def _check_loop(self) -> None:
        """Virtual time moves only on the loop `run` makes: refuse any other running loop at
        once, instead of waiting forever on a clock that never advances."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # outside any loop: reading the time is fine
        if not (isinstance(loop, _VirtualLoop) and loop._virtual_time is self._time):
            raise WrongEventLoop(
                "this VirtualClock only runs under its own loop: use clock.run(coro) (or the "
                "engine's *_sync methods) instead of asyncio.run, or give the Engine a "
                "RealClock"
            )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to completion on a fresh virtual-time event loop."""
        with asyncio.Runner(loop_factory=lambda: _VirtualLoop(self._time)) as runner:
            return runner.run(coro)
