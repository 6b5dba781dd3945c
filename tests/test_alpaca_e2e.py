"""The engine on AlpacaBroker through the real alpaca-py SDK, over HTTP and websockets, against
walkbook's sim-server on 127.0.0.1: fills over trade_updates, replace, cancel/new, quotes."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path

import msgpack
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderSide as SdkSide
from alpaca.trading.enums import OrderStatus, OrderType, TimeInForce
from alpaca.trading.models import Order as SdkOrder
from alpaca.trading.requests import ReplaceOrderRequest, StopOrderRequest
from alpaca_support import EAGER, KEYS, NEVER, REPLACING, RESTING, acks, alpaca_rig, market
from websockets.sync.client import connect

from engine import BrokerRejected, OrderSide, OrderState, SymbolSpec, UnknownSymbol
from engine.broker import OrderRequest
from engine.brokers.alpaca import InsufficientBuyingPower, SubPennyPrice
from engine.brokers.alpaca.broker import OPEN_ORDERS_PER_PAGE
from engine.brokers.simserver import FaultSpec
from engine.errors import DuplicateClientOrderId, NotReplaceable, OrderNotFound
from engine.events import EventKind


def test_submit_fills_over_trade_updates_without_polling(tmp_path: Path) -> None:
    """A resting limit order fills at the simulator's next tick; trade_updates reports it and
    the walk never reads the order's status over REST."""
    with alpaca_rig(tmp_path, market(EAGER), config=RESTING) as rig:
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "10"})
        rig.check(result)
        counters = rig.broker.counters
        order = result.orders[0]
        assert order.state == OrderState.VALIDATED
        assert order.steps_used == 1
        assert order.filled_qty == 10
        assert counters.trade_updates >= 2  # new, fill
        assert counters.status_polls == 0
        assert counters.order_refreshes == 0
        assert "get_order" not in counters.by_endpoint
        assert result.quote_counters["streaming_success"] >= 1
        assert result.quote_counters["rest_fallback"] == 0
        fill = rig.events(EventKind.FILL)[0]
        assert Decimal(fill.data["price"]) == Decimal(
            rig.events("submit_intent")[0].data["limit_price"]
        )


def test_validation_takes_the_position_trade_updates_reported_with_the_last_fill(
    tmp_path: Path,
) -> None:
    """Each execution on trade_updates carries the position right after it (`position_qty`):
    the order's last one is the broker's figure validation checks, so the plan reads
    positions once (its preflight) and never after the fills. Partial fills included; each
    fill journals the broker's own time and figure beside the journal's."""
    spec = market(EAGER, partial_fill_probability=0.6, positions={"AAPL": Decimal(4)})
    with alpaca_rig(tmp_path, spec, config=RESTING) as rig:
        result = rig.run(
            {"symbol": "AAPL", "side": "buy", "quantity": "10"},
            {"symbol": "MSFT", "side": "buy", "quantity": "3"},
        )
        rig.check(result)
        assert [o.state for o in result.orders] == [OrderState.VALIDATED] * 2
        assert rig.server.app.stats["GET /v2/positions"] == 1
        after = {
            e.order_id: e.data
            for e in rig.events(EventKind.POSITION_READ)
            if e.data["phase"] == "after"
        }
        by_symbol = {o.symbol: after[o.order_id] for o in result.orders}
        assert by_symbol["AAPL"] == {
            "phase": "after",
            "qty": "14",
            "expected": "14",
            "from_fill": True,
        }
        assert by_symbol["MSFT"]["from_fill"] is True
        fills = rig.events(EventKind.FILL)
        assert len(fills) >= 2
        assert all(f.data["broker_at"] and f.data["position_after"] for f in fills)
        aapl = [f.data for f in fills if f.order_id == result.orders[0].order_id]
        running = Decimal(4)
        for fill in aapl:
            running += Decimal(fill["qty"])
            assert Decimal(fill["position_after"]) == running


