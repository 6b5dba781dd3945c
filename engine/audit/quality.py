"""Execution quality from the journal alone: slippage against arrival, ladder use, quote sources.

Per-order numbers come from the replayed record through `OrderResult.from_record` and
per-plan totals through `PlanResult.from_results`, the arithmetic the live engine
reports with, so a report read the morning after agrees with the run's own result.
A report can be read mid-run: a plan with an order not yet terminal is `IN_PROGRESS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..fsm import TERMINAL_STATES, OrderState
from ..intents import OrderSide
from ..numbers import ZERO, decimal_text
from ..results import CENT, OrderResult, PlanResult
from .timeline import OrderTimeline, replay

__all__ = [
    "IN_PROGRESS",
    "SUMMARY_COLUMNS",
    "TEXT_COLUMNS",
    "ExecutionReport",
    "OrderQuality",
    "PlanQuality",
    "cell_text",
    "order_quality",
    "percent",
    "report",
    "summarize",
]

IN_PROGRESS = "IN_PROGRESS"
OTHER_STEP = "other"
QUOTE_SOURCE_KEYS = ("stream", "rest", "estimated_bid", "estimated_ask")
SHARE_PLACES = Decimal("0.0001")
SUMMARY_COLUMNS = ("plan", "symbol", "side", "qty", "state", "reason", "filled", "avg fill",
                   "arrival mid", "slippage bps", "cost $", "steps", "time to fill s",
                   "filled by level")  # fmt: skip
TEXT_COLUMNS = frozenset({"#", "plan", "symbol", "side", "state", "reason", "filled by level"})


def cell_text(value: object) -> str:
    """A value as report text: blank for None, decimals without exponent or trailing zeros."""
    if value is None:
        return ""
    return decimal_text(value) if isinstance(value, Decimal) else str(value)


def percent(share: Decimal | None) -> str:
    """A share (0..1) as report text: `40.0%`; blank for None."""
    return "" if share is None else f"{share * 100:.1f}%"


def _step_key(step: str) -> tuple[int, int]:
    """L1 < L2 < … < Ln < M < other."""
    if step.startswith("L") and step[1:].isdigit():
        return (0, int(step[1:]))
    return (1, 0) if step == "M" else (2, 0)


def _by_step(quantities: Iterable[tuple[str, Decimal]]) -> dict[str, Decimal]:
    """Sum quantities per ladder level, levels in walk order."""
    total: dict[str, Decimal] = {}
    for step, qty in quantities:
        total[step] = total.get(step, ZERO) + qty
    return {step: total[step] for step in sorted(total, key=_step_key)}


def _value_shares(orders: Iterable[OrderQuality]) -> dict[str, Decimal]:
    """Share of the traded dollar value filled at each ladder level (sums to 1): 347 shares
    at $14 weigh less than 27 at $598, as they do in the book."""
    by_step = _by_step(item for o in orders for item in o.value_by_step.items())
    value = sum(by_step.values(), ZERO)
    return {k: (v / value).quantize(SHARE_PLACES) for k, v in by_step.items()}


def _cents(dollars: Decimal | None) -> str | None:
    return None if dollars is None else f"{dollars:.2f}"


def _steps_json(by_step: dict[str, Decimal]) -> dict[str, str]:
    return {k: decimal_text(v) for k, v in by_step.items()}


@dataclass(frozen=True)
class OrderQuality:
    """One order: its result (arrival mid, average fill, slippage, steps) and how it filled.

    `time_to_fill_seconds` runs from the arrival quote (the move into QUOTED) to the
    last fill; `filled_by_step` and `value_by_step` split the filled quantity and its
    dollar value by the ladder level of the broker order that filled it (`L1`…`Ln`,
    `M`). `cost_dollars` is what the fills cost against the arrival mid, signed like
    `slippage_bps` (positive is worse, for buys and sells alike), to the cent.
    """

    result: OrderResult
    time_to_fill_seconds: float | None
    filled_by_step: dict[str, Decimal]
    value_by_step: dict[str, Decimal]
    cost_dollars: Decimal | None
    escalated: bool
    quote_sources: dict[str, int]

    @property
    def terminal(self) -> bool:
        return self.result.state in TERMINAL_STATES

    def summary_cells(self) -> list[str]:
        """The order's row in the text and HTML reports, one text per `SUMMARY_COLUMNS`."""
        r, ttf = self.result, self.time_to_fill_seconds
        values = (r.plan_id, r.symbol, r.side.value, r.quantity, r.state, r.reason, r.filled_qty,
                  r.avg_fill_price, r.arrival_mid, r.slippage_bps, _cents(self.cost_dollars),
                  r.steps_used)  # fmt: skip
        cells = [cell_text(value) for value in values]
        cells.append("" if ttf is None else f"{ttf:.1f}")
        cells.append(" ".join(f"{k} {decimal_text(v)}" for k, v in self.filled_by_step.items()))
        return cells

    def as_json(self) -> dict[str, Any]:
        return {
            **self.result.model_dump(mode="json"),
            "time_to_fill_seconds": self.time_to_fill_seconds,
            "filled_by_step": _steps_json(self.filled_by_step),
            "value_by_step": _steps_json(self.value_by_step),
            "cost_dollars": _cents(self.cost_dollars),
            "escalated": self.escalated,
            "quote_sources": self.quote_sources,
        }


