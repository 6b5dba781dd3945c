"""Dollar orders (issue 17, item 1): a plan order with `notional` instead of `quantity` is
sized at its arrival quote (a buy at the ask, a sell at the bid), in 9-decimal fractions
of a fractionable asset or whole shares, always rounded down; the notional and the sizing
are journaled before anything is sent, and the result sets the notional against the value
traded."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from walk_support import NEVER, check_invariants, events, run_plan, steady

from engine import (
    Engine,
    EngineConfig,
    OrderIntent,
    OrderState,
    PlanStatus,
    RiskLimitBreached,
    SymbolSpec,
    parse_plan,
)
from engine.crash import CrashPoints, SimulatedCrash
from engine.engine import plan_digest
from engine.errors import InvalidPlan
from engine.events import EventKind
from engine.fsm import FailReason

# AAPL at a steady 100 with a 10 bps spread: bid 99.95, ask 100.05
AAPL_BID, AAPL_ASK = Decimal("99.95"), Decimal("100.05")


def market(fractionable: bool = True, **fields: Any) -> dict[str, Any]:
    """Limit orders never fill, so each order walks to market and fills whole at the touch."""
    aapl = SymbolSpec(
        price=Decimal("100"), spread_bps=10, volatility_bps=0, fractionable=fractionable
    )
    spec: dict[str, Any] = {
        "symbols": {"AAPL": aapl},
        "fill_intensity": NEVER,
        "market_partial_probability": 0.0,
    }
    return spec | fields


def created(rig: Any) -> list[dict[str, Any]]:
    return [e.data for e in events(rig) if e.kind == EventKind.CREATED]


def test_a_notional_buy_of_a_fractionable_asset_is_sized_at_the_ask_to_9_decimals(
    make_rig: Any,
) -> None:
    rig = make_rig(**market())
    result = run_plan(rig, {"symbol": "AAPL", "side": "buy", "notional": "1500"})
    (order,) = result.orders
    # 1500 / 100.05 = 14.99250374812..., rounded down to 9 decimal places
    assert order.quantity == Decimal("14.992503748") == order.filled_qty
    assert order.state == OrderState.VALIDATED
    assert order.notional_requested == Decimal("1500")
    assert order.traded_value <= order.notional_requested
    assert result.status is PlanStatus.SUCCESS
    (data,) = created(rig)
    assert data["intent"]["quantity"] == "14.992503748"
    assert "notional" not in data["intent"]
    assert data["notional"] == "1500"
    assert data["sizing"]["method"] == "notional"
    assert (data["sizing"]["price"], data["sizing"]["side_of_book"]) == ("100.05", "ask")
    assert (data["sizing"]["quote"]["bid"], data["sizing"]["quote"]["ask"]) == ("99.95", "100.05")
    check_invariants(rig, result)


def test_a_notional_buy_of_a_whole_share_asset_buys_whole_shares_rounded_down(
    make_rig: Any,
) -> None:
    rig = make_rig(**market(fractionable=False))
    (order,) = run_plan(rig, {"symbol": "AAPL", "side": "buy", "notional": "1500"}).orders
    # 1500 / 100.05 = 14.99...: 14 whole shares, never 15 (which would cost 1500.75)
    assert order.quantity == order.filled_qty == Decimal("14")
    assert rig.broker.positions["AAPL"] == Decimal("14")
    assert order.traded_value == Decimal("14") * AAPL_ASK  # the market order took the ask


def test_a_notional_sell_is_sized_at_the_bid(make_rig: Any) -> None:
    rig = make_rig(**market(fractionable=False, positions={"AAPL": "30"}))
    result = run_plan(rig, {"symbol": "AAPL", "side": "sell", "notional": "1000.50"})
    (order,) = result.orders
    # 1000.50 / 99.95 = 10.0100...: 10 whole shares at the bid
    assert order.quantity == order.filled_qty == Decimal("10")
    assert order.notional_requested == Decimal("1000.5")
    assert rig.broker.positions["AAPL"] == Decimal("20")
    (data,) = created(rig)
    assert (data["sizing"]["price"], data["sizing"]["side_of_book"]) == ("99.95", "bid")
    check_invariants(rig, result)


def test_a_notional_that_buys_no_share_fails_unsent(make_rig: Any) -> None:
    rig = make_rig(**market(fractionable=False))
    result = run_plan(rig, {"symbol": "AAPL", "side": "buy", "notional": "99"})
    (order,) = result.orders
    assert (order.state, order.reason) == (OrderState.FAILED, FailReason.BELOW_MIN_NOTIONAL)
    assert order.detail is not None
    assert "comes to no share at the ask 100.05" in order.detail
    assert (order.quantity, order.filled_qty) == (Decimal(0), Decimal(0))
    assert order.notional_requested == Decimal("99")
    assert result.status is PlanStatus.FAILURE
    assert not order.skipped  # no min_order_notional asked for it: a failure
    assert not rig.broker.orders  # nothing reached the broker
    (data,) = created(rig)
    assert data["intent"]["notional"] == "99"
    assert "quantity" not in data["intent"]
    check_invariants(rig, result)


def test_the_sizing_is_journaled_before_anything_is_sent_and_a_resume_walks_that_size(
    make_rig: Any,
) -> None:
    """Killed right after the order was journaled, then resumed ten minutes later on a
    market that moved: the resumed walk trades the size the arrival quote gave, not one
    sized again at the later quote."""
    jumpy = SymbolSpec(price=Decimal("100"), spread_bps=10, volatility_bps=20)
    rig = make_rig(seed=5, symbols={"AAPL": jumpy}, fill_intensity=NEVER)
    path = rig.journal_path.with_name("crash.db")
    crashing = Engine(
        rig.broker, path, clock=rig.clock, crash_points=CrashPoints(armed="after_append.created")
    )
    plan = parse_plan(
        {"plan_id": "n", "orders": [{"symbol": "AAPL", "side": "buy", "notional": "5000"}]}
    )
    with pytest.raises(SimulatedCrash):
        crashing.execute_plan_sync(plan)
    crashing.close()
    assert not rig.broker.orders
    rig.clock.run(asyncio.sleep(600))
    with Engine(rig.broker, path, clock=rig.clock) as resumed:
        (data,) = [e.data for e in resumed.journal.events() if e.kind == EventKind.CREATED]
        sized = Decimal(data["intent"]["quantity"])
        assert sized == (Decimal(5000) / Decimal(data["sizing"]["price"])).quantize(
            Decimal("1e-9"), rounding="ROUND_FLOOR"
        )
        later = rig.clock.run(rig.broker.latest_quote("AAPL"))
        assert later is not None
        # the market moved: sizing again now would come to another quantity
        assert (Decimal(5000) / later.ask).quantize(Decimal("1e-9"), "ROUND_FLOOR") != sized
        report = resumed.resume_sync()
        (order,) = report.orders
        assert order.result.quantity == order.result.filled_qty == sized
        assert order.result.notional_requested == Decimal("5000")
        # delivered again, the plan is the journaled one: nothing more is sent
        placed = len(rig.broker.orders)
        again = resumed.execute_plan_sync(plan)
        assert [o.order_id for o in again.orders] == [order.order_id]
        assert len(rig.broker.orders) == placed


def test_a_notional_order_through_the_api_and_its_risk_limit_is_costed_as_sized(
    make_rig: Any,
) -> None:
    """`Engine.execute` takes a dollar intent; the sized order meets the limits as any order
    (the notional 1500 comes to 1499.99 at the ask, above a 1000 max_order_notional)."""
    rig = make_rig(config=EngineConfig(max_order_notional=Decimal(1000)), **market())
    intent = OrderIntent.build(symbol="AAPL", side="buy", notional="1500")
    with pytest.raises(RiskLimitBreached, match="max_order_notional"):
        rig.engine.execute_sync(intent, plan_id="api")
    assert not rig.broker.orders
    small = rig.engine.execute_sync(OrderIntent.build(symbol="AAPL", side="buy", notional="900"))
    assert small.notional_requested == Decimal("900")
    assert small.filled_qty == Decimal("8.995502248")  # 900 / 100.05, rounded down


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"quantity": "1", "notional": "100"}, "orders.0: give quantity (shares) or notional"),
        ({}, "orders.0: give quantity (shares) or notional (dollars)"),
        ({"notional": "100.001"}, "notional 100.001 has more than 2 decimal places"),
        ({"notional": "0"}, "notional must be greater than zero"),
        ({"notional": "-5"}, "notional must be greater than zero"),
        ({"notional": "1e3"}, "plain decimal notation"),
        ({"notional": True}, "notional must be a number, got a boolean"),
        ({"notional": "5", "side": "sell", "close_type": "full"}, "give no notional"),
    ],
)
def test_a_bad_dollar_order_is_refused_in_one_line(line: dict[str, Any], message: str) -> None:
    order = {"symbol": "AAPL", "side": "buy"} | line
    with pytest.raises(InvalidPlan) as refused:
        parse_plan({"plan_id": "p", "orders": [order]})
    assert message in refused.value.message
    assert "\n" not in refused.value.message


def test_a_plan_without_notional_keeps_the_digest_it_had_before_it() -> None:
    """A plan journaled before dollar orders and target plans existed, delivered again, is
    the same plan: neither `notional` nor `targets` is written when unset."""
    plan = parse_plan(
        {"plan_id": "p", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": 1}]}
    )
    dumped = plan.model_dump(mode="json")
    assert set(dumped) == {"plan_id", "orders"}
    assert "notional" not in dumped["orders"][0]
    # the digest of this plan as every walkbook before `strategies` computed it
    assert plan_digest(plan) == "d3b7287ee22b6e0878b18b21f413620a49f1bcc47a608f256a2872f837caf364"


def test_steady_helper_prices_match_the_hand_figures(make_rig: Any) -> None:
    """The figures above assume AAPL quotes 99.95 / 100.05."""
    rig = make_rig(symbols=steady(spread_bps=10))
    quote = rig.clock.run(rig.broker.latest_quote("AAPL"))
    assert (quote.bid, quote.ask) == (AAPL_BID, AAPL_ASK)


def test_a_dollar_order_retried_after_market_closed_keeps_its_size_and_notional(
    make_rig: Any,
) -> None:
    """Delivered while the market is closed, the order fails unsent; delivered again once it
    opens, the new attempt walks the size the first came to and still reports its notional."""
    rig = make_rig(**market(opens_in_seconds=60))
    plan = parse_plan(
        {"plan_id": "dca", "orders": [{"symbol": "AAPL", "side": "buy", "notional": "1500"}]}
    )
    (closed,) = rig.engine.execute_plan_sync(plan).orders
    assert (closed.state, closed.reason) == (OrderState.FAILED, FailReason.MARKET_CLOSED)
    rig.clock.run(asyncio.sleep(120))
    (retried,) = rig.engine.execute_plan_sync(plan).orders
    assert retried.order_id != closed.order_id
    assert retried.state == OrderState.VALIDATED
    assert retried.filled_qty == closed.quantity == Decimal("14.992503748")
    assert retried.notional_requested == Decimal("1500")
