"""Helpers for the audit tests: a real run's journal, a hand-written journal, tampering."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from conftest import START

from engine import EngineConfig, MarketSpec, OrderIntent, PlanResult, SymbolSpec, parse_plan
from engine.events import EventKind, payload_of
from engine.order import OrderRecord
from journal import Journal, NewEvent, stamp

# -- a real run on the simulator ----------------------------------------------------

AUDIT_ORDERS = [
    {"symbol": "AAPL", "side": "buy", "quantity": "10"},
    {"symbol": "MSFT", "side": "buy", "quantity": "5", "urgency": "high"},
    {"symbol": "TSLA", "side": "sell", "quantity": "4"},
    {"symbol": "KO", "side": "sell", "quantity": "3", "close_type": "full"},
    {"symbol": "SPY", "side": "buy", "quantity": "2.5"},
]


def audit_market() -> MarketSpec:
    """Passive fills likely but not certain, so runs use several steps and the market."""
    symbols = {
        name: SymbolSpec(price=Decimal(price), spread_bps=8, volatility_bps=1)
        for name, price in (("AAPL", "230"), ("MSFT", "420"), ("TSLA", "340"), ("SPY", "600"))
    }
    return MarketSpec(
        seed=11,
        symbols=symbols,
        positions={"TSLA": Decimal(10)},
        fill_intensity=0.05,
        partial_fill_probability=0.5,
    )


def run_audit_plan(rig: Any, plan_id: str = "audit") -> PlanResult:
    """Execute the audit plan on the rig (virtual time); KO's FULL close of nothing FAILs."""
    plan = parse_plan({"plan_id": plan_id, "orders": AUDIT_ORDERS})
    result: PlanResult = rig.engine.execute_plan_sync(plan)
    return result


# -- a journal written by hand, to know every number --------------------------------


def quote(
    bid: str, ask: str, source: str = "stream", estimated: str | None = None
) -> dict[str, Any]:
    return {
        "bid": bid,
        "ask": ask,
        "source": source,
        "quoted_at": stamp(START),
        "estimated": estimated,
    }


class HandJournal:
    """Appends events with the projection the engine would write, but no state machine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = Journal.open(path, synchronous="NORMAL")
        self.records: dict[str, OrderRecord] = {}

    def close(self) -> None:
        self.journal.close()

    def create(self, order_id: str, seconds: float, plan_id: str = "hand", **intent: Any) -> None:
        event = NewEvent(
            kind=EventKind.CREATED,
            order_id=order_id,
            plan_id=plan_id,
            to_state="PENDING",
            data={
                "intent": OrderIntent.build(**intent).model_dump(mode="json"),
                "config": EngineConfig().model_dump(mode="json"),
            },
        )
        at = START + timedelta(seconds=seconds)
        record = OrderRecord.created(event, stamp(at), self.journal.last_seq + 1)
        self.journal.append(event, at=at, projection=record.projection())
        self.records[order_id] = record

    def write(
        self,
        order_id: str,
        seconds: float,
        kind: str,
        to_state: str | None = None,
        from_state: str | None = None,
        **data: Any,
    ) -> int:
        """Append one event of the order at START + seconds; returns its seq.

        `from_state` defaults to the order's state; pass another one to forge a row.
        """
        record, at = self.records[order_id], START + timedelta(seconds=seconds)
        payload = payload_of(kind, data)
        updated = record.apply(payload, to_state, stamp(at), self.journal.last_seq + 1)
        event = NewEvent(
            kind, order_id, record.plan_id, from_state or record.state, updated.state, data
        )
        stored = self.journal.append(event, at=at, projection=updated.projection())
        self.records[order_id] = updated
        return stored.seq

    def move(self, order_id: str, seconds: float, trigger: str, to_state: str, **data: Any) -> int:
        return self.write(
            order_id, seconds, EventKind.TRANSITION, to_state, trigger=trigger, **data
        )

    def fill(
        self, order_id: str, seconds: float, broker_id: str, cid: str, qty: str, price: str
    ) -> int:
        return self.write(
            order_id,
            seconds,
            EventKind.FILL,
            broker_order_id=broker_id,
            client_order_id=cid,
            qty=qty,
            price=price,
            cum_qty=qty,
            cum_avg_price=price,
        )

    def submit(
        self, order_id: str, seconds: float, cid: str, qty: str, limit: str | None, broker_id: str
    ) -> None:
        """A submit_intent (limit, or market when `limit` is None) and the broker's ack."""
        order_type = "market" if limit is None else "limit"
        self.write(order_id, seconds, EventKind.SUBMIT_INTENT, client_order_id=cid,
                   order_type=order_type, qty=qty, limit_price=limit)  # fmt: skip
        self.write(order_id, seconds, EventKind.SUBMIT_ACK, client_order_id=cid,
                   broker_order_id=broker_id, status="new", adopted=False)  # fmt: skip

    def finish(
        self,
        order_id: str,
        seconds: float,
        broker_id: str,
        cid: str,
        qty: str,
        price: str,
        *,
        position: str,
    ) -> None:
        """The last fill and its broker order's end, then SETTLING and VALIDATED at `position`."""
        self.fill(order_id, seconds, broker_id, cid, qty, price)
        self.write(order_id, seconds, EventKind.ORDER_FINAL, broker_order_id=broker_id,
                   status="filled", filled_qty=qty)  # fmt: skip
        self.move(order_id, seconds, "settle", "SETTLING")
        self.write(order_id, seconds + 1, EventKind.POSITION_READ, phase="after", qty=position,
                   expected=position)  # fmt: skip
        self.move(order_id, seconds + 1, "validate", "VALIDATED", position=position)


