"""Stopping on purpose and at the broker's word: halt, cancel, abandon, task cancellation,
cancels made by someone else, stale plans in flight, and retrying failures that sent nothing.

Everything runs on the simulator in virtual time over real journal files; a "person" acts
on the broker directly, beside the engine, as a desk user would through Alpaca's API.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from walk_support import check_invariants, kill_after, resting, steady

from engine import Engine, EngineConfig, MarketSpec, SimBroker, VirtualClock, parse_plan, verify
from engine.crash import CrashPoints, SimulatedCrash
from engine.engine import EXACT_PLAN_LOOKUPS
from engine.errors import (
    EngineHalting,
    PlanAtBroker,
    PlanHalted,
    PlansInFlight,
    UnknownBrokerOrders,
)
from engine.events import EventKind
from engine.fsm import FailReason
from engine.sizing import BULK_QUOTES_FROM
from engine.stopping import (
    HaltRequest,
    clear_halt_request,
    halt_request_paths,
    write_halt_request,
)

BUY = {"symbol": "AAPL", "side": "buy", "quantity": "10"}
MSFT_BUY = {"symbol": "MSFT", "side": "buy", "quantity": "3"}


def two_symbols() -> dict[str, Any]:
    return steady() | {"MSFT": steady("300")["AAPL"]}


def plan(plan_id: str, *orders: dict[str, Any]) -> Any:
    return parse_plan({"plan_id": plan_id, "orders": list(orders or [BUY])})


def client_ids(rig: Any) -> list[str]:
    return sorted(o.client_order_id for o in rig.broker.orders.values())


def open_orders(rig: Any) -> list[Any]:
    return [o for o in rig.broker.orders.values() if not o.snapshot().is_terminal]


async def after(rig: Any, seconds: float, action: Any) -> Any:
    await rig.clock.sleep(seconds)
    return await action()


def run_with(rig: Any, work: Any, *others: Any) -> list[Any]:
    async def main() -> list[Any]:
        return list(await asyncio.gather(work, *others))

    return rig.clock.run(main())


# -- halt, cancel, cancel_plan -----------------------------------------------------------


def test_halt_mid_walk_cancels_the_live_order_and_fails_every_order_cancelled(make_rig):
    rig = make_rig(**resting(symbols=two_symbols(), positions={"AAPL": Decimal(5)}))
    two = plan("p1", MSFT_BUY, {"symbol": "AAPL", "side": "sell", "quantity": "1"})
    result, halted = run_with(rig, rig.engine.execute_plan(two), after(rig, 12, rig.engine.halt))
    assert [(o.state, o.reason) for o in result.orders] == [("FAILED", "cancelled")] * 2
    assert sorted(o.order_id for o in halted) == sorted(o.order_id for o in result.orders)
    assert not open_orders(rig)
    # the sell was walking at step 2 when the halt came; the buy never started
    sell = next(o for o in result.orders if o.side.value == "sell")
    buy = next(o for o in result.orders if o.side.value == "buy")
    assert sell.steps_used == 2
    assert not any(buy.order_id in cid for cid in client_ids(rig))
    kinds = [e.kind for e in rig.journal.events(order_id=sell.order_id)]
    # the cancel is journaled before it is sent, and the order ends only once it is final
    assert kinds[-5:] == [
        EventKind.STOP_REQUESTED,
        EventKind.CANCEL_INTENT,
        EventKind.CANCEL_ACK,
        EventKind.ORDER_FINAL,
        EventKind.TRANSITION,
    ]
    check_invariants(rig)
    assert rig.engine.resume_sync().nothing_in_flight


class CountingQuotes(SimBroker):
    """The simulator, noting the symbols of each bulk quote read."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.bulk_reads: list[list[str]] = []

    async def latest_quotes(self, symbols: Any) -> Any:
        self.bulk_reads.append(sorted(symbols))
        return await super().latest_quotes(symbols)


