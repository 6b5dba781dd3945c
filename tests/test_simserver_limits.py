"""The sim-server is as strict as Alpaca at its edges: two REST budgets reported in
X-Ratelimit-* headers, the IEX feed's 30-symbol limit, and the asset list. Driven through
alpaca-py and raw HTTP/websockets against a ServerThread on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
import requests
import structlog
from alpaca.common.exceptions import APIError
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import StockLatestQuoteRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass, AssetExchange, AssetStatus
from alpaca.trading.requests import GetAssetsRequest
from alpaca_support import EAGER, KEYS, RESTING, alpaca_rig, market
from websockets.sync.client import ClientConnection, connect

from engine import EngineConfig, OrderState, PlanStatus, SymbolSpec
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer
from engine.clock import RealClock
from engine.retry import read_with_retry

AUTH = {"APCA-API-KEY-ID": KEYS[0], "APCA-API-SECRET-KEY": KEYS[1]}
TRADING_PATH = "/v2/account"
DATA_PATH = "/v2/stocks/quotes/latest?symbols=AAPL"
# 35 distinct listed symbols: five more than the free plan's IEX stream carries
TICKERS = [
    "AAPL", "MSFT", "TSLA", "NVDA", "AMZN", "GOOG", "META", "NFLX", "AMD", "INTC", "ORCL", "IBM",
    "CSCO", "ADBE", "CRM", "PYPL", "UBER", "SHOP", "QCOM", "TXN", "AVGO", "COST", "PEP", "KO",
    "WMT", "JPM", "BAC", "V", "MA", "DIS", "NKE", "MCD", "SBUX", "T", "VZ",
]  # fmt: skip


@contextmanager
def sim_server(tmp_path: Path, faults: FaultSpec, **spec: Any) -> Iterator[ServerThread]:
    server = SimServer(tmp_path / "sim.db", market(**spec), faults, KEYS)
    with ServerThread(server) as thread:
        yield thread


def get(server: ServerThread, path: str) -> requests.Response:
    return requests.get(server.url + path, headers=AUTH, timeout=5)


def budget(answer: requests.Response) -> tuple[int, int, int]:
    """What an answer says of its budget: (limit, remaining, reset)."""
    headers = answer.headers
    return (
        int(headers["X-Ratelimit-Limit"]),
        int(headers["X-Ratelimit-Remaining"]),
        int(headers["X-Ratelimit-Reset"]),
    )


def trading_client(server: ServerThread) -> TradingClient:
    client = TradingClient(KEYS[0], KEYS[1], paper=True, url_override=server.url)
    client._retry = 0  # the SDK would sleep 3 s and repeat a 429 on its own
    return client


def data_client(server: ServerThread) -> StockHistoricalDataClient:
    client = StockHistoricalDataClient(KEYS[0], KEYS[1], url_override=server.url)
    client._retry = 0
    return client


# -- REST budgets -------------------------------------------------------------------------


def test_every_answer_reports_its_budget_counting_down(tmp_path: Path) -> None:
    """Every REST answer carries X-Ratelimit-Limit, -Remaining (down by one a request) and
    -Reset (Unix seconds, within a window of now).
    https://forum.alpaca.markets/t/executing-orders/12029 (Alpaca on the three headers)"""
    faults = FaultSpec(rate_limit_per_minute=50, rate_limit_window_seconds=30.0)
    with sim_server(tmp_path, faults, unknown_symbols=["NOPE"]) as server:
        answers = [get(server, TRADING_PATH) for _ in range(3)]
        answers.append(get(server, "/v2/assets/NOPE"))  # a 404 is counted and reported too
        assert [a.status_code for a in answers] == [200, 200, 200, 404]
        seen = [budget(a) for a in answers]
        assert [limit for limit, _, _ in seen] == [50] * 4
        assert [remaining for _, remaining, _ in seen] == [49, 48, 47, 46]
        for _, _, reset in seen:
            assert time.time() < reset <= time.time() + 31


