"""Walk configuration: the ladder, waits per urgency, and the tolerances the engine enforces."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from journal import JournalCorrupt, JournalSchemaTooNew, canonical_json

from .errors import first_validation_error
from .intents import Urgency
from .numbers import BPS

__all__ = ["DEFAULT_LADDER", "PRICED_LIMITS", "EngineConfig", "journaled_config"]

# the product's ladder, 75% -> 85% -> 95% of the spread (other ladders measured:
# docs/benchmarks.md, quality)
DEFAULT_LADDER = (Decimal("0.75"), Decimal("0.85"), Decimal("0.95"))
DISTINCT_CONFIGS_KEPT = 64
# validation compares positions; a tolerance of shares (or 1000) would pass a wrong fill
MAX_VALIDATION_TOLERANCE = Decimal("0.01")
# any wait longer than this is a typo (1e300 seconds hung the virtual clock)
MAX_SECONDS = 30 * 24 * 3600.0
# a dollar figure of a risk limit: finite, not negative, and within the decimal context's
# digits (a limit of 1e400 would round, not compare)
MAX_MONEY = Decimal(10) ** 15
Money = Annotated[Decimal, Field(ge=0, le=MAX_MONEY)]
# more than 100 times equity in one position is a typo, not a limit
MAX_POSITION_WEIGHT = Decimal(100)
# a re-pricing threshold of more than ten spreads never fires on a quote worth trading at
MAX_REPEG_SPREADS = Decimal(10)
# the limits that cost each order at its quote before a plan starts (engine/risk.py)
PRICED_LIMITS = (
    "max_order_notional",
    "max_plan_notional",
    "max_position_weight",
    "daily_traded_notional",
    "min_order_notional",
)


class EngineConfig(BaseModel):
    """Everything that shapes a walk; journaled with each order so a resume walks the same way."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    ladder: tuple[Decimal, ...] = DEFAULT_LADDER
    medium_step_wait_seconds: float = Field(
        20.0,
        gt=0,
        le=MAX_SECONDS,
        description="How long each limit step of a MEDIUM order rests: with three steps a "
        "walk reaches the market order in about 60 s (the original waited 30 s a step). What "
        "the choice costs in slippage is measured by bench.quality (docs/benchmarks.md, "
        "quality).",
    )
    low_step_wait_seconds: float = Field(30.0, gt=0, le=MAX_SECONDS)
    market_wait_seconds: float = Field(30.0, gt=0, le=MAX_SECONDS)
    market_attempts: int = Field(3, ge=1)
    replace_orders: bool = Field(
        False,
        description="Move a resting whole-share order to the next step with one replace "
        "(PATCH); off: cancel, confirm, then place anew at every step. A replace is not "
        "atomic at Alpaca: a fill on the old order while the replace is pending leaves the "
        "replacement sized to a stale remainder until walkbook cancels it, and a fill on it "
        "in between trades more than asked.",
    )
    settle_timeout_seconds: float = Field(30.0, gt=0, le=MAX_SECONDS)
    quote_freshness_seconds: float = Field(5.0, gt=0, le=MAX_SECONDS)
    stream_quote_wait_seconds: float = Field(1.0, ge=0, le=MAX_SECONDS)
    validation_tolerance: Decimal = Field(Decimal("0.000000001"), ge=0, le=MAX_VALIDATION_TOLERANCE)
    broker_retry_attempts: int = Field(5, ge=1)
    broker_retry_backoff_seconds: float = Field(0.5, gt=0, le=MAX_SECONDS)
    validation: Literal["all_or_nothing", "skip_invalid"] = Field(
        "all_or_nothing",
        description="A plan with a bad order: refuse it whole, or fail just that order unsent.",
    )
    fractional_on_whole_share_asset: Literal["refuse", "round_down"] = Field(
        "refuse",
        description="A fractional qty of a non-fractionable asset: refuse, or round down + warn.",
    )
    insufficient_funds: Literal["fail", "shrink"] = Field(
        "fail",
        description="A buy that does not fit the buying power: fail it, or shrink it to fit.",
    )
    funds_buffer_bps: Decimal = Field(
        Decimal(50), ge=0, description="Headroom over the ask when costing a buy against funds."
    )
    use_margin: bool = Field(
        False,
        description="Size buys to the broker's buying power, borrowing on a margin account; "
        "off: only to what cash buys.",
    )
    market_without_quote: bool = Field(
        False,
        description="An urgency HIGH order with no usable quote goes to market anyway (its "
        "QUOTED transition journals a null quote and why); off: it fails no_quote.",
    )
    wait_for_open: bool = Field(
        False, description="When the market is closed, wait for the broker's next open."
    )
    max_wait_for_open_seconds: float = Field(
        24 * 3600.0,
        gt=0,
        le=MAX_SECONDS,
        description="The longest wait for an open before market_closed.",
    )
    in_flight: Literal["refuse", "resume_first", "abandon"] = Field(
        "refuse",
        description="A new plan while other plans' orders are in flight in the journal: "
        "refuse it, walk those orders to the end first, or abandon them.",
    )
    unknown_orders: Literal["refuse", "ignore"] = Field(
        "refuse",
        description="Open broker orders with walkbook client ids this journal does not know: "
        "refuse to run or resume, or go on.",
    )
    # pre-trade risk limits (engine/risk.py), in dollars unless named otherwise; None: off.
    # Orders are costed as buys are sized: buys at the ask, sells at the bid.
    max_order_notional: Money | None = Field(
        None, description="Refuse an order worth more than this (order-level, by `validation`)."
    )
    max_plan_notional: Money | None = Field(
        None, description="Refuse a plan whose orders together (buys and sells) exceed this."
    )
    max_position_weight: Decimal | None = Field(
        None,
        ge=0,
        le=MAX_POSITION_WEIGHT,
        description="Refuse a buy that would leave its position above this share of the "
        "account's equity (order-level, by `validation`).",
    )
    daily_traded_notional: Money | None = Field(
        None,
        description="Refuse a plan that would take the fills this journal counts on the "
        "current UTC day, plus the plan, above this.",
    )
    min_order_notional: Money | None = Field(
        None, description="Skip, unsent, an order worth less than this (FAILED below_min_notional)."
    )
    sell_failure_gate: Money | None = Field(
        None,
        description="Start no buy when more than this many dollars of the plan's sells failed "
        "or went unfilled (each buy FAILED blocked_by_sells, unsent).",
    )
    oversell_tolerance: Decimal = Field(
        Decimal(0),
        ge=0,
        le=1,
        description="A sell up to this fraction above the position is trimmed to the "
        "position; beyond it, refused.",
    )
    price_band_bps: Decimal | None = Field(
        None,
        gt=0,
        le=BPS,
        description="No limit price and no market order further than this from the arrival "
        "mid (a limit beyond it is held at the band's edge); an order whose market moved past "
        "the band stops, its live order cancelled, FAILED price_band.",
    )
    # watching the quote while a step rests (engine/walk.py)
    repeg_threshold_bps: Decimal | None = Field(
        None,
        gt=0,
        le=BPS,
        description="Re-price a resting limit order at once, at its step's fraction of the "
        "new quote, when the mid moves more than this from the quote the step was priced "
        "from; None: a step rests at its price until its time is up.",
    )
    repeg_spread_fraction: Decimal | None = Field(
        Decimal("0.2"),
        gt=0,
        le=MAX_REPEG_SPREADS,
        description="Re-price a resting limit order at once, at its step's fraction of the new "
        "quote, when the mid moves away from it (up for a buy, down for a sell) by more than "
        "this fraction of the spread of the quote the step was priced from: the order then "
        "rests where it may still fill instead of going to market after the move. A move "
        "toward the order is left alone (the resting limit is likelier to fill). What it "
        "costs and gains on bench.quality is in docs/benchmarks.md (quality). None: off.",
    )
    max_repegs: int = Field(2, ge=0, description="The most re-pricings within one limit step.")
    max_spread_bps: Decimal | None = Field(
        None,
        gt=0,
        le=BPS,
        description="Hold back a limit step's placement while the spread is wider than this, "
        "for at most the step's time (then the walk moves on as if the step went unfilled).",
    )
    quote_watch_seconds: float = Field(
        1.0,
        gt=0,
        le=MAX_SECONDS,
        description="How often a resting step or a held-back placement looks at the quote "
        "(only with repeg_threshold_bps, repeg_spread_fraction, price_band_bps or "
        "max_spread_bps).",
    )

    @property
    def watches_quotes(self) -> bool:
        """Whether a resting step looks at the quote before its time is up."""
        return any(
            watch is not None
            for watch in (self.repeg_threshold_bps, self.repeg_spread_fraction, self.price_band_bps)
        )

    @property
    def prices_orders(self) -> bool:
        """Whether a limit needs each order priced before the plan starts."""
        return any(getattr(self, name) is not None for name in PRICED_LIMITS)

    @field_validator("ladder")
    @classmethod
    def _ladder_increasing_in_unit_interval(
        cls, ladder: tuple[Decimal, ...]
    ) -> tuple[Decimal, ...]:
        for ratio in ladder:
            if not ratio.is_finite() or not Decimal(0) <= ratio <= Decimal(1):
                raise ValueError(f"ladder ratio {ratio} is outside [0, 1]")
        if any(b <= a for a, b in pairwise(ladder)):
            raise ValueError("ladder ratios must strictly increase toward the aggressive side")
        return ladder

    def step_wait_seconds(self, urgency: Urgency) -> float:
        """How long a limit step rests before the walk moves on."""
        if urgency is Urgency.LOW:
            return self.low_step_wait_seconds
        return self.medium_step_wait_seconds