class SlowQuotes(SimBroker):
    """The simulator with quotes that take a minute to arrive (a broker's REST quotes at
    the end of its rate budget)."""

    async def stream_quote(self, symbol: str, wait_seconds: float) -> Any:
        return None

    async def latest_quote(self, symbol: str) -> Any:
        await self.clock.sleep(60)
        return await super().latest_quote(symbol)

    async def latest_quotes(self, symbols: Any) -> Any:
        await self.clock.sleep(60)
        return await super().latest_quotes(symbols)


@pytest.mark.parametrize("buys", [BULK_QUOTES_FROM - 1, BULK_QUOTES_FROM])
def test_halt_while_buys_are_being_sized_ends_them_unsent_at_once(make_rig, buys):
    """A halt that comes while the plan's buys wait for the quotes that size them (read
    one by one, or for many buys in bulk) ends every buy FAILED cancelled, unsent, without
    waiting for those quotes."""
    symbols = {f"S{i}": steady()["AAPL"] for i in range(buys)}
    rig = make_rig(broker_cls=SlowQuotes, **resting(symbols=symbols))
    buys = [{"symbol": s, "side": "buy", "quantity": "1"} for s in symbols]
    started = rig.clock.monotonic()
    result, _ = run_with(
        rig, rig.engine.execute_plan(plan("p1", *buys)), after(rig, 5, rig.engine.halt)
    )
    assert {(o.state, o.reason) for o in result.orders} == {("FAILED", "cancelled")}
    assert not rig.broker.orders
    assert rig.clock.monotonic() - started < 60  # no quote read was waited out
    check_invariants(rig, result)


class SlowAssets(SimBroker):
    """The simulator with asset reads that take a minute each (symbols off the broker's
    asset list, read one by one at the end of its rate budget)."""

    async def get_asset(self, symbol: str) -> Any:
        await self.clock.sleep(60)
        return await super().get_asset(symbol)


def test_halt_while_a_plan_is_being_checked_abandons_its_reads_and_journals_nothing(make_rig):
    """A halt that comes while preflight still reads the plan's assets ends the plan at
    once with PlanHalted: nothing journaled, nothing sent, no read waited out; delivered
    again, the plan runs."""
    rig = make_rig(broker_cls=SlowAssets, **resting())
    started = rig.clock.monotonic()
    halted = plan("p1", {"symbol": "AAPL", "side": "buy", "quantity": "1"})

    async def then_halt() -> Any:
        return await after(rig, 5, rig.engine.halt)

    async def main() -> list[Any]:
        return list(
            await asyncio.gather(
                rig.engine.execute_plan(halted), then_halt(), return_exceptions=True
            )
        )

    raised, stopped = rig.clock.run(main())
    assert isinstance(raised, PlanHalted), raised
    assert raised.fields == {"plan_id": "p1"}
    assert stopped == ()
    assert rig.clock.monotonic() - started < 60
    assert rig.engine.journal.last_seq == 0
    assert not rig.broker.orders
    again = rig.engine.execute_plan_sync(halted)
    assert [o.state for o in again.orders] == ["VALIDATED"]


class SlowPositions(SimBroker):
    """The simulator with position reads that take a minute each."""

    async def get_position(self, symbol: str) -> Any:
        await self.clock.sleep(60)
        return await super().get_position(symbol)


def test_halt_while_a_walk_reads_before_trading_ends_it_unsent_at_once(make_rig):
    """A halt that comes while a walk waits on a read before anything is sent (here its
    position) abandons the read: the order ends FAILED cancelled, unsent, at once."""
    rig = make_rig(broker_cls=SlowPositions, **resting())
    started = rig.clock.monotonic()
    result, _ = run_with(rig, rig.engine.execute_plan(plan("p1")), after(rig, 5, rig.engine.halt))
    assert [(o.state, o.reason) for o in result.orders] == [("FAILED", "cancelled")]
    assert not rig.broker.orders
    assert rig.clock.monotonic() - started < 60
    check_invariants(rig, result)