def test_past_the_budget_429_reports_when_it_resets(tmp_path: Path) -> None:
    """Past the budget Alpaca answers 429 (42910000 "rate limit exceeded") with the same
    headers, Remaining 0; a request sent at Reset is admitted again. alpaca-py hands the
    headers over on the APIError it raises.
    https://forum.alpaca.markets/t/executing-orders/12029 ("pause until that time")"""
    faults = FaultSpec(rate_limit_per_minute=3, rate_limit_window_seconds=1.0)
    with sim_server(tmp_path, faults) as server:
        assert [get(server, TRADING_PATH).status_code for _ in range(3)] == [200] * 3
        refused = get(server, TRADING_PATH)
        assert refused.status_code == 429
        assert refused.json() == {"code": 42910000, "message": "rate limit exceeded"}
        limit, remaining, reset = budget(refused)
        assert (limit, remaining) == (3, 0)
        with pytest.raises(APIError) as through_sdk:
            trading_client(server).get_account()
        assert through_sdk.value.status_code == 429
        assert through_sdk.value.response.headers["X-Ratelimit-Remaining"] == "0"
        time.sleep(max(0.0, reset - time.time()))
        again = get(server, TRADING_PATH)
        assert again.status_code == 200
        stats = server.app.stats
        assert (stats["rate_limited"], stats["rate_limited_trading"]) == (2, 2)
        assert stats["rate_limited_data"] == 0


@pytest.mark.parametrize("exhausted", ["trading", "data"])
def test_trading_and_market_data_budgets_are_independent(tmp_path: Path, exhausted: str) -> None:
    """The trading API and the market-data API are limited separately (trading per account,
    data by plan: 200/min on the free one); spending one leaves the other whole.
    https://docs.alpaca.markets/docs/about-market-data-api ("Historical API calls")"""
    faults = FaultSpec(rate_limit_per_minute=2, data_rate_limit_per_minute=3)
    with sim_server(tmp_path, faults) as server:
        trading, data = trading_client(server), data_client(server)
        quote = StockLatestQuoteRequest(symbol_or_symbols="AAPL")
        calls: dict[str, Any] = {
            "trading": trading.get_account,
            "data": lambda: data.get_stock_latest_quote(quote),
        }
        sizes = {"trading": 2, "data": 3}
        other = "data" if exhausted == "trading" else "trading"
        for _ in range(sizes[exhausted]):
            calls[exhausted]()
        with pytest.raises(APIError) as refused:
            calls[exhausted]()
        assert refused.value.status_code == 429
        for _ in range(sizes[other]):
            calls[other]()  # the other budget is whole: every call answers
        path = {"trading": TRADING_PATH, "data": DATA_PATH}[other]
        assert budget(get(server, path))[:2] == (sizes[other], 0)
        stats = server.app.stats
        assert stats[f"rate_limited_{exhausted}"] == 1
        assert stats[f"rate_limited_{other}"] == 1  # the raw read just past its budget
        assert stats["rate_limited"] == 2


# -- the market-data stream's symbol limit ---------------------------------------------------


def control(ws: ClientConnection) -> dict[str, Any]:
    """The next control message (success, error, subscription), skipping quote frames."""
    while True:
        for message in msgpack.unpackb(ws.recv(timeout=5)):
            if message["T"] != "q":
                return dict(message)


@contextmanager
def data_stream(server: ServerThread, feed: str) -> Iterator[ClientConnection]:
    """An authenticated market-data websocket on `/v2/<feed>`."""
    with connect(server.url.replace("http", "ws") + f"/v2/{feed}") as ws:
        assert control(ws) == {"T": "success", "msg": "connected"}
        ws.send(msgpack.packb({"action": "auth", "key": KEYS[0], "secret": KEYS[1]}))
        assert control(ws) == {"T": "success", "msg": "authenticated"}
        yield ws


def subscribe(ws: ClientConnection, symbols: list[str]) -> dict[str, Any]:
    ws.send(msgpack.packb({"action": "subscribe", "quotes": symbols}))
    return control(ws)


