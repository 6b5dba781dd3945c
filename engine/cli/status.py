"""`walkbook status`: a journal's orders, and whether a live process is walking them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from journal import Journal
from journal.location import journal_holder

from ..fsm import TERMINAL_STATES, OrderState
from ..numbers import decimal_text
from ..order import fold_history, fold_orders
from .exits import bad_input_exits
from .options import JournalFile
from .output import report_console

__all__ = ["status_command", "who_walks"]


STATUS_COLUMNS = ("order_id", "plan_id", "symbol", "side", "quantity", "state", "reason",
                  "detail", "filled_qty", "avg_price", "steps_used", "limit_price", "state_since",
                  "live_client_order_id", "live_broker_order_id", "created_at",
                  "updated_at")  # fmt: skip
# the table leaves the detail (a line of up to ~200 characters) to a line of its own below
TABLE_COLUMNS = tuple(c for c in STATUS_COLUMNS if c != "detail")


def _failure_details(journal: Journal, rows: list[dict[str, Any]]) -> dict[str, str | None]:
    """Each FAILED order's one-line detail, folded from its own events (the record's
    `failure_detail`, as the engine and the audit read it)."""
    failed = [r["order_id"] for r in rows if r["state"] == OrderState.FAILED]
    return {i: fold_orders(journal.events(order_id=i))[i].failure_detail for i in failed}


def who_walks(journal_path: str | Path, in_flight: int) -> str:
    """Whether a live process walks the journal's orders: a held lock, or nobody."""
    holder = journal_holder(journal_path)
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
    journal_path: str | Path, as_json: bool, in_flight_only: bool, plan_id: str | None
) -> None:
    """List a journal's orders in the order they were created, and say whether a live process
    is walking them (read-only; safe while a run is writing). The first line (on stderr with
    --json) says `walking`, `idle`, or `NOT WALKING` when orders are in flight and nobody
    holds the journal. Each FAILED order's one-line detail follows the table (in --json, its
    `detail`)."""
    with bad_input_exits(), Journal.open_readonly(journal_path) as journal:
        walking = fold_history(journal.order_history(unless_state=TERMINAL_STATES))
        rows = journal.orders(
            plan_id=plan_id, unless_state=TERMINAL_STATES if in_flight_only else ()
        )
        details = _failure_details(journal, rows)
        location = journal.location
    for row in rows:
        row["detail"] = details.get(row["order_id"])
        # where an in-flight order stands in its walk: its step's price and since when
        record = walking.get(row["order_id"])
        price = None if record is None else record.step_limit_price
        row["limit_price"] = None if price is None else decimal_text(price)
        row["state_since"] = None if record is None else record.state_entered_at
    click.echo(who_walks(journal_path, len(walking)), err=as_json)
    if as_json:
        click.echo(json.dumps([{c: row[c] for c in STATUS_COLUMNS} for row in rows], indent=2))
        return
    table = Table(title=f"{location}: {len(rows)} orders")
    for column in TABLE_COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in TABLE_COLUMNS))
    report_console().print(table)
    for row in rows:
        if row["detail"] is not None:
            click.echo(f"{row['order_id']} {row['symbol']} FAILED {row['reason']}: {row['detail']}")
