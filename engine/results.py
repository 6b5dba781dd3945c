"""Results for callers: per order and per plan, built only from journaled records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from .fsm import FailReason, OrderState
from .intents import OrderSide
from .numbers import BPS, ZERO
from .order import OrderRecord
from .targets import Hold

__all__ = ["OrderResult", "PlanResult", "PlanStatus", "is_skip"]

CENT = Decimal("0.01")


class OrderResult(BaseModel):
    """What happened to one order; JSON-serialisable with `model_dump(mode="json")`."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    plan_id: str | None
    symbol: str
    side: OrderSide
    quantity: Decimal
    requested_qty: Decimal
    state: str
    reason: str | None
    # one line saying why it FAILED ("HALT is not tradable"), from the journal
    detail: str | None
    filled_qty: Decimal
    avg_fill_price: Decimal | None
    steps_used: int
    arrival_bid: Decimal | None
    arrival_ask: Decimal | None
    arrival_mid: Decimal | None
    slippage_bps: Decimal | None
    started_at: str
    ended_at: str | None
    seconds_to_complete: float | None
    correlation_id: str | None
    strategy_id: str | None
    # a dollar order's notional, to set against `traded_value` (None for a quantity order)
    notional_requested: Decimal | None = None
    # left unsent on purpose: FAILED `below_min_notional` under a `min_order_notional` the
    # configuration sets, which fails nothing of the plan (a dollar order that comes to no
    # share without that limit is a failure: nothing the caller asked for happened)
    skipped: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state == OrderState.VALIDATED

    @property
    def done_as_asked(self) -> bool:
        """VALIDATED, or skipped as the configuration asks."""
        return self.succeeded or self.skipped

    @property
    def failure(self) -> str | None:
        """The reason and its detail for people: `not_tradable: HALT is not tradable`."""
        if self.reason is None or self.detail is None:
            return self.reason
        return f"{self.reason}: {self.detail}"

    @property
    def resized(self) -> bool:
        """Shrunk to fit the buying power (`quantity` < `requested_qty`)."""
        return self.quantity < self.requested_qty and self.intent_was_buy

    @property
    def intent_was_buy(self) -> bool:
        return self.side is OrderSide.BUY

    @property
    def traded_value(self) -> Decimal:
        return ZERO if self.avg_fill_price is None else self.filled_qty * self.avg_fill_price

    @classmethod
    def from_record(cls, record: OrderRecord) -> OrderResult:
        arrival = record.arrival or {}
        bid = Decimal(arrival["bid"]) if "bid" in arrival else None
        ask = Decimal(arrival["ask"]) if "ask" in arrival else None
        mid = (bid + ask) / 2 if bid is not None and ask is not None else None
        avg = record.avg_price
        slippage = None
        if avg is not None and mid:
            signed = avg - mid if record.intent.side is OrderSide.BUY else mid - avg
            slippage = (signed / mid * BPS).quantize(Decimal("0.01"))
        return cls(
            order_id=record.order_id,
            plan_id=record.plan_id,
            symbol=record.intent.symbol,
            side=record.intent.side,
            quantity=record.quantity,
            requested_qty=record.intent.shares,
            state=record.state,
            reason=record.reason,
            detail=record.failure_detail,
            filled_qty=record.filled_qty,
            avg_fill_price=None if avg is None else avg.quantize(Decimal("0.000001")),
            steps_used=record.steps_used,
            arrival_bid=bid,
            arrival_ask=ask,
            arrival_mid=mid,
            slippage_bps=slippage,
            started_at=record.created_at,
            ended_at=record.updated_at if record.is_terminal else None,
            seconds_to_complete=(
                (_parse(record.updated_at) - _parse(record.created_at)).total_seconds()
                if record.is_terminal
                else None
            ),
            correlation_id=record.intent.correlation_id,
            strategy_id=record.intent.strategy_id,
            notional_requested=record.notional_requested,
            skipped=is_skip(record.reason, record.config.get("min_order_notional")),
        )


def is_skip(reason: str | None, min_order_notional: object) -> bool:
    """An order left unsent on purpose: FAILED `below_min_notional` under a
    `min_order_notional` the configuration sets. The one rule the result and the preview
    both apply."""
    return reason == FailReason.BELOW_MIN_NOTIONAL and min_order_notional is not None


class PlanStatus(StrEnum):
    """SUCCESS: every order VALIDATED at its requested size, or skipped under
    `min_order_notional` (`OrderResult.skipped`); FAILURE: none VALIDATED, and not every
    order skipped."""

    SUCCESS = "SUCCESS"
    PARTIAL_SUCCESS = "PARTIAL_SUCCESS"
    FAILURE = "FAILURE"


class PlanResult(BaseModel):
    """One truthful answer for a plan: every order's result and the totals.

    Neither Alpaca (equities) nor the simulator reports per-order fees, so values are
    gross: `bought_value` and `sold_value` are the fills' own prices times quantities.
    """

    model_config = ConfigDict(frozen=True)

    plan_id: str
    status: PlanStatus
    orders: tuple[OrderResult, ...]
    traded_value: Decimal
    bought_value: Decimal
    sold_value: Decimal
    slippage_bps: Decimal | None
    started_at: str | None
    ended_at: str | None
    seconds_to_complete: float | None
    # the quotes this plan's orders took in this process, by outcome (not journaled: a
    # resumed plan counts from the resume on, a redelivered finished plan counts none)
    quote_counters: dict[str, int]
    # a target plan's symbols that trade nothing: at their weight, or a change too small
    holds: tuple[Hold, ...] = ()

    @property
    def cash_released(self) -> Decimal:
        """What the sells brought in, counted from their fills at every step."""
        return self.sold_value

    @classmethod
    def from_results(
        cls,
        plan_id: str,
        results: list[OrderResult],
        quote_counters: dict[str, int],
        holds: Sequence[Hold] = (),
    ) -> PlanResult:
        succeeded = sum(1 for r in results if r.succeeded)
        complete = sum(1 for r in results if (r.succeeded and not r.resized) or r.skipped)
        status = (
            PlanStatus.SUCCESS
            if complete == len(results)
            else PlanStatus.FAILURE
            if succeeded == 0
            else PlanStatus.PARTIAL_SUCCESS
        )
        weighted, bought, sold = ZERO, ZERO, ZERO
        for result in results:
            if result.intent_was_buy:
                bought += result.traded_value
            else:
                sold += result.traded_value
            if result.slippage_bps is not None:
                weighted += result.slippage_bps * result.traded_value
        value = bought + sold
        started = min((r.started_at for r in results), default=None)
        ended = None if any(r.ended_at is None for r in results) else max(
            (r.ended_at for r in results if r.ended_at is not None), default=None
        )  # fmt: skip
        return cls(
            plan_id=plan_id,
            status=status,
            orders=tuple(results),
            traded_value=value.quantize(CENT),
            bought_value=bought.quantize(CENT),
            sold_value=sold.quantize(CENT),
            slippage_bps=(weighted / value).quantize(CENT) if value else None,
            started_at=started,
            ended_at=ended,
            seconds_to_complete=(
                (_parse(ended) - _parse(started)).total_seconds() if started and ended else None
            ),
            quote_counters=quote_counters,
            holds=tuple(holds),
        )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at)