def test_whole_shares_walk_by_replace_with_explicit_qty(tmp_path: Path) -> None:
    """Nothing fills passively: L1 is placed, L2 and L3 replace it (PATCH, whole shares), then
    the market step cancels, confirms and sends a market order (replace_orders on)."""
    with alpaca_rig(tmp_path, market(NEVER), config=REPLACING) as rig:
        result = rig.run({"symbol": "MSFT", "side": "buy", "quantity": "7"})
        rig.check(result)
        assert result.orders[0].state == OrderState.VALIDATED
        replaces = rig.events(EventKind.REPLACE_ACK)
        assert len(replaces) == 2
        assert [e.data["qty"] for e in rig.events(EventKind.REPLACE_INTENT)] == ["7", "7"]
        book = rig.book().orders
        chain = [book[e.data["broker_order_id"]] for e in replaces]
        assert all(o.replaces is not None for o in chain)
        assert sum(o.status.value == "replaced" for o in book.values()) == 2
        market_orders = [o for o in book.values() if o.order_type == "market"]
        assert len(market_orders) == 1
        assert market_orders[0].filled_qty == 7


def test_fractional_walks_by_cancel_confirm_new(tmp_path: Path) -> None:
    """A fractional qty is never replaced: each step cancels, waits for `canceled` on the
    stream, then submits anew."""
    with alpaca_rig(tmp_path, market(NEVER)) as rig:
        result = rig.run({"symbol": "TSLA", "side": "buy", "quantity": "2.5"})
        rig.check(result)
        assert result.orders[0].state == OrderState.VALIDATED
        assert not rig.events(EventKind.REPLACE_INTENT)
        assert len(rig.events(EventKind.CANCEL_ACK)) == 3  # L1, L2, L3
        assert len(rig.events(EventKind.SUBMIT_ACK)) == 4  # L1, L2, L3, market
        assert rig.broker.counters.status_polls == 0


def test_one_sided_quotes_are_repaired_from_the_stream(tmp_path: Path) -> None:
    """Every quote of ILLQ has a zero side (or both, on the stream): the engine estimates the
    missing side and the order still completes."""
    illq = SymbolSpec(price=Decimal("20"), spread_bps=30, zero_quote_probability=1.0)
    with alpaca_rig(tmp_path, market(EAGER, symbols={"ILLQ": illq})) as rig:
        rig.run({"symbol": "ILLQ", "side": "buy", "quantity": "3", "urgency": "high"})
        time.sleep(1.2)  # the zero-quote episode starts at the book's first tick
        result = rig.run({"symbol": "ILLQ", "side": "buy", "quantity": "4"}, plan_id="p2")
        rig.check(result)
        counters = result.quote_counters
        assert counters["zero_bid"] + counters["zero_ask"] + counters["both_zero"] >= 1
        assert result.orders[0].state == OrderState.VALIDATED


def test_stale_quotes_fail_no_quote_and_nothing_is_sent(tmp_path: Path) -> None:
    """Quotes two minutes old, streamed and REST alike, are not usable: FAILED no_quote."""
    faults = FaultSpec(stale_quote_seconds={"AAPL": 120})
    with alpaca_rig(tmp_path, market(EAGER), faults) as rig:
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "1"})
        order = result.orders[0]
        assert (order.state, order.reason) == (OrderState.FAILED, "no_quote")
        assert result.quote_counters["stale"] >= 2
        assert "submit_order" not in rig.broker.counters.by_endpoint
        assert not rig.book().orders


def test_refused_quote_stream_406_falls_back_to_rest(tmp_path: Path) -> None:
    """Another connection holds the account's one market-data slot: the SDK's stream is
    refused with 406, the adapter says so and every quote comes over REST."""
    with alpaca_rig(tmp_path, market(EAGER), config=RESTING) as rig:
        with connect(rig.server.url.replace("http", "ws") + "/v2/iex") as other:
            assert msgpack.unpackb(other.recv(timeout=5))[0]["msg"] == "connected"
            other.send(msgpack.packb({"action": "auth", "key": KEYS[0], "secret": KEYS[1]}))
            assert msgpack.unpackb(other.recv(timeout=5))[0]["msg"] == "authenticated"
            result = rig.run(
                {"symbol": "AAPL", "side": "buy", "quantity": "2"},
                {"symbol": "MSFT", "side": "buy", "quantity": "1"},
            )
        rig.check(result)
        assert all(o.state == OrderState.VALIDATED for o in result.orders)
        assert rig.broker.counters.quote_stream_refused >= 1
        assert rig.server.app.market_data.refused >= 1
        assert result.quote_counters["streaming_success"] == 0
        assert result.quote_counters["rest_fallback"] >= 2


