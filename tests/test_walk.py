"""Walk-the-book scenarios on the simulator: steps, escalation, urgency, quotes, ticks, closes."""

from __future__ import annotations

import itertools
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from conftest import START
from walk_support import (
    NEVER,
    REPLACING,
    RecordingSimBroker,
    broker_orders_by_cid,
    check_invariants,
    events,
    expected_limit,
    fills,
    of_kind,
    resting,
    run_one,
    states,
    steady,
    transitions,
    zero_quotes,
)

from engine import (
    BrokerOrderStatus,
    BrokerUnavailable,
    Engine,
    EngineConfig,
    MarketSpec,
    OrderSide,
    SymbolSpec,
    VirtualClock,
    parse_plan,
)
from engine.crash import CrashPoints, SimulatedCrash
from engine.events import EventKind

HUGE = 1e9
TICK_ONE = Decimal("0.01")


def limit_steps(rig, order_id):
    return [t for t in transitions(rig, order_id) if str(t.to_state).startswith("LIMIT_STEP_")]


def step_of(client_order_id: str) -> str:
    """'wb-<order>-L2-1' -> 'L2-1'."""
    return "-".join(client_order_id.split("-")[-2:])


def quote_of(event) -> tuple[Decimal, Decimal]:
    quote = event.data["quote"]
    return Decimal(quote["bid"]), Decimal(quote["ask"])


# -- filling on the ladder ------------------------------------------------------------


def test_fill_at_step_one_at_the_journaled_limit_price(make_rig):
    """A resting L1 order that fills completely validates in one step at its own limit price."""
    rig = make_rig(symbols=steady(), fill_intensity=HUGE, partial_fill_probability=0.0)
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert result.state == "VALIDATED"
    assert result.steps_used == 1
    assert states(rig, result.order_id) == ["QUOTED", "LIMIT_STEP_1", "SETTLING", "VALIDATED"]
    (step1,) = limit_steps(rig, result.order_id)
    bid, ask = quote_of(step1)
    limit = Decimal(step1.data["limit_price"])
    assert limit == expected_limit(OrderSide.BUY, bid, ask, Decimal("0.75"))
    assert bid < limit < ask  # resting, not marketable: a passive fill
    order_fills = fills(rig, result.order_id)
    assert order_fills
    assert all(Decimal(f.data["price"]) == limit for f in order_fills)
    assert result.avg_fill_price == limit
    assert result.filled_qty == Decimal(10)
    assert rig.broker.positions["AAPL"] == Decimal(10)
    (order,) = rig.broker.orders.values()
    assert order.limit_price == limit
    assert order.status is BrokerOrderStatus.FILLED
    check_invariants(rig, result)


def test_partial_fill_at_step_one_then_rest_at_step_two(make_rig):
    """Step 1 fills part; step 2's order carries exactly the remainder and completes it."""
    rig = make_rig(
        seed=1,  # its fill draws: part of the order at step 1, the rest at step 2
        symbols=steady(spread_bps=20),
        fill_intensity=0.1,
        partial_fill_probability=1.0,
    )
    result = run_one(rig, symbol="AAPL", side="buy", quantity="2")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert result.steps_used == 2
    assert states(rig, oid) == [
        "QUOTED", "LIMIT_STEP_1", "LIMIT_STEP_2", "SETTLING", "VALIDATED"
    ]  # fmt: skip
    by_cid = broker_orders_by_cid(rig)
    l1 = next(o for cid, o in by_cid.items() if cid.endswith("-L1-1"))
    l2 = next(o for cid, o in by_cid.items() if cid.endswith("-L2-1"))
    step1_fills = [f for f in fills(rig, oid) if f.data["broker_order_id"] == l1.id]
    step2_fills = [f for f in fills(rig, oid) if f.data["broker_order_id"] == l2.id]
    assert step1_fills
    assert step2_fills
    step1_qty = sum(Decimal(f.data["qty"]) for f in step1_fills)
    assert 0 < step1_qty < Decimal(2)
    # step 2's broker order was sized to what step 1 left, nothing more
    assert l2.qty == Decimal(2) - step1_qty
    # a partly filled order is never replaced (a replace can reuse the stale original qty):
    # step 1 is cancelled and confirmed final before step 2 is sent
    assert not of_kind(rig, oid, EventKind.REPLACE_INTENT)
    (cancel,) = of_kind(rig, oid, EventKind.CANCEL_INTENT)
    (l2_intent,) = [
        e for e in of_kind(rig, oid, EventKind.SUBMIT_INTENT) if "-L2-" in e.data["client_order_id"]
    ]
    assert cancel.data["broker_order_id"] == l1.id
    assert cancel.seq < l2_intent.seq
    assert l1.status.is_terminal
    total = sum(Decimal(f.data["qty"]) for f in fills(rig, oid))
    assert total == result.filled_qty == Decimal(2)
    check_invariants(rig, result)


