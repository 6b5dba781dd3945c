"""Rebalance plans: sells before buys, buying power, exactly once per plan_id, hooks, bad input."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from structlog.testing import capture_logs
from walk_support import check_invariants, of_kind, resting, run_plan, steady

from engine import (
    Engine,
    EngineConfig,
    InvalidIntent,
    InvalidPlan,
    OrderFilled,
    OrderTransitioned,
    PlanCompleted,
    PlanStatus,
    SimBroker,
    SymbolSpec,
    parse_plan,
)
from engine.crash import CrashPoints, SimulatedCrash
from engine.events import EventKind
from journal import Journal

BOOK = {
    "AAPL": SymbolSpec(price=Decimal("100"), spread_bps=20, volatility_bps=0),
    "MSFT": SymbolSpec(price=Decimal("50"), spread_bps=20, volatility_bps=0),
    "TSLA": SymbolSpec(price=Decimal("200"), spread_bps=20, volatility_bps=0),
    "NVDA": SymbolSpec(price=Decimal("120"), spread_bps=20, volatility_bps=0),
}
MIXED = [
    {"symbol": "TSLA", "side": "sell", "quantity": "5"},
    {"symbol": "AAPL", "side": "buy", "quantity": "8"},
    {"symbol": "MSFT", "side": "sell", "quantity": "10", "close_type": "full"},
    {"symbol": "NVDA", "side": "buy", "quantity": "6"},
]


def mixed_rig(make_rig: Any, **spec: Any) -> Any:
    market = {"symbols": BOOK, "positions": {"TSLA": 5, "MSFT": 10}, "fill_intensity": 0.05}
    return make_rig(**(market | spec))


def journal_events(rig: Any) -> list[Any]:
    return list(rig.journal.events())


# -- plan execution -------------------------------------------------------------------


def test_every_buy_is_sent_after_every_sell_is_final(make_rig: Any) -> None:
    """Proven from the journal: the first buy submit follows the last sell's terminal state."""
    rig = mixed_rig(make_rig, partial_fill_probability=0.8)
    result = run_plan(rig, *MIXED)
    assert result.status is PlanStatus.SUCCESS
    side = {o.order_id: o.side.value for o in result.orders}
    events = journal_events(rig)
    sells_final = [
        e for e in events if side.get(str(e.order_id)) == "sell" and e.to_state == "VALIDATED"
    ]
    buy_submits = [
        e for e in events if side.get(str(e.order_id)) == "buy" and e.kind == "submit_intent"
    ]
    assert len(sells_final) == 2
    assert buy_submits
    assert max(e.seq for e in sells_final) < min(e.seq for e in buy_submits)
    assert max(e.at_datetime for e in sells_final) <= min(e.at_datetime for e in buy_submits)
    check_invariants(rig, result)


def test_cash_released_by_multi_step_partial_sells_pays_for_the_buy(make_rig: Any) -> None:
    """No cash to start: the buy fits only if every step's partial sell fills are counted."""
    rig = make_rig(
        seed=8,
        symbols=steady(spread_bps=20) | {"TSLA": BOOK["TSLA"]},
        cash=Decimal(0),
        positions={"TSLA": 10},
        fill_intensity=0.1,
        partial_fill_probability=1.0,
    )
    result = run_plan(
        rig,
        {"symbol": "TSLA", "side": "sell", "quantity": "10"},
        {"symbol": "AAPL", "side": "buy", "quantity": "18"},
    )
    sell, buy = result.orders
    sell_orders = {e.data["broker_order_id"] for e in of_kind(rig, sell.order_id, EventKind.FILL)}
    assert len(sell_orders) >= 2  # the sell filled across several broker orders (steps)
    assert sell.state == "VALIDATED"
    assert buy.state == "VALIDATED"
    assert buy.filled_qty == Decimal(18)
    assert result.cash_released == result.sold_value
    assert result.sold_value == (sell.filled_qty * sell.avg_fill_price).quantize(Decimal("0.01"))
    assert result.sold_value > result.bought_value * Decimal("0.99")
    check_invariants(rig, result)


