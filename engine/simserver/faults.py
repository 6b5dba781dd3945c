"""The sim-server's fault knobs (`--faults SPEC.json`), seeded so a run can be replayed.

Every knob defaults to off. The HTTP knobs (429, 5xx, drops, latency) apply to every
REST request, or only to those matching `only` ("METHOD /path-prefix" entries).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..jsonfile import load_model

__all__ = ["FaultInjector", "FaultSpec", "load_fault_spec"]

Probability = Field(0.0, ge=0, le=1)


class FaultSpec(BaseModel):
    """What goes wrong, how often. Alpaca's own limits (200/min, one data stream) included."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 1
    rate_limit_per_minute: int = Field(200, ge=1, description="requests per window per key")
    rate_limit_window_seconds: float = Field(60.0, gt=0)
    data_stream_connections: int = Field(1, ge=0, description="market-data sockets per key")
    latency_seconds: float = Field(0.0, ge=0, description="added before each REST answer")
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
    stream_drop_after_seconds: float | None = Field(
        None, gt=0, description="close every websocket this long after it connects"
    )
    stale_quote_seconds: dict[str, float] = Field(
        default_factory=dict, description="symbol (or *) -> age added to its quotes"
    )
    only: list[str] = Field(
        default_factory=list, description='limit HTTP faults to e.g. ["POST /v2/orders"]'
    )

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
    return FaultSpec() if path is None else load_model(path, FaultSpec, "fault spec")