A, B, C = "o000000000000000a", "o000000000000000b", "o000000000000000c"
Q1, Q2 = quote("99.9", "100.1"), quote("99.95", "100.15")
Q3 = quote("49", "50", source="rest", estimated="bid")
Q4 = quote("20", "20.1")


def write_hand_journal(path: Path) -> HandJournal:
    """Three orders with known numbers (left open for more events; close it when done).

    A buys 10 XYZ: 4 @ 100.05 at L1, 6 @ 100.12 at L2, arrival mid 100 -> avg 100.092,
    +9.20 bps, 13 s from arrival to last fill. B sells 5 ABC at market: 5 @ 49.4,
    arrival mid 49.5 -> +20.20 bps, 1 s. C buys 3 DEF: rejected at L1, FAILED.
    """
    hand = HandJournal(path)
    hand.create(A, 0, symbol="XYZ", side="buy", quantity="10")
    hand.create(B, 0, symbol="ABC", side="sell", quantity="5", urgency="high")
    hand.create(C, 0, symbol="DEF", side="buy", quantity="3")

    a1, a2 = f"wb-{A}-L1-1", f"wb-{A}-L2-1"
    hand.write(A, 0, EventKind.POSITION_READ, phase="before", qty="0", target_qty=None)
    hand.move(A, 1, "quote", "QUOTED", quote=Q1)
    hand.move(A, 1, "start_walk", "LIMIT_STEP_1", ratio="0.75", limit_price="100.05",
              quote=Q1, wait_seconds=10.0)  # fmt: skip
    hand.submit(A, 1, a1, "10", "100.05", broker_id="b1")
    hand.fill(A, 5, "b1", a1, "4", "100.05")
    hand.move(A, 11, "next_step", "LIMIT_STEP_2", ratio="0.85", limit_price="100.12",
              quote=Q2, wait_seconds=10.0)  # fmt: skip
    hand.write(A, 11, EventKind.REPLACE_INTENT, client_order_id=a2, broker_order_id="b1",
               qty="6", limit_price="100.12")  # fmt: skip
    hand.write(A, 11, EventKind.REPLACE_ACK, client_order_id=a2, broker_order_id="b2",
               status="new", adopted=False, replaces="b1")  # fmt: skip
    hand.write(A, 11, EventKind.ORDER_FINAL, broker_order_id="b1", status="replaced",
               filled_qty="4")  # fmt: skip
    hand.finish(A, 14, "b2", a2, "6", "100.12", position="10")

    b1 = f"wb-{B}-M-1"
    hand.write(B, 20, EventKind.POSITION_READ, phase="before", qty="5", target_qty=None)
    hand.move(B, 21, "quote", "QUOTED", quote=Q3)
    hand.move(B, 21, "escalate", "MARKET", quote=None)
    hand.submit(B, 21, b1, "5", None, broker_id="b3")
    hand.finish(B, 22, "b3", b1, "5", "49.4", position="0")

    c1 = f"wb-{C}-L1-1"
    hand.write(C, 30, EventKind.POSITION_READ, phase="before", qty="0", target_qty=None)
    hand.move(C, 31, "quote", "QUOTED", quote=Q4)
    hand.move(C, 31, "start_walk", "LIMIT_STEP_1", ratio="0.75", limit_price="20.08",
              quote=Q4, wait_seconds=10.0)  # fmt: skip
    hand.write(C, 31, EventKind.SUBMIT_INTENT, client_order_id=c1, order_type="limit",
               qty="3", limit_price="20.08")  # fmt: skip
    hand.write(C, 31, EventKind.REJECTED, client_order_id=c1, reason="insufficient_funds",
               message="not enough buying power")  # fmt: skip
    hand.move(C, 31, "fail", "FAILED", reason="insufficient_funds", message="rejected")
    return hand


# -- tampering ----------------------------------------------------------------------


def tamper(path: Path, *statements: str) -> None:
    """Drop the append-only triggers with raw sqlite3, then run `statements`."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS events_refuse_update")
        conn.execute("DROP TRIGGER IF EXISTS events_refuse_delete")
        for statement in statements:
            conn.execute(statement)
    conn.close()


def event_seqs(path: Path, where: str) -> list[int]:
    with sqlite3.connect(path) as conn:
        seqs = [r[0] for r in conn.execute(f"SELECT seq FROM events WHERE {where} ORDER BY seq")]
    conn.close()
    return seqs


def swap_rows(path: Path, a: int, b: int) -> None:
    """Swap everything but seq between rows a and b (unique keys freed first)."""
    columns = ["order_id", "order_seq", "plan_id", "at", "kind", "from_state", "to_state",
               "data", "prev_hash", "hash"]  # fmt: skip
    select = f"SELECT {', '.join(columns)} FROM events WHERE seq = ?"
    assignments = ", ".join(f"{c} = ?" for c in columns)
    with sqlite3.connect(path) as conn:
        row_a = conn.execute(select, [a]).fetchone()
        row_b = conn.execute(select, [b]).fetchone()
    conn.close()
    tamper(
        path,
        f"UPDATE events SET hash = 'freed', order_seq = NULL WHERE seq = {a}",
    )
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE events SET {assignments} WHERE seq = ?", [*row_a, b])
        conn.execute(f"UPDATE events SET {assignments} WHERE seq = ?", [*row_b, a])
    conn.close()
