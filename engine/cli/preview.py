"""`walkbook preview`: a plan priced as `run` would walk it, from broker reads alone.

No journal is needed and none is written; nothing is sent (engine/preview.py). Exit 0
when every order would be sent, 5 when a verdict says an order or the plan would be
refused, 2 (one line) for bad input.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from journal import Journal

from ..brokers.sim import MarketSpec, SimBroker, load_market_spec
from ..clock import RealClock, VirtualClock
from ..config import EngineConfig
from ..errors import BrokerError, InputError
from ..intents import RebalancePlan, load_plan
from ..numbers import decimal_text
from ..preview import OrderPreview, Outcome, PlanPreview, VerdictStatus, preview_plan
from .brokers import BrokerChoice, broker_options
from .engines import alpaca_broker
from .exits import EXIT_BAD_INPUT, EXIT_OK, EXIT_WOULD_REFUSE, bad_input_exits
from .options import LOG_LEVEL_OPTION, MAX_PLAN_ORDERS_OPTION, JournalFile
from .output import configure_output, report_console
from .progress import PLAIN

__all__ = ["preview_command"]

PREVIEW_EXIT_CODES = (
    f"Exit codes: {EXIT_OK} every order would be sent (some maybe shrunk to fit the funds); "
    f"{EXIT_WOULD_REFUSE} some order or the plan would be refused; {EXIT_BAD_INPUT} bad input "
    "(one line on stderr). Nothing is sent and nothing is journaled."
)
COLUMNS = ("#", "symbol", "side", "asked", "qty", "outcome", "bid", "ask", "source", "steps",
           "exp. price", "value $", "cost $", "cost bps")  # fmt: skip


@click.command("preview", epilog=PREVIEW_EXIT_CODES)
@click.argument("plan_file", type=click.Path(path_type=Path))
@click.option(
    "--market", type=click.Path(path_type=Path), help="Market spec JSON for the simulator."
)
@click.option("--seed", type=int, default=None, help="Simulator seed (overrides the spec).")
@click.option(
    "--journal",
    "journal_path",
    type=JournalFile(),
    help="Count today's fills for daily_traded_notional from this journal (read-only); "
    "without one that limit is not checked.",
)
@MAX_PLAN_ORDERS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the preview as JSON.")
@LOG_LEVEL_OPTION
@broker_options
def preview_command(
    plan_file: Path,
    market: Path | None,
    seed: int | None,
    journal_path: Path | None,
    max_plan_orders: int,
    as_json: bool,
    log_level: str,
    broker_choice: BrokerChoice,
) -> None:
    """Price PLAN_FILE as `walkbook run` would walk it, without sending or journaling
    anything: per order the size after sizing (a dollar order at its arrival quote; a
    target plan's orders derived as run derives them, its holds listed), rounding and buy
    sizing, the arrival quote, each step's limit price, the expected value and cost against
    the mid, and every risk verdict; then the plan's verdicts and totals. On the
    simulator, or with --broker alpaca on an Alpaca account (reads only)."""
    configure_output(log_level)
    with bad_input_exits():
        broker_choice.check(market=market, seed=seed)
        plan = load_plan(plan_file, max_orders=max_plan_orders)
        config = broker_choice.engine_config() or EngineConfig()
        spec = None
        if not broker_choice.is_alpaca:
            spec = (load_market_spec(market) if market else MarketSpec()).with_seed(seed)
        with _read_only(journal_path) as journal:
            try:
                preview = _preview(plan, config, broker_choice, spec, journal)
            except BrokerError as exc:
                raise InputError(
                    f"cannot preview: the broker did not answer: {exc.message}"
                ) from None
    if as_json:
        click.echo(json.dumps(preview.as_json(), indent=2))
    else:
        _show(preview, report_console())
    sys.exit(EXIT_OK if preview.accepted else EXIT_WOULD_REFUSE)


@contextmanager
def _read_only(path: Path | None) -> Iterator[Journal | None]:
    if path is None:
        yield None
        return
    with Journal.open_readonly(path) as journal:
        yield journal


def _preview(
    plan: RebalancePlan,
    config: EngineConfig,
    choice: BrokerChoice,
    spec: MarketSpec | None,
    journal: Journal | None,
) -> PlanPreview:
    """On Alpaca in real time, or on a fresh simulator in virtual time."""
    if spec is None:
        with alpaca_broker(choice) as alpaca:
            return RealClock().run(preview_plan(alpaca, plan, config, RealClock(), journal=journal))
    clock = VirtualClock()
    broker = SimBroker(spec, clock)
    try:
        return clock.run(preview_plan(broker, plan, config, clock, journal=journal))
    finally:
        broker.close()


def _show(preview: PlanPreview, console: Console) -> None:
    """A table on a terminal, plain lines otherwise; each verdict on a line below."""
    rows = [_row(order) for order in preview.orders]
    skipped = sum(1 for order in preview.orders if order.outcome is Outcome.SKIPPED)
    verdict = (
        "REFUSALS: see below"
        if not preview.accepted
        else f"every order would be sent but {skipped} skipped"
        if skipped
        else "every order would be sent"
    )
    title = f"plan {preview.plan_id} preview: {verdict} (nothing sent)"
    if console.is_terminal:
        table = Table(title=title)
        for column in COLUMNS:
            table.add_column(column, justify="left" if column in ("symbol", "outcome") else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        console.print(title, **PLAIN)
        for row in [list(COLUMNS), *rows]:
            console.print("  ".join(cell or "-" for cell in row), **PLAIN)
    for line in _verdict_lines(preview):
        console.print(line, **PLAIN)


def _row(order: OrderPreview) -> list[str]:
    quote = order.quote
    outcome = order.outcome.value + (f" {order.reason.value}" if order.reason else "")
    steps = " / ".join(
        f"{s.step} {'mkt' if s.limit_price is None else decimal_text(s.limit_price)}"
        for s in order.steps
    )
    return [
        str(order.index),
        order.symbol,
        order.side.value,
        _asked(order),
        decimal_text(order.qty),
        outcome,
        _text(None if quote is None else quote.bid),
        _text(None if quote is None else quote.ask),
        "" if quote is None else quote.source,
        steps,
        _text(order.expected_price),
        _text(order.expected_value),
        _text(order.expected_cost),
        _text(order.expected_cost_bps),
    ]


def _verdict_lines(preview: PlanPreview) -> Iterator[str]:
    for order in preview.orders:
        for v in order.verdicts:
            yield f"order {order.index} {order.symbol} {v.check} {_status(v.status)}: {v.message}"
    for v in preview.verdicts:
        yield f"plan {v.check} {_status(v.status)}: {v.message}"
    for hold in preview.holds:
        why = "at target"
        if hold.change != 0:
            why = f"a change of {decimal_text(hold.change)} worth ${hold.value} < ${hold.threshold}"
        yield (
            f"HOLD {hold.symbol}: {why} (target {decimal_text(hold.target_weight)}, "
            f"{decimal_text(hold.held)} held)"
        )
    funds = preview.funds
    yield (
        f"totals: buys {_money(preview.gross_buy_notional)}, sells "
        f"{_money(preview.gross_sell_notional)}, net cash {_money(preview.net_cash)}, "
        f"expected cost {_money(preview.expected_cost)} (fills at each first step's limit)"
    )
    margin = "on" if funds.use_margin else "off"
    yield (
        f"funds: {funds.funds_from} {_money(funds.after_sells)} after the sells' "
        f"{_money(funds.sell_proceeds)} at the bid (use_margin {margin}), "
        f"{_money(funds.after_buys)} left after the buys"
    )


def _asked(order: OrderPreview) -> str:
    """Shares asked for, or a dollar order's notional (`$1500`)."""
    if order.notional_requested is None:
        return decimal_text(order.requested_qty)
    return f"${decimal_text(order.notional_requested)}"


def _status(status: VerdictStatus) -> str:
    return "BREACHED" if status is VerdictStatus.BREACHED else status.value


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _text(value: Decimal | None) -> str:
    return "" if value is None else decimal_text(value)
