"""REST calls a walk spends (issue 16), on the embedded simulator and its virtual clock.

A plan whose preflight read every position starts its walks from that read instead of a
read each, for as long as the read vouches for a symbol; each limit step's order rests
the step's full time, however long the broker took to confirm the last step's cancel (a
step cut short steps again at once: one more cancel and submit); and a replace refused
because the order filled first cancels nothing.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from conftest import START
from walk_support import (
    REPLACING,
    check_invariants,
    of_kind,
    resting,
    run_plan,
    steady,
    transitions,
)

from engine import EngineConfig, OrderSide, SimBroker
from engine.broker import BrokerOrder, OrderRequest
from engine.errors import NotReplaceable
from engine.events import EventKind
from engine.walk import SNAPSHOT_MAX_AGE_SECONDS, PositionSnapshot

SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN")


class CountingReads(SimBroker):
    """A SimBroker that counts the position reads it answers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.position_reads = 0
        self.all_position_reads = 0

    async def get_position(self, symbol: str) -> Decimal:
        self.position_reads += 1
        return await super().get_position(symbol)

    async def get_positions(self) -> dict[str, Decimal]:
        self.all_position_reads += 1
        return await super().get_positions()


def test_walks_start_from_the_preflight_read_of_every_position(make_rig: Any) -> None:
    """A plan with a partial sell reads every position once in preflight: its walks take
    their "before" positions from it (the journal holds the positions as they were), and
    read the broker's own figures only to validate, after their fills."""
    symbols = steady() | {"MSFT": steady("50")["AAPL"]}
    rig = make_rig(broker_cls=CountingReads, symbols=symbols, positions={"AAPL": Decimal(10)})
    result = run_plan(
        rig,
        {"symbol": "AAPL", "side": "sell", "quantity": "4", "urgency": "high"},
        {"symbol": "MSFT", "side": "buy", "quantity": "3", "urgency": "high"},
    )
    assert [o.state for o in result.orders] == ["VALIDATED", "VALIDATED"]
    assert rig.broker.all_position_reads == 1
    assert rig.broker.position_reads == 2  # one validation each, none to start
    reads = {o.order_id: _position_reads(rig, o.order_id) for o in result.orders}
    sell, buy = (o.order_id for o in result.orders)
    assert reads[sell] == [("before", "10"), ("after", "6")]
    assert reads[buy] == [("before", "0"), ("after", "3")]
    check_invariants(rig, result)


def test_a_full_close_sizes_itself_from_a_read_of_its_own(make_rig: Any) -> None:
    """A FULL close sells the position as it is when it starts, never as a snapshot had
    it: the AAPL position grows by 5 after preflight's read, and the close sells all 15."""
    symbols = steady() | {"MSFT": steady("50")["AAPL"]}
    positions = {"AAPL": Decimal(10), "MSFT": Decimal(8)}
    rig = make_rig(broker_cls=CountingReads, symbols=symbols, positions=positions)
    reads_every_position = rig.broker.get_positions

    async def then_bought_elsewhere() -> dict[str, Decimal]:
        held = await reads_every_position()
        # someone else's market buy of 5 AAPL, filled at once, after the snapshot
        elsewhere = OrderRequest("not-walkbook-1", "AAPL", OrderSide.BUY, Decimal(5), "market")
        await rig.broker.submit_order(elsewhere)
        return held

    rig.broker.get_positions = then_bought_elsewhere  # type: ignore[method-assign]
    result = run_plan(
        rig,
        {
            "symbol": "MSFT",
            "side": "sell",
            "quantity": "3",
            "close_type": "partial",
            "urgency": "high",
        },
        {
            "symbol": "AAPL",
            "side": "sell",
            "quantity": "10",
            "close_type": "full",
            "urgency": "high",
        },
    )
    assert [o.state for o in result.orders] == ["VALIDATED", "VALIDATED"]
    msft, aapl = (o.order_id for o in result.orders)
    assert _position_reads(rig, aapl)[0] == ("before", "15")
    assert _position_reads(rig, msft)[0] == ("before", "8")  # from the snapshot
    # all 15 sold (check_invariants would count the other buy's fill as walkbook's)
    assert rig.broker.positions.get("AAPL", Decimal(0)) == Decimal(0)


def test_a_snapshot_vouches_only_for_untraded_symbols_while_young() -> None:
    snapshot = PositionSnapshot({"AAPL": Decimal(10)}, 7, frozenset({"TSLA"}), 100.0)
    assert snapshot.position("AAPL", -1, 100.0) == Decimal(10)
    assert snapshot.position("MSFT", 7, 100.0) == Decimal(0)  # not held: none
    assert snapshot.position("AAPL", 8, 100.0) is None  # traded after the read
    assert snapshot.position("TSLA", -1, 100.0) is None  # in flight when read
    assert snapshot.position("AAPL", -1, 100.0 + SNAPSHOT_MAX_AGE_SECONDS + 1) is None