def _quote_sources(timeline: OrderTimeline) -> Counter[str]:
    """Each distinct quote the order's transitions journaled, by source and estimated side."""
    counts: Counter[str] = Counter({key: 0 for key in QUOTE_SOURCE_KEYS})
    previous: dict[str, Any] | None = None
    for entry in timeline.entries:
        quote = entry.move_quote
        if quote is None or quote == previous:
            continue
        previous = quote
        counts[str(quote.get("source"))] += 1
        if quote.get("estimated"):
            counts[f"estimated_{quote['estimated']}"] += 1
    return counts


def _cost_dollars(result: OrderResult, notional: Decimal) -> Decimal | None:
    """(fills' value - arrival mid x filled) for a buy, the reverse for a sell: the dollars
    `slippage_bps` stands for (None where it is None)."""
    mid = result.arrival_mid
    if result.slippage_bps is None or mid is None:
        return None
    cost = notional - mid * result.filled_qty
    return (cost if result.side is OrderSide.BUY else -cost).quantize(CENT)


def order_quality(timeline: OrderTimeline) -> OrderQuality:
    """The execution-quality numbers of one replayed order."""
    fills = timeline.fills
    arrival = timeline.arrival
    time_to_fill = None
    if fills and arrival is not None:
        elapsed = datetime.fromisoformat(fills[-1].at) - datetime.fromisoformat(arrival.at)
        time_to_fill = elapsed.total_seconds()
    value_by_step = _by_step(
        (f.step or OTHER_STEP, (f.fill_qty or ZERO) * (f.fill_price or ZERO)) for f in fills
    )
    result = timeline.result()
    return OrderQuality(
        result=result,
        time_to_fill_seconds=time_to_fill,
        filled_by_step=_by_step((f.step or OTHER_STEP, f.fill_qty or ZERO) for f in fills),
        value_by_step=value_by_step,
        cost_dollars=_cost_dollars(result, sum(value_by_step.values(), ZERO)),
        escalated=any(e.state == OrderState.MARKET for e in timeline.entries),
        quote_sources=dict(_quote_sources(timeline)),
    )


@dataclass(frozen=True)
class PlanQuality:
    """One plan: its `PlanResult` (the live engine's totals) and its orders' quality numbers.

    `status` is the result's until every order is terminal, `IN_PROGRESS` before: a plan
    read mid-run has not succeeded or failed yet, whatever its finished orders did.
    """

    result: PlanResult
    orders: tuple[OrderQuality, ...]

    @property
    def plan_id(self) -> str:
        return self.result.plan_id

    @property
    def status(self) -> str:
        if all(order.terminal for order in self.orders):
            return self.result.status.value
        return IN_PROGRESS

    @property
    def cost_dollars(self) -> Decimal | None:
        """The orders' `cost_dollars` summed (None when no order has one)."""
        costs = [o.cost_dollars for o in self.orders if o.cost_dollars is not None]
        return sum(costs, ZERO) if costs else None

    @property
    def value_share_by_step(self) -> dict[str, Decimal]:
        return _value_shares(self.orders)

    def as_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.result.to_json_dict().items() if k != "orders"},
            "status": self.status,
            "cost_dollars": _cents(self.cost_dollars),
            "value_share_by_step": _steps_json(self.value_share_by_step),
        }


@dataclass(frozen=True)
class ExecutionReport:
    """Every order's quality numbers, each plan's totals, and the aggregates over all orders."""

    orders: tuple[OrderQuality, ...]
    plans: tuple[PlanQuality, ...]

    @property
    def filled_by_step(self) -> dict[str, Decimal]:
        return _by_step(item for o in self.orders for item in o.filled_by_step.items())

    @property
    def value_share_by_step(self) -> dict[str, Decimal]:
        """Share of all traded dollar value that filled at each ladder level (sums to 1)."""
        return _value_shares(self.orders)

    @property
    def quoted_orders(self) -> int:
        """Orders that reached the book: they have an arrival quote."""
        return sum(1 for o in self.orders if o.result.arrival_mid is not None)

    @property
    def escalated_orders(self) -> int:
        return sum(1 for o in self.orders if o.escalated)

    @property
    def escalated_share(self) -> Decimal | None:
        """Share of quoted orders that went on to MARKET."""
        if not self.quoted_orders:
            return None
        return (Decimal(self.escalated_orders) / self.quoted_orders).quantize(SHARE_PLACES)

    @property
    def quote_sources(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for order in self.orders:
            total.update(order.quote_sources)
        return dict(total)

    def as_json(self) -> dict[str, Any]:
        share = self.escalated_share
        return {
            "orders": [o.as_json() for o in self.orders],
            "plans": [p.as_json() for p in self.plans],
            "value_share_by_step": _steps_json(self.value_share_by_step),
            "filled_by_step": _steps_json(self.filled_by_step),
            "quoted_orders": self.quoted_orders,
            "escalated_orders": self.escalated_orders,
            "escalated_share": None if share is None else decimal_text(share),
            "quote_sources": self.quote_sources,
        }


def summarize(timelines: Iterable[OrderTimeline]) -> ExecutionReport:
    """Fold replayed timelines (any number, one at a time) into a report."""
    orders = [order_quality(timeline) for timeline in timelines]
    by_plan: dict[str, list[OrderQuality]] = {}
    for order in orders:
        by_plan.setdefault(order.result.plan_id or "", []).append(order)
    plans = []
    for plan_id, members in by_plan.items():
        sources: Counter[str] = Counter()
        for member in members:
            sources.update(member.quote_sources)
        result = PlanResult.from_results(plan_id, [m.result for m in members], dict(sources))
        plans.append(PlanQuality(result, tuple(members)))
    return ExecutionReport(tuple(orders), tuple(plans))


def report(path: str | Path) -> ExecutionReport:
    """Execution quality of every order in the journal (read-only; safe while a run writes)."""
    return summarize(replay(path))