def test_many_buys_are_sized_from_one_bulk_quote_read(make_rig):
    """From BULK_QUOTES_FROM buys, sizing costs them all from one bulk REST read (here the
    funds fit the first 9 buys only; the rest fail insufficient_funds, unsent)."""
    symbols = {f"S{i:02d}": steady()["AAPL"] for i in range(BULK_QUOTES_FROM)}
    rig = make_rig(broker_cls=CountingQuotes, cash=Decimal(1000), **resting(symbols=symbols))
    buys = [{"symbol": s, "side": "buy", "quantity": "1"} for s in symbols]
    result = rig.engine.execute_plan_sync(plan("p1", *buys))
    assert rig.broker.bulk_reads == [sorted(symbols)]
    states = [(o.state, o.reason) for o in result.orders]
    # each costs 100.05 plus the 50 bps buffer: 9 fit in 1000
    assert states == [("VALIDATED", None)] * 9 + [("FAILED", "insufficient_funds")] * 21
    check_invariants(rig, result)


def test_halt_counts_the_fills_that_landed_before_the_cancel(make_rig):
    rig = make_rig(
        seed=8, symbols=steady(spread_bps=20), fill_intensity=0.1, partial_fill_probability=1.0
    )
    order = {"symbol": "AAPL", "side": "buy", "quantity": "60"}
    work = rig.engine.execute_plan(plan("p1", order))
    result, _ = run_with(rig, work, after(rig, 15, rig.engine.halt))
    (only,) = result.orders
    assert (only.state, only.reason) == ("FAILED", "cancelled")
    assert 0 < only.filled_qty < 60
    assert rig.broker.positions["AAPL"] == only.filled_qty
    check_invariants(rig)


def test_cancel_one_order_leaves_the_rest_of_the_plan_walking(make_rig):
    rig = make_rig(**resting(symbols=two_symbols()))
    two = plan("p1", BUY, MSFT_BUY)
    first_id = None

    async def cancel_first() -> Any:
        nonlocal first_id
        await rig.clock.sleep(5)
        first_id = rig.journal.orders()[0]["order_id"]
        return await rig.engine.cancel(first_id)

    result, cancelled = run_with(rig, rig.engine.execute_plan(two), cancel_first())
    assert (cancelled.state, cancelled.reason) == ("FAILED", "cancelled")
    by_id = {o.order_id: o for o in result.orders}
    assert by_id[first_id].reason == "cancelled"
    (other,) = [o for o in result.orders if o.order_id != first_id]
    assert other.state == "VALIDATED"  # it walked on to its market order
    check_invariants(rig)


def test_cancel_plan_stops_that_plan_only(make_rig):
    rig = make_rig(**resting())
    one, two = plan("p1"), plan("p2", {"symbol": "AAPL", "side": "buy", "quantity": "2"})

    async def main() -> Any:
        return await asyncio.gather(
            rig.engine.execute_plan(one),
            rig.engine.execute_plan(two),
            after(rig, 5, lambda: rig.engine.cancel_plan("p1")),
        )

    first, second, _ = rig.clock.run(main())
    assert [(o.state, o.reason) for o in first.orders] == [("FAILED", "cancelled")]
    assert [o.state for o in second.orders] == ["VALIDATED"]


def test_a_halting_engine_takes_no_new_plan(make_rig):
    rig = make_rig(**resting())

    async def deliver_during_halt() -> None:
        await rig.clock.sleep(5)
        halt = asyncio.ensure_future(rig.engine.halt())
        await asyncio.sleep(0)
        with pytest.raises(EngineHalting):
            await rig.engine.execute_plan(plan("p2"))
        await halt

    result, _ = run_with(rig, rig.engine.execute_plan(plan("p1")), deliver_during_halt())
    assert result.orders[0].reason == "cancelled"
    # once the halt is over the engine trades again
    assert rig.engine.execute_plan_sync(plan("p3")).orders[0].state == "VALIDATED"


