"""The sim-server's fault knobs (`--faults SPEC.json`), seeded so a run can be replayed.

Every fault knob defaults to off; Alpaca's own limits default to the free plan's. The
HTTP knobs (429, 5xx, drops, latency) apply to every REST request, or only to those
matching `only` ("METHOD /path-prefix" entries).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...jsonfile import load_model, shown

__all__ = ["FaultInjector", "FaultSpec", "load_fault_spec"]

Probability = Field(0.0, ge=0, le=1)
# an `only` entry: a method the API serves, then a path under the trading or data API
ONLY_ENTRY = re.compile(r"(GET|POST|PATCH|DELETE) /(v2/|v1beta)\S*")
MAX_SECONDS = 24 * 3600.0
MAX_LATENCY_SECONDS = 60.0
QuoteAge = Annotated[float, Field(ge=0, le=MAX_SECONDS)]


class FaultSpec(BaseModel):
    """What goes wrong, how often. Alpaca's own limits (200/min for trading and for market
    data, one data stream, 30 IEX symbols) included."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    seed: int = 1
    rate_limit_per_minute: int = Field(
        200, ge=1, description="trading API requests per window per key"
    )
    data_rate_limit_per_minute: int = Field(
        200, ge=1, description="market-data REST requests per window per key (free plan)"
    )
    rate_limit_window_seconds: float = Field(60.0, gt=0, le=MAX_SECONDS)
    data_stream_connections: int = Field(1, ge=0, description="market-data sockets per key")
    iex_symbol_limit: int = Field(
        30, ge=0, description="quote symbols one /v2/iex connection may hold (405 beyond)"
    )
    latency_seconds: float = Field(
        0.0, ge=0, le=MAX_LATENCY_SECONDS, description="added before each REST answer"
    )
    http_429_probability: float = Probability
    http_5xx_probability: float = Probability
    drop_probability: float = Field(
        0.0, ge=0, le=1, description="close the connection without an answer, request unread"
    )
    submit_504_probability: float = Field(
        0.0, ge=0, le=1, description="accept a new order, then answer 504"
    )
    replace_filled_probability: float = Field(
        0.0, ge=0, le=1, description="fill the old order in full just before a replace (422)"
    )
    replace_rejected_probability: float = Field(
        0.0,
        ge=0,
        le=1,
        description="fill the old order in full while its replace is pending: the PATCH "
        "answers 200, then the replacement is rejected on trade_updates",
    )
    stream_drop_after_seconds: float | None = Field(
        None, gt=0, le=MAX_SECONDS, description="close every websocket this long after it connects"
    )
    stale_quote_seconds: dict[str, QuoteAge] = Field(
        default_factory=dict, description="symbol (or *) -> age added to its quotes"
    )
    only: list[str] = Field(
        default_factory=list, description='limit HTTP faults to e.g. ["POST /v2/orders"]'
    )

    @field_validator("only")
    @classmethod
    def _method_and_path(cls, only: list[str]) -> list[str]:
        """An entry no request can match would silently turn every HTTP fault off."""
        for entry in only:
            if not ONLY_ENTRY.fullmatch(entry):
                raise ValueError(
                    f"{shown(entry)} is not 'METHOD /path' with METHOD one of GET, POST, PATCH, "
                    "DELETE and the path under /v2/ or /v1beta"
                )
        return only

    def applies_to(self, method: str, path: str) -> bool:
        request = f"{method.upper()} {path}"
        return not self.only or any(request.startswith(prefix) for prefix in self.only)

    def quote_age(self, symbol: str) -> float:
        return self.stale_quote_seconds.get(symbol, self.stale_quote_seconds.get("*", 0.0))


class FaultInjector:
    """Rolls the dice for each knob from one seeded generator and counts what it injected."""

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self.injected: Counter[str] = Counter()

    def roll(self, name: str, probability: float) -> bool:
        if probability <= 0 or self._rng.random() >= probability:
            return False
        self.injected[name] += 1
        return True


def load_fault_spec(path: str | Path | None) -> FaultSpec:
    """The fault spec in the strict JSON file at `path`; no path, no faults."""
    return FaultSpec() if path is None else load_model(path, FaultSpec, "fault spec")
