"""The simulated market's parameters, from a market spec JSON (`--market`) or seeded defaults."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError, first_validation_error
from ..jsonfile import load_model

__all__ = ["MarketSpec", "SymbolSpec", "load_market_spec"]


class SymbolSpec(BaseModel):
    """One symbol's market: where it starts, how wide and how jumpy it is, how easily it fills."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    price: Decimal = Field(gt=0)
    spread_bps: float = Field(5.0, gt=0)
    volatility_bps: float = Field(1.5, ge=0, description="stdev of the mid per second, in bps")
    fractionable: bool = True
    tradable: bool = True
    zero_quote_probability: float = Field(
        0.0, ge=0, le=1, description="chance per second that a zero-bid/ask episode starts"
    )
    liquidity: float = Field(1.0, gt=0, description="multiplier on passive fill intensity")
    price_increment: Decimal | None = Field(None, gt=0)


class MarketSpec(BaseModel):
    """The whole simulated market and account."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 7
    cash: Decimal = Field(Decimal(1_000_000), ge=0)
    positions: dict[str, Decimal] = Field(default_factory=dict)
    symbols: dict[str, SymbolSpec] = Field(default_factory=dict)
    unknown_symbols: list[str] = Field(
        default_factory=list, description="symbols the broker must answer as unknown"
    )
    market_open: bool = True
    opens_in_seconds: float | None = Field(
        None, gt=0, description="closed until this long after the simulation starts, then open"
    )
    latency_seconds: float = Field(0.02, ge=0)
    fill_intensity: float = Field(
        0.15, gt=0, description="passive fills per second for an order at the far touch"
    )
    fill_decay: float = Field(
        3.0, ge=0, description="how fast intensity falls with distance from the far touch"
    )
    partial_fill_probability: float = Field(0.5, ge=0, le=1)
    market_partial_probability: float = Field(0.03, ge=0, le=1)
    reject_probability: float = Field(0.0, ge=0, le=1)
    stream_gap_probability: float = Field(0.02, ge=0, le=1)
    read_error_probability: float = Field(0.0, ge=0, le=1)
    submit_timeout_probability: float = Field(0.0, ge=0, le=1)

    def symbol(self, name: str) -> SymbolSpec:
        """The spec for `name`, or deterministic defaults drawn from the seed."""
        known = self.symbols.get(name)
        if known is not None:
            return known
        rng = random.Random(f"{self.seed}/{name}")
        price = Decimal(str(round(math.exp(rng.uniform(math.log(5), math.log(400))), 2)))
        return SymbolSpec(
            price=price,
            spread_bps=round(rng.uniform(2, 15), 2),
            volatility_bps=round(rng.uniform(0.5, 3), 2),
            liquidity=round(rng.uniform(0.6, 1.5), 2),
        )

    def with_seed(self, seed: int | None) -> MarketSpec:
        return self if seed is None else self.model_copy(update={"seed": seed})


def parse_market_spec(payload: Any) -> MarketSpec:
    try:
        return MarketSpec.model_validate(payload)
    except ValidationError as exc:
        raise InputError(f"invalid market spec: {first_validation_error(exc)}") from None


def load_market_spec(path: str | Path) -> MarketSpec:
    return load_model(path, MarketSpec, "market spec")