@pytest.mark.parametrize("policy", ["fail", "shrink"])
def test_buy_beyond_buying_power_fails_or_shrinks_by_configuration(
    make_rig: Any, policy: str
) -> None:
    rig = make_rig(
        config=EngineConfig(insufficient_funds=policy),
        symbols=steady(spread_bps=20),
        cash=Decimal(450),
        fill_intensity=1e9,
    )
    result = run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "10"})
    (order,) = result.orders
    assert order.requested_qty == Decimal(10)
    if policy == "fail":
        assert order.state == "FAILED"
        assert order.reason == "insufficient_funds"
        assert not of_kind(rig, order.order_id, EventKind.SUBMIT_INTENT)  # nothing was sent
        assert result.status is PlanStatus.FAILURE
    else:
        (resized,) = of_kind(rig, order.order_id, EventKind.RESIZED)
        assert Decimal(resized.data["qty"]) == order.quantity == Decimal(4)  # 450 / 100.6
        assert order.resized
        assert order.state == "VALIDATED"
        assert order.filled_qty == Decimal(4)
        assert rig.broker.positions["AAPL"] == Decimal(4)
        assert result.status is PlanStatus.PARTIAL_SUCCESS
    check_invariants(rig, result)


def test_buys_share_the_buying_power_in_plan_order(make_rig: Any) -> None:
    """Two buys that each fit alone but not together: the second one fails, unsent."""
    rig = make_rig(symbols=BOOK, cash=Decimal(1_500), fill_intensity=1e9)
    result = run_plan(
        rig,
        {"symbol": "AAPL", "side": "buy", "quantity": "10"},
        {"symbol": "NVDA", "side": "buy", "quantity": "10"},
    )
    first, second = result.orders
    assert first.state == "VALIDATED"
    assert (second.state, second.reason) == ("FAILED", "insufficient_funds")
    assert not of_kind(rig, second.order_id, EventKind.SUBMIT_INTENT)
    assert {o.symbol for o in rig.broker.orders.values()} == {"AAPL"}


def test_market_closed_sends_nothing_and_says_so(make_rig: Any) -> None:
    rig = mixed_rig(make_rig, market_open=False)
    result = run_plan(rig, *MIXED)
    assert {(o.state, o.reason) for o in result.orders} == {("FAILED", "market_closed")}
    assert result.status is PlanStatus.FAILURE
    assert not rig.broker.orders


def test_wait_for_open_waits_for_the_next_open_then_trades(make_rig: Any) -> None:
    rig = make_rig(
        config=EngineConfig(wait_for_open=True),
        symbols=steady(spread_bps=20),
        opens_in_seconds=600,
        fill_intensity=1e9,
    )
    start = rig.clock.now()
    result = run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "3"})
    (order,) = result.orders
    assert order.state == "VALIDATED"
    (first_submit,) = of_kind(rig, order.order_id, EventKind.SUBMIT_INTENT)
    assert (first_submit.at_datetime - start).total_seconds() >= 600


def test_wait_for_open_gives_up_beyond_its_limit(make_rig: Any) -> None:
    rig = make_rig(
        config=EngineConfig(wait_for_open=True, max_wait_for_open_seconds=60),
        symbols=steady(spread_bps=20),
        opens_in_seconds=600,
    )
    (order,) = run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "3"}).orders
    assert (order.state, order.reason) == ("FAILED", "market_closed")
    assert not rig.broker.orders


# -- exactly once per plan_id -----------------------------------------------------------


def test_completed_plan_delivered_again_returns_its_result_and_trades_nothing(
    make_rig: Any,
) -> None:
    rig = mixed_rig(make_rig)
    first = run_plan(rig, *MIXED)
    events_before, orders_before = rig.journal.last_seq, dict(rig.broker.orders)
    again = run_plan(rig, *MIXED)
    assert again.orders == first.orders
    assert again.status is first.status
    assert rig.journal.last_seq == events_before
    assert rig.broker.orders == orders_before


def test_completed_plan_delivered_to_a_new_process_returns_the_journaled_result(
    make_rig: Any,
) -> None:
    rig = mixed_rig(make_rig)
    first = run_plan(rig, *MIXED)
    seq, sent = rig.journal.last_seq, dict(rig.broker.orders)
    rig.engine.close()
    rig.engine = Engine(rig.broker, rig.journal_path, clock=rig.clock)
    again = run_plan(rig, *MIXED)
    assert again.orders == first.orders
    assert rig.journal.last_seq == seq  # nothing journaled
    assert rig.broker.orders == sent  # nothing sent