def test_trade_stream_drops_poll_then_reconnect(tmp_path: Path) -> None:
    """The server cuts every websocket after 0.5 s: while trade_updates is down the adapter
    polls (bounded, once per interval); after each reconnect it trusts the stream again."""
    faults = FaultSpec(stream_drop_after_seconds=0.5)
    with alpaca_rig(tmp_path, market(NEVER), faults) as rig:
        started = time.monotonic()
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "3"})
        elapsed = time.monotonic() - started
        rig.check(result)
        counters = rig.broker.counters
        assert result.orders[0].state == OrderState.VALIDATED
        assert rig.server.app.faults.injected["stream_drop"] >= 2
        assert counters.trade_stream_connects >= 2
        assert counters.status_polls >= 1
        # at most one read per poll interval (0.2 s) of waiting, plus one per reconnect
        reads = counters.status_polls + counters.order_refreshes
        assert reads <= elapsed / 0.2 + counters.trade_stream_connects + 2


def test_every_rest_call_is_counted_by_endpoint(tmp_path: Path) -> None:
    """The adapter reports REST calls in total and by endpoint, each one the server saw."""
    with alpaca_rig(tmp_path, market(NEVER)) as rig:
        rig.run({"symbol": "AAPL", "side": "buy", "quantity": "10"})
        counters = rig.broker.counters
        assert counters.rest_calls == sum(counters.by_endpoint.values())
        assert counters.rest_calls == rig.server.app.stats["requests"]
        assert len(acks(rig)) == 4


def test_refusals_reach_the_engine_as_typed_errors(tmp_path: Path) -> None:
    """Alpaca's error bodies from the server, through the SDK, become the engine's errors."""
    spec = market(
        NEVER, positions={"TSLA": Decimal(3)}, cash=Decimal(10_000), unknown_symbols=["NOPE"]
    )
    with alpaca_rig(tmp_path, spec) as rig:
        broker = rig.broker

        def order(cid: str, **fields: object) -> OrderRequest:
            base: dict[str, object] = {
                "client_order_id": cid, "symbol": "AAPL", "side": OrderSide.BUY,
                "qty": Decimal(1), "order_type": "limit", "limit_price": Decimal("189.95"),
            }  # fmt: skip
            return OrderRequest(**(base | fields))  # type: ignore[arg-type]

        async def scenario() -> None:
            with pytest.raises(SubPennyPrice):
                await broker.submit_order(order("c1", limit_price=Decimal("189.951")))
            # beyond the margin account's 2x buying power, and the answer says how far
            with pytest.raises(InsufficientBuyingPower) as funds:
                await broker.submit_order(order("c2", qty=Decimal(200)))
            assert Decimal(funds.value.fields["cost_basis"]) == 200 * Decimal("189.95")
            assert Decimal(funds.value.fields["buying_power"]) < 200 * Decimal("189.95")
            with pytest.raises(BrokerRejected) as short:
                await broker.submit_order(
                    order("c3", symbol="TSLA", side=OrderSide.SELL, qty=Decimal(5))
                )
            assert short.value.reason == "insufficient_position"
            placed = await broker.submit_order(order("c4"))
            with pytest.raises(DuplicateClientOrderId):
                await broker.submit_order(order("c4"))
            with pytest.raises(NotReplaceable):  # refused before any request: SDK qty is int
                await broker.replace_order(placed.id, Decimal("1.5"), Decimal("189.96"), "c5")
            await broker.cancel_order(placed.id)
            cancelled = await broker.get_order(placed.id)
            for _ in range(10):
                if cancelled.status.is_terminal:
                    break
                cancelled = await broker.wait_for_update(placed.id, 1.0)
            assert (cancelled.client_order_id, cancelled.status) == ("c4", "canceled")
            with pytest.raises(BrokerRejected, match='already in "canceled" state'):
                await broker.cancel_order(placed.id)
            with pytest.raises(OrderNotFound):
                await broker.get_order("00000000-0000-4000-8000-000000000000")
            assert await broker.get_order_by_client_id("never-sent") is None
            assert await broker.get_position("AAPL") == 0
            with pytest.raises(UnknownSymbol):
                await broker.get_asset("NOPE")

        asyncio.run(scenario())
        assert rig.broker.counters.by_endpoint["replace_order"] == 0


