"""`walkbook journal replay|verify|export` and `walkbook report`: the auditor's commands.

All of them read a snapshot without the lock, so they run beside a live writer.
Exit codes: 0 done (for verify: the journal checks out); 1 verify found a problem
(the first bad seq and what is wrong, on stdout); 2 the file is missing, not a
walkbook journal, damaged, or written by a newer walkbook (one line on stderr).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.table import Table

from journal.location import is_database_url, redacted

from .. import audit
from ..audit import ExecutionReport, OrderTimeline, TimelineEntry
from ..audit.quality import SUMMARY_COLUMNS, TEXT_COLUMNS, percent
from ..errors import InputError
from ..files import open_private
from ..numbers import decimal_text
from .exits import bad_input_exits
from .options import JournalFile
from .output import report_console

__all__ = ["journal_group", "report_command"]

EXIT_PROBLEM = 1
QUIET_FIELDS = ("trigger", "reason", "quote", "config", "intent")


@contextmanager
def _errors_exit_2() -> Iterator[None]:
    """The one-line exit 2 for input and journal errors, and for an unwritable output."""
    with bad_input_exits():
        try:
            yield
        except OSError as exc:
            where = exc.filename or "the output"
            raise InputError(f"cannot write {where}: {exc.strerror}") from exc


# a journal file, or a PostgreSQL database's `postgresql://USER@HOST:PORT/DB`
journal_option = click.option("--journal", "journal_path", required=True, type=JournalFile())


def shown(journal_path: str | Path) -> str:
    """The journal as a message names it: a database's URL without its password."""
    return redacted(str(journal_path)) if is_database_url(journal_path) else str(journal_path)


@click.group(name="journal")
def journal_group() -> None:
    """Replay, verify, export and follow a journal (read-only; safe while a run writes)."""


def _details(entry: TimelineEntry) -> str:
    """The facts of one event on one line: its trigger, quote, reason and data fields."""
    data = entry.data
    parts = [entry.trigger or ""]
    quote = data.get("quote")
    if quote:
        estimated = f", {quote['estimated']} estimated" if quote.get("estimated") else ""
        parts.append(f"bid {quote['bid']} ask {quote['ask']} ({quote['source']}{estimated})")
    if "intent" in data:
        intent = data["intent"]
        parts.append(f"{intent['side']} {intent['quantity']} {intent['symbol']}")
        ladder = "/".join(data["config"].get("ladder", ()))
        parts.append(f"urgency {intent['urgency']}, ladder {ladder}")
    if entry.reason:
        parts.append(f"reason {entry.reason}")
    parts += [f"{k}={v}" for k, v in data.items() if k not in QUIET_FIELDS and v is not None]
    return " ".join(p for p in parts if p)


def _timeline_text(timeline: OrderTimeline) -> Iterator[str]:
    result = timeline.result()
    filled = decimal_text(result.filled_qty)
    avg = "" if result.avg_fill_price is None else f" @ {decimal_text(result.avg_fill_price)}"
    reason = f" ({result.failure})" if result.reason else ""
    yield (
        f"order {result.order_id} {result.symbol} {result.side.value} "
        f"{decimal_text(result.quantity)} (plan {result.plan_id}): {result.state}{reason}, "
        f"filled {filled}{avg}, {result.steps_used} steps"
    )
    for e in timeline.entries:
        yield f"  {e.seq:>8} {e.at} {e.kind:<15} {e.state:<13} {_details(e)}".rstrip()


