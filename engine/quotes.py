"""Quote acquisition: streaming first, REST fallback, with counters for every kind of bad quote.

A quote with one side at zero is repaired by estimating the missing side from the
other (at least one tick away); both sides zero, crossed, or stale is not usable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from .broker import Broker, Quote
from .numbers import decimal_text
from .pricing import tick_size

__all__ = ["QuoteCounters", "QuoteService", "UsableQuote"]


@dataclass
class QuoteCounters:
    """Where quotes came from and what was wrong with them; reported in results and logs."""

    streaming_success: int = 0
    rest_fallback: int = 0
    zero_bid: int = 0
    zero_ask: int = 0
    both_zero: int = 0
    crossed: int = 0
    stale: int = 0
    no_quote: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class UsableQuote:
    """A quote the walk may price from; `estimated` names a side that was filled in."""

    quote: Quote
    estimated: str | None = None

    @property
    def bid(self) -> Decimal:
        return self.quote.bid

    @property
    def ask(self) -> Decimal:
        return self.quote.ask

    @property
    def mid(self) -> Decimal:
        return self.quote.mid

    def as_data(self) -> dict[str, Any]:
        """The quote as journaled: decimals as text, the source and any estimated side."""
        return {
            "bid": decimal_text(self.quote.bid),
            "ask": decimal_text(self.quote.ask),
            "source": self.quote.source,
            "quoted_at": self.quote.at.isoformat(),
            "estimated": self.estimated,
        }


@dataclass
class QuoteService:
    """Gets a usable quote for a symbol, preferring the stream; remembers each symbol's spread."""

    broker: Broker
    freshness_seconds: float
    stream_wait_seconds: float
    counters: QuoteCounters = field(default_factory=QuoteCounters)
    _last_spread: dict[str, Decimal] = field(default_factory=dict)

    async def get(
        self, symbol: str, now: datetime, price_increment: Decimal | None = None
    ) -> UsableQuote | None:
        streamed = self._usable(
            await self.broker.stream_quote(symbol, self.stream_wait_seconds), now, price_increment
        )
        if streamed is not None:
            self.counters.streaming_success += 1
            return streamed
        rest = self._usable(await self.broker.latest_quote(symbol), now, price_increment)
        if rest is not None:
            self.counters.rest_fallback += 1
            return rest
        self.counters.no_quote += 1
        return None

    def _usable(
        self, quote: Quote | None, now: datetime, price_increment: Decimal | None
    ) -> UsableQuote | None:
        if quote is None:
            return None
        if (now - quote.at).total_seconds() > self.freshness_seconds:
            self.counters.stale += 1
            return None
        bid, ask = quote.bid, quote.ask
        if bid <= 0 and ask <= 0:
            self.counters.both_zero += 1
            return None
        if bid <= 0:
            self.counters.zero_bid += 1
            gap = self._estimated_spread(quote.symbol, ask, price_increment)
            return UsableQuote(replace(quote, bid=max(ask - gap, gap)), estimated="bid")
        if ask <= 0:
            self.counters.zero_ask += 1
            gap = self._estimated_spread(quote.symbol, bid, price_increment)
            return UsableQuote(replace(quote, ask=bid + gap), estimated="ask")
        if bid > ask:
            self.counters.crossed += 1
            return None
        self._last_spread[quote.symbol] = ask - bid
        return UsableQuote(quote)

    def _estimated_spread(
        self, symbol: str, price: Decimal, price_increment: Decimal | None
    ) -> Decimal:
        tick = tick_size(price, price_increment)
        return max(self._last_spread.get(symbol, tick), tick)