def test_tick_comes_from_the_assets_price_increment(tmp_path: Path) -> None:
    """An asset quoted in nickels: every limit price the walk sends is a multiple of 0.05."""
    nickel = SymbolSpec(price=Decimal("50"), spread_bps=40, price_increment=Decimal("0.05"))
    with alpaca_rig(tmp_path, market(NEVER, symbols={"NKL": nickel})) as rig:
        result = rig.run({"symbol": "NKL", "side": "buy", "quantity": "4"})
        rig.check(result)
        assert result.orders[0].state == OrderState.VALIDATED
        prices = [Decimal(e.data["limit_price"]) for e in rig.events(EventKind.REPLACE_INTENT)]
        prices.append(Decimal(rig.events(EventKind.SUBMIT_INTENT)[0].data["limit_price"]))
        assert all(p % Decimal("0.05") == 0 for p in prices), prices


def test_open_orders_lists_what_rests_in_one_call(tmp_path: Path) -> None:
    """`open_orders` through the SDK: one GET /v2/orders?status=open lists the resting limit
    orders with their wire ids and fills so far, not the filled market order."""
    with alpaca_rig(tmp_path, market(NEVER)) as rig:
        broker = rig.broker

        async def place() -> tuple[list[str], str]:
            resting = []
            for index, symbol in enumerate(("AAPL", "MSFT", "TSLA")):
                quote = await broker.latest_quote(symbol)
                assert quote is not None
                below = (quote.bid - 1).quantize(Decimal("0.01"))
                request = OrderRequest(
                    f"rest-{index}", symbol, OrderSide.BUY, Decimal(2), "limit", below
                )
                resting.append((await broker.submit_order(request)).id)
            market_order = OrderRequest("now", "SPY", OrderSide.BUY, Decimal(1), "market", None)
            return resting, (await broker.submit_order(market_order)).id

        resting, filled = asyncio.run(place())
        before = broker.counters.rest_calls
        listed = asyncio.run(broker.open_orders())
        assert broker.counters.rest_calls - before == 1
        assert broker.counters.by_endpoint["get_orders"] == 1
        assert sorted(order.id for order in listed) == sorted(resting)
        assert filled not in {order.id for order in listed}
        assert all(o.qty == 2 and o.filled_qty == 0 and not o.status.is_terminal for o in listed)


def test_open_orders_pages_past_one_listing_and_leaves_out_other_systems_orders(
    tmp_path: Path,
) -> None:
    """More open orders than one GET lists (500): `open_orders` pages on with `after` and
    lists every one of them in two calls; a stop order another system placed in the same
    account is left out, not a failure of the whole listing."""
    unlimited = FaultSpec(rate_limit_per_minute=100_000)
    with alpaca_rig(tmp_path, market(NEVER), unlimited, rate_limit=100_000) as rig:
        broker, count = rig.broker, OPEN_ORDERS_PER_PAGE + 20

        async def place() -> tuple[list[str], str]:
            quote = await broker.latest_quote("AAPL")
            assert quote is not None
            below = (quote.bid - 5).quantize(Decimal("0.01"))
            placed, stop_id = [], ""
            for index in range(count):
                request = OrderRequest(
                    f"page-{index}", "AAPL", OrderSide.BUY, Decimal(1), "limit", below
                )
                placed.append((await broker.submit_order(request)).id)
                if index == 3:
                    # another system's order in the same account, through the same SDK
                    stop = StopOrderRequest(
                        symbol="MSFT",
                        qty=1,
                        side=SdkSide.SELL,
                        time_in_force=TimeInForce.DAY,
                        stop_price=300,
                    )
                    stop_id = str(_expect_order(broker.rest.trading.submit_order(stop)).id)
            return placed, stop_id

        placed, stop_id = asyncio.run(place())
        app = rig.server.app
        assert len(app.resting) == 1
        before = app.stats["GET /v2/orders"]
        listed = asyncio.run(broker.open_orders())
        assert app.stats["GET /v2/orders"] - before == 2
        assert [order.id for order in listed] == placed
        # the stop order rests, as another system left it, until that system cancels it
        stop = _expect_order(broker.rest.trading.get_order_by_id(stop_id))
        assert (stop.order_type, stop.status) == (OrderType.STOP, OrderStatus.NEW)
        broker.rest.trading.cancel_order_by_id(stop_id)
        stop = _expect_order(broker.rest.trading.get_order_by_id(stop_id))
        assert stop.status == OrderStatus.CANCELED


