"""Reads many walks need at once (all positions, several quotes), shared but never stale.

A walk validating its fills must see the broker's figures after them, so it may share a
read only if that read leaves after the walk asked. One read is in flight at a time:
whoever asks meanwhile joins the next one, which leaves when the current one has
answered, for everyone who asked until then, with all the keys they asked for. Reads may
also be spaced: `burst` of them leave at once, then one per `spacing_seconds` on average
(the allowance refills at that pace), and callers asking while a read is held join it.
Walks that settle all through a plan then share one read per spacing, however many
settle, while a lone order after a quiet spell is never held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

__all__ = ["FreshReads"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Batch(Generic[K, V]):
    """One read: the keys its callers asked for, until it leaves (`sealed`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.keys: set[K] = set()
        self.sealed = False
        self.task: asyncio.Task[Mapping[K, V]] | None = None

    def open_to(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a caller on `loop` may still join: not yet sent, not ended."""
        task = self.task
        return not self.sealed and self.loop is loop and task is not None and not task.done()


class FreshReads(Generic[K, V]):
    """Answers from a read sent after the caller asked, shared by all who asked before it.

    `fetch(keys)` reads every key asked for in one go (a fetch that reads everything, like
    all positions, may ignore them). A failed read fails each of its callers and is not
    kept; the next caller starts another.
    """

    def __init__(
        self,
        fetch: Callable[[frozenset[K]], Awaitable[Mapping[K, V]]],
        spacing_seconds: float = 0.0,
        burst: int = 1,
    ) -> None:
        self._fetch = fetch
        self._spacing_seconds = spacing_seconds
        self._burst = burst
        self._allowance = float(burst)  # reads that may leave now
        self._counted_at = time.monotonic()
        self._next: _Batch[K, V] | None = None
        self._last: asyncio.Task[Mapping[K, V]] | None = None

    async def get(self, keys: Iterable[K] = ()) -> Mapping[K, V]:
        loop = asyncio.get_running_loop()
        batch = self._next
        if batch is None or not batch.open_to(loop):
            # a read left pending by an event loop that has stopped is never waited for
            last = self._last
            previous = last if last is not None and last.get_loop() is loop else None
            batch = self._next = _Batch(loop)
            batch.task = self._last = loop.create_task(self._send(batch, previous))
        batch.keys.update(keys)
        assert batch.task is not None
        # shielded: one caller cancelled must not cancel the read the others await
        return await asyncio.shield(batch.task)

    async def _send(
        self, batch: _Batch[K, V], previous: asyncio.Task[Mapping[K, V]] | None
    ) -> Mapping[K, V]:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own callers'
        if self._spacing_seconds > 0:
            hold = self._hold()
            if hold > 0:
                await asyncio.sleep(hold)  # callers asking meanwhile join this read
                self._hold()
            self._allowance -= 1
        batch.sealed = True  # from here on, a caller waits for the next read
        return await self._fetch(frozenset(batch.keys))

    def _hold(self) -> float:
        """Seconds until a read may leave, the allowance refilled for the time gone by (one
        `_send` at a time runs this: each waits for the read before it)."""
        now = time.monotonic()
        refill = (now - self._counted_at) / self._spacing_seconds
        self._allowance = min(float(self._burst), self._allowance + refill)
        self._counted_at = now
        return max(0.0, 1.0 - self._allowance) * self._spacing_seconds
