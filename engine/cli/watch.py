"""`walkbook watch`: a running journal's plans and in-flight orders, live, from a second,
read-only process (engine.audit.live follows the journal; this module only shows it).

On a terminal it is a live table, left with `q` or Ctrl-C; piped, one plain line per
change. Exit codes: 0 once nothing is in flight (at once when nothing was), or when left
with `q` or Ctrl-C (leaving a view is no failure, and the run goes on untouched); 2 for a
journal that is missing, not a walkbook journal or damaged; 4 when orders are in flight
and no process holds the journal (`walkbook status` says NOT WALKING): run `walkbook resume`.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from journal import Journal

from ..audit.live import LiveJournal, PlanProgress
from ..fsm import OrderState
from ..numbers import decimal_text
from ..order import OrderRecord
from .exits import EXIT_OK, EXIT_WORK_LIVE, bad_input_exits
from .options import JournalFile
from .output import report_console
from .status import who_walks

__all__ = ["ORDER_COLUMNS", "PLAN_COLUMNS", "order_line", "watch_command", "watch_view"]

POLL_SECONDS = 0.25
QUIT_KEYS = frozenset("qQ")
PRICE_PLACES = Decimal("0.0001")  # an average fill price, as a reader compares it to the quote
PLAN_COLUMNS = ("plan", "done", "VALIDATED", "FAILED", "elapsed")
ORDER_COLUMNS = ("plan", "symbol", "side", "state", "in state", "limit", "bid", "ask", "filled",
                 "avg price", "broker order id")  # fmt: skip

PRICES = ("limit", "bid", "ask", "avg price")
# a key press, or "" when none came within the wait
KeyWait = Callable[[float], str]


def _duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`: an age at a glance."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _text(value: Decimal | None) -> str:
    return "" if value is None else decimal_text(value)


def _filled(record: OrderRecord) -> str:
    return f"{_text(record.filled_qty)}/{_text(record.quantity)}"


def _quote_side(record: OrderRecord, side: str) -> str:
    """The bid or ask of the quote the order's current step was priced from."""
    quote = record.step_quote or {}
    return str(quote.get(side) or "")


def _in_state(record: OrderRecord, now: datetime) -> str:
    entered = record.state_entered_at or record.created_at
    return _duration((now - datetime.fromisoformat(entered)).total_seconds())


def order_line(record: OrderRecord) -> str:
    """One order as it stands after an event: the piped form of a row of the live table."""
    parts = [record.updated_at, record.plan_id or "-", record.intent.symbol,
             record.intent.side.value, record.state,
             f"filled {_filled(record)}"]  # fmt: skip
    if record.avg_price is not None:
        parts.append(f"at {_text(record.avg_price.quantize(PRICE_PLACES))}")
    if record.step_limit_price is not None:
        parts.append(f"limit {_text(record.step_limit_price)}")
    if record.step_quote is not None:
        parts.append(f"bid {_quote_side(record, 'bid')} ask {_quote_side(record, 'ask')}")
    if record.live_broker_order_id is not None:
        parts.append(f"broker {record.live_broker_order_id}")
    if record.reason is not None:
        parts.append(f"{record.reason}: {record.failure_detail or ''}".rstrip(": "))
    return " ".join(parts)


def _plan_line(plan: PlanProgress, now: datetime) -> str:
    return (
        f"plan {plan.plan_id or '-'}: {plan.done}/{plan.total} done ({plan.validated} "
        f"VALIDATED, {plan.failed} FAILED) in {_duration(plan.elapsed_seconds(now))}"
    )


def watch_view(watched: LiveJournal, who: str, now: datetime) -> Group:
    """The live view: who walks the journal, each plan's counts, each in-flight order."""
    plans = Table(title="plans", title_justify="left")
    for column in PLAN_COLUMNS:
        plans.add_column(column, justify="left" if column == "plan" else "right")
    for plan in watched.plans():
        plans.add_row(
            plan.plan_id or "-",
            f"{plan.done}/{plan.total}",
            str(plan.validated),
            str(plan.failed),
            _duration(plan.elapsed_seconds(now)),
        )
    orders = Table(title="in flight (bid/ask: the quote the step was priced from)",
                   title_justify="left")  # fmt: skip
    for column in ORDER_COLUMNS:
        orders.add_column(column, justify="right" if column in PRICES else "left")
    for record in watched.in_flight():
        orders.add_row(
            record.plan_id or "-",
            record.intent.symbol,
            record.intent.side.value,
            record.state,
            _in_state(record, now),
            _text(record.step_limit_price),
            _quote_side(record, "bid"),
            _quote_side(record, "ask"),
            _filled(record),
            "" if record.avg_price is None else _text(record.avg_price.quantize(PRICE_PLACES)),
            record.live_broker_order_id or "",
        )
    header = Text(f"{watched.journal.location}: {who}  (q or Ctrl-C to leave)")
    return Group(header, plans, orders)