def test_half_done_plan_delivered_again_continues_without_duplicates(make_rig: Any) -> None:
    rig = mixed_rig(make_rig, partial_fill_probability=0.7)
    rig.engine.close()
    rig.engine = Engine(
        rig.broker,
        rig.journal_path,
        clock=rig.clock,
        crash_points=CrashPoints(armed="after_broker.submit_order", nth=3),
    )
    with pytest.raises(SimulatedCrash):
        run_plan(rig, *MIXED)
    in_flight = [r for r in rig.journal.orders() if r["state"] not in ("VALIDATED", "FAILED")]
    assert in_flight
    rig.engine.close()
    rig.engine = Engine(rig.broker, rig.journal_path, clock=rig.clock)
    result = run_plan(rig, *MIXED)
    assert result.status is PlanStatus.SUCCESS
    assert len(result.orders) == len(MIXED)
    check_invariants(rig, result)


def test_same_plan_id_with_other_contents_is_refused_and_nothing_journaled(
    make_rig: Any,
) -> None:
    rig = mixed_rig(make_rig)
    run_plan(rig, *MIXED)
    seq = rig.journal.last_seq
    changed = [dict(MIXED[0], quantity="4"), *MIXED[1:]]
    with pytest.raises(InvalidPlan, match="different contents"):
        run_plan(rig, *changed)
    assert rig.journal.last_seq == seq


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ({"symbol": "GONE", "side": "buy", "quantity": "1"}, "unknown symbol"),
        ({"symbol": "HALT", "side": "buy", "quantity": "1"}, "not tradable"),
        ({"symbol": "TSLA", "side": "sell", "quantity": "6"}, "exceeds the position of 5"),
        ({"symbol": "WHOLE", "side": "buy", "quantity": "1.5"}, "not fractionable"),
    ],
)
def test_bad_order_refuses_the_whole_plan_by_default(
    make_rig: Any, order: dict[str, str], message: str
) -> None:
    rig = bad_input_rig(make_rig)
    with pytest.raises(InvalidIntent, match=message) as refused:
        run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "2"}, order)
    assert "order 1 (" in refused.value.message  # names the order
    assert rig.journal.last_seq == 0
    assert not rig.broker.orders


def test_each_plan_reports_its_own_quotes(make_rig: Any) -> None:
    """Two plans on one engine: each result counts the quotes its own orders took (the
    engine's counters are their sum), not everything the engine did since it started."""
    rig = mixed_rig(make_rig, stream_gap_probability=0.5)
    first = run_plan(rig, *MIXED, plan_id="first")
    second = run_plan(rig, {"symbol": "AAPL", "side": "buy", "quantity": "1"}, plan_id="second")
    total = rig.engine.quotes.counters.as_dict()
    assert {k: first.quote_counters[k] + second.quote_counters[k] for k in total} == total
    for result in (first, second):
        taken = result.quote_counters["streaming_success"] + result.quote_counters["rest_fallback"]
        assert taken >= len(result.orders)
    assert 0 < sum(second.quote_counters.values()) < sum(total.values())


def test_a_finished_plans_quote_counts_leave_with_its_result(make_rig: Any) -> None:
    """An embedding runs plans for months: once a plan has finished and its result carries
    its quote counts, the engine keeps nothing for it, and a redelivery of the finished
    plan (answered from the journal, no quote taken) counts none."""
    rig = mixed_rig(make_rig)
    first = run_plan(rig, *MIXED, plan_id="first")
    assert sum(first.quote_counters.values()) >= len(first.orders)
    assert dict(rig.engine.context.plan_quotes) == {}
    again = run_plan(rig, *MIXED, plan_id="first")
    assert [o.order_id for o in again.orders] == [o.order_id for o in first.orders]
    assert sum(again.quote_counters.values()) == 0
    assert dict(rig.engine.context.plan_quotes) == {}


def bad_input_rig(make_rig: Any, config: EngineConfig | None = None) -> Any:
    symbols = BOOK | {
        "HALT": SymbolSpec(price=Decimal(10), tradable=False),
        "WHOLE": SymbolSpec(price=Decimal(10), fractionable=False),
    }
    return make_rig(
        config=config,
        symbols=symbols,
        unknown_symbols=["GONE"],
        positions={"TSLA": 5},
        fill_intensity=1e9,
    )


