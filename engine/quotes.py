"""Quote acquisition: streaming first, REST fallback, with counters for every kind of bad quote.

A quote with one side at zero is repaired by estimating the missing side from the
other (at least one tick away); both sides zero, crossed, stale, or corrupt (a negative
or non-finite price) is not usable. A quote whose spread is not believable (far wider
than the symbol's recent spreads, or wider than `SUSPICIOUS_SPREAD_BPS` of its mid) is
confirmed from the other source before anything is priced from it: a limit priced from a
corrupt wide quote would sit far beyond the real touch and protect nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from statistics import median
from typing import Any

from .broker import Broker, Quote
from .numbers import BPS, decimal_text
from .pricing import tick_size

__all__ = ["SUSPICIOUS_SPREAD_BPS", "QuoteCounters", "QuoteService", "UsableQuote"]

# a spread wider than this share of the mid is not believed without the other source
SUSPICIOUS_SPREAD_BPS = Decimal(1000)
# ... nor one this many times the symbol's recent median spread (once that is known),
# unless it is still narrower than HISTORY_FLOOR_BPS (one tick on a cheap stock)
SPREAD_JUMP_FACTOR = Decimal(5)
HISTORY_FLOOR_BPS = Decimal(50)
SPREADS_KEPT, SPREADS_NEEDED = 20, 3


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
    corrupt: int = 0
    suspicious_spread: int = 0
    confirmed_by_other_source: int = 0
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
    # each symbol's recent believed spreads, in bps of the mid
    _spreads: dict[str, deque[Decimal]] = field(default_factory=dict)

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

        def count(outcome: str) -> None:
            for counters in counted:
                counters.count(outcome)

        streamed = usable(
            await self.broker.stream_quote(symbol, self.stream_wait_seconds), "streaming_success"
        )
        rest = None
        if streamed is None or self._suspicious(streamed):
            rest = usable(await self.broker.latest_quote(symbol), "rest_fallback")
        found = self._believed(streamed, rest, count)
        if found is None:
            count("no_quote")
        else:
            self._remember_spread(found)
        return found

    async def get_many(
        self, symbols: Collection[str], now: datetime, tally: QuoteCounters | None = None
    ) -> dict[str, UsableQuote]:
        """Usable quotes of many symbols from one bulk REST read (`Broker.latest_quotes`),
        for costing many orders at once; a symbol whose snapshot is missing, unusable or
        not believable on its own word is left out, for `get` to ask the stream and REST."""
        counted = (self.counters,) if tally is None else (self.counters, tally)
        found: dict[str, UsableQuote] = {}
        for symbol, quote in (await self.broker.latest_quotes(symbols)).items():
            checked, problem = self._usable(quote, now, None)
            if checked is None or problem is not None or self._suspicious(checked):
                continue
            for counters in counted:
                counters.count("rest_fallback")
            self._remember_spread(checked)
            found[symbol] = checked
        return found

    def _believed(
        self,
        streamed: UsableQuote | None,
        rest: UsableQuote | None,
        count: Callable[[str], None],
    ) -> UsableQuote | None:
        """The quote to price from: the stream's when believable; else REST's when that is;
        a wide quote only when the other source shows the same book (both wide, mids
        within a half-spread of each other); never a wide quote on its own word."""
        if streamed is not None and not self._suspicious(streamed):
            return streamed
        for quote in (streamed, rest):
            if quote is not None and self._suspicious(quote):
                count("suspicious_spread")
        if rest is not None and not self._suspicious(rest):
            return rest
        if streamed is not None and rest is not None and _same_book(streamed, rest):
            count("confirmed_by_other_source")
            return streamed
        return None

    def _suspicious(self, quote: UsableQuote) -> bool:
        """A spread not believable on one source's word (see the module's docstring)."""
        spread = _spread_bps(quote)
        if spread > SUSPICIOUS_SPREAD_BPS:
            return True
        recent = self._spreads.get(quote.quote.symbol)
        if recent is None or len(recent) < SPREADS_NEEDED or spread <= HISTORY_FLOOR_BPS:
            return False
        return spread > SPREAD_JUMP_FACTOR * median(recent)

    def _remember_spread(self, quote: UsableQuote) -> None:
        if quote.estimated is not None:
            return
        symbol = quote.quote.symbol
        self._spreads.setdefault(symbol, deque(maxlen=SPREADS_KEPT)).append(_spread_bps(quote))

    def _usable(
        self, quote: Quote | None, now: datetime, price_increment: Decimal | None
    ) -> tuple[UsableQuote | None, str | None]:
        """The quote made usable, or None, and what was wrong with it (a counter's name)."""
        if quote is None:
            return None, None
        if (now - quote.at).total_seconds() > self.freshness_seconds:
            return None, "stale"
        bid, ask = quote.bid, quote.ask
        if not (bid.is_finite() and ask.is_finite()) or bid < 0 or ask < 0:
            return None, "corrupt"
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


def _spread_bps(quote: UsableQuote) -> Decimal:
    return (quote.ask - quote.bid) / quote.mid * BPS


def _same_book(one: UsableQuote, other: UsableQuote) -> bool:
    """Two sources agree: each mid lies within half of the wider spread of the other."""
    half = max(one.ask - one.bid, other.ask - other.bid) / 2
    return abs(one.mid - other.mid) <= half