@journal_group.command()
@journal_option
@click.option("--order", "order_id", help="Only this engine order (o + 16 hex digits).")
@click.option("--plan", "plan_id", help="Only the orders of this plan.")
@click.option("--json", "as_json", is_flag=True, help="Print the timelines as a JSON list.")
def replay(
    journal_path: str | Path, order_id: str | None, plan_id: str | None, as_json: bool
) -> None:
    """Every order's timeline, rebuilt from the events through the state machine."""
    with _errors_exit_2():
        if order_id is not None and plan_id is not None:
            raise InputError("use --order or --plan, not both")
        timelines = audit.replay(journal_path, order_id=order_id, plan_id=plan_id)
        first = next(timelines, None)
        if first is None and (order_id or plan_id):
            what = f"order {order_id}" if order_id else f"plan {plan_id}"
            raise InputError(f"no {what} in {shown(journal_path)}")
        every = itertools.chain([first] if first else [], timelines)
        if as_json:
            click.echo("[")
            for index, timeline in enumerate(every):
                click.echo(("," if index else "") + json.dumps(timeline.as_json()))
            click.echo("]")
        else:
            for timeline in every:
                click.echo("\n".join(_timeline_text(timeline)))


@journal_group.command()
@journal_option
def verify(journal_path: str | Path) -> None:
    """Check the hash chain, seq, every transition, fills and the orders projection."""
    with _errors_exit_2():
        result = audit.verify(journal_path)
    click.echo(result.summary())
    if not result.ok:
        sys.exit(EXIT_PROBLEM)


@journal_group.command()
@journal_option
@click.option(
    "--format", "format_", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--ledger", is_flag=True, help="The trade ledger (one row per fill), not events.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout."
)
def export(
    journal_path: str | Path, format_: audit.ExportFormat, ledger: bool, out: Path | None
) -> None:
    """Every event (or the ledger) with a stable column order, as JSON lines or CSV."""
    write = audit.export_ledger if ledger else audit.export
    with _errors_exit_2():
        if out is None:
            count = write(journal_path, format_, out=sys.stdout)
        else:
            partial = out.with_name(out.name + ".partial")
            partial.unlink(missing_ok=True)  # a leftover is replaced (created 0600), not reused
            try:
                with open_private(partial, newline="") as stream:
                    count = write(journal_path, format_, out=stream)
                partial.replace(out)
            finally:
                partial.unlink(missing_ok=True)
    what = "fills" if ledger else "events"
    click.echo(f"exported {count} {what}" + (f" to {out}" if out else ""), err=True)


def _report_table(report: ExecutionReport) -> Table:
    table = Table(title=f"execution quality: {len(report.orders)} orders")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
    for order in report.orders:
        table.add_row(*order.summary_cells())
    return table


def _report_lines(report: ExecutionReport) -> Iterator[str]:
    for plan in report.plans:
        totals, cost = plan.result, plan.cost_dollars
        yield (
            f"plan {plan.plan_id}: {plan.status}, traded value {totals.traded_value}, "
            f"cost against the arrival mid {'-' if cost is None else f'{cost:.2f}'} dollars, "
            f"value-weighted slippage {'-' if totals.slippage_bps is None else totals.slippage_bps}"
            " bps"
        )
    shares = ", ".join(f"{k} {percent(v)}" for k, v in report.value_share_by_step.items())
    yield f"traded value by ladder level: {shares or '-'}"
    share = report.escalated_share
    yield (
        f"escalated to market: {report.escalated_orders} of {report.quoted_orders} quoted orders"
        + ("" if share is None else f" ({percent(share)})")
    )
    yield "quotes journaled: " + ", ".join(f"{k} {v}" for k, v in report.quote_sources.items())
    for order in report.orders:
        result = order.result
        if result.detail is not None:
            yield f"{result.symbol} {result.order_id} FAILED {result.failure}"


@click.command(name="report")
@journal_option
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML report with one chart per order.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_command(journal_path: str | Path, html_path: Path | None, as_json: bool) -> None:
    """Execution quality from the journal alone: slippage, ladder use, quote sources."""
    with _errors_exit_2():
        if html_path is None:
            report = audit.report(journal_path)
        else:
            report = audit.report_html(journal_path, html_path)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        console = report_console()
        console.print(_report_table(report))
        for line in _report_lines(report):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    if html_path is not None:
        click.echo(f"HTML report: {html_path}", err=True)