def test_every_bad_order_is_named_in_one_refusal(make_rig: Any) -> None:
    rig = bad_input_rig(make_rig)
    with pytest.raises(InvalidIntent) as refused:
        run_plan(
            rig,
            {"symbol": "GONE", "side": "buy", "quantity": "1"},
            {"symbol": "AAPL", "side": "buy", "quantity": "2"},
            {"symbol": "HALT", "side": "buy", "quantity": "1"},
        )
    assert refused.value.fields["orders"] == [0, 2]
    assert "order 0 (GONE" in refused.value.message
    assert "order 2 (HALT" in refused.value.message


def test_skip_invalid_fails_only_the_bad_orders_unsent(make_rig: Any) -> None:
    rig = bad_input_rig(make_rig, EngineConfig(validation="skip_invalid"))
    result = run_plan(
        rig,
        {"symbol": "GONE", "side": "buy", "quantity": "1"},
        {"symbol": "AAPL", "side": "buy", "quantity": "2"},
    )
    bad, good = result.orders
    assert (bad.state, bad.reason) == ("FAILED", "invalid_intent")
    assert good.state == "VALIDATED"
    assert {o.symbol for o in rig.broker.orders.values()} == {"AAPL"}
    assert result.status is PlanStatus.PARTIAL_SUCCESS
    check_invariants(rig, result)


def test_fractional_qty_of_whole_share_asset_rounds_down_when_configured(
    make_rig: Any,
) -> None:
    rig = bad_input_rig(make_rig, EngineConfig(fractional_on_whole_share_asset="round_down"))
    with capture_logs() as logs:
        result = run_plan(rig, {"symbol": "WHOLE", "side": "buy", "quantity": "2.7"})
    (order,) = result.orders
    assert order.quantity == Decimal(2)
    assert order.filled_qty == Decimal(2)
    (warning,) = [log for log in logs if log["event"] == "intent.rounded_down"]
    assert warning["log_level"] == "warning"
    assert (warning["requested"], warning["qty"]) == ("2.7", "2")
    # the journal keeps what was asked for beside what was sent
    (created,) = [e for e in rig.journal.events() if e.kind == "created"]
    assert (created.data["requested_qty"], created.data["intent"]["quantity"]) == ("2.7", "2")


def test_an_unrounded_order_journals_no_requested_qty(make_rig: Any) -> None:
    rig = bad_input_rig(make_rig, EngineConfig(fractional_on_whole_share_asset="round_down"))
    run_plan(rig, {"symbol": "WHOLE", "side": "buy", "quantity": "2"})
    (created,) = [e for e in rig.journal.events() if e.kind == "created"]
    assert "requested_qty" not in created.data


def test_partial_sell_beyond_the_position_sends_nothing(make_rig: Any) -> None:
    rig = mixed_rig(make_rig)
    with pytest.raises(InvalidIntent, match="exceeds the position"):
        run_plan(
            rig, {"symbol": "TSLA", "side": "sell", "quantity": "5.5", "close_type": "partial"}
        )
    assert not rig.broker.orders


# -- hooks ------------------------------------------------------------------------------


def test_hooks_fire_once_per_event_after_the_commit(make_rig: Any) -> None:
    rig = mixed_rig(make_rig, partial_fill_probability=0.8)
    seen: list[tuple[str, int]] = []
    completed: list[Any] = []

    def committed(notice: OrderTransitioned | OrderFilled) -> None:
        # the fact behind the notice is already in the file, read by another connection
        with Journal.open_readonly(rig.journal_path) as reader:
            (event,) = [e for e in reader.events(after_seq=notice.seq - 1) if e.seq == notice.seq]
        assert event.order_id == notice.order_id
        seen.append((type(notice).__name__, notice.seq))

    rig.engine.subscribe(OrderTransitioned, committed)
    rig.engine.subscribe(OrderFilled, committed)
    rig.engine.subscribe(PlanCompleted, completed.append)
    result = run_plan(rig, *MIXED)

    events = journal_events(rig)
    transitions = [e.seq for e in events if e.kind == EventKind.TRANSITION]
    fills = [e.seq for e in events if e.kind == EventKind.FILL]
    assert sorted(s for k, s in seen if k == "OrderTransitioned") == transitions
    assert sorted(s for k, s in seen if k == "OrderFilled") == fills
    assert len(seen) == len(set(seen))
    assert [c.result for c in completed] == [result]


