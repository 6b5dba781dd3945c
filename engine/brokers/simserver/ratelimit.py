"""Alpaca's REST budgets, one sliding window per API, and the headers that report them.

The trading API (200 requests a minute per account) and the market-data API (200 a
minute on the free plan, https://docs.alpaca.markets/docs/about-market-data-api) are
limited separately. Every answer says where the caller stands, the 429 included:
`X-Ratelimit-Limit`, `X-Ratelimit-Remaining` and `X-Ratelimit-Reset`, the Unix second
at which a request is admitted again (https://forum.alpaca.markets/t/executing-orders/12029).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from .faults import FaultSpec

__all__ = ["Api", "Budget", "RateLimits", "Verdict", "api_of"]

Api = Literal["trading", "data"]
# Alpaca serves these from data.alpaca.markets; the sim-server serves both APIs on one host
DATA_PREFIXES = ("/v2/stocks/", "/v1beta")


def api_of(path: str) -> Api:
    """The budget a REST path spends: market data (stocks, the v1beta APIs) or trading."""
    return "data" if path.startswith(DATA_PREFIXES) else "trading"


@dataclass(frozen=True)
class Verdict:
    """One request's place in its budget: admitted or not, and what the headers say."""

    api: Api
    admitted: bool
    limit: int
    remaining: int
    reset: int  # Unix seconds

    def stamp(self, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["X-Ratelimit-Limit"] = str(self.limit)
        response.headers["X-Ratelimit-Remaining"] = str(self.remaining)
        response.headers["X-Ratelimit-Reset"] = str(self.reset)
        return response


class Budget:
    """At most `limit` requests in any `window` seconds (a sliding log, as Alpaca counts per
    rolling minute). Reset is when the oldest request counted leaves the window, rounded up
    to the second, so a request sent at Reset is admitted."""

    def __init__(
        self,
        api: Api,
        limit: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._wall = wall
        self._sent: deque[float] = deque()

    def take(self) -> Verdict:
        """Count one request if it fits; the verdict either way."""
        now = self._clock()
        while self._sent and now - self._sent[0] >= self.window:
            self._sent.popleft()
        admitted = len(self._sent) < self.limit
        if admitted:
            self._sent.append(now)
        frees_in = self._sent[0] + self.window - now
        reset = math.ceil(self._wall() + frees_in)
        return Verdict(self.api, admitted, self.limit, self.limit - len(self._sent), reset)


class RateLimits:
    """One account's two budgets, trading and market data, sized by the fault spec."""

    def __init__(
        self,
        spec: FaultSpec,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        window = spec.rate_limit_window_seconds
        self.budgets: dict[Api, Budget] = {
            "trading": Budget("trading", spec.rate_limit_per_minute, window, clock, wall),
            "data": Budget("data", spec.data_rate_limit_per_minute, window, clock, wall),
        }

    def take(self, path: str) -> Verdict:
        return self.budgets[api_of(path)].take()
