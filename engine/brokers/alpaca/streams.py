"""alpaca-py's two websocket clients on a thread of their own.

`StockDataStream` (quotes, msgpack) and `TradingStream` (trade_updates, JSON) each run
a reconnect loop that sleeps up to 30 s between attempts and, before a first
subscription, spins on `sleep(0)`. They run on a daemon thread's event loop, so none
of that ever holds up the engine. Each client is subclassed only to report its health
(connected, refused with 406, lost) and, for quotes, to add symbols on its own loop:
the SDK's `subscribe_quotes` blocks the caller until the stream loop has sent the
message and mutates the handler table from the caller's thread. Quotes are subscribed a
symbol a message, so a plan's symbol limit (405) refuses only the symbols past it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterable
from contextlib import suppress
from typing import Any, TypeVar

import msgpack
import structlog
from alpaca.data.enums import DataFeed
from alpaca.data.live.stock import StockDataStream
from alpaca.data.models import Quote as SdkQuote
from alpaca.trading.stream import TradingStream

from .convert import UnsupportedOrder, order_from_update, quote_from_sdk
from .rest import AlpacaCounters
from .settings import AlpacaSettings
from .tracking import OrderTracker, QuoteBoard

__all__ = ["QuoteStream", "StreamThread", "UpdateStream"]

T = TypeVar("T")
CLOSE_SECONDS = 2.0
# a subscription past the plan's symbol limit (the free plan's IEX feed: 30 symbols)
SYMBOL_LIMIT_EXCEEDED = 405
log = structlog.get_logger("walkbook")


class StreamThread:
    """A daemon thread running one event loop that hosts the SDK's websocket clients."""

    def __init__(self, name: str = "walkbook-alpaca-streams") -> None:
        self.loop = asyncio.new_event_loop()
        self._loops: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a short coroutine (adding a subscription, say) on the stream loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a client's reconnect loop on the stream loop until `stop`."""
        self.loop.call_soon_threadsafe(self._spawn, coro)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._loops.add(self.loop.create_task(coro))

    def stop(self, clients: Iterable[StockDataStream | TradingStream], timeout: float) -> None:
        """Cancel the reconnect loops (a cancel is the one exit the SDK does not log as an
        error), close each socket, let websockets finish its closing handshakes, then stop
        the loop and join the thread."""

        async def shutdown() -> None:
            for client in clients:
                await client.stop_ws()  # from here on a closing socket is no loss
            for task in self._loops:
                task.cancel()
            await asyncio.gather(*self._loops, return_exceptions=True)
            for client in clients:
                with suppress(Exception):
                    await asyncio.wait_for(client.close(), CLOSE_SECONDS)
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others, timeout=CLOSE_SECONDS)

        with suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.submit(shutdown()).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._end_leftovers()
            self.loop.close()

    def _end_leftovers(self) -> None:
        """Cancel what the shutdown could not wait out (a closing handshake a busy server has
        not answered) and run it to its end: a task destroyed pending makes asyncio, and
        websockets, print tracebacks on the way out."""
        leftovers = asyncio.all_tasks(self.loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            self.loop.run_until_complete(asyncio.wait(leftovers, timeout=CLOSE_SECONDS))


class QuoteStream(StockDataStream):
    """One market-data connection for every symbol; reports connects, 406 refusals, drops.

    Alpaca refuses a subscription that would pass the plan's symbol limit with 405 and
    keeps the ones it had (https://docs.alpaca.markets/docs/streaming-market-data). Each
    symbol is asked for in its own message, and answers come in order, so when a 405
    arrives the server carries exactly the symbols its last `subscription` listed and is
    full: every other symbol is dropped from the stream for good (never asked for again,
    on this connection or the next), and the engine prices it from REST.
    """

    def __init__(
        self, settings: AlpacaSettings, board: QuoteBoard, counters: AlpacaCounters
    ) -> None:
        super().__init__(
            settings.key_id,
            settings.secret_key,
            feed=DataFeed(settings.feed),
            url_override=settings.data_stream_url,
        )
        self._board = board
        self._counters = counters
        self._carried: set[str] = set()  # what the server's last subscription message listed
        self._asked: set[str] = set()  # symbols subscribed on this connection, answered or not

    async def _auth(self) -> None:
        try:
            await super()._auth()
        except ValueError as exc:
            if "connection limit" in str(exc).lower():
                self._counters.quote_stream_refused += 1
                if not self._board.refused:
                    log.warning("alpaca.quote_stream_refused", error=str(exc), fallback="rest")
                self._board.stream_refused()
            raise
        self._carried, self._asked = set(), set()  # a new connection carries nothing yet
        self._counters.quote_stream_connects += 1
        self._board.stream_connected()
        log.info("alpaca.quote_stream_connected")

    async def close(self) -> None:
        if self._board.stream_up and self._should_run:
            log.info("alpaca.quote_stream_lost", fallback="rest")
        self._board.stream_lost()
        await super().close()

    async def add_quotes(self, symbols: Iterable[str]) -> None:
        """Subscribe more symbols on this stream's own loop (the SDK's way blocks the caller)."""
        handlers = self._handlers["quotes"]
        added = [s for s in symbols if s not in handlers]
        for symbol in added:
            handlers[symbol] = self._on_quote
        if added and self._running:
            await self._send_subscribe_msg()

    async def _send_subscribe_msg(self) -> None:
        """Ask for each quote symbol not yet asked for on this connection, one a message
        (symbols added while a message is being sent are asked for in the same call)."""
        while unasked := [s for s in self._handlers["quotes"] if s not in self._asked]:
            symbol = unasked[0]
            self._asked.add(symbol)
            message = msgpack.packb({"action": "subscribe", "quotes": [symbol]})
            await self._ws.send(message)  # type: ignore[attr-defined]  # SDK: `_ws = None`

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind, code = msg.get("T"), msg.get("code")
        if kind == "subscription":
            self._carried = set(msg.get("quotes") or ())
        elif kind == "error" and code == SYMBOL_LIMIT_EXCEEDED:
            self._drop_refused(str(msg.get("msg", "")))
            return
        await super()._dispatch(msg)

    def _drop_refused(self, message: str) -> None:
        """The stream is full: stop asking for every symbol it does not carry."""
        handlers = self._handlers["quotes"]
        refused = sorted(set(handlers) - self._carried)
        for symbol in refused:
            del handlers[symbol]
        if refused:
            log.warning(
                "alpaca.quote_symbols_refused", error=message, symbols=refused, fallback="rest"
            )

    async def _on_quote(self, quote: SdkQuote) -> None:
        self._counters.stream_quotes += 1
        self._board.observe(quote_from_sdk(quote, "stream"))


class UpdateStream(TradingStream):
    """trade_updates: every order event becomes the tracker's freshest view of that order."""

    def __init__(
        self, settings: AlpacaSettings, tracker: OrderTracker, counters: AlpacaCounters
    ) -> None:
        super().__init__(
            settings.key_id,
            settings.secret_key,
            paper=settings.paper,
            # the messages as Alpaca sent them: an execution's position_qty as its text
            raw_data=True,
            # the SDK annotates `url_override: str = None`; None means its own endpoint
            url_override=settings.trading_stream_url,  # type: ignore[arg-type]
        )
        self._tracker = tracker
        self._counters = counters
        self.subscribe_trade_updates(self._on_update)

    async def _start_ws(self) -> None:
        await super()._start_ws()  # type: ignore[no-untyped-call]  # unannotated in the SDK
        self._counters.trade_stream_connects += 1
        self._tracker.stream_connected()
        log.info("alpaca.trade_stream_connected")

    async def close(self) -> None:
        if self._tracker.stream_up and self._should_run:
            log.info("alpaca.trade_stream_lost", fallback="polling")
        self._tracker.stream_lost()
        await super().close()

    async def _on_update(self, message: dict[str, Any]) -> None:
        self._counters.trade_updates += 1
        with suppress(UnsupportedOrder):
            self._tracker.observe(order_from_update(message["data"]))