def test_escalates_to_market_when_nothing_fills_passively(make_rig):
    """No passive fills: L1..L3 rest and expire, then one market order -M-1 completes it."""
    rig = make_rig(**resting())
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert states(rig, oid) == [
        "QUOTED", "LIMIT_STEP_1", "LIMIT_STEP_2", "LIMIT_STEP_3", "MARKET", "SETTLING", "VALIDATED"
    ]  # fmt: skip
    assert result.steps_used == 4
    market = [o for o in rig.broker.orders.values() if o.order_type == "market"]
    assert len(market) == 1
    assert market[0].client_order_id.endswith("-M-1")
    assert market[0].filled_qty == Decimal(10)
    # all fills came from the market order, at the ask it hit
    assert {f.data["client_order_id"] for f in fills(rig, oid)} == {market[0].client_order_id}
    limits = [o for o in rig.broker.orders.values() if o.order_type == "limit"]
    assert limits
    assert all(o.filled_qty == 0 for o in limits)
    check_invariants(rig, result)


# -- urgency --------------------------------------------------------------------------


def test_high_urgency_goes_straight_to_market(make_rig):
    """HIGH urgency: QUOTED -> MARKET, no limit order is ever sent."""
    rig = make_rig(symbols=steady(), market_partial_probability=0.0)
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10", urgency="high")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert states(rig, oid) == ["QUOTED", "MARKET", "SETTLING", "VALIDATED"]
    (order,) = rig.broker.orders.values()
    assert order.order_type == "market"
    assert order.client_order_id.endswith("-M-1")
    assert order.filled_qty == Decimal(10)
    check_invariants(rig, result)


def _step_gaps(rig, order_id) -> list[float]:
    """Seconds between consecutive rungs (L1->L2, L2->L3, L3->MARKET) from journal stamps."""
    rungs = [
        t
        for t in transitions(rig, order_id)
        if str(t.to_state).startswith("LIMIT_STEP_") or t.to_state == "MARKET"
    ]
    return [(b.at_datetime - a.at_datetime).total_seconds() for a, b in itertools.pairwise(rungs)]


def test_low_urgency_waits_longer_per_step_than_medium(make_rig):
    """LOW rests each rung for low_step_wait_seconds; MEDIUM for the shorter medium wait."""
    config = EngineConfig(medium_step_wait_seconds=5, low_step_wait_seconds=20)
    gaps = {}
    for urgency in ("medium", "low"):
        rig = make_rig(
            config=config, symbols=steady(spread_bps=20), fill_intensity=NEVER,
            market_partial_probability=0.0,
        )  # fmt: skip
        result = run_one(rig, symbol="AAPL", side="buy", quantity="10", urgency=urgency)
        assert result.state == "VALIDATED"
        waits = {t.data["wait_seconds"] for t in limit_steps(rig, result.order_id)}
        assert waits == {5.0 if urgency == "medium" else 20.0}
        gaps[urgency] = _step_gaps(rig, result.order_id)
        assert len(gaps[urgency]) == 3
        check_invariants(rig, result)

    assert all(5 <= g < 20 for g in gaps["medium"]), gaps
    assert all(g >= 20 for g in gaps["low"]), gaps
    assert min(gaps["low"]) > max(gaps["medium"])