# Settings added since journals were first written, each with the value that walks as
# before it existed: an order journaled by an older walkbook resumes as it was walking,
# not with a default that came later (every order journals its whole configuration).
WALKED_BEFORE_ADDED: dict[str, Any] = {"repeg_spread_fraction": None}


@lru_cache(maxsize=DISTINCT_CONFIGS_KEPT)
def _validated(text: str) -> EngineConfig:
    """An order's journaled configuration; settings this walkbook does not know mean a newer
    one journaled it, and walking it without them would not walk it as it was walking."""
    data = json.loads(text)
    unknown = sorted(set(data) - set(EngineConfig.model_fields))
    if unknown:
        raise JournalSchemaTooNew(
            f"an order was journaled by a newer walkbook: its configuration has settings "
            f"this version does not know ({', '.join(map(repr, unknown))}); resume it with "
            "the walkbook that wrote it",
            settings=unknown,
        )
    try:
        return EngineConfig.model_validate({**WALKED_BEFORE_ADDED, **data})
    except ValidationError as exc:
        problem = first_validation_error(exc)
        raise JournalCorrupt(
            f"an order's journaled configuration cannot be walked: {problem}"
        ) from None


# id(config) -> (config, its EngineConfig); holding the mapping keeps its id unique.
_BY_IDENTITY: dict[int, tuple[Mapping[str, Any], EngineConfig]] = {}


def journaled_config(config: Mapping[str, Any]) -> EngineConfig:
    """The EngineConfig an order's `created` event carries, validated once per distinct config.

    Every order journals the configuration it walks with; resuming 10,000 orders of one
    plan would otherwise validate the same configuration 10,000 times. Records share one
    mapping per distinct config (`order.shared_config`), so most lookups are by identity,
    without encoding the mapping again.
    """
    known = _BY_IDENTITY.get(id(config))
    if known is not None and known[0] is config:
        return known[1]
    parsed = _validated(canonical_json(config))
    if len(_BY_IDENTITY) >= DISTINCT_CONFIGS_KEPT:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(config)] = (config, parsed)
    return parsed
