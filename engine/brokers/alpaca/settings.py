"""Everything the Alpaca adapter is configured with; keys come from the environment.

Paper is the default. Without `live=True` (the CLI's explicit `--live`) a URL override
must be Alpaca's paper (or market-data) endpoint or a loopback address, compared after
parsing (scheme, case, port, trailing dots): any other host, the live endpoint however it
is spelled or a proxy in front of it, needs `--live`, and is refused before anything is sent.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from alpaca.common.enums import BaseURL

from ..keys import KEY_ID_ENV, SECRET_KEY_ENV
from .errors import AlpacaConfigError

__all__ = ["BASE_URL_ENV", "KEY_ID_ENV", "SECRET_KEY_ENV", "AlpacaSettings"]

BASE_URL_ENV = "APCA_API_BASE_URL"
FEEDS = ("iex", "sip")  # the two feeds StockDataStream takes
# the hosts a URL override may name without --live (besides loopback addresses)
PAPER_HOSTS = frozenset(
    str(urlsplit(url.value).hostname) for url in (BaseURL.TRADING_PAPER, BaseURL.DATA)
)
HTTPS_PORT = 443


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _safe_without_live(url: str) -> bool:
    """Whether `url` can only reach paper money: Alpaca's paper or data host over https on
    its default port, or this machine. Parsed, never compared as text."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").rstrip(".")
    if _is_loopback(host):
        return parts.scheme in ("http", "https")
    return parts.scheme == "https" and host in PAPER_HOSTS and port in (None, HTTPS_PORT)


def _ws_url(base: str, path: str) -> str:
    """The websocket URL at `path` on the host of an http(s) base URL."""
    parts = urlsplit(base)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class AlpacaSettings:
    """Keys, endpoints and the adapter's own policies (rate budget, timeouts, retries)."""

    key_id: str = field(repr=False)
    secret_key: str = field(repr=False)
    live: bool = False
    trading_url: str | None = None
    data_url: str | None = None
    feed: str = "iex"
    rate_limit: int = 190
    rate_window_seconds: float = 60.0
    http_timeout_seconds: float = 10.0
    # a write Alpaca refused unread (429) is sent again, this many times in all; reads, and
    # every other failure, are the engine's one retry layer's (EngineConfig.broker_retry_*)
    attempts_on_429: int = 3
    retry_backoff_seconds: float = 0.25
    poll_interval_seconds: float = 1.0
    asset_cache_seconds: float = 60.0
    clock_cache_seconds: float = 30.0
    stream_connect_seconds: float = 2.0
    # how long get_order waits for trade_updates to report a cancel or replace Alpaca took
    # before it reads the order over REST instead
    write_echo_seconds: float = 1.0
    # the average time between two `GET /v2/positions` once a few have left at once (a
    # burst, broker.py): walks that settle meanwhile validate from one read, each from a
    # read sent after it asked (fresh.py); about 60 / this reads a minute however many settle
    positions_spacing_seconds: float = 2.0
    # the same for `GET /v2/stocks/quotes/latest`: the quotes of symbols the stream does not
    # carry (past the IEX feed's 30), which walks watching a resting step ask for every
    # `quote_watch_seconds` each, come from about 60 / this shared reads a minute
    rest_quotes_spacing_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.data_url is None and self.trading_url is not None:
            # an overridden trading URL (a proxy, a loopback sim-server) never leaves data
            # requests on Alpaca's own host by accident
            object.__setattr__(self, "data_url", self.trading_url)
        if not self.key_id or not self.secret_key:
            raise AlpacaConfigError(
                f"Alpaca keys missing: set {KEY_ID_ENV} and {SECRET_KEY_ENV} (nothing was sent)"
            )
        if self.feed not in FEEDS:
            raise AlpacaConfigError(f"unknown Alpaca data feed {self.feed!r}; use one of {FEEDS}")
        if self.live:
            return
        for url in (self.trading_url, self.data_url):
            if url is not None and not _safe_without_live(url):
                raise AlpacaConfigError(
                    f"{url} is neither Alpaca's paper endpoint nor a loopback address: it may "
                    "reach real money; pass --live to use it (nothing was sent)"
                )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        trading_url: str | None = None,
        data_url: str | None = None,
        **policies: Any,
    ) -> AlpacaSettings:
        """Keys from APCA_API_KEY_ID / APCA_API_SECRET_KEY; the trading URL, unless given,
        from APCA_API_BASE_URL (Alpaca's own convention), else the SDK's paper endpoint."""
        env = os.environ if env is None else env
        return cls(
            key_id=env.get(KEY_ID_ENV, ""),
            secret_key=env.get(SECRET_KEY_ENV, ""),
            trading_url=trading_url or env.get(BASE_URL_ENV) or None,
            data_url=data_url,
            **policies,
        )

    @property
    def paper(self) -> bool:
        return not self.live

    @property
    def secrets(self) -> tuple[str, str]:
        """What must never appear in an error or a log line."""
        return self.key_id, self.secret_key

    @property
    def trading_stream_url(self) -> str | None:
        """trade_updates lives at /stream on the trading host; None keeps the SDK's default."""
        return None if self.trading_url is None else _ws_url(self.trading_url, "/stream")

    @property
    def data_stream_url(self) -> str | None:
        """Quotes stream at /v2/<feed>; None keeps the SDK's default host."""
        return None if self.data_url is None else _ws_url(self.data_url, f"/v2/{self.feed}")

    @property
    def http_timeout(self) -> tuple[float, float]:
        """(connect, read) seconds for every REST call: the SDK itself never sets one."""
        return min(5.0, self.http_timeout_seconds), self.http_timeout_seconds
