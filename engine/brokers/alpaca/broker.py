"""AlpacaBroker: the engine's Broker protocol over alpaca-py, for paper or live accounts.

REST goes through `RestGateway` (rate budget, timeouts, our retry policy, typed errors).
What Alpaca serves in bulk is read in bulk (assets, positions, several quotes) and shared
by the walks asking at once; a position or quote never from a read sent before the ask.
Quotes come from one shared `StockDataStream` connection, REST `latest quote` being the
engine's fallback. Order changes come from `TradingStream` trade_updates, so waiting for
fills costs no REST call; only while that stream is down does `wait_for_update` poll,
once per `poll_interval_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from contextlib import suppress
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from logging import CRITICAL
from typing import Any, TypeVar

import structlog
from alpaca.common.enums import Sort
from alpaca.data.enums import DataFeed
from alpaca.data.models import Quote as SdkQuote
from alpaca.data.requests import StockLatestQuoteRequest
from alpaca.trading.enums import AssetClass, AssetStatus, QueryOrderStatus
from alpaca.trading.models import Asset as SdkAsset
from alpaca.trading.models import Clock as SdkClock
from alpaca.trading.models import Order as SdkOrder
from alpaca.trading.models import TradeAccount
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetAssetsRequest,
    GetOrdersRequest,
    ReplaceOrderRequest,
)

from ...broker import Account, Asset, BrokerOrder, MarketClock, OrderRequest, Quote
from ...clock import RealClock
from ...config import EngineConfig
from ...errors import (
    BrokerRejected,
    BrokerUnavailable,
    NotReplaceable,
    OrderNotFound,
    UnknownSymbol,
)
from ...numbers import ZERO
from ...retry import read_with_retry
from .cache import SharedReads
from .convert import (
    UnsupportedOrder,
    account_from_sdk,
    asset_from_sdk,
    clock_from_sdk,
    listed_assets,
    order_from_sdk,
    order_request_to_sdk,
    positions_from_wire,
    quote_from_sdk,
)
from .errors import AlpacaConfigError, Forbidden
from .fresh import FreshReads
from .rest import AlpacaCounters, RestGateway
from .settings import KEY_ID_ENV, SECRET_KEY_ENV, AlpacaSettings
from .streams import QuoteStream, StreamThread, UpdateStream
from .tracking import CANCEL_TAKEN, EVERYONE, REPLACE_TAKEN, OrderTracker, QuoteBoard

__all__ = ["AlpacaBroker"]

M = TypeVar("M")
STOP_SECONDS = 5.0


def _expect(kind: type[M], value: object) -> M:
    """The SDK types its answers as model-or-raw-dict; we never ask for raw data."""
    if not isinstance(value, kind):
        raise BrokerUnavailable(f"alpaca: unexpected answer {type(value).__name__}")
    return value


OPEN_ORDERS_PER_PAGE = 500  # what Alpaca lists at most per request
# 50,000 open orders; beyond, the engine reads its own orders one by one (by id)
OPEN_ORDERS_PAGES_MAX = 100
# symbols per latest-quotes request: Alpaca documents no cap, this keeps the URL short
QUOTES_PER_REQUEST = 100
# reads of all positions, or of REST quotes, that leave at once before their spacing
# (AlpacaSettings) holds them: a plan's preflight read, then a lone order's own reads
SPACED_READS_BURST = 3
# the asset list the per-symbol asset reads are served from (what walkbook can trade)
LISTED = GetAssetsRequest(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)


class AlpacaBroker:
    """The Broker protocol against Alpaca; use as a context manager (it owns a stream thread)."""

    name = "alpaca"

    def __init__(self, settings: AlpacaSettings) -> None:
        self.settings = settings
        self.counters = AlpacaCounters()
        self.rest = RestGateway(settings, self.counters)
        self.orders = OrderTracker()
        self.quotes = QuoteBoard()
        self._streams: StreamThread | None = None
        self._update_stream: UpdateStream | None = None
        self._quote_stream: QuoteStream | None = None
        self._quote_symbols: set[str] = set()
        self._assets: SharedReads[str, Asset] = SharedReads()
        self._asset_list: SharedReads[None, dict[str, Asset]] = SharedReads()
        self._positions: FreshReads[str, Decimal] = FreshReads(
            self._read_positions, settings.positions_spacing_seconds, SPACED_READS_BURST
        )
        self._rest_quotes: FreshReads[str, Quote] = FreshReads(
            self._read_quotes, settings.rest_quotes_spacing_seconds, SPACED_READS_BURST
        )
        self._clock: SharedReads[None, MarketClock] = SharedReads()
        self._stream_awaited = False
        self.log = structlog.get_logger("walkbook").bind(broker="alpaca")

    def __enter__(self) -> AlpacaBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop both websocket clients and their thread."""
        streams, self._streams = self._streams, None
        if streams is None:
            return
        clients = [c for c in (self._update_stream, self._quote_stream) if c is not None]
        streams.stop(clients, STOP_SECONDS)

    # -- start-up -------------------------------------------------------------------

    async def check_keys(self, config: EngineConfig | None = None) -> Account:
        """Read the account, retried as the engine retries reads (`config`'s budget), the
        retries unlogged: refused keys or no answer become one clear error line, early."""
        policy = config or EngineConfig()
        try:
            return await read_with_retry(self.get_account, policy, RealClock(), _unheard)
        except Forbidden as exc:
            raise AlpacaConfigError(
                f"Alpaca refused the API keys ({exc.message}); check {KEY_ID_ENV} and "
                f"{SECRET_KEY_ENV}, and paper keys vs --live"
            ) from None
        except BrokerUnavailable as exc:
            raise AlpacaConfigError(f"cannot reach Alpaca ({exc.message})") from None

    def _ensure_streams(self) -> StreamThread:
        """Start the stream thread and trade_updates on first use (after the keys worked)."""
        if self._streams is None:
            self._streams = StreamThread()
            self._update_stream = UpdateStream(self.settings, self.orders, self.counters)
            runner = self._update_stream._run_forever()  # type: ignore[no-untyped-call]
            self._streams.run(runner)  # the SDK's reconnect loop (unannotated)
        return self._streams

    async def _trade_stream_ready(self) -> None:
        """Before the first order, give trade_updates a moment to connect (else we would poll)."""
        self._ensure_streams()
        if self._stream_awaited:
            return
        self._stream_awaited = True
        tracker = self.orders
        await tracker.waiters.until(
            EVERYONE, lambda: tracker.stream_up, self.settings.stream_connect_seconds
        )

    # -- reads ------------------------------------------------------------------------

    async def get_asset(self, symbol: str) -> Asset:
        """From one `GET /v2/assets?status=active&asset_class=us_equity` kept for
        `asset_cache_seconds` and read once however many walks ask at the same time
        (https://docs.alpaca.markets/docs/working-with-assets). A symbol the list lacks
        (inactive, unknown, an entry the SDK cannot parse) is read alone and kept as long:
        an unknown one is Alpaca's 404, UnknownSymbol."""
        self._ensure_streams()
        listed = await self._asset_list.get(None, self._read_asset_list)
        if symbol in listed:
            return listed[symbol]
        return await self._assets.get(symbol, lambda: self._read_asset(symbol))

    async def _read_asset_list(self) -> tuple[dict[str, Asset], float]:
        """Parsed on the worker thread: Alpaca lists thousands of assets."""
        trading, params = self.rest.trading, LISTED.to_request_fields()
        listed = await self.rest.read(
            "get_assets", lambda: listed_assets(trading.get("/assets", params))
        )
        return listed, self.settings.asset_cache_seconds

    async def _read_asset(self, symbol: str) -> tuple[Asset, float]:
        trading = self.rest.trading
        try:
            answer = await self.rest.read("get_asset", lambda: trading.get_asset(symbol))
        except OrderNotFound:
            raise UnknownSymbol(f"unknown symbol {symbol}", symbol=symbol) from None
        return asset_from_sdk(_expect(SdkAsset, answer)), self.settings.asset_cache_seconds

    async def get_clock(self) -> MarketClock:
        """Kept until the next open/close or `clock_cache_seconds`, whichever is sooner, and
        read once however many walks ask at the same time."""
        self._ensure_streams()
        return await self._clock.get(None, self._read_clock)

    async def _read_clock(self) -> tuple[MarketClock, float]:
        answer = await self.rest.read("get_clock", self.rest.trading.get_clock)
        clock = clock_from_sdk(_expect(SdkClock, answer))
        change = clock.next_close if clock.is_open else clock.next_open
        seconds = self.settings.clock_cache_seconds
        if change is not None:
            seconds = min(seconds, (change - clock.at).total_seconds())
        return clock, seconds

    async def get_account(self) -> Account:
        answer = await self.rest.read("get_account", self.rest.trading.get_account)
        return account_from_sdk(_expect(TradeAccount, answer))

    async def get_position(self, symbol: str) -> Decimal:
        """From `get_positions`: a symbol not held is zero shares. Never from a read sent
        before this call began, so a walk validating its fills sees the position after them."""
        self._ensure_streams()
        return (await self._positions.get()).get(symbol, ZERO)

    async def get_positions(self) -> dict[str, Decimal]:
        """One `GET /v2/positions`, shared by every caller that asked before it was sent
        (https://docs.alpaca.markets/reference/getallopenpositions)."""
        self._ensure_streams()
        return dict(await self._positions.get())

    async def _read_positions(self, _: Collection[str]) -> dict[str, Decimal]:
        trading = self.rest.trading
        return positions_from_wire(
            await self.rest.read("get_positions", lambda: trading.get("/positions"))
        )

    async def stream_quote(self, symbol: str, wait_seconds: float) -> Quote | None:
        """The streamed quote; None at once if the stream was refused (406) or has dropped."""
        streams = self._ensure_streams()
        if symbol not in self._quote_symbols:
            self._quote_symbols.add(symbol)
            if self._quote_stream is None:
                self._quote_stream = QuoteStream(self.settings, self.quotes, self.counters)
                streams.submit(self._quote_stream.add_quotes([symbol]))
                streams.run(self._quote_stream._run_forever())
            else:
                streams.submit(self._quote_stream.add_quotes([symbol]))
        board = self.quotes
        await board.waiters.until(
            symbol,
            lambda: board.latest(symbol) is not None or not board.usable_soon(),
            wait_seconds,
        )
        return board.latest(symbol)

    async def latest_quote(self, symbol: str) -> Quote | None:
        """From `latest_quotes`: the REST fallbacks of walks asking at once share a read."""
        return (await self._rest_quotes.get([symbol])).get(symbol)

    async def latest_quotes(self, symbols: Collection[str]) -> dict[str, Quote]:
        """`GET /v2/stocks/quotes/latest?symbols=`, up to `QUOTES_PER_REQUEST` a call, shared
        by every caller that asked before it was sent, each symbol asked for once
        (https://docs.alpaca.markets/reference/stocklatestquotes-1)."""
        quotes = await self._rest_quotes.get(symbols)
        return {symbol: quotes[symbol] for symbol in symbols if symbol in quotes}

    async def _read_quotes(self, symbols: Collection[str]) -> Mapping[str, Quote]:
        ordered, quotes = sorted(symbols), {}
        for start in range(0, len(ordered), QUOTES_PER_REQUEST):
            request = StockLatestQuoteRequest(
                symbol_or_symbols=ordered[start : start + QUOTES_PER_REQUEST],
                feed=DataFeed(self.settings.feed),
            )
            read = partial(self.rest.data.get_stock_latest_quote, request)
            answer = await self.rest.read("latest_quote", read)
            for quote in answer.values() if isinstance(answer, dict) else ():
                if isinstance(quote, SdkQuote):
                    quotes[quote.symbol] = quote_from_sdk(quote, "rest")
        return quotes

    # -- orders -----------------------------------------------------------------------

    def _show(self, answer: Any) -> BrokerOrder:
        return self.orders.show(order_from_sdk(_expect(SdkOrder, answer)))

    async def submit_order(self, request: OrderRequest) -> BrokerOrder:
        await self._trade_stream_ready()
        sdk_request = order_request_to_sdk(request)
        trading = self.rest.trading
        return self._show(
            await self.rest.write("submit_order", lambda: trading.submit_order(sdk_request))
        )

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        """PATCH with an explicit whole-share qty; a refused replace that happened anyway
        (Alpaca has answered 422 for replaces it then carried out) is found by its id."""
        if qty != qty.to_integral_value():
            raise NotReplaceable("alpaca replaces whole-share quantities only", order_id=order_id)
        request = ReplaceOrderRequest(
            qty=int(qty), limit_price=float(limit_price), client_order_id=client_order_id
        )
        trading = self.rest.trading
        try:
            answer = await self.rest.write(
                "replace_order", lambda: trading.replace_order_by_id(order_id, request)
            )
        except NotReplaceable:
            found = await self.get_order_by_client_id(client_order_id)
            if found is None:
                raise
            self.log.warning("alpaca.replace_refused_yet_done", client_order_id=client_order_id)
            self.orders.wrote(order_id, REPLACE_TAKEN)
            return found
        self.orders.wrote(order_id, REPLACE_TAKEN)
        return self._show(answer)

    async def cancel_order(self, order_id: str) -> None:
        """`DELETE /v2/orders/{id}`; an order trade_updates already vouch final is refused
        here as Alpaca would refuse it (422 'order is already in "filled" state'), without
        spending a call on it."""
        known = self.orders.current(order_id)
        if known is not None and known.is_terminal:
            status = known.status.value
            raise BrokerRejected(
                f'alpaca: order is already in "{status}" state (per trade_updates; not sent)',
                order_id=order_id,
                status=status,
            )
        trading = self.rest.trading
        await self.rest.read("cancel_order", lambda: trading.cancel_order_by_id(order_id))
        self.orders.wrote(order_id, CANCEL_TAKEN)

    async def get_order(self, order_id: str) -> BrokerOrder:
        """What trade_updates reported, without a REST call, for an order the stream has
        vouched for since it connected (final, or seen during this connection: the trust
        `wait_for_update` already places in it) once it also shows a cancel or replace of
        ours that Alpaca took (waiting up to `write_echo_seconds` for that); else one read."""
        tracker = self.orders
        if tracker.awaits_echo(order_id):
            await tracker.waiters.until(
                order_id,
                lambda: not tracker.awaits_echo(order_id),
                self.settings.write_echo_seconds,
            )
        current = tracker.current(order_id)
        if current is not None:
            return tracker.show(current)
        trading = self.rest.trading
        return self._show(
            await self.rest.read("get_order", lambda: trading.get_order_by_id(order_id))
        )

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        trading = self.rest.trading
        try:
            answer = await self.rest.read(
                "get_order_by_client_id", lambda: trading.get_order_by_client_id(client_order_id)
            )
        except OrderNotFound:
            return None
        return self._show(answer)

    async def open_orders(self) -> list[BrokerOrder]:
        """The account's open orders of walkbook's types, oldest first: `GET /v2/orders?
        status=open` a page at a time (`_listing`). Orders of other types (another system's
        stop orders in the same account) are never walkbook's and are left out. An order
        sharing the page boundary's timestamp may be left out too: the engine reads by id
        any of its own the listing does not hold."""
        return await self._listing(QueryOrderStatus.OPEN, None, None)

    async def _listing(
        self, status: QueryOrderStatus, symbol: str | None, after: datetime | None
    ) -> list[BrokerOrder]:
        """`GET /v2/orders` oldest first, a page of `OPEN_ORDERS_PER_PAGE` at a time, each
        page `after` the last one's submission time (at most `OPEN_ORDERS_PAGES_MAX`)."""
        listed: list[BrokerOrder] = []
        for _ in range(OPEN_ORDERS_PAGES_MAX):
            page = await self._orders_page(
                GetOrdersRequest(
                    status=status,
                    symbols=None if symbol is None else [symbol],
                    limit=OPEN_ORDERS_PER_PAGE,
                    direction=Sort.ASC,
                    after=after,
                )
            )
            for order in page:
                with suppress(UnsupportedOrder):
                    listed.append(self.orders.show(order_from_sdk(order)))
            last = page[-1].submitted_at if page else None
            if len(page) < OPEN_ORDERS_PER_PAGE or last is None or (after and last <= after):
                break
            after = last
        return listed

    async def _orders_page(self, request: GetOrdersRequest) -> list[SdkOrder]:
        trading = self.rest.trading
        answer = await self.rest.read("get_orders", lambda: trading.get_orders(filter=request))
        if not isinstance(answer, list):
            raise BrokerUnavailable(f"alpaca: unexpected answer {type(answer).__name__}")
        return [_expect(SdkOrder, order) for order in answer]

    async def close_position(self, symbol: str, qty: Decimal) -> BrokerOrder:
        """`DELETE /v2/positions/{symbol}?qty=`: Alpaca's route for a fractional remainder
        of a non-fractionable asset, which a plain order would be refused for."""
        await self._trade_stream_ready()
        trading = self.rest.trading
        options = ClosePositionRequest(qty=str(qty))
        answer = await self.rest.write(
            "close_position", lambda: trading.close_position(symbol, close_options=options)
        )
        return self._show(answer)

    async def recent_orders(self, symbol: str | None, since: datetime) -> list[BrokerOrder]:
        """`GET /v2/orders?status=all[&symbols=]` after `since` (less a second: Alpaca's
        filter is exclusive), oldest first, paged."""
        return await self._listing(QueryOrderStatus.ALL, symbol, since - timedelta(seconds=1))

    async def wait_for_update(self, order_id: str, timeout_seconds: float) -> BrokerOrder:
        """The order as soon as it differs from what the engine last saw, or at the timeout.

        trade_updates up: no REST call at all. Down (or not yet vouched for since it
        reconnected): one read, then one more per poll interval while it stays down.
        """
        self._ensure_streams()
        tracker = self.orders
        deadline = time.monotonic() + timeout_seconds
        while True:
            if tracker.needs_read(order_id):
                await self._refresh(order_id)  # outside the watch: its own wake-up is no news
            with tracker.waiters.watch(order_id) as watch:
                news = tracker.news(order_id)
                left = deadline - time.monotonic()
                if news is not None or left <= 0:
                    latest = news or tracker.latest(order_id)
                    assert latest is not None, "read above"
                    return tracker.show(latest)
                poll = self.settings.poll_interval_seconds
                await watch.wait(left if tracker.stream_up else min(left, poll))

    async def _refresh(self, order_id: str) -> None:
        """One REST read of an order the stream cannot vouch for (counted as a poll if down)."""
        if self.orders.stream_up:
            self.counters.order_refreshes += 1
        else:
            self.counters.status_polls += 1
        trading = self.rest.trading
        answer = await self.rest.read("get_order", lambda: trading.get_order_by_id(order_id))
        self.orders.observe(order_from_sdk(_expect(SdkOrder, answer)))


def _unheard() -> structlog.typing.FilteringBoundLogger:
    """A logger that drops all but critical lines: check_keys' outcome is its one line."""
    unheard: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(), wrapper_class=structlog.make_filtering_bound_logger(CRITICAL)
    )
    return unheard
