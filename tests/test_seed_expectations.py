"""What the original system's own tests expected and walkbook missed (../shared/seeds/):
corrupt and unbelievable quotes, and a broker that answers "not found" for an order
walkbook placed. The faults come from the simulator's own knobs (a symbol's `stream_quote`,
`rest_quote` and `order_lookup`), and from a broker wrapper only where a knob fixed for the
whole run cannot stage it (a spread that jumps after a few quotes).
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from walk_support import REPLACING, check_invariants, resting, steady

from engine import InvalidIntent, Quote, SimBroker, parse_plan
from engine.broker import BrokerOrder
from engine.errors import OrderNotFound
from engine.events import EventKind

BUY = {"symbol": "AAPL", "side": "buy", "quantity": "10"}


class SpreadJumpBroker(SimBroker):
    """The simulator, its AAPL quotes replaced from some moment on: the one fault here the
    market spec's quote knobs (fixed for a whole run) cannot stage."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.jump: dict[str, tuple[str, str]] = {}

    async def stream_quote(self, symbol: str, wait_seconds: float) -> Quote | None:
        return self._jumped(await super().stream_quote(symbol, wait_seconds), "stream")

    async def latest_quote(self, symbol: str) -> Quote | None:
        return self._jumped(await super().latest_quote(symbol), "rest")

    def _jumped(self, quote: Quote | None, source: str) -> Quote | None:
        if quote is None or source not in self.jump:
            return quote
        bid, ask = self.jump[source]
        return replace(quote, bid=Decimal(bid), ask=Decimal(ask))


def first_limit_price(rig: Any) -> Decimal | None:
    for event in rig.journal.events():
        if event.kind == EventKind.SUBMIT_INTENT and event.data["order_type"] == "limit":
            return Decimal(event.data["limit_price"])
    return None


def quoted(make_rig: Any, stream: tuple[str, str], rest: tuple[str, str]) -> tuple[Any, Any]:
    """One AAPL buy walked on a simulator whose stream and REST show these quotes (the
    market spec's quote knobs); the rig and the plan's result."""
    aapl = steady()["AAPL"].model_copy(
        update={
            "stream_quote": tuple(map(Decimal, stream)),
            "rest_quote": tuple(map(Decimal, rest)),
        }
    )
    rig = make_rig(**resting(symbols={"AAPL": aapl}))
    return rig, rig.engine.execute_plan_sync(parse_plan({"plan_id": "p1", "orders": [BUY]}))


def test_a_negative_bid_everywhere_is_corrupt_not_a_missing_side(make_rig):
    rig, result = quoted(make_rig, ("-100", "100.50"), ("-100", "100.50"))
    (order,) = result.orders
    assert (order.state, order.reason) == ("FAILED", "no_quote")
    assert not rig.broker.orders  # nothing priced from it, nothing sent
    assert result.quote_counters["corrupt"] >= 2


def test_a_corrupt_stream_quote_falls_back_to_a_good_rest_quote(make_rig):
    rig, _ = quoted(make_rig, ("-1.00", "100.50"), ("100.00", "100.50"))
    assert first_limit_price(rig) == Decimal("100.38")  # 100 + 0.75 * 0.50, from REST


def test_an_unbelievable_stream_spread_is_confirmed_from_rest_and_priced_from_it(make_rig):
    rig, result = quoted(make_rig, ("100", "120"), ("100.00", "100.50"))
    assert first_limit_price(rig) == Decimal("100.38")  # never 115, 14.50 above the real ask
    assert result.quote_counters["suspicious_spread"] >= 1


def test_an_unbelievable_spread_nobody_confirms_is_never_priced(make_rig):
    """REST is as wide, around another price: the sources disagree, nothing is priced."""
    rig, result = quoted(make_rig, ("100", "120"), ("150", "170"))
    assert (result.orders[0].state, result.orders[0].reason) == ("FAILED", "no_quote")
    assert not rig.broker.orders


def test_a_wide_book_both_sources_show_is_believed(make_rig):
    rig, result = quoted(make_rig, ("100", "120"), ("100.10", "119.90"))
    assert first_limit_price(rig) == Decimal("115")
    assert result.quote_counters["confirmed_by_other_source"] >= 1


def test_a_spread_far_wider_than_the_symbol_s_recent_ones_needs_confirming(make_rig):
    """A spread of 6% is believable for an unknown symbol, not for one that has traded at
    10 bps all along: after a few quotes, the jump is checked against REST."""
    rig = make_rig(broker_cls=SpreadJumpBroker, **resting())
    for plan_id in ("warm-1", "warm-2"):
        rig.engine.execute_plan_sync(parse_plan({"plan_id": plan_id, "orders": [BUY]}))
    rig.broker.jump = {"stream": ("97", "103"), "rest": ("99.95", "100.05")}
    rig.engine.execute_plan_sync(parse_plan({"plan_id": "p3", "orders": [BUY]}))
    intents = [e for e in rig.journal.events(plan_id="p3") if e.kind == EventKind.SUBMIT_INTENT]
    assert Decimal(intents[0].data["limit_price"]) < Decimal("100.05")


# -- a broker that loses an order ---------------------------------------------------------


