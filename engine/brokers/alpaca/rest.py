"""Every REST call the adapter makes: budgeted, timed out, retried by our policy, typed.

alpaca-py's RESTClient sends with no timeout and retries 429 and 504 by itself, POSTs
included, three times with a fixed 3 s sleep. We take that over: the SDK's own retries
are switched off (`_retry = 0`), every request gets a (connect, read) timeout through a
mounted adapter, reads are retried here with jittered backoff on 429 and 5xx, and a
write that timed out or got a 5xx is reported as an unknown outcome for the engine to
resolve by client_order_id. Only a 429 write is sent again: Alpaca refused it unread. A
429 that says when the budget reopens (X-Ratelimit-Reset, Unix seconds:
https://forum.alpaca.markets/t/executing-orders/12029) pauses every call until then,
instead of the backoff.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import requests
from alpaca.common.exceptions import APIError
from alpaca.common.rest import RESTClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.trading.client import TradingClient
from requests.adapters import HTTPAdapter

from ...errors import BrokerError, BrokerUnavailable, OutcomeUnknown
from .errors import RateLimited, error_from_response, redact, shortened
from .limiter import RateLimiter
from .settings import AlpacaSettings

__all__ = ["AlpacaCounters", "RestGateway"]

T = TypeVar("T")
Timeout = float | tuple[float, float] | tuple[float, None] | None


@dataclass
class AlpacaCounters:
    """What the adapter did, for results and logs: REST calls by endpoint."""

    rest_calls: int = 0
    rest_retries: int = 0
    rate_limited: int = 0
    throttled: int = 0
    status_polls: int = 0
    order_refreshes: int = 0
    trade_updates: int = 0
    trade_stream_connects: int = 0
    stream_quotes: int = 0
    quote_stream_connects: int = 0
    quote_stream_refused: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        plain = {k: v for k, v in vars(self).items() if not isinstance(v, Counter)}
        return {**plain, "by_endpoint": dict(self.by_endpoint)}


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request a timeout when the caller (the SDK) passes none."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Timeout = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return super().send(request, stream, timeout or self.default_timeout, verify, cert, proxies)


def _reopens_in(exc: Exception, window_seconds: float) -> float | None:
    """Seconds until a 429's X-Ratelimit-Reset, at most one window (a skewed clock must not
    stall us); None when the answer names no reset."""
    if not isinstance(exc, APIError) or exc.response is None:
        return None
    try:
        reset = float(exc.response.headers["X-Ratelimit-Reset"])
    except (KeyError, ValueError):
        return None
    if not math.isfinite(reset):
        return None
    return min(max(reset - time.time(), 0.0), window_seconds)


def _take_over(client: RESTClient, timeout: tuple[float, float]) -> None:
    """Switch off the SDK's blind retries and give its session a timeout."""
    client._retry = 0
    adapter = _TimeoutAdapter(timeout)
    client._session.mount("https://", adapter)
    client._session.mount("http://", adapter)


class RestGateway:
    """The SDK's trading and data clients behind one rate budget and one retry policy."""

    def __init__(self, settings: AlpacaSettings, counters: AlpacaCounters) -> None:
        self.settings = settings
        self.counters = counters
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_window_seconds)
        self.trading = TradingClient(
            settings.key_id,
            settings.secret_key,
            paper=settings.paper,
            url_override=settings.trading_url,
        )
        self.data = StockHistoricalDataClient(
            settings.key_id, settings.secret_key, url_override=settings.data_url
        )
        for client in (self.trading, self.data):
            _take_over(client, settings.http_timeout)

    async def read(self, endpoint: str, call: Callable[[], T]) -> T:
        """An idempotent call (GET, DELETE): a 5xx, a timeout or a drop raises
        BrokerUnavailable, which the engine's one retry layer (engine/retry.py) waits out."""
        return await self._call(endpoint, call, write=False)

    async def write(self, endpoint: str, call: Callable[[], T]) -> T:
        """A call that may change the account (POST, PATCH): never blindly repeated."""
        return await self._call(endpoint, call, write=True)

    async def _call(self, endpoint: str, call: Callable[[], T], *, write: bool) -> T:
        """Send `call` within the rate budget. A 429 pauses the budget until the window
        reopens; a write it refused (unread) is sent again here, as the engine never repeats
        a write; a read's 429, like any other failure, is raised for the engine's one retry
        layer (engine/retry.py), which then waits on the paused budget."""
        settings = self.settings
        attempts = settings.attempts_on_429 if write else 1
        for attempt in range(1, attempts + 1):
            await self.limiter.acquire()
            self.counters.rest_calls += 1
            self.counters.by_endpoint[endpoint] += 1
            self.counters.throttled = self.limiter.throttled
            try:
                return await asyncio.to_thread(call)
            except (APIError, requests.RequestException, ValueError) as exc:
                error = self._typed(exc, write=write)
                reopens_in = _reopens_in(exc, settings.rate_window_seconds)
            limited = isinstance(error, RateLimited)
            self.counters.rate_limited += limited
            if limited and reopens_in is not None:
                self.limiter.pause_until(time.monotonic() + reopens_in)
            if not limited or attempt == attempts:
                raise error from None
            self.counters.rest_retries += 1
            if reopens_in is None:
                delay = settings.retry_backoff_seconds * 2 ** (attempt - 1)
                await asyncio.sleep(random.uniform(delay / 2, delay))
        raise AssertionError("unreachable")

    def _typed(self, exc: Exception, *, write: bool) -> BrokerError:
        """The engine's error for what the SDK raised; keys are redacted from every message."""
        secrets = self.settings.secrets
        if isinstance(exc, APIError):
            return error_from_response(exc.status_code, str(exc), write=write, secrets=secrets)
        detail = shortened(redact(f"{type(exc).__name__}: {exc}", secrets))
        return (OutcomeUnknown if write else BrokerUnavailable)(f"alpaca: {detail}")