def test_cancelling_the_task_running_execute_plan_halts_its_orders_first(make_rig):
    rig = make_rig(**resting())

    async def main() -> None:
        task = asyncio.ensure_future(rig.engine.execute_plan(plan("p1")))
        await rig.clock.sleep(12)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    rig.clock.run(main())
    (row,) = rig.journal.orders()
    assert (row["state"], row["reason"]) == ("FAILED", "cancelled")
    assert not open_orders(rig)
    check_invariants(rig)


def test_halt_with_nothing_running_cancels_what_the_journal_says_is_live(tmp_path: Path):
    """A process killed mid-walk left a resting order; a later halt on the journal cancels
    it at the broker and ends the order cancelled, without placing anything."""
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting()), clock)
    path = tmp_path / "j.db"
    kill_after(Engine(broker, path, clock=clock), clock, plan("p1"), 12)
    placed = len(broker.orders)
    assert [o for o in broker.orders.values() if not o.snapshot().is_terminal]
    with Engine(broker, path, clock=clock) as fresh:
        stopped = clock.run(fresh.halt())
        assert [(o.state, o.reason) for o in stopped] == [("FAILED", "cancelled")]
        assert fresh.resume_sync().nothing_in_flight
    assert len(broker.orders) == placed
    assert not [o for o in broker.orders.values() if not o.snapshot().is_terminal]


def test_a_halt_request_file_stops_the_engine_that_holds_the_journal(make_rig):
    rig = make_rig(**resting())
    import os

    async def request_halt() -> None:
        await rig.clock.sleep(12)
        write_halt_request(rig.journal_path, HaltRequest(None, FailReason.CANCELLED, os.getpid()))

    result, _ = run_with(rig, rig.engine.execute_plan(plan("p1")), request_halt())
    assert [(o.state, o.reason) for o in result.orders] == [("FAILED", "cancelled")]
    assert not open_orders(rig)
    # the request ended with the work it stopped: a long-lived engine trades the next plan
    assert rig.engine.execute_plan_sync(plan("p2")).orders[0].state == "VALIDATED"


def test_a_halt_request_reaches_a_journal_whose_name_looks_like_a_pattern(tmp_path: Path):
    """Before, requests were looked for as a glob pattern: `book[1].db.halt.*` matches
    `book1.db.halt.*`, so this engine never saw one and `walkbook halt` waited in vain."""
    import os

    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting()), clock)
    path = tmp_path / "book[1].db"

    async def request_halt() -> None:
        await clock.sleep(12)
        write_halt_request(path, HaltRequest(None, FailReason.CANCELLED, os.getpid()))

    with Engine(broker, path, clock=clock) as engine:
        rig = SimpleNamespace(clock=clock)
        result, _ = run_with(rig, engine.execute_plan(plan("p1")), request_halt())
    assert [(o.state, o.reason) for o in result.orders] == [("FAILED", "cancelled")]
    assert halt_request_paths(path) == []


def test_a_halt_request_for_another_process_is_dropped(make_rig):
    rig = make_rig(**resting())
    write_halt_request(rig.journal_path, HaltRequest(None, FailReason.CANCELLED, 1))
    result = rig.engine.execute_plan_sync(plan("p1"))
    assert result.orders[0].state == "VALIDATED"


def test_two_halt_requests_at_once_are_both_taken(make_rig):
    """A request for this process and, just after it, one for another process: neither
    overwrites the other, the engine acts on its own, and it takes both."""
    rig = make_rig(**resting())
    import os

    async def two_requesters() -> None:
        await rig.clock.sleep(12)
        write_halt_request(rig.journal_path, HaltRequest(None, FailReason.CANCELLED, os.getpid()))
        write_halt_request(rig.journal_path, HaltRequest(None, FailReason.ABANDONED, 1))

    result, _ = run_with(rig, rig.engine.execute_plan(plan("p1")), two_requesters())
    assert [(o.state, o.reason) for o in result.orders] == [("FAILED", "cancelled")]
    assert halt_request_paths(rig.journal_path) == []


