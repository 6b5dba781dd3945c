"""Retrying broker reads: a transient error is waited out, never mistaken for an answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog

from .clock import Clock
from .config import EngineConfig
from .errors import BrokerUnavailable

__all__ = ["Reader", "read_with_retry"]

T = TypeVar("T")


class Reader(Protocol):
    """How the engine reads the broker: the call, retried while the broker is unavailable."""

    def __call__(self, call: Callable[[], Awaitable[T]], /) -> Awaitable[T]: ...


async def read_with_retry(
    call: Callable[[], Awaitable[T]],
    config: EngineConfig,
    clock: Clock,
    log: Callable[[], structlog.typing.FilteringBoundLogger],
) -> T:
    """Call `call`, retrying BrokerUnavailable with exponential backoff; re-raise the last one.

    `log` gives the logger only when a retry has something to say.
    """
    attempts = config.broker_retry_attempts
    for attempt in range(attempts):
        try:
            return await call()
        except BrokerUnavailable as exc:
            log().warning("broker.read_retry", attempt=attempt + 1, error=exc.message)
            if attempt + 1 == attempts:
                raise
            await clock.sleep(config.broker_retry_backoff_seconds * 2**attempt)
    raise AssertionError("unreachable")
