"""Broker facts that change rarely (assets, the market clock), read once and shared.

A plan starts its walks together, so without care each of them would miss the empty cache
at the same moment and read the same fact from Alpaca, spending the rate budget on copies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

__all__ = ["SharedReads"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    """Answers kept until they expire; concurrent misses for one key share one read.

    `fetch` returns the answer and how many seconds it stays good. A failed read is
    everyone's failure and is not kept, so the next call reads again.
    """

    def __init__(self) -> None:
        self._answers: dict[K, tuple[float, V]] = {}
        self._reading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, fetch: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        kept = self._answers.get(key)
        if kept is not None and time.monotonic() < kept[0]:
            return kept[1]
        loop = asyncio.get_running_loop()
        reading = self._reading.get(key)
        # a read left pending by an event loop that has stopped cannot be awaited here
        if reading is None or reading.get_loop() is not loop:
            reading = self._reading[key] = loop.create_task(self._read(key, fetch))
            reading.add_done_callback(partial(self._forget, key))
        # shielded: one caller cancelled must not cancel the read the others await
        return await asyncio.shield(reading)

    async def _read(self, key: K, fetch: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        answer, seconds = await fetch()
        self._answers[key] = (time.monotonic() + seconds, answer)
        return answer

    def _forget(self, key: K, done: asyncio.Task[V]) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
