"""Helpers for the walk-the-book tests: plan builders, journal readers and the invariant check."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from engine import (
    Engine,
    EngineConfig,
    OrderResult,
    OrderSide,
    PlanResult,
    SimBroker,
    SymbolSpec,
    VirtualClock,
    parse_plan,
)
from engine.broker import OrderRequest
from engine.events import EventKind, payload_of
from engine.order import OrderRecord, fold_orders
from journal import Event, Journal

CLIENT_ORDER_ID_MAX = 48
PENNY = Decimal("0.01")
SUB_PENNY = Decimal("0.0001")


# -- running ------------------------------------------------------------------------


def run_plan(rig: Any, *orders: dict[str, Any], plan_id: str = "p1") -> PlanResult:
    """Execute a plan of the given order dicts on the rig's engine (virtual time)."""
    plan = parse_plan({"plan_id": plan_id, "orders": list(orders)})
    return rig.engine.execute_plan_sync(plan)


def run_one(rig: Any, **order: Any) -> OrderResult:
    """Execute a one-order plan and return that order's result."""
    return run_plan(rig, order).orders[0]


NEVER = 1e-9


def kill_after(engine: Engine, clock: VirtualClock, delivered: Any, seconds: float) -> None:
    """Run `delivered` for `seconds`, then drop the process on the floor (as SIGKILL would:
    the loop is torn down, no halt runs) and close the journal."""

    async def killed() -> None:
        work = asyncio.ensure_future(engine.execute_plan(delivered))
        await clock.sleep(seconds)
        assert not work.done()
        raise SystemExit

    with pytest.raises(SystemExit):
        clock.run(killed())
    engine.close()


# replace (PATCH) between steps, off by default since Alpaca's replace is not atomic with fills
REPLACING = EngineConfig(replace_orders=True)


def steady(price: str = "100", spread_bps: float = 10) -> dict[str, SymbolSpec]:
    """AAPL with a fixed mid: quotes are derivable by hand."""
    return {"AAPL": SymbolSpec(price=Decimal(price), spread_bps=spread_bps, volatility_bps=0)}


def resting(**overrides: Any) -> dict[str, Any]:
    """A market spec where limit orders never fill passively and market orders fill whole."""
    spec: dict[str, Any] = {
        "symbols": steady(spread_bps=20),
        "fill_intensity": NEVER,
        "market_partial_probability": 0.0,
    }
    return spec | overrides


def zero_quotes(seed: int) -> dict[str, Any]:
    """ILLQ, whose every stream quote has a zero side (or both): estimation and REST fallback."""
    illq = SymbolSpec(
        price=Decimal("20"), spread_bps=30, volatility_bps=1, zero_quote_probability=1.0
    )
    return {
        "seed": seed,
        "symbols": {"ILLQ": illq},
        "fill_intensity": NEVER,
        "stream_gap_probability": 0.0,
    }


class RecordingSimBroker(SimBroker):
    """A SimBroker that notes, at each submit call, which orders on the symbol are still live."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.live_at_submit: list[tuple[str, list[str]]] = []

    async def submit_order(self, request: OrderRequest) -> Any:
        live = [
            o.id
            for o in self.orders.values()
            if o.symbol == request.symbol and not o.status.is_terminal
        ]
        self.live_at_submit.append((request.client_order_id, live))
        return await super().submit_order(request)


# -- reading the journal --------------------------------------------------------------


def events(rig: Any, order_id: str | None = None) -> list[Event]:
    return list(rig.journal.events(order_id=order_id))


def transitions(rig: Any, order_id: str) -> list[Event]:
    return [e for e in events(rig, order_id) if e.kind == EventKind.TRANSITION]


def states(rig: Any, order_id: str) -> list[str]:
    """The to_state of every transition, in order."""
    return [str(e.to_state) for e in transitions(rig, order_id)]


def of_kind(rig: Any, order_id: str, kind: str) -> list[Event]:
    return [e for e in events(rig, order_id) if e.kind == kind]


def fills(rig: Any, order_id: str) -> list[Event]:
    return of_kind(rig, order_id, EventKind.FILL)


def broker_orders_by_cid(rig: Any) -> dict[str, Any]:
    return {o.client_order_id: o for o in rig.broker.orders.values()}


def expected_limit(
    side: OrderSide, bid: Decimal, ask: Decimal, ratio: Decimal, tick: Decimal | None = None
) -> Decimal:
    """The design rule worked by hand: ratio of the spread, half-up to tick, in [bid, ask]."""
    spread = ask - bid
    raw = bid + ratio * spread if side is OrderSide.BUY else ask - ratio * spread

    def tick_for(price: Decimal) -> Decimal:
        return tick if tick is not None else (PENNY if price >= 1 else SUB_PENNY)

    step = tick_for(raw)
    price = (raw / step).quantize(Decimal(1), rounding=ROUND_HALF_UP) * step
    low = (bid / tick_for(bid)).quantize(Decimal(1), rounding=ROUND_CEILING) * tick_for(bid)
    high = (ask / tick_for(ask)).quantize(Decimal(1), rounding=ROUND_FLOOR) * tick_for(ask)
    return min(max(price, low), high)


# -- invariants ---------------------------------------------------------------------


def check_invariants(rig: Any, result: PlanResult | OrderResult | None = None) -> dict[str, Any]:
    """Assert the engine's standing invariants on the journal and the simulator; return records."""
    journal, broker = rig.journal, rig.broker
    all_events = list(journal.events())
    assert journal.verify_chain() is None
    # every event's data is exactly its typed payload: no field written that the type lacks
    for event in all_events:
        assert payload_of(event.kind, event.data).to_data() == event.data, event

    records = fold_orders(all_events)
    for order_id, record in records.items():
        # the orders projection is exactly what a replay of the events reproduces
        assert journal.order(order_id) == record.projection(), order_id
        # filled quantity never exceeds the intended quantity
        assert record.filled_qty <= record.quantity, order_id
        assert record.filled_qty >= 0
        assert not [
            e
            for e in all_events
            if e.order_id == order_id
            and e.kind == EventKind.ERROR
            and e.data.get("error") == "overfill"
        ]
        if record.is_terminal:
            assert record.live_broker_order_id is None, order_id
        _check_no_second_live_order(all_events, order_id)

    # every broker order is in a terminal status: nothing left live on the book
    for order in broker.orders.values():
        assert order.status.is_terminal, (order.id, order.status)
        assert order.filled_qty <= order.qty
    # client_order_ids are unique and short enough for Alpaca
    cids = [o.client_order_id for o in broker.orders.values()]
    assert len(cids) == len(set(cids)), Counter(cids)
    assert all(len(cid) <= CLIENT_ORDER_ID_MAX for cid in cids)
    assert all(
        len(e.data["client_order_id"]) <= CLIENT_ORDER_ID_MAX
        for e in all_events
        if "client_order_id" in e.data
    )

    _check_fills_match_broker(all_events, broker)
    _check_positions_moved_by_fills(records, broker)
    if result is not None:
        results = result.orders if isinstance(result, PlanResult) else (result,)
        for order_result in results:
            _check_result_matches_journal(order_result, records[order_result.order_id], journal)
    return records