# -- quotes ---------------------------------------------------------------------------


def test_every_step_prices_from_its_own_fresh_quote(make_rig):
    """Each LIMIT_STEP transition carries a new quote and its limit is priced from that quote."""
    rig = make_rig(
        seed=4,  # a path that moves without reaching a limit: all three steps run
        symbols={"MSFT": SymbolSpec(price=Decimal("250"), spread_bps=30, volatility_bps=3)},
        fill_intensity=NEVER,
        market_partial_probability=0.0,
    )
    result = run_one(rig, symbol="MSFT", side="buy", quantity="4")
    steps = limit_steps(rig, result.order_id)
    assert len(steps) == 3
    quoted_at = [datetime.fromisoformat(s.data["quote"]["quoted_at"]) for s in steps]
    assert quoted_at == sorted(quoted_at)
    assert len(set(quoted_at)) == 3
    freshness = rig.engine.config.quote_freshness_seconds
    for step, at in zip(steps, quoted_at, strict=True):
        assert 0 <= (step.at_datetime - at).total_seconds() <= freshness
        bid, ask = quote_of(step)
        ratio = Decimal(step.data["ratio"])
        assert Decimal(step.data["limit_price"]) == expected_limit(OrderSide.BUY, bid, ask, ratio)
    # the mid moved, so at least two steps saw different books
    assert len({quote_of(s) for s in steps}) > 1
    check_invariants(rig, result)


def test_zero_bid_is_estimated_and_the_walk_completes(make_rig):
    """A zero-bid episode: the step's quote is marked estimated 'bid', one spread under the ask."""
    rig = make_rig(**zero_quotes(2))  # a seed whose episodes include a zero bid at a step
    result = run_one(rig, symbol="ILLQ", side="buy", quantity="5")

    assert result.state == "VALIDATED"
    quoted = [t for t in transitions(rig, result.order_id) if t.data.get("quote")]
    estimated = [t for t in quoted if t.data["quote"]["estimated"] == "bid"]
    assert estimated
    previous_spreads = []
    for t in quoted:
        bid, ask = quote_of(t)
        assert 0 < bid < ask
        if t.data["quote"]["estimated"] == "bid":
            # estimated from the other side: the last real spread under the ask
            assert previous_spreads
            assert ask - bid == previous_spreads[-1]
        elif t.data["quote"]["estimated"] is None:
            previous_spreads.append(ask - bid)
    counters = rig.engine.quotes.counters
    assert counters.zero_bid >= len({t.data["quote"]["quoted_at"] for t in estimated})
    check_invariants(rig, result)


def test_both_zero_stream_quote_falls_back_to_rest(make_rig):
    """A both-sides-zero stream quote is unusable; the step prices from a REST quote instead."""
    rig = make_rig(**zero_quotes(1))  # a seed whose episodes include both sides zero at a step
    result = run_one(rig, symbol="ILLQ", side="buy", quantity="5")

    assert result.state == "VALIDATED"
    rest_steps = [
        t for t in limit_steps(rig, result.order_id) if t.data["quote"]["source"] == "rest"
    ]
    assert rest_steps
    for step in rest_steps:
        bid, ask = quote_of(step)
        assert 0 < bid < ask
        assert step.data["quote"]["estimated"] is None
        ratio = Decimal(step.data["ratio"])
        assert Decimal(step.data["limit_price"]) == expected_limit(OrderSide.BUY, bid, ask, ratio)
    counters = rig.engine.quotes.counters
    assert counters.both_zero > 0
    assert counters.rest_fallback >= len(rest_steps)
    check_invariants(rig, result)


# -- ticks ----------------------------------------------------------------------------