def _expect_order(answer: object) -> SdkOrder:
    assert isinstance(answer, SdkOrder)
    return answer


def test_a_fractional_position_of_a_whole_share_asset_closes_through_the_sdk(
    tmp_path: Path,
) -> None:
    """2.7 shares of a non-fractionable asset, closed FULL through alpaca-py: the 0.7 goes
    through `DELETE /v2/positions/{symbol}?qty=0.7`, the 2 whole shares walk."""
    ko = SymbolSpec(price=Decimal("62"), spread_bps=10, volatility_bps=0, fractionable=False)
    spec = market(EAGER, symbols={"KO": ko}, positions={"KO": Decimal("2.7")})
    with alpaca_rig(tmp_path, spec, config=RESTING) as rig:
        result = rig.run({"symbol": "KO", "side": "sell", "quantity": "2.7", "close_type": "full"})
        rig.check(result)
        (order,) = result.orders
        assert order.state == OrderState.VALIDATED, order
        assert order.filled_qty == Decimal("2.7")
        assert rig.server.app.stats["DELETE /v2/positions/{symbol}"] == 1
        assert rig.book().positions.get("KO", Decimal(0)) == 0
        intents = [e.data for e in rig.events("submit_intent")]
        assert [i["order_type"] for i in intents][:2] == ["close_position", "limit"]
        assert [Decimal(i["qty"]) for i in intents][:2] == [Decimal("0.7"), Decimal(2)]


def test_a_replace_that_changes_nothing_is_refused_403_as_alpaca_does(tmp_path: Path) -> None:
    """PATCH /v2/orders/{id} with the order's own qty and limit price: 403 40310000 "order
    parameters are not changed" (Alpaca's answer), through alpaca-py."""
    with alpaca_rig(tmp_path, market(NEVER)) as rig:
        broker = rig.broker

        async def resting_buy() -> str:
            quote = await broker.latest_quote("AAPL")
            assert quote is not None
            price = (quote.bid - 1).quantize(Decimal("0.01"))
            request = OrderRequest("same-1", "AAPL", OrderSide.BUY, Decimal(2), "limit", price)
            placed = await broker.submit_order(request)
            assert placed.limit_price == price
            return placed.id

        order_id = asyncio.run(resting_buy())
        order = _expect_order(broker.rest.trading.get_order_by_id(order_id))
        unchanged = ReplaceOrderRequest(qty=2, limit_price=float(order.limit_price or 0))
        with pytest.raises(APIError) as refused:
            broker.rest.trading.replace_order_by_id(order_id, unchanged)
        assert refused.value.status_code == 403
        assert json.loads(str(refused.value))["code"] == 40310000


def test_a_corrupt_streamed_quote_from_sim_server_is_priced_from_rest(tmp_path: Path) -> None:
    """sim-server's stream shows a negative bid (the market spec's `stream_quote` knob):
    through alpaca-py the walk prices from the REST quote instead, and trades."""
    aapl = SymbolSpec(
        price=Decimal("190"),
        spread_bps=10,
        volatility_bps=0,
        stream_quote=(Decimal("-1"), Decimal("190.10")),
    )
    with alpaca_rig(tmp_path, market(EAGER, symbols={"AAPL": aapl}), config=RESTING) as rig:
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "3"})
        rig.check(result)
        assert result.orders[0].state == OrderState.VALIDATED
        assert result.quote_counters["corrupt"] >= 1
        step = next(e for e in rig.events(EventKind.TRANSITION) if e.to_state == "LIMIT_STEP_1")
        assert step.data["quote"]["source"] == "rest"
        assert Decimal(step.data["quote"]["bid"]) > 0


def test_a_limit_order_without_a_limit_price_is_a_json_422_not_a_500(tmp_path: Path) -> None:
    with alpaca_rig(tmp_path, market(NEVER)) as rig:
        answer = requests.post(
            rig.server.url + "/v2/orders",
            json={
                "symbol": "AAPL",
                "qty": "1",
                "side": "buy",
                "type": "limit",
                "time_in_force": "day",
            },
            headers={"APCA-API-KEY-ID": KEYS[0], "APCA-API-SECRET-KEY": KEYS[1]},
            timeout=5,
        )
        assert answer.status_code == 422
        assert "limit_price is required" in answer.json()["message"]
        assert not rig.server.app.broker.orders