def _pause(seconds: float) -> str:
    time.sleep(seconds)
    return ""


@contextmanager
def _keys() -> Iterator[KeyWait]:
    """Single key presses from a terminal on stdin, unechoed (Ctrl-C still interrupts);
    without one, a plain pause. The terminal's settings are restored on the way out."""
    if not sys.stdin.isatty():
        yield _pause
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def key_within(seconds: float) -> str:
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 1).decode(errors="replace") if ready else ""

    try:
        yield key_within
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Watch:
    """One watch: the journal followed, shown live or as lines, until nothing is in flight."""

    def __init__(self, location: str | Path, watched: LiveJournal, console: Console) -> None:
        self.location = location
        self.watched = watched
        self.console = console
        self.live: Live | None = None
        self.plans_ended: set[str | None] = set()

    def who(self) -> str:
        return who_walks(self.location, len(self.watched.in_flight()))

    def view(self) -> Group:
        return watch_view(self.watched, self.who(), self.watched.now())

    def run(self) -> int:
        """The exit code: Ctrl-C leaves the watch like `q`."""
        try:
            with _keys() as key_within:
                if not self.console.is_terminal:
                    click.echo(f"watching {self.watched.journal.location}: {self.who()}")
                    self.show(self.watched.in_flight())
                    return self.follow(key_within)
                with Live(self.view(), console=self.console, auto_refresh=False) as live:
                    self.live = live
                    return self.follow(key_within)
        except KeyboardInterrupt:
            return EXIT_OK

    def show(self, changed: list[OrderRecord]) -> None:
        """Bring the view up to date with the orders `changed`, in the order they changed:
        piped, a line for each and one for each plan that finished."""
        if self.live is not None:
            self.live.update(self.view(), refresh=True)
            return
        for record in changed:
            click.echo(order_line(record))
        now = self.watched.now()
        for plan in self.watched.plans():
            if plan.ended_at is not None and plan.plan_id not in self.plans_ended:
                self.plans_ended.add(plan.plan_id)
                click.echo(_plan_line(plan, now))

    def follow(self, key_within: KeyWait) -> int:
        """Follow the journal until nothing is in flight (exit 0), `q` is pressed (0), or
        nobody walks the orders still in flight (4)."""
        while True:
            if key_within(POLL_SECONDS) in QUIT_KEYS:
                return EXIT_OK
            self.show(self.watched.poll())
            if not self.watched.in_flight():
                return EXIT_OK
            if self.watched.journal.holder() is None:
                # the run may have committed its last events and let go since the poll
                self.show(self.watched.poll())
                return EXIT_OK if not self.watched.in_flight() else EXIT_WORK_LIVE

    def leave(self, code: int) -> NoReturn:
        """The last line: who left orders in flight, or what the watched orders ended as."""
        if code == EXIT_WORK_LIVE:
            click.echo(self.who(), err=True)
        elif not self.watched.in_flight():
            states = [r.state for r in self.watched.records.values()]
            click.echo(
                f"nothing in flight: {len(states)} order(s) watched, "
                f"{states.count(OrderState.VALIDATED)} VALIDATED, "
                f"{states.count(OrderState.FAILED)} FAILED"
            )
        sys.exit(code)


@click.command("watch")
@click.option("--journal", "journal_path", required=True, type=JournalFile())
def watch_command(journal_path: str | Path) -> None:
    """Watch a running journal's plans and in-flight orders from a second, read-only process:
    each order's state and time in it, its limit against the quote its step was priced from,
    its fills and live broker order id. On a terminal a live view (leave with q or Ctrl-C,
    exit 0); piped, one line per change. Ends (exit 0) once nothing is in flight, at once
    when nothing was; exit 4 when orders are in flight and no process holds the journal."""
    with bad_input_exits(), Journal.open_readonly(journal_path) as journal:
        watched = LiveJournal(journal)
        if not watched.in_flight():
            click.echo(f"nothing in flight in {journal.location}")
            return
        watch = _Watch(journal_path, watched, report_console())
        watch.leave(watch.run())
