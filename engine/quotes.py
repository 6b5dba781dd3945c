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

    def count(self, outcome: str) -> None:
        """One more quote with this outcome (a field name)."""
        setattr(self, outcome, getattr(self, outcome) + 1)


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
        self,
        symbol: str,
        now: datetime,
        price_increment: Decimal | None = None,
        tally: QuoteCounters | None = None,
    ) -> UsableQuote | None:
        """A usable quote, or None. Every outcome is counted in `counters` (everything this
        service did) and in `tally` when given (e.g. one plan's share of it)."""
        counted = (self.counters,) if tally is None else (self.counters, tally)

        def usable(quote: Quote | None, success: str) -> UsableQuote | None:
            checked, problem = self._usable(quote, now, price_increment)
            for counters in counted:
                if problem is not None:
                    counters.count(problem)
                if checked is not None:
                    counters.count(success)
            return checked

        streamed = await self.broker.stream_quote(symbol, self.stream_wait_seconds)
        found = usable(streamed, "streaming_success")
        if found is None:
            found = usable(await self.broker.latest_quote(symbol), "rest_fallback")
        if found is None:
            for counters in counted:
                counters.count("no_quote")
        return found

    def _usable(
        self, quote: Quote | None, now: datetime, price_increment: Decimal | None
    ) -> tuple[UsableQuote | None, str | None]:
        """The quote made usable, or None, and what was wrong with it (a counter's name)."""
        if quote is None:
            return None, None
        if (now - quote.at).total_seconds() > self.freshness_seconds:
            return None, "stale"
        bid, ask = quote.bid, quote.ask
        if bid <= 0 and ask <= 0:
            return None, "both_zero"
        if bid <= 0:
            gap = self._estimated_spread(quote.symbol, ask, price_increment)
            return UsableQuote(replace(quote, bid=max(ask - gap, gap)), estimated="bid"), "zero_bid"
        if ask <= 0:
            gap = self._estimated_spread(quote.symbol, bid, price_increment)
            return UsableQuote(replace(quote, ask=bid + gap), estimated="ask"), "zero_ask"
        if bid > ask:
            return None, "crossed"
        self._last_spread[quote.symbol] = ask - bid
        return UsableQuote(quote), None

    def _estimated_spread(
        self, symbol: str, price: Decimal, price_increment: Decimal | None
    ) -> Decimal:
        tick = tick_size(price, price_increment)
        return max(self._last_spread.get(symbol, tick), tick)