def test_sub_dollar_limits_on_sub_penny_tick_inside_the_quote(make_rig):
    """A $0.50 stock: every limit is on the 0.0001 tick, inside [bid, ask], from the rule."""
    rig = make_rig(
        symbols={"PENY": SymbolSpec(price=Decimal("0.5"), spread_bps=50, volatility_bps=0)},
        fill_intensity=NEVER,
        market_partial_probability=0.0,
    )
    result = run_one(rig, symbol="PENY", side="buy", quantity="1000")

    assert result.state == "VALIDATED"
    steps = limit_steps(rig, result.order_id)
    assert len(steps) == 3
    for step in steps:
        bid, ask = quote_of(step)
        limit = Decimal(step.data["limit_price"])
        assert limit % Decimal("0.0001") == 0
        assert bid <= limit <= ask
        assert limit == expected_limit(OrderSide.BUY, bid, ask, Decimal(step.data["ratio"]))
    # cent rounding would have landed some steps elsewhere: the sub-penny tick is really used
    assert any(Decimal(s.data["limit_price"]) % TICK_ONE for s in steps)
    broker_limits = sorted(o.limit_price for o in rig.broker.orders.values() if o.limit_price)
    assert broker_limits == sorted(Decimal(s.data["limit_price"]) for s in steps)
    check_invariants(rig, result)


# -- closes and fractional quantities ---------------------------------------------------


def test_full_close_sells_exactly_the_fractional_broker_position(make_rig):
    """close_type full sells what the broker holds (3.25), not the intent's qty; position ends 0."""
    rig = make_rig(symbols=steady(spread_bps=20), positions={"AAPL": Decimal("3.25")})
    result = run_one(rig, symbol="AAPL", side="sell", quantity="3", close_type="full")

    assert result.state == "VALIDATED"
    assert result.quantity == Decimal("3.25")
    assert result.filled_qty == Decimal("3.25")
    assert rig.broker.positions.get("AAPL", Decimal(0)) == 0
    (before,) = [
        e for e in of_kind(rig, result.order_id, EventKind.POSITION_READ)
        if e.data["phase"] == "before"
    ]  # fmt: skip
    assert before.data["target_qty"] == "3.25"
    steps = limit_steps(rig, result.order_id)
    assert steps
    for step in steps:  # a sell walks down from the ask
        bid, ask = quote_of(step)
        ratio = Decimal(step.data["ratio"])
        assert Decimal(step.data["limit_price"]) == expected_limit(OrderSide.SELL, bid, ask, ratio)
    sold = sum(o.filled_qty for o in rig.broker.orders.values())
    assert sold == Decimal("3.25")
    assert all(o.side is OrderSide.SELL for o in rig.broker.orders.values())
    check_invariants(rig, result)


def test_fractional_multi_step_cancels_then_submits_without_replace(make_rig):
    """A 2.5-share buy walks by cancel, confirm, then a new order; never a replace."""
    rig = make_rig(broker_cls=RecordingSimBroker, **resting())
    result = run_one(rig, symbol="AAPL", side="buy", quantity="2.5")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert result.filled_qty == Decimal("2.5")
    assert result.steps_used > 1
    assert not of_kind(rig, oid, EventKind.REPLACE_INTENT)
    assert not of_kind(rig, oid, EventKind.REPLACE_ACK)
    assert all(o.status is not BrokerOrderStatus.REPLACED for o in rig.broker.orders.values())
    assert all(o.replaces is None for o in rig.broker.orders.values())

    # in the journal: each later submit is preceded by cancel_intent, cancel_ack and the old
    # order's final status, in that order
    log = events(rig, oid)
    submits = [i for i, e in enumerate(log) if e.kind == EventKind.SUBMIT_INTENT]
    assert len(submits) == result.steps_used
    acks = {e.data["client_order_id"]: e.data["broker_order_id"]
            for e in log if e.kind == EventKind.SUBMIT_ACK}  # fmt: skip
    for prev, nxt in itertools.pairwise(submits):
        old_id = acks[log[prev].data["client_order_id"]]
        between = [e for e in log[prev:nxt] if e.data.get("broker_order_id") == old_id]
        kinds = [e.kind for e in between]
        assert EventKind.CANCEL_INTENT in kinds
        assert EventKind.CANCEL_ACK in kinds
        assert EventKind.ORDER_FINAL in kinds
        assert kinds.index(EventKind.CANCEL_INTENT) < kinds.index(EventKind.CANCEL_ACK)
        assert kinds.index(EventKind.CANCEL_ACK) <= kinds.index(EventKind.ORDER_FINAL)
        assert rig.broker.orders[old_id].status is BrokerOrderStatus.CANCELED

    # at the broker: when each new order was sent, no earlier order on the symbol was live
    assert len(rig.broker.live_at_submit) == len(submits)
    assert all(live == [] for _, live in rig.broker.live_at_submit), rig.broker.live_at_submit
    check_invariants(rig, result)


