"""The simulated market's parameters, from a market spec JSON (`--market`) or seeded defaults."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ...errors import InputError, first_validation_error
from ...intents import MAX_QUANTITY
from ...jsonfile import load_model, shown
from .ledger import AccountType
from .universe import LISTED_TICKERS

__all__ = ["MarketSpec", "SymbolSpec", "load_market_spec", "parse_market_spec"]

# Bounds that keep the simulator's arithmetic finite and inside the decimal context's 28
# digits (a price of 1e400 or a spread of 1e308 bps overflowed it with a traceback).
MIN_PRICE, MAX_PRICE = Decimal("0.0001"), Decimal(10_000_000)
MAX_CASH = Decimal(10) ** 15
MAX_SPREAD_BPS = 10_000.0  # the bid at half the mid
MAX_VOLATILITY_BPS = 100.0  # 1% a second
MAX_LATENCY_SECONDS = 60.0
MAX_OPENS_IN_SECONDS = 7 * 24 * 3600.0
Position = Annotated[Decimal, Field(le=MAX_QUANTITY)]


# a quote a source shows whatever the book is: corrupt (negative) prices allowed, finite only
QuotePrice = Annotated[Decimal, Field(ge=-MAX_PRICE, le=MAX_PRICE)]
QuoteOverride = tuple[QuotePrice, QuotePrice]


class SymbolSpec(BaseModel):
    """One symbol's market: where it starts, how wide and how jumpy it is, how easily it fills."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    price: Decimal = Field(ge=MIN_PRICE, le=MAX_PRICE)
    spread_bps: float = Field(5.0, gt=0, le=MAX_SPREAD_BPS)
    volatility_bps: float = Field(
        1.5, ge=0, le=MAX_VOLATILITY_BPS, description="stdev of the mid per second, in bps"
    )
    fractionable: bool = True
    tradable: bool = True
    shortable: bool = Field(
        True, description="a sell with no long position may open a short (margin account)"
    )
    easy_to_borrow: bool = Field(
        True,
        description="shown in the asset; a hard-to-borrow short sale is still accepted (Alpaca "
        "takes DAY orders for one, and walkbook places DAY orders)",
    )
    zero_quote_probability: float = Field(
        0.0, ge=0, le=1, description="chance per second that a zero-bid/ask episode starts"
    )
    liquidity: float = Field(1.0, gt=0, description="multiplier on passive fill intensity")
    price_increment: Decimal | None = Field(None, ge=MIN_PRICE, le=MAX_PRICE)
    stream_quote: QuoteOverride | None = Field(
        None, description="[bid, ask] every streamed quote shows instead (a corrupt feed)"
    )
    rest_quote: QuoteOverride | None = Field(
        None, description="[bid, ask] every REST quote shows instead (a source that disagrees)"
    )
    order_lookup: Literal["normal", "not_found_by_id", "not_found"] = Field(
        "normal",
        description="answer 'not found' for this symbol's orders once placed: to a read by "
        "id only, or everywhere (by id and client id, to cancel, in listings)",
    )


def _seeded_symbol(seed: int, name: str) -> SymbolSpec:
    """Deterministic defaults for `name` drawn from the seed (per symbol: no symbol's draw
    perturbs another's)."""
    rng = random.Random(f"{seed}/{name}")
    price = Decimal(str(round(math.exp(rng.uniform(math.log(5), math.log(400))), 2)))
    return SymbolSpec(
        price=price,
        spread_bps=round(rng.uniform(2, 15), 2),
        volatility_bps=round(rng.uniform(0.5, 3), 2),
        liquidity=round(rng.uniform(0.6, 1.5), 2),
    )


def _with_price(seed: int, name: str, given: Any) -> Any:
    """A listed symbol's fields, its price drawn from the seed when the spec leaves it out."""
    if isinstance(given, dict) and "price" not in given:
        return {**given, "price": _seeded_symbol(seed, name).price}
    return given