def test_a_requester_withdraws_only_its_own_request(make_rig):
    rig = make_rig(**resting())
    mine = write_halt_request(rig.journal_path, HaltRequest("p1", FailReason.CANCELLED, 7))
    theirs = write_halt_request(rig.journal_path, HaltRequest("p2", FailReason.CANCELLED, 8))
    clear_halt_request(rig.journal_path, mine)
    (left,) = halt_request_paths(rig.journal_path)
    assert left.name.endswith(theirs)
    assert json.loads(left.read_text())["plan_id"] == "p2"


# -- cancels made elsewhere ----------------------------------------------------------------


async def person_cancels_live_order(rig: Any, seconds: float) -> str:
    """Someone cancels walkbook's resting order at the broker, not through walkbook."""
    await rig.clock.sleep(seconds)
    (live,) = open_orders(rig)
    await rig.broker.cancel_order(live.id)
    return live.client_order_id


def test_an_order_cancelled_at_the_broker_by_a_person_is_not_placed_again(make_rig):
    rig = make_rig(**resting())
    result, cancelled_cid = run_with(
        rig, rig.engine.execute_plan(plan("p1")), person_cancels_live_order(rig, 3)
    )
    (order,) = result.orders
    assert (order.state, order.reason) == ("FAILED", "cancelled_externally")
    assert client_ids(rig) == [cancelled_cid]  # nothing after the person's cancel
    assert order.steps_used == 1  # it ended where the cancel found it, not a step later
    final = [e for e in rig.journal.events() if e.kind == EventKind.ORDER_FINAL]
    assert final[-1].data["external"] is True
    check_invariants(rig)


def test_a_person_s_cancel_seen_only_on_resume_is_respected(tmp_path: Path):
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting()), clock)
    path = tmp_path / "j.db"
    kill_after(Engine(broker, path, clock=clock), clock, plan("p1"), 3)
    (live,) = [o for o in broker.orders.values() if not o.snapshot().is_terminal]
    clock.run(broker.cancel_order(live.id))
    with Engine(broker, path, clock=clock) as fresh:
        report = fresh.resume_sync()
        (order,) = report.orders
        assert (order.result.state, order.result.reason) == ("FAILED", "cancelled_externally")
    assert [o.client_order_id for o in broker.orders.values()] == [live.client_order_id]


# -- plans left in flight by an earlier process --------------------------------------------


def killed_mid_plan(tmp_path: Path, *orders: dict[str, Any]) -> tuple[Any, Any, Path]:
    clock = VirtualClock()
    broker = SimBroker(MarketSpec(**resting(positions={"AAPL": Decimal(50)})), clock)
    path = tmp_path / "j.db"
    kill_after(Engine(broker, path, clock=clock), clock, plan("day-2", *orders), 3)
    return clock, broker, path


def test_a_new_plan_is_refused_while_another_plan_is_in_flight(tmp_path: Path):
    clock, broker, path = killed_mid_plan(tmp_path)
    before = len(broker.orders)
    with Engine(broker, path, clock=clock) as engine:
        last_seq = engine.journal.last_seq
        with pytest.raises(PlansInFlight) as refused:
            engine.execute_plan_sync(plan("day-3"))
        assert refused.value.fields["plans"] == ["day-2"]
        assert engine.journal.last_seq == last_seq  # nothing journaled
    assert len(broker.orders) == before  # nothing sent


@pytest.mark.parametrize(
    ("policy", "day_2", "held"),
    [
        # each plan bought its 10 once: positions never double
        ("resume_first", ("VALIDATED", None), Decimal(70)),
        ("abandon", ("FAILED", "abandoned"), Decimal(60)),
    ],
)
def test_in_flight_policy_settles_the_stale_plan_before_the_new_one_runs(
    tmp_path: Path, policy: str, day_2: tuple[str, str | None], held: Decimal
):
    clock, broker, path = killed_mid_plan(tmp_path)
    config = EngineConfig(in_flight=policy)
    with Engine(broker, path, clock=clock, config=config) as engine:
        result = engine.execute_plan_sync(plan("day-3"))
        assert result.orders[0].state == "VALIDATED"
        rows = {r["plan_id"]: (r["state"], r["reason"]) for r in engine.journal.orders()}
        assert rows == {"day-2": day_2, "day-3": ("VALIDATED", None)}
    assert broker.positions["AAPL"] == held
    assert not [o for o in broker.orders.values() if not o.snapshot().is_terminal]


