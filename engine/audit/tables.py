"""Exports for tools outside walkbook: every event, or the trade ledger, as JSON lines or CSV.

Columns come in a fixed order so a diff of two exports, or a spreadsheet built on one,
stays stable. Event rows are the stored rows (JSON lines keep `data` as an object,
CSV as its canonical JSON text), so an export re-hashes to the same chain.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TextIO

from journal import canonical_json

from ..numbers import decimal_text
from .source import EVENT_COLUMNS, read_snapshot
from .timeline import OrderTimeline, replay

__all__ = [
    "EVENT_COLUMNS",
    "LEDGER_COLUMNS",
    "ExportFormat",
    "export",
    "export_ledger",
    "json_line",
    "ledger_rows",
]

ExportFormat = Literal["jsonl", "csv"]

LEDGER_COLUMNS = (
    "seq", "at", "broker_at", "order_id", "plan_id", "correlation_id", "strategy_id",
    "strategy_weight", "symbol", "side", "qty", "price", "notional", "bid", "ask", "step",
    "client_order_id", "broker_order_id",
)  # fmt: skip


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    return canonical_json(value) if isinstance(value, dict) else str(value)


def json_line(columns: tuple[str, ...], row: Mapping[str, Any]) -> str:
    """One JSON line of `row` with exactly `columns`, in that order: an export's line, and
    `walkbook journal follow`'s."""
    return json.dumps({c: row[c] for c in columns}, ensure_ascii=False) + "\n"


def _write(
    out: TextIO, format: ExportFormat, columns: tuple[str, ...], rows: Iterable[Mapping[str, Any]]
) -> int:
    """Write rows with exactly `columns`, in that order; return how many rows were written."""
    count = 0
    if format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row[c]) for c in columns])
            count += 1
    elif format == "jsonl":
        for row in rows:
            out.write(json_line(columns, row))
            count += 1
    else:
        raise ValueError(f"unknown export format {format!r} (jsonl or csv)")
    return count


def export(path: str | Path, format: ExportFormat = "jsonl", *, out: TextIO) -> int:
    """Every event in seq order, one row each with `EVENT_COLUMNS`; returns the row count."""
    with read_snapshot(path) as journal:
        return _write(out, format, EVENT_COLUMNS, (vars(e) for e in journal.events()))


def ledger_rows(timeline: OrderTimeline) -> Iterator[dict[str, Any]]:
    """One ledger row per fill of the order (per fill and strategy, for an order its
    `strategies` share: each row that strategy's part of the fill), with the quote of the
    step in force at the fill."""
    intent = timeline.record.intent
    shares: dict[str | None, Decimal] = {intent.strategy_id: Decimal(1)}
    if intent.strategies:
        shares = {name: weight for name, weight in intent.strategies.items()}
    for fill in timeline.fills:
        assert fill.fill_qty is not None, "a fill has a quantity"
        assert fill.fill_price is not None, "a fill has a price"
        quote = fill.quote or {}
        for strategy, weight in shares.items():
            qty = fill.fill_qty * weight
            yield {
                "seq": fill.seq,
                "at": fill.at,
                "broker_at": fill.fill_broker_at,
                "order_id": timeline.record.order_id,
                "plan_id": timeline.record.plan_id,
                "correlation_id": intent.correlation_id,
                "strategy_id": strategy,
                "strategy_weight": decimal_text(weight),
                "symbol": intent.symbol,
                "side": intent.side.value,
                "qty": decimal_text(qty),
                "price": decimal_text(fill.fill_price),
                "notional": decimal_text(qty * fill.fill_price),
                "bid": quote.get("bid"),
                "ask": quote.get("ask"),
                "step": fill.step,
                "client_order_id": fill.client_order_id,
                "broker_order_id": fill.broker_order_id,
            }


def export_ledger(path: str | Path, format: ExportFormat = "jsonl", *, out: TextIO) -> int:
    """The trade ledger, one row per fill with `LEDGER_COLUMNS`; returns the row count.

    Rows come order by order (in creation order), each order's fills in seq order.
    """
    rows = (row for timeline in replay(path) for row in ledger_rows(timeline))
    return _write(out, format, LEDGER_COLUMNS, rows)
