"""What AlpacaBroker reads in bulk or not at all, through the SDK against sim-server and
counted there: positions and REST quotes shared by the walks asking at once (never from a
read sent before they asked: tests/test_alpaca_shared_reads.py pins that), assets from one
listing, and orders answered from trade_updates once they show the cancel Alpaca took."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from alpaca_support import NEVER, broker_on_server, market

from engine import SymbolSpec
from engine.broker import BrokerOrderStatus, OrderRequest
from engine.brokers.simserver import FaultSpec
from engine.errors import BrokerRejected, UnknownSymbol
from engine.intents import OrderSide


def test_position_reads_wait_for_a_read_sent_after_them_and_share_it(tmp_path: Path) -> None:
    """Callers asking while a slow `GET /v2/positions` is in flight are answered by one more
    read, which they share; after a fill, the next read has it."""
    slow = FaultSpec(latency_seconds=0.3, only=["GET /v2/positions"])
    spec = market(NEVER, positions={"TSLA": Decimal(4)})
    with broker_on_server(tmp_path / "sim.db", spec, slow) as (server, broker):
        stats = server.app.stats

        async def scenario() -> tuple[list[Decimal], Decimal]:
            in_flight = asyncio.create_task(broker.get_position("TSLA"))
            while stats["GET /v2/positions"] < 1:  # the first read has reached the server
                await asyncio.sleep(0.01)
            late = [broker.get_position(symbol) for symbol in ("AAPL", "TSLA")]
            held = await asyncio.gather(in_flight, *late)
            assert stats["GET /v2/positions"] == 2
            buy = OrderRequest("fresh-1", "AAPL", OrderSide.BUY, Decimal(2), "market")
            order = await broker.submit_order(buy)
            while not order.is_terminal:
                order = await broker.wait_for_update(order.id, 1.0)
            return held, await broker.get_position("AAPL")

        held, bought = asyncio.run(scenario())
        assert held == [Decimal(4), Decimal(0), Decimal(4)]
        assert bought == Decimal(2)
        assert stats["GET /v2/positions"] == 3
        assert "GET /v2/positions/{symbol}" not in stats


def test_rest_quote_fallbacks_asking_at_once_share_one_multi_symbol_read(tmp_path: Path) -> None:
    with broker_on_server(tmp_path / "sim.db", market(NEVER)) as (server, broker):

        async def scenario() -> list[str | None]:
            asked = ("AAPL", "MSFT", "TSLA", "AAPL")
            quotes = await asyncio.gather(*(broker.latest_quote(s) for s in asked))
            return [None if q is None else q.symbol for q in quotes]

        assert asyncio.run(scenario()) == ["AAPL", "MSFT", "TSLA", "AAPL"]
        assert server.app.stats["GET /v2/stocks/quotes/latest"] == 1
        assert broker.counters.by_endpoint["latest_quote"] == 1


def test_rest_quotes_asked_one_after_another_are_spaced_and_shared(tmp_path: Path) -> None:
    """Walks watching symbols the stream does not carry ask for REST quotes one after
    another: past a burst of three, the reads leave one per `rest_quotes_spacing_seconds`
    and every walk asking meanwhile shares the next, each answered from a read sent after
    it asked (without the spacing: one read an ask, ten here)."""
    spaced = {"rest_quotes_spacing_seconds": 0.5}
    with broker_on_server(tmp_path / "sim.db", market(NEVER), **spaced) as (server, broker):

        async def scenario() -> list[str | None]:
            asks = []
            for symbol in ("AAPL", "MSFT", "TSLA") * 3 + ("AAPL",):
                asks.append(asyncio.create_task(broker.latest_quote(symbol)))
                await asyncio.sleep(0.05)
            return [None if q is None else q.symbol for q in await asyncio.gather(*asks)]

        assert asyncio.run(scenario()) == ["AAPL", "MSFT", "TSLA"] * 3 + ["AAPL"]
        assert server.app.stats["GET /v2/stocks/quotes/latest"] <= 5


def test_assets_come_from_one_listing_and_a_symbol_off_it_is_read_alone(tmp_path: Path) -> None:
    """The listing holds active assets: an inactive one and an unknown one are each read
    alone (the unknown one is Alpaca's 404: UnknownSymbol, as before)."""
    halted = SymbolSpec(price=Decimal(30), spread_bps=10, volatility_bps=0, tradable=False)
    spec = market(NEVER, symbols={**market().symbols, "HALT": halted}, unknown_symbols=["NOPE"])
    with broker_on_server(tmp_path / "sim.db", spec) as (server, broker):

        async def scenario() -> list[tuple[str, bool]]:
            asked = ("AAPL", "MSFT", "TSLA", "AAPL", "HALT")
            assets = await asyncio.gather(*(broker.get_asset(s) for s in asked))
            with pytest.raises(UnknownSymbol):
                await broker.get_asset("NOPE")
            return [(asset.symbol, asset.tradable) for asset in assets]

        assert asyncio.run(scenario()) == [
            ("AAPL", True),
            ("MSFT", True),
            ("TSLA", True),
            ("AAPL", True),
            ("HALT", False),
        ]
        assert server.app.stats["GET /v2/assets"] == 1
        assert server.app.stats["GET /v2/assets/{symbol}"] == 2


def test_orders_are_answered_from_trade_updates_after_a_fill_and_after_a_cancel(
    tmp_path: Path,
) -> None:
    """Not one `GET /v2/orders/{id}`: a filled order, and a cancelled one once the stream
    shows the cancel (pending_cancel or canceled, as a REST read right after it would). A
    cancel of the order the stream reported filled is refused as Alpaca refuses it, without
    a `DELETE`: only the resting one is cancelled at the server."""
    with broker_on_server(tmp_path / "sim.db", market(NEVER), write_echo_seconds=30.0) as (
        server,
        broker,
    ):

        async def scenario() -> list[BrokerOrderStatus]:
            now = OrderRequest("echo-1", "AAPL", OrderSide.BUY, Decimal(1), "market")
            order = await broker.submit_order(now)
            while not order.is_terminal:
                order = await broker.wait_for_update(order.id, 1.0)
            filled = await broker.get_order(order.id)
            with pytest.raises(BrokerRejected, match='already in "filled" state'):
                await broker.cancel_order(order.id)
            quote = await broker.latest_quote("AAPL")
            assert quote is not None
            below = (quote.bid - 5).quantize(Decimal("0.01"))
            rest = OrderRequest("echo-2", "AAPL", OrderSide.BUY, Decimal(1), "limit", below)
            resting = await broker.submit_order(rest)
            await broker.cancel_order(resting.id)
            pulled = await broker.get_order(resting.id)
            return [filled.status, pulled.status]

        filled, pulled = asyncio.run(scenario())
        assert filled is BrokerOrderStatus.FILLED
        assert pulled in (BrokerOrderStatus.PENDING_CANCEL, BrokerOrderStatus.CANCELED)
        assert server.app.stats["GET /v2/orders/{order_id}"] == 0
        assert server.app.stats["DELETE /v2/orders/{order_id}"] == 1
