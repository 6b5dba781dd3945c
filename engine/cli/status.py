"""`walkbook status`: a journal's orders, and whether a live process is walking them."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from journal import Journal
from journal.lock import lock_holder

from ..fsm import TERMINAL_STATES
from ..numbers import decimal_text
from ..order import fold_history
from .exits import bad_input_exits
from .options import JournalFile
from .output import report_console

__all__ = ["status_command"]


STATUS_COLUMNS = ("order_id", "plan_id", "symbol", "side", "quantity", "state", "reason",
                  "filled_qty", "avg_price", "steps_used", "limit_price", "state_since",
                  "live_client_order_id", "live_broker_order_id", "created_at",
                  "updated_at")  # fmt: skip


def _who_walks(journal_path: Path, in_flight: int) -> str:
    """Whether a live process walks the journal's orders: a held lock, or nobody."""
    holder = lock_holder(journal_path)
    if holder is not None:
        return f"walking: held by {holder}"
    if in_flight:
        return (
            f"NOT WALKING: no process holds this journal, and {in_flight} order(s) are in "
            "flight (live at the broker, unwatched): run `walkbook resume` or `walkbook halt`"
        )
    return "idle: no process holds this journal; nothing is in flight"


@click.command("status")
@click.option("--journal", "journal_path", required=True, type=JournalFile())
@click.option("--json", "as_json", is_flag=True, help="Print the orders as a JSON list.")
@click.option("--in-flight", "in_flight_only", is_flag=True, help="Only orders not yet final.")
@click.option("--plan", "plan_id", help="Only this plan's orders.")
def status_command(
    journal_path: Path, as_json: bool, in_flight_only: bool, plan_id: str | None
) -> None:
    """List a journal's orders in the order they were created, and say whether a live process
    is walking them (read-only; safe while a run is writing). The first line (on stderr with
    --json) says `walking`, `idle`, or `NOT WALKING` when orders are in flight and nobody
    holds the journal."""
    with bad_input_exits(), Journal.open_readonly(journal_path) as journal:
        walking = fold_history(journal.order_history(unless_state=TERMINAL_STATES))
        rows = journal.orders(
            plan_id=plan_id, unless_state=TERMINAL_STATES if in_flight_only else ()
        )
    for row in rows:
        # where an in-flight order stands in its walk: its step's price and since when
        record = walking.get(row["order_id"])
        price = None if record is None else record.step_limit_price
        row["limit_price"] = None if price is None else decimal_text(price)
        row["state_since"] = None if record is None else record.state_entered_at
    click.echo(_who_walks(journal_path, len(walking)), err=as_json)
    if as_json:
        click.echo(json.dumps([{c: row[c] for c in STATUS_COLUMNS} for row in rows], indent=2))
        return
    table = Table(title=f"{journal_path}: {len(rows)} orders")
    for column in STATUS_COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in STATUS_COLUMNS))
    report_console().print(table)