def test_an_aged_snapshot_is_read_anew_once_for_the_walks_that_start_after(
    make_rig: Any,
) -> None:
    """Two walks at a time, each resting three 25 s steps (about 80 s): the second pair
    starts after the preflight read has aged, and one read anew (not one each) gives both
    their "before" positions."""
    prices = ("100", "50", "70", "90")
    symbols = {name: steady(price)["AAPL"] for name, price in zip(SYMBOLS, prices, strict=True)}
    rig = make_rig(
        broker_cls=CountingReads,
        config=EngineConfig(medium_step_wait_seconds=25.0),
        **resting(symbols=symbols, positions={"AAPL": Decimal(10)}),
    )
    rig.engine.concurrency = 2
    orders = [{"symbol": "AAPL", "side": "sell", "quantity": "4", "close_type": "partial"}]
    orders += [{"symbol": name, "side": "buy", "quantity": "2"} for name in SYMBOLS[1:]]
    result = run_plan(rig, *orders)

    assert [o.state for o in result.orders] == ["VALIDATED"] * 4
    assert rig.broker.all_position_reads == 2  # preflight, then once anew
    assert rig.broker.position_reads == 4  # each order's validation, no "before" read
    befores = [_position_reads(rig, o.order_id)[0] for o in result.orders]
    assert befores == [("before", "10"), ("before", "0"), ("before", "0"), ("before", "0")]
    started = [_seconds(transitions(rig, o.order_id)[0]) for o in result.orders]
    assert min(started[2:]) > SNAPSHOT_MAX_AGE_SECONDS  # the second pair really started late
    check_invariants(rig, result)


def test_each_step_order_rests_the_full_step_after_the_last_cancel(make_rig: Any) -> None:
    """Limits never fill: the simulator confirms a cancel at its next one-second tick, and
    each later step's order still rests its full 10 s before the walk steps on."""
    rig = make_rig(config=EngineConfig(medium_step_wait_seconds=10.0), **resting())
    result = run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "5"})
    order = result.orders[0]
    assert order.state == "VALIDATED"
    submits = [_seconds(e) for e in of_kind(rig, order.order_id, EventKind.SUBMIT_INTENT)]
    leaves = {
        str(e.from_state): _seconds(e)
        for e in transitions(rig, order.order_id)
        if str(e.from_state).startswith("LIMIT_STEP_")
    }
    steps = [leaves[f"LIMIT_STEP_{k}"] for k in (1, 2, 3)]
    cancel_waits = [submits[k] - steps[k - 1] for k in (1, 2)]
    assert all(wait > 0 for wait in cancel_waits)  # the cancels took the venue's time
    assert [round(steps[k] - submits[k], 6) >= 10 for k in (0, 1, 2)] == [True] * 3


class FilledBeforeReplace(SimBroker):
    """The old order fills whole just before the replace reaches it: Alpaca's 422."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.cancels = 0

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        old = self.orders[order_id]
        assert old.limit_price is not None
        self._fill(old, old.remaining, old.limit_price)
        raise NotReplaceable(f"order {order_id} is filled", status=old.status.value)

    async def cancel_order(self, order_id: str) -> None:
        self.cancels += 1
        await super().cancel_order(order_id)


def test_a_replace_refused_because_the_order_filled_cancels_nothing(make_rig: Any) -> None:
    rig = make_rig(broker_cls=FilledBeforeReplace, config=REPLACING, **resting())
    result = run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "10"})
    order = result.orders[0]
    assert (order.state, order.filled_qty) == ("VALIDATED", Decimal(10))
    assert [e.data["reason"] for e in of_kind(rig, order.order_id, "rejected")] == [
        "not_replaceable"
    ]
    assert not of_kind(rig, order.order_id, EventKind.CANCEL_INTENT)
    assert rig.broker.cancels == 0
    check_invariants(rig, result)


class PartlyFilledBeforeReplace(SimBroker):
    """The old sell fills 4 of its 10 just before the replace reaches it, so the replace's
    qty is stale: the simulator then refuses it as Alpaca does, 403 "insufficient qty"."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.filled_first = False

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        old = self.orders[order_id]
        assert old.limit_price is not None
        if not self.filled_first:
            self.filled_first = True
            self._fill(old, Decimal(4), old.limit_price)
        return await super().replace_order(order_id, qty, limit_price, client_order_id)


def test_a_replace_refused_for_insufficient_qty_places_anew(make_rig: Any) -> None:
    """A refused replace never fails the order: cancel, confirm, then a new order for
    what the old one left (6 shares), and the walk goes on to sell all 10."""
    rig = make_rig(
        broker_cls=PartlyFilledBeforeReplace,
        config=REPLACING,
        positions={"AAPL": Decimal(10)},
        **resting(),
    )
    result = run_plan(rig, {"symbol": "AAPL", "side": "sell", "quantity": "10"})
    order = result.orders[0]
    assert (order.state, order.filled_qty) == ("VALIDATED", Decimal(10))
    refusals = of_kind(rig, order.order_id, "rejected")
    assert [e.data["reason"] for e in refusals] == ["insufficient_position"]
    submits = of_kind(rig, order.order_id, EventKind.SUBMIT_INTENT)
    assert [Decimal(e.data["qty"]) for e in submits][:2] == [Decimal(10), Decimal(6)]
    check_invariants(rig, result)


def _position_reads(rig: Any, order_id: str) -> list[tuple[str, str]]:
    return [(e.data["phase"], e.data["qty"]) for e in of_kind(rig, order_id, "position_read")]


def _seconds(event: Any) -> float:
    return (datetime.fromisoformat(event.at) - START).total_seconds()
