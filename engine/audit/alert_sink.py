"""An alerting sink outside the engine's process: it follows a journal, alerts on every
FAILED order and on every fill worth more than a threshold, and survives its own restart.

docs/embedding.md shows this file ("Following the journal"); tests/test_journal_follow.py
kills it mid-feed. Delivering an alert here appends the line `seq<TAB>alert` to a file;
a real sink posts to a pager or a chat instead. The cursor (the seq of the last event
handled) is replaced atomically after each event, so after the event's alert was
delivered: a restart neither loses an alert nor repeats one at or before its cursor, and
only a kill between a delivery and its cursor delivers that one alert again
(at-least-once). Each alert is built from the journal up to its event alone, so a restart
words it exactly as an uninterrupted run does.

    python -m engine.audit.alert_sink --journal J --cursor C --alerts A [--threshold USD]
"""

from __future__ import annotations

import argparse
import os
from decimal import Decimal
from pathlib import Path

from engine import OrderRecord
from engine.events import Failed, Fill, payload_of
from engine.order import fold_orders
from journal import Event, Journal

__all__ = ["alert_of", "deliver", "follow_alerts", "main", "read_cursor", "write_cursor"]


def read_cursor(path: Path) -> int:
    """The seq of the last event handled; 0 before the first run."""
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return 0


def write_cursor(path: Path, seq: int) -> None:
    """Replace the cursor: a kill leaves the old one or the new one, never half of one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{seq}\n")
    os.replace(temporary, path)


def order_after(journal: Journal, order_id: str, seq: int) -> OrderRecord:
    """The order as it stood right after event `seq`: its events up to there, folded."""
    events = [e for e in journal.events(order_id=order_id) if e.seq <= seq]
    return fold_orders(events)[order_id]


def alert_of(journal: Journal, event: Event, threshold: Decimal) -> str | None:
    """The alert `event` raises, if any: an order FAILED (with its reason and detail), or a
    fill worth more than `threshold` (quantity times price)."""
    if event.order_id is None:
        return None
    payload = payload_of(event.kind, event.data)
    if isinstance(payload, Failed):
        order = order_after(journal, event.order_id, event.seq)
        intent = order.intent
        return (
            f"FAILED {intent.symbol} {intent.side.value} {order.quantity} "
            f"(order {order.order_id}, plan {order.plan_id}): {order.reason}: "
            f"{order.failure_detail or '-'}"
        )
    if isinstance(payload, Fill):
        qty, price = payload.qty, payload.price
        if qty * price > threshold:
            order = order_after(journal, event.order_id, event.seq)
            intent = order.intent
            return (
                f"FILL {intent.symbol} {intent.side.value} {qty} at {price}, worth "
                f"{qty * price} (order {order.order_id}, plan {order.plan_id})"
            )
    return None


def deliver(alerts: Path, seq: int, alert: str) -> None:
    """Deliver one alert: its line appended to `alerts` in one write, whole or not at all."""
    fd = os.open(alerts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{seq}\t{alert}\n".encode())
    finally:
        os.close(fd)


def follow_alerts(
    journal_path: Path,
    cursor: Path,
    alerts: Path,
    threshold: Decimal,
    until_idle: float | None = None,
) -> None:
    """Follow the journal from the stored cursor: each event's alert delivered, then the
    cursor moved past the event. Ends after `until_idle` seconds without an event."""
    with Journal.open_readonly(journal_path) as journal:
        for event in journal.follow(read_cursor(cursor), until_idle=until_idle):
            alert = alert_of(journal, event, threshold)
            if alert is not None:
                deliver(alerts, event.seq, alert)
            write_cursor(cursor, event.seq)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Alert on FAILED orders and large fills.")
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--cursor", type=Path, required=True, help="The cursor file.")
    parser.add_argument("--alerts", type=Path, required=True, help="Alerts are appended here.")
    parser.add_argument("--threshold", type=Decimal, default=Decimal(10_000))
    parser.add_argument("--until-idle", type=float, help="End after this many idle seconds.")
    args = parser.parse_args(argv)
    follow_alerts(args.journal, args.cursor, args.alerts, args.threshold, args.until_idle)


if __name__ == "__main__":
    main()