def _check_no_second_live_order(all_events: list[Event], order_id: str) -> None:
    """No new quantity is placed while a previous broker order of this order is live."""
    record: OrderRecord | None = None
    for event in all_events:
        if event.order_id != order_id:
            continue
        if event.kind == EventKind.SUBMIT_INTENT:
            assert record is not None
            assert record.live_broker_order_id is None, (
                f"{event.data['client_order_id']} submitted while "
                f"{record.live_broker_order_id} was live"
            )
        if event.kind == EventKind.REPLACE_INTENT:
            assert record is not None
            assert record.live_broker_order_id == event.data["broker_order_id"]
        record = fold_orders([event])[order_id] if record is None else record.apply_event(event)


def _check_fills_match_broker(all_events: list[Event], broker: SimBroker) -> None:
    """Every fill journaled is the broker's own fill (qty and price), never a quote's mid."""
    per_order: dict[str, list[Event]] = {}
    for event in all_events:
        if event.kind == EventKind.FILL:
            per_order.setdefault(event.data["broker_order_id"], []).append(event)
    for order in broker.orders.values():
        journaled = per_order.pop(order.id, [])
        qty = sum((Decimal(e.data["qty"]) for e in journaled), Decimal(0))
        assert qty == order.filled_qty, (order.id, qty, order.filled_qty)
        if not journaled:
            continue
        broker_avg = order.notional / order.filled_qty
        assert Decimal(journaled[-1].data["cum_avg_price"]) == broker_avg
        assert Decimal(journaled[-1].data["cum_qty"]) == order.filled_qty
        notional = sum(
            (Decimal(e.data["qty"]) * Decimal(e.data["price"]) for e in journaled), Decimal(0)
        )
        assert abs(notional / qty - broker_avg) <= Decimal("0.000001"), (order.id, broker_avg)
        if order.limit_price is not None:
            # a limit order never fills worse than its limit
            if order.side is OrderSide.BUY:
                assert broker_avg <= order.limit_price
            else:
                assert broker_avg >= order.limit_price
    assert not per_order, f"fills journaled for unknown broker orders: {list(per_order)}"


def _check_positions_moved_by_fills(records: dict[str, OrderRecord], broker: SimBroker) -> None:
    """The simulator's position moved by exactly the journaled fills, per symbol."""
    moved: dict[str, Decimal] = {}
    for record in records.values():
        signed = record.filled_qty if record.intent.side is OrderSide.BUY else -record.filled_qty
        moved[record.intent.symbol] = moved.get(record.intent.symbol, Decimal(0)) + signed
    for symbol, delta in moved.items():
        before = broker.spec.positions.get(symbol, Decimal(0))
        assert broker.positions.get(symbol, Decimal(0)) - before == delta, symbol


def _check_result_matches_journal(
    result: OrderResult, record: OrderRecord, journal: Journal
) -> None:
    row = journal.order(result.order_id)
    assert row is not None
    assert result.state == record.state == row["state"]
    assert result.reason == record.reason == row["reason"]
    assert result.filled_qty == record.filled_qty == Decimal(row["filled_qty"])
    assert result.quantity == record.quantity == Decimal(row["quantity"])
    assert result.steps_used == record.steps_used == row["steps_used"]
    if record.filled_qty:
        assert record.avg_price is not None
        assert result.avg_fill_price == record.avg_price.quantize(Decimal("0.000001"))
        assert abs(Decimal(row["avg_price"]) - result.avg_fill_price) <= Decimal("0.000001")
    else:
        assert result.avg_fill_price is None
        assert row["avg_price"] is None