def test_iex_refuses_the_31st_symbol_and_keeps_the_30(tmp_path: Path) -> None:
    """The free plan's IEX stream holds 30 symbols: a subscription past that is refused with
    405 "symbol limit exceeded" and the connection keeps the subscriptions it had.
    https://docs.alpaca.markets/docs/streaming-market-data (errors: 405) and
    https://docs.alpaca.markets/docs/about-market-data-api ("Websocket subscriptions")"""
    with sim_server(tmp_path, FaultSpec()) as server, data_stream(server, "iex") as ws:
        first = subscribe(ws, TICKERS[:30])
        assert (first["T"], sorted(first["quotes"])) == ("subscription", sorted(TICKERS[:30]))
        assert subscribe(ws, TICKERS[30:31]) == {
            "T": "error",
            "code": 405,
            "msg": "symbol limit exceeded",
        }
        again = subscribe(ws, TICKERS[:1])  # nothing new: the 30 are still held
        assert sorted(again["quotes"]) == sorted(TICKERS[:30])
        assert server.app.stats["symbol_limit_refused"] == 1


def test_iex_refuses_an_oversized_first_subscription_whole(tmp_path: Path) -> None:
    """A first subscription of 31 symbols is refused as a whole: none of them is held.
    https://docs.alpaca.markets/docs/streaming-market-data (errors: 405)"""
    with sim_server(tmp_path, FaultSpec()) as server, data_stream(server, "iex") as ws:
        assert subscribe(ws, TICKERS[:31])["code"] == 405
        assert subscribe(ws, [])["quotes"] == []


@pytest.mark.parametrize("feed", ["sip", "test"])
def test_sip_and_test_feeds_take_every_symbol(tmp_path: Path, feed: str) -> None:
    """The symbol limit is the free plan's IEX feed's; SIP (Algo Trader Plus) is unlimited.
    https://docs.alpaca.markets/docs/about-market-data-api ("Websocket subscriptions")"""
    with sim_server(tmp_path, FaultSpec(iex_symbol_limit=1)) as server:
        with data_stream(server, feed) as ws:
            answer = subscribe(ws, TICKERS)
        assert sorted(answer["quotes"]) == sorted(TICKERS)
        assert server.app.stats["symbol_limit_refused"] == 0


def test_a_35_symbol_plan_on_iex_prices_the_five_past_the_limit_from_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """walkbook subscribes a symbol a message: the IEX stream carries the first 30, refuses
    each of the other five once (no retry storm, no reconnect), and those five are priced
    from REST; every order is VALIDATED and nothing is logged as an error.
    https://docs.alpaca.markets/docs/streaming-market-data (errors: 405)"""
    symbols = {
        name: SymbolSpec(price=Decimal(40 + index), spread_bps=10, volatility_bps=0)
        for index, name in enumerate(TICKERS)
    }
    spec = market(EAGER, symbols=symbols)
    orders = [{"symbol": name, "side": "buy", "quantity": "1"} for name in TICKERS]
    # 18 walks at a time: the first 18 symbols are asked for as the stream comes up, the rest
    # (the five past 30 among them) on the live stream, in two rounds of walks, not five
    with alpaca_rig(tmp_path, spec, config=RESTING, concurrency=18, feed="iex") as rig:
        with caplog.at_level(logging.WARNING):
            result = rig.run(*orders, plan_id="thirty-five")
        rig.check(result)
        assert result.status is PlanStatus.SUCCESS
        assert all(order.state == OrderState.VALIDATED for order in result.orders)
        app = rig.server.app
        assert app.stats["symbol_limit_refused"] == len(TICKERS) - 30
        (carried,) = app.market_data.subscribed.values()
        assert len(carried) == 30
        counters = rig.broker.counters
        assert counters.quote_stream_connects == 1
        assert result.quote_counters["streaming_success"] >= 30
        assert result.quote_counters["rest_fallback"] >= len(TICKERS) - 30
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_quote_stream_keeps_30_symbols_asked_at_once_and_after_a_reconnect(
    tmp_path: Path,
) -> None:
    """35 symbols asked for before the stream is up, then the connection lost: walkbook asks
    a symbol a message, so the IEX stream carries 30 from the start and 30 again after the
    SDK reconnects (one oversized subscription would be refused whole: none carried).
    https://docs.alpaca.markets/docs/streaming-market-data (errors: 405)"""
    with alpaca_rig(tmp_path, market(EAGER), feed="iex") as rig:
        broker, server = rig.broker, rig.server

        async def quote_all() -> list[Any]:
            return await asyncio.gather(*(broker.stream_quote(s, 2.0) for s in TICKERS))

        async def carried() -> list[int]:
            return [len(symbols) for symbols in server.app.market_data.subscribed.values()]

        async def drop_quote_stream() -> None:
            for ws in list(server.app.market_data.sockets.outboxes):
                await ws.close()

        assert sum(quote is not None for quote in asyncio.run(quote_all())) == 30
        assert server.call(carried) == [30]
        server.call(drop_quote_stream)
        deadline = time.monotonic() + 15
        while broker.counters.quote_stream_connects < 2 or server.call(carried) != [30]:
            assert time.monotonic() < deadline, (broker.counters, server.call(carried))
            time.sleep(0.05)
        assert server.app.stats["symbol_limit_refused"] == len(TICKERS) - 30