def test_engine_abandon_ends_a_plan_without_trading_it(tmp_path: Path):
    clock, broker, path = killed_mid_plan(tmp_path)
    with Engine(broker, path, clock=clock) as engine:
        (abandoned,) = clock.run(engine.abandon("day-2"))
        assert (abandoned.state, abandoned.reason) == ("FAILED", "abandoned")
        assert engine.resume_sync().nothing_in_flight
    assert broker.positions["AAPL"] == Decimal(50)


def test_resume_max_age_abandons_orders_older_than_that(tmp_path: Path):
    clock, broker, path = killed_mid_plan(tmp_path)
    with Engine(broker, path, clock=clock) as engine:
        report = clock.run(engine.resume(max_age_seconds=1))
        assert [(o.result.state, o.result.reason) for o in report.orders] == [
            ("FAILED", "abandoned")
        ]
    assert broker.positions["AAPL"] == Decimal(50)


# -- failures that sent nothing are tried again ---------------------------------------------


def test_a_plan_failed_market_closed_trades_when_delivered_again_at_the_open(make_rig):
    rig = make_rig(**resting(market_open=False))
    first = rig.engine.execute_plan_sync(plan("daily"))
    assert (first.orders[0].state, first.orders[0].reason) == ("FAILED", "market_closed")
    rig.broker.spec = rig.broker.spec.model_copy(update={"market_open": True})
    again = rig.engine.execute_plan_sync(plan("daily"))
    assert again.orders[0].state == "VALIDATED"
    assert again.orders[0].order_id != first.orders[0].order_id
    # a third delivery is exactly-once again: nothing more trades
    third = rig.engine.execute_plan_sync(plan("daily"))
    assert third.orders == again.orders
    assert rig.broker.positions["AAPL"] == Decimal(10)
    created = [e for e in rig.journal.events() if e.kind == EventKind.CREATED]
    assert created[-1].data["retry_of"] == first.orders[0].order_id


def test_a_failure_after_something_was_sent_is_never_retried(make_rig):
    rig = make_rig(**resting())
    first, _ = run_with(rig, rig.engine.execute_plan(plan("p1")), person_cancels_live_order(rig, 3))
    assert first.orders[0].reason == "cancelled_externally"
    again = rig.engine.execute_plan_sync(plan("p1"))
    assert again.orders == first.orders


# -- one account, two journals: plan_id is per account -------------------------------------


def two_journals(tmp_path: Path, **spec: Any) -> tuple[VirtualClock, SimBroker, Path, Path]:
    clock = VirtualClock()
    return (
        clock,
        SimBroker(MarketSpec(**resting(**spec)), clock),
        tmp_path / "a.db",
        tmp_path / "b.db",
    )


def test_a_finished_plan_delivered_to_a_second_journal_is_refused_before_anything(tmp_path):
    clock, broker, first, second = two_journals(tmp_path)
    with Engine(broker, first, clock=clock) as engine:
        assert engine.execute_plan_sync(plan("daily")).orders[0].state == "VALIDATED"
    placed = dict(broker.orders)
    with Engine(broker, second, clock=clock) as engine:
        with pytest.raises(PlanAtBroker) as refused:
            engine.execute_plan_sync(plan("daily"))
        assert refused.value.fields["client_order_ids"] == [
            o.client_order_id for o in placed.values() if o.client_order_id.endswith("-L1-1")
        ]
        assert engine.journal.last_seq == 0
    assert broker.orders == placed
    assert broker.positions["AAPL"] == Decimal(10)
    assert verify(first).ok
    assert verify(second).ok