def test_a_hook_that_raises_is_logged_and_changes_nothing(make_rig: Any) -> None:
    rig = mixed_rig(make_rig)

    def broken(notice: OrderFilled) -> None:
        raise RuntimeError("orchestrator bug")

    rig.engine.subscribe(OrderFilled, broken)
    with capture_logs() as logs:
        result = run_plan(rig, *MIXED)
    assert result.status is PlanStatus.SUCCESS
    failures = [log for log in logs if log["event"] == "hook.failed"]
    assert len(failures) == len(of_kind_all(rig, EventKind.FILL))
    assert "orchestrator bug" in failures[0]["error"]
    check_invariants(rig, result)


def of_kind_all(rig: Any, kind: str) -> list[Any]:
    return [e for e in journal_events(rig) if e.kind == kind]


def test_log_lines_carry_order_plan_and_correlation_ids(make_rig: Any) -> None:
    rig = make_rig(**resting())
    with capture_logs() as logs:
        rig.engine.execute_plan_sync(
            parse_plan(
                {
                    "plan_id": "ctx",
                    "orders": [
                        {"symbol": "AAPL", "side": "buy", "quantity": "1", "correlation_id": "c-7"}
                    ],
                }
            )
        )
    order_lines = [log for log in logs if log["event"].startswith("order.")]
    assert order_lines
    for line in order_lines:
        assert line["plan_id"] == "ctx"
        assert line["correlation_id"] == "c-7"
        assert line["order_id"].startswith("o")


# -- the acceptance run ----------------------------------------------------------


def test_thirty_order_rebalance_is_truthful_and_delivered_twice_trades_once(
    make_rig: Any,
) -> None:
    """Mixed sells and buys with partial fills and one buy the account cannot afford."""
    symbols = {f"S{i:02d}": SymbolSpec(price=Decimal(20 + i), spread_bps=15) for i in range(30)}
    positions = {f"S{i:02d}": 40 for i in range(12)}
    rig = make_rig(
        seed=4,
        symbols=symbols,
        positions=positions,
        cash=Decimal(12_000),
        fill_intensity=0.04,
        partial_fill_probability=0.7,
    )
    orders = [{"symbol": f"S{i:02d}", "side": "sell", "quantity": "25"} for i in range(12)]
    orders += [{"symbol": f"S{i:02d}", "side": "buy", "quantity": "20"} for i in range(12, 29)]
    orders.append({"symbol": "S29", "side": "buy", "quantity": "5000"})  # cannot be afforded
    result = run_plan(rig, *orders, plan_id="rebalance-30")

    by_symbol = {o.symbol: o for o in result.orders}
    assert (by_symbol["S29"].state, by_symbol["S29"].reason) == ("FAILED", "insufficient_funds")
    assert all(by_symbol[f"S{i:02d}"].state == "VALIDATED" for i in range(29))
    assert result.status is PlanStatus.PARTIAL_SUCCESS
    partial = [e for e in journal_events(rig) if e.kind == EventKind.FILL and
               Decimal(e.data["cum_qty"]) < Decimal(20)]  # fmt: skip
    assert partial  # some fills were partial
    check_invariants(rig, result)

    seq, sent = rig.journal.last_seq, len(rig.broker.orders)
    again = run_plan(rig, *orders, plan_id="rebalance-30")
    assert again.orders == result.orders
    assert (rig.journal.last_seq, len(rig.broker.orders)) == (seq, sent)


class PositionReads(SimBroker):
    """The simulator, counting the position reads each kind of call makes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.reads: list[str] = []

    async def get_position(self, symbol: str) -> Decimal:
        self.reads.append(f"one {symbol}")
        return await super().get_position(symbol)

    async def get_positions(self) -> dict[str, Decimal]:
        self.reads.append("all")
        return await super().get_positions()


def test_preflight_reads_every_position_once_for_all_its_sells(make_rig: Any) -> None:
    """Three partial sells are checked against one read of every position, not one read
    each (issue 16); a sell beyond its position is still refused."""
    positions = {"TSLA": 5, "AAPL": 8, "NVDA": 6}
    rig = make_rig(broker_cls=PositionReads, symbols=BOOK, positions=positions)
    sells = [{"symbol": s, "side": "sell", "quantity": "2"} for s in positions]
    checked = rig.clock.run(rig.engine.preflight(parse_plan({"plan_id": "p", "orders": sells})))
    assert not checked.problems
    assert rig.broker.reads == ["all"]
    beyond = [{"symbol": "TSLA", "side": "sell", "quantity": "6"}]
    with pytest.raises(InvalidIntent, match="exceeds the position of 5"):
        rig.clock.run(rig.engine.preflight(parse_plan({"plan_id": "q", "orders": beyond})))