def test_whole_share_multi_step_uses_replace(make_rig):
    """With replace_orders on, a whole-share walk moves between rungs with replace; old
    orders end 'replaced'."""
    rig = make_rig(config=REPLACING, **resting())
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state == "VALIDATED"
    replace_intents = of_kind(rig, oid, EventKind.REPLACE_INTENT)
    replace_acks = of_kind(rig, oid, EventKind.REPLACE_ACK)
    assert len(replace_intents) == 2  # L1 -> L2 -> L3
    assert len(replace_acks) == 2
    assert [step_of(e.data["client_order_id"]) for e in replace_acks] == ["L2-1", "L3-1"]
    submits = of_kind(rig, oid, EventKind.SUBMIT_INTENT)
    assert [step_of(e.data["client_order_id"]) for e in submits] == ["L1-1", "M-1"]
    by_cid = broker_orders_by_cid(rig)
    for intent, ack in zip(replace_intents, replace_acks, strict=True):
        old = rig.broker.orders[intent.data["broker_order_id"]]
        new = rig.broker.orders[ack.data["broker_order_id"]]
        assert old.status is BrokerOrderStatus.REPLACED
        assert old.replaced_by == new.id
        assert new.replaces == old.id == ack.data["replaces"]
        assert by_cid[ack.data["client_order_id"]] is new
        assert new.limit_price == Decimal(intent.data["limit_price"])
    check_invariants(rig, result)


# -- resume ---------------------------------------------------------------------------