class MarketSpec(BaseModel):
    """The whole simulated market and account."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    seed: int = 7
    cash: Decimal = Field(Decimal(1_000_000), ge=0, le=MAX_CASH)
    account_type: AccountType = Field(
        "margin",
        description="margin: Alpaca's default, buying power beyond cash from $2,000 of equity "
        "and short sales; cash: buying power is the cash and a sell never opens a short",
    )
    positions: dict[str, Position] = Field(default_factory=dict)
    symbols: dict[str, SymbolSpec] = Field(default_factory=dict)
    unknown_symbols: list[str] = Field(
        default_factory=list, description="symbols the broker must answer as unknown"
    )
    universe: Literal["listed", "any"] = Field(
        "listed",
        description="listed: only `symbols`, `positions` and well-known US listings trade, "
        "as at Alpaca; any: every symbol not in `unknown_symbols` is invented from the seed",
    )
    market_open: bool = True
    opens_in_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_OPENS_IN_SECONDS,
        description="closed until this long after the simulation starts, then open",
    )
    closes_in_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_OPENS_IN_SECONDS,
        description="the close, this long after the simulation starts: DAY orders expire, "
        "GTC orders with fills are done_for_day, and the market stays closed",
    )
    latency_seconds: float = Field(0.02, ge=0, le=MAX_LATENCY_SECONDS)
    pending_new_seconds: float = Field(
        0.0,
        ge=0,
        le=MAX_LATENCY_SECONDS,
        description="how long an accepted order is pending_new before it reaches the venue "
        "(0: accepted, then new at the next look at the market)",
    )
    fill_intensity: float = Field(
        0.15, gt=0, description="passive fills per second for an order at the far touch"
    )
    fill_decay: float = Field(
        3.0, ge=0, description="how fast intensity falls with distance from the far touch"
    )
    partial_fill_probability: float = Field(0.5, ge=0, le=1)
    market_partial_probability: float = Field(0.03, ge=0, le=1)
    reject_probability: float = Field(0.0, ge=0, le=1)
    late_reject_probability: float = Field(
        0.0, ge=0, le=1, description="chance an accepted order is rejected at the venue"
    )
    stream_gap_probability: float = Field(0.02, ge=0, le=1)
    read_error_probability: float = Field(0.0, ge=0, le=1)
    submit_timeout_probability: float = Field(0.0, ge=0, le=1)

    @field_validator("positions")
    @classmethod
    def _no_short_positions(cls, positions: dict[str, Decimal]) -> dict[str, Decimal]:
        """The day starts long or flat: a short position is only ever opened by a sell, on a
        margin account, whose cost basis the simulator then knows."""
        for symbol, quantity in positions.items():
            if quantity < 0:
                raise ValueError(
                    f"position {shown(symbol)} is {quantity}: the simulator models no short "
                    "positions at the start (a sell with no position opens one on a margin "
                    "account)"
                )
        return positions

    @field_validator("symbols", mode="before")
    @classmethod
    def _seeded_prices(cls, symbols: Any, info: ValidationInfo) -> Any:
        """`price` is optional (docs/plans.md): a listed symbol without one starts where the
        spec's own seed puts it, as an unlisted symbol would."""
        seed = info.data.get("seed")
        if not isinstance(symbols, dict) or not isinstance(seed, int):
            return symbols
        return {name: _with_price(seed, name, given) for name, given in symbols.items()}

    def lists(self, name: str) -> bool:
        """Whether the market knows `name` at all (an unknown one is refused, as Alpaca does)."""
        if name in self.unknown_symbols:
            return False
        if self.universe == "any" or name in self.symbols or name in self.positions:
            return True
        return name in LISTED_TICKERS

    def listed(self) -> list[str]:
        """Every symbol `lists` accepts (for `universe: any`, those the spec names)."""
        names = set(self.symbols) | set(self.positions)
        if self.universe == "listed":
            names |= LISTED_TICKERS
        return sorted(names - set(self.unknown_symbols))

    def symbol(self, name: str) -> SymbolSpec:
        """The spec for `name`, or deterministic defaults drawn from the seed."""
        known = self.symbols.get(name)
        if known is not None:
            return known
        return _seeded_symbol(self.seed, name)

    def with_seed(self, seed: int | None) -> MarketSpec:
        return self if seed is None else self.model_copy(update={"seed": seed})


def parse_market_spec(payload: Any) -> MarketSpec:
    """A market spec from decoded JSON, every problem one InputError line."""
    try:
        return MarketSpec.model_validate(payload)
    except ValidationError as exc:
        raise InputError(f"invalid market spec: {first_validation_error(exc)}") from None


def load_market_spec(path: str | Path) -> MarketSpec:
    """A market spec from a strict JSON file (see docs/plans.md)."""
    return load_model(path, MarketSpec, "market spec")