def two_symbols(aapl_lookup: str) -> dict[str, Any]:
    """AAPL whose orders the simulator answers "not found" for (`order_lookup`), and MSFT."""
    aapl = steady()["AAPL"].model_copy(update={"order_lookup": aapl_lookup})
    return {"AAPL": aapl, "MSFT": steady("300")["AAPL"]}


PLAN = {"plan_id": "p1", "orders": [BUY, {"symbol": "MSFT", "side": "buy", "quantity": "3"}]}


def test_a_404_for_a_placed_order_fails_that_order_and_the_plan_goes_on(make_rig):
    rig = make_rig(**resting(symbols=two_symbols("not_found")))
    result = rig.engine.execute_plan_sync(parse_plan(PLAN))
    by_symbol = {o.symbol: o for o in result.orders}
    assert (by_symbol["AAPL"].state, by_symbol["AAPL"].reason) == ("FAILED", "order_not_found")
    assert by_symbol["MSFT"].state == "VALIDATED"
    finals = [e.data for e in rig.journal.events() if e.kind == EventKind.ORDER_FINAL]
    assert any(d["status"] == "not_found" for d in finals)
    assert rig.engine.resume_sync().nothing_in_flight


def test_a_404_by_id_with_the_order_found_by_client_id_walks_on(make_rig):
    rig = make_rig(**resting(symbols=two_symbols("not_found_by_id")))
    result = rig.engine.execute_plan_sync(parse_plan(PLAN))
    assert {o.symbol: o.state for o in result.orders} == {"AAPL": "VALIDATED", "MSFT": "VALIDATED"}
    check_invariants(rig)


# -- a fractional position in a whole-share asset --------------------------------------------


def whole_share(position: str) -> dict[str, Any]:
    symbol = steady()["AAPL"].model_copy(update={"fractionable": False})
    return resting(symbols={"AAPL": symbol}, positions={"AAPL": Decimal(position)})


@pytest.mark.parametrize("position", ["0.1", "0.3", "0.5", "0.9", "1.3", "2.7"])
@pytest.mark.parametrize("written", ["position", "1"])
def test_a_full_close_sells_the_fraction_through_close_position(
    make_rig: Any, position: str, written: str
) -> None:
    """The fraction goes through the close-position route (a plain fractional order on a
    whole-share asset is refused by the broker), the whole shares walk; both journaled."""
    rig = make_rig(**whole_share(position))
    quantity = position if written == "position" else written
    close = {"symbol": "AAPL", "side": "sell", "quantity": quantity, "close_type": "full"}
    (order,) = rig.engine.execute_plan_sync(parse_plan({"plan_id": "c", "orders": [close]})).orders
    assert order.state == "VALIDATED", order
    assert order.filled_qty == Decimal(position)
    assert rig.broker.positions.get("AAPL", Decimal(0)) == 0
    intents = [e.data for e in rig.journal.events() if e.kind == EventKind.SUBMIT_INTENT]
    assert intents[0]["order_type"] == "close_position"
    assert Decimal(intents[0]["qty"]) == Decimal(position) % 1
    assert all(Decimal(i["qty"]) == Decimal(i["qty"]).to_integral_value() for i in intents[1:])
    check_invariants(rig)


def test_a_plain_fractional_sell_of_a_whole_share_asset_is_refused_by_the_broker(make_rig):
    """Why the route exists: the simulator, like Alpaca, refuses the plain order."""
    rig = make_rig(**whole_share("0.3"))
    sell = {"symbol": "AAPL", "side": "sell", "quantity": "0.3"}
    with pytest.raises(InvalidIntent, match="not fractionable"):
        rig.engine.execute_plan_sync(parse_plan({"plan_id": "s", "orders": [sell]}))


def test_a_step_whose_price_equals_the_resting_order_s_keeps_it(make_rig):
    """On a one-tick spread every ratio rounds to the same price: the steps keep the resting
    order instead of a replace that changes nothing (which Alpaca refuses with 403)."""
    rig, result = quoted(make_rig, ("100.00", "100.01"), ("100.00", "100.01"))
    (order,) = result.orders
    assert order.state == "VALIDATED"
    kinds = [e.kind for e in rig.journal.events()]
    assert kinds.count(EventKind.REPLACE_INTENT) == 0
    limits = [o for o in rig.broker.orders.values() if o.order_type == "limit"]
    assert len(limits) == 1  # one limit order rested through all three steps
    assert order.steps_used == 4  # three limit steps and the market step


class ReplaceLosesOrders(SimBroker):
    """Answers a replace with "not found" (the order a walk replaces lost at the broker
    between its read and its replace: no knob of a whole run stages that instant)."""

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        raise OrderNotFound(f"order {order_id} not found", order_id=order_id)


def test_a_404_to_a_replace_fails_the_order_never_escapes_the_plan(make_rig):
    rig = make_rig(broker_cls=ReplaceLosesOrders, config=REPLACING, **resting())
    result = rig.engine.execute_plan_sync(parse_plan({"plan_id": "p1", "orders": [BUY]}))
    (order,) = result.orders
    assert (order.state, order.reason) == ("FAILED", "order_not_found")
    refused = [e.data for e in rig.journal.events() if e.kind == EventKind.REJECTED]
    assert [r["reason"] for r in refused] == ["order_not_found"]