class CallLog(RecordingSimBroker):
    """The simulator, noting each re-read and each wait on a broker order, in order."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.calls: list[tuple[str, str]] = []

    async def get_order(self, order_id):
        self.calls.append(("get_order", order_id))
        return await super().get_order(order_id)

    async def open_orders(self):
        self.calls.append(("open_orders", ""))
        if self.listing_fails:
            raise BrokerUnavailable("listing refused for the test")
        listed = await super().open_orders()
        self.calls += [("listed", order.id) for order in listed]
        return listed

    async def wait_for_update(self, order_id, timeout_seconds):
        self.calls.append(("wait_for_update", order_id))
        return await super().wait_for_update(order_id, timeout_seconds)

    listing_fails = False


def crashed_with_four_resting_sells(tmp_path):
    """Four sells, each with its limit order resting at the broker, when the process dies."""
    tmp_path.mkdir(exist_ok=True)
    symbols = dict.fromkeys(
        ("AAPL", "MSFT", "TSLA", "SPY"),
        SymbolSpec(price=Decimal(100), spread_bps=20, volatility_bps=0),
    )
    spec = MarketSpec(**resting(symbols=symbols, positions=dict.fromkeys(symbols, Decimal(5))))
    clock = VirtualClock(START)
    broker = CallLog(spec, clock)
    path = tmp_path / "journal.db"
    orders = [{"symbol": s, "side": "sell", "quantity": "5"} for s in symbols]
    plan = parse_plan({"plan_id": "four", "orders": orders})
    # every sell has its limit order resting when the last one starts waiting on its own
    points = CrashPoints(armed="before_broker.wait_for_update", nth=len(symbols))
    crashing = Engine(broker, path, clock=clock, crash_points=points)
    with pytest.raises(SimulatedCrash):
        crashing.execute_plan_sync(plan)
    crashing.close()
    live = {o.id for o in broker.orders.values() if not o.status.is_terminal}
    assert len(live) == len(symbols)
    broker.calls.clear()
    return broker, clock, path, live


def reread_before_first_wait(broker):
    """The (call, order id) pairs resume made before the first walk waited on its order."""
    first_wait = next(i for i, (call, _) in enumerate(broker.calls) if call == "wait_for_update")
    return broker.calls[:first_wait]


def test_resume_reconciles_every_order_before_walking_any(tmp_path):
    """With one walk at a time, resume re-reads every in-flight order's live order (counting
    its fills) before the first walk waits on its own again: no order's reconcile waits for
    other orders' walks. The four live orders come from one listing of open orders, not a
    read each. Then every order is walked to the end."""
    broker, clock, path, live = crashed_with_four_resting_sells(tmp_path)
    with Engine(broker, path, clock=clock, concurrency=1) as engine:
        report = engine.resume_sync()
        reread = reread_before_first_wait(broker)
        assert reread[0] == ("open_orders", "")
        assert {order_id for call, order_id in reread[1:]} == live
        assert {call for call, _ in reread[1:]} == {"listed"}
        assert all(o.result.state == "VALIDATED" for o in report.orders)
        check_invariants(SimpleNamespace(journal=engine.journal, broker=broker))


def test_resume_reads_on_its_own_an_order_the_listing_leaves_out(tmp_path):
    """A live order that filled while the process was down is not in the listing of open
    orders: resume reads it by id, journals its fills once and the order is validated; a
    listing that fails costs nothing but a read per order."""
    broker, clock, path, live = crashed_with_four_resting_sells(tmp_path)
    filled = sorted(live)[0]
    broker.fill_now(filled)
    with Engine(broker, path, clock=clock, concurrency=1) as engine:
        report = engine.resume_sync()
        reread = reread_before_first_wait(broker)
        assert ("get_order", filled) in reread
        assert {order_id for call, order_id in reread if call == "listed"} == live - {filled}
        assert all(o.result.state == "VALIDATED" for o in report.orders)
        check_invariants(SimpleNamespace(journal=engine.journal, broker=broker))

    broker, clock, path, live = crashed_with_four_resting_sells(tmp_path / "refused")
    broker.listing_fails = True
    with Engine(broker, path, clock=clock, concurrency=1) as engine:
        report = engine.resume_sync()
        reread = reread_before_first_wait(broker)
        assert {order_id for call, order_id in reread if call == "get_order"} == live
        assert all(o.result.state == "VALIDATED" for o in report.orders)


def test_with_replace_orders_off_every_step_cancels_and_places_anew(make_rig):
    """`replace_orders=False`: the same whole-share walk as above never replaces (Alpaca's
    replace is not atomic with fills); each step's order is placed only once the one
    before it is final, and every old order ends `canceled`."""
    rig = make_rig(config=EngineConfig(replace_orders=False), **resting())
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert not of_kind(rig, oid, EventKind.REPLACE_INTENT)
    submits = of_kind(rig, oid, EventKind.SUBMIT_INTENT)
    assert [e.data["step"] for e in submits] == ["L1", "L2", "L3", "M"]
    by_cid = broker_orders_by_cid(rig)
    placed = [by_cid[e.data["client_order_id"]] for e in submits]
    assert [o.status for o in placed[:-1]] == [BrokerOrderStatus.CANCELED] * 3
    assert all(o.replaces is None for o in placed)
    check_invariants(rig, result)
