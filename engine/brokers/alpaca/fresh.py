"""Reads many walks need at once (all positions, several quotes), shared but never stale.

A walk validating its fills must see the broker's figures after them, so it may share a
read only if that read leaves after the walk asked. One read is in flight at a time:
whoever asks meanwhile joins the next one, which leaves when the current one has
answered, for everyone who asked until then, with all the keys they asked for.
"""

from __future__ import annotations

import asyncio
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

    def __init__(self, fetch: Callable[[frozenset[K]], Awaitable[Mapping[K, V]]]) -> None:
        self._fetch = fetch
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
        batch.sealed = True  # from here on, a caller waits for the next read
        return await self._fetch(frozenset(batch.keys))
