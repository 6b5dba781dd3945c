"""What a run shows as it goes and when it ends: a live table of its orders on a terminal
(nothing otherwise: `walkbook watch` follows a run from anywhere), then the results table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..engine import Engine
from ..fsm import TERMINAL_STATES
from ..hooks import OrderFilled, OrderTransitioned
from ..intents import RebalancePlan
from ..numbers import decimal_text
from ..results import PlanResult

__all__ = ["PLAIN", "Progress", "result_table"]

# how a line of text is printed: as written (a detail may hold brackets rich would read as
# markup), unhighlighted and never wrapped
PLAIN: dict[str, Any] = {"highlight": False, "markup": False, "soft_wrap": True}


class Progress:
    """Per-order state as the walk moves, with how many orders are done: a live table on a
    terminal; off one (piped, a log file), it stays quiet."""

    def __init__(self, console: Console, plan: RebalancePlan) -> None:
        self.console = console
        self.plan_id = plan.plan_id
        self.total = len(plan.orders)
        self.done: set[str] = set()
        self.intents = {intent.symbol: intent for intent in plan.orders}
        self.states = dict.fromkeys(self.intents, "PENDING")
        self.filled = dict.fromkeys(self.intents, "0")
        self.live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.live = Live(self._table(), console=self.console, refresh_per_second=8)
            self.live.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc_info)

    def follow(self, engine: Engine) -> None:
        if self.live is not None:
            engine.subscribe(OrderTransitioned, self.transitioned)
            engine.subscribe(OrderFilled, self.filled_some)

    def transitioned(self, notice: OrderTransitioned) -> None:
        self.states[notice.symbol] = notice.dest
        if notice.dest in TERMINAL_STATES:
            self.done.add(notice.order_id)
        if self.live is not None:
            self.live.update(self._table())

    def filled_some(self, notice: OrderFilled) -> None:
        self.filled[notice.symbol] = str(notice.filled_qty)
        if self.live is not None:
            self.live.update(self._table())

    def _table(self) -> Table:
        table = Table(title=f"plan {self.plan_id}: {len(self.done)}/{self.total} orders done")
        for column in ("symbol", "side", "qty", "state", "filled"):
            table.add_column(column)
        for symbol, intent in self.intents.items():
            table.add_row(
                symbol,
                intent.side.value,
                str(intent.quantity) if intent.notional is None else f"${intent.notional}",
                self.states[symbol],
                self.filled[symbol],
            )
        return table


def result_table(result: PlanResult) -> Table:
    """The plan's outcome, one row per order, its totals in the caption."""
    table = Table(title=f"plan {result.plan_id}: {result.status.value}")
    for column in ("symbol", "side", "qty", "state", "reason", "filled", "avg price", "steps",
                   "arrival mid", "slippage bps"):  # fmt: skip
        table.add_column(column, justify="right" if column not in ("symbol", "state") else "left")
    for order in result.orders:
        table.add_row(
            order.symbol,
            order.side.value,
            str(order.quantity),
            "SKIPPED" if order.skipped else order.state,
            order.reason or "",
            str(order.filled_qty),
            "" if order.avg_fill_price is None else decimal_text(order.avg_fill_price),
            str(order.steps_used),
            "" if order.arrival_mid is None else decimal_text(order.arrival_mid),
            "" if order.slippage_bps is None else str(order.slippage_bps),
        )
    # a target plan's symbols that trade nothing: the change not made, in shares
    for hold in result.holds:
        why = "at target" if hold.change == 0 else f"${hold.value} < ${hold.threshold}"
        table.add_row(hold.symbol, "hold", decimal_text(hold.change), "HOLD", why)
    table.caption = (
        f"traded value {result.traded_value}; value-weighted slippage "
        f"{result.slippage_bps if result.slippage_bps is not None else '-'} bps; "
        f"quotes {result.quote_counters}"
    )
    return table
