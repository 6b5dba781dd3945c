"""One request budget per account: at most `limit` REST calls in any `window` seconds.

A sliding log rather than a token bucket: a bucket refilling at limit/window lets
through up to twice the limit in one window, and Alpaca counts per rolling minute.
The limiter lives in the engine's event loop; the blocking SDK call runs afterwards
in a worker thread. When the server answers 429 anyway (another process on the same
account, a budget smaller than ours), `pause_until` holds every call until the moment the
server named in X-Ratelimit-Reset.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Async sliding-window limiter; `throttled` counts the calls that had to wait."""

    def __init__(
        self,
        limit: int,
        window_seconds: float = 60.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_seconds <= 0:
            raise ValueError("a rate limit needs limit >= 1 and a positive window")
        self.limit = limit
        self.window = window_seconds
        self._now = now
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self.throttled = 0

    def _forget_old(self, now: float) -> None:
        while self._sent and now - self._sent[0] >= self.window:
            self._sent.popleft()

    async def acquire(self) -> None:
        """Wait until one more call fits in the window, then count it as sent."""
        waited = False
        while True:
            now = self._now()
            if now < self._paused_until:
                waited = True
                await asyncio.sleep(self._paused_until - now)
                continue
            self._forget_old(now)
            if len(self._sent) < self.limit:
                self._sent.append(now)
                self.throttled += waited
                return
            waited = True
            await asyncio.sleep(self._sent[0] + self.window - now)

    def pause_until(self, moment: float) -> None:
        """Send nothing before `moment` (on this limiter's clock): the server's budget is
        spent until then."""
        self._paused_until = max(self._paused_until, moment)

    def in_window(self) -> int:
        """Calls counted in the current window (for reports and tests)."""
        self._forget_old(self._now())
        return len(self._sent)
