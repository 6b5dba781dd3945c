"""Broker reads for many orders at once, bounded so a large plan does not flood the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["each_at_most"]

T = TypeVar("T")
R = TypeVar("R")


async def each_at_most(
    limit: int, items: Iterable[T], work: Callable[[T], Awaitable[R]]
) -> list[R]:
    """`work(item)` for every item, at most `limit` at a time; results in item order."""
    slots = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with slots:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