class CountingSimBroker(SimBroker):
    """The simulator, counting the reads a plan's start makes of what the broker holds."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.calls: Counter[str] = Counter()

    async def get_order_by_client_id(self, client_order_id: str) -> Any:
        self.calls["get_order_by_client_id"] += 1
        return await super().get_order_by_client_id(client_order_id)

    async def recent_orders(self, symbol: str | None, since: Any) -> Any:
        self.calls[f"recent_orders {symbol}"] += 1
        return await super().recent_orders(symbol, since)


def test_a_large_plan_at_the_broker_is_found_by_one_listing(tmp_path):
    """A plan of more than EXACT_PLAN_LOOKUPS orders is checked against one listing of the
    account's recent orders, not one read per order, and refused all the same."""
    symbols = {f"S{i:03d}": steady()["AAPL"] for i in range(EXACT_PLAN_LOOKUPS + 10)}
    orders = [{"symbol": s, "side": "buy", "quantity": "1"} for s in symbols]
    clock = VirtualClock()
    broker = CountingSimBroker(MarketSpec(symbols=symbols, fill_intensity=1e9), clock)
    with Engine(broker, tmp_path / "a.db", clock=clock) as engine:
        done = engine.execute_plan_sync(plan("wide", *orders))
    assert {o.state for o in done.orders} == {"VALIDATED"}
    assert broker.calls == {"recent_orders None": 1}
    placed, broker.calls = dict(broker.orders), Counter()
    with Engine(broker, tmp_path / "b.db", clock=clock) as engine:
        with pytest.raises(PlanAtBroker) as refused:
            engine.execute_plan_sync(plan("wide", *orders))
        assert len(refused.value.fields["client_order_ids"]) == len(orders)
        assert engine.journal.last_seq == 0
    assert broker.calls == {"recent_orders None": 1}
    assert broker.orders == placed


def test_a_plan_killed_midway_in_one_journal_is_refused_by_another(tmp_path):
    clock, broker, first, second = two_journals(tmp_path)
    kill_after(Engine(broker, first, clock=clock), clock, plan("daily"), 3)
    (live,) = [o for o in broker.orders.values() if not o.snapshot().is_terminal]
    with Engine(broker, second, clock=clock) as engine:
        with pytest.raises(UnknownBrokerOrders) as unknown:
            engine.execute_plan_sync(plan("daily"))
        assert unknown.value.fields["client_order_ids"] == [live.client_order_id]
        assert engine.journal.last_seq == 0
    ignoring = EngineConfig(unknown_orders="ignore")
    with (
        Engine(broker, second, clock=clock, config=ignoring) as engine,
        pytest.raises(PlanAtBroker),
    ):
        engine.execute_plan_sync(plan("daily"))
    with Engine(broker, first, clock=clock) as engine:
        (resumed,) = engine.resume_sync().orders
        assert resumed.result.state == "VALIDATED"
    assert broker.positions["AAPL"] == Decimal(10)
    assert verify(first).ok


def test_an_older_copy_of_a_journal_never_trades_what_the_other_copy_placed(tmp_path):
    """A journal copied when its plan was journaled but nothing was sent, then the plan run
    to the end through the original: resuming the copy meets the order's client id at the
    broker on its first submit and fails it `placed_elsewhere`, adopting nothing."""
    import shutil

    clock, broker, original, copy = two_journals(tmp_path)
    with (
        Engine(
            broker, original, clock=clock, crash_points=CrashPoints(armed="after_append.created")
        ) as engine,
        pytest.raises(SimulatedCrash),
    ):
        engine.execute_plan_sync(plan("daily"))
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{original}{suffix}").exists():
            shutil.copy(f"{original}{suffix}", f"{copy}{suffix}")
    with Engine(broker, original, clock=clock) as engine:
        assert engine.resume_sync().orders[0].result.state == "VALIDATED"
    with Engine(broker, copy, clock=clock) as engine:
        (stale,) = engine.resume_sync().orders
        assert (stale.result.state, stale.result.reason) == ("FAILED", "placed_elsewhere")
        assert stale.result.filled_qty == 0
    assert broker.positions["AAPL"] == Decimal(10)
    assert verify(copy).ok