# -- the asset list -------------------------------------------------------------------------


def test_asset_list_filters_like_alpaca(tmp_path: Path) -> None:
    """`GET /v2/assets` lists Alpaca's asset objects, filtered by status (all by default),
    asset_class (us_equity by default) and exchange; an unknown symbol is in no listing and
    `GET /v2/assets/<it>` is 404.
    https://docs.alpaca.markets/docs/working-with-assets"""
    symbols = {
        "AAPL": SymbolSpec(price=Decimal(190)),
        "HALTD": SymbolSpec(price=Decimal(12), tradable=False),
    }
    with sim_server(tmp_path, FaultSpec(), symbols=symbols, unknown_symbols=["ZZZZ"]) as server:
        client = trading_client(server)

        def listed(**filters: Any) -> dict[str, Any]:
            answer = client.get_all_assets(GetAssetsRequest(**filters) if filters else None)
            assert isinstance(answer, list)
            return {asset.symbol: asset for asset in answer}

        everything = listed()
        assert {"AAPL", "HALTD"} <= set(everything)
        assert "ZZZZ" not in everything
        active = listed(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)
        assert "AAPL" in active
        assert "HALTD" not in active
        assert set(listed(status=AssetStatus.INACTIVE)) == {"HALTD"}
        assert set(active) | {"HALTD"} == set(everything)
        assert not listed(asset_class=AssetClass.CRYPTO)
        for exchange in {asset.exchange for asset in everything.values()}:
            on_it = listed(exchange=exchange)
            assert set(on_it) == {s for s, a in everything.items() if a.exchange == exchange}
        assert not listed(exchange=AssetExchange.OTC)
        aapl = everything["AAPL"]
        assert (aapl.tradable, aapl.status, aapl.asset_class) == (
            True,
            AssetStatus.ACTIVE,
            AssetClass.US_EQUITY,
        )
        with pytest.raises(APIError) as unknown:
            client.get_asset("ZZZZ")
        assert unknown.value.status_code == 404
        assert get(server, "/v2/assets?status=halted").status_code == 422


def test_walkbook_waits_until_reset_after_a_429(tmp_path: Path) -> None:
    """The server's budget is smaller than walkbook's own: the read that meets a 429 pauses
    the adapter's budget until X-Ratelimit-Reset, and the engine's retry of it waits there
    and succeeds, instead of spending its retries in a backoff far shorter than the window.
    https://forum.alpaca.markets/t/executing-orders/12029 ("pause until that time")"""
    faults = FaultSpec(rate_limit_per_minute=2, rate_limit_window_seconds=1.0)
    with alpaca_rig(tmp_path, market(EAGER), faults, rate_limit=1000) as rig:
        broker = rig.broker  # check_keys spent one request of the server's two
        # one retry, after a backoff far shorter than the window
        config = EngineConfig(broker_retry_attempts=2, broker_retry_backoff_seconds=0.01)
        log = structlog.get_logger()

        async def two_reads() -> None:
            for _ in range(2):  # the second meets the 429
                await read_with_retry(broker.get_account, config, RealClock(), lambda: log)

        asyncio.run(two_reads())
        assert broker.counters.rate_limited == 1
        assert rig.server.app.stats["rate_limited_trading"] == 1
