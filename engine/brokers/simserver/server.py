"""Running the sim-server: on 127.0.0.1 only, in the foreground (CLI) or in a thread (tests).

The simulator runs on the real clock and keeps its state in `--state`, so the server
can be restarted, and an engine killed and resumed, against the same order book. A
tick task runs the market between requests, publishes trade_updates and, once a
second, pushes a round of quotes to every market-data subscriber.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web

from ...clock import RealClock
from ..sim import MarketSpec, SimBroker
from .app import SimApp
from .faults import FaultInjector, FaultSpec

__all__ = ["HOST", "ServerThread", "SimServer", "serve"]

T = TypeVar("T")
HOST = "127.0.0.1"
log = structlog.get_logger("walkbook.simserver")
QUOTE_PERIOD_SECONDS = 1.0


class SimServer:
    """One simulator behind Alpaca's REST and websocket API on 127.0.0.1."""

    def __init__(
        self,
        state: Path,
        market: MarketSpec,
        faults: FaultSpec,
        keys: tuple[str, str],
        port: int = 0,
        tick_seconds: float = 0.2,
    ) -> None:
        self.state = state
        self.market = market
        self.faults = faults
        self.keys = keys
        self.port = port
        self.tick_seconds = tick_seconds
        self.app: SimApp | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> str:
        """Open the state file, bind the port (0: any free one) and start ticking; the URL."""
        broker = SimBroker.open(self.state, self.market, RealClock())
        self.app = app = SimApp(broker, FaultInjector(self.faults), self.keys)
        application = app.build()
        application.on_shutdown.append(self._close_sockets)
        self._runner = web.AppRunner(application, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._ticker = asyncio.create_task(self._tick(app))
        return self.url

    async def _tick(self, app: SimApp) -> None:
        next_quotes = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_seconds)
            try:
                app.broker.advance()
                app.updates.publish()
                if loop.time() >= next_quotes:
                    next_quotes = loop.time() + QUOTE_PERIOD_SECONDS
                    await app.market_data.push_all()
            except Exception:  # one bad tick must not stop the market for good
                log.exception("simserver.tick_failed")

    async def _close_sockets(self, _: web.Application) -> None:
        assert self.app is not None
        for sockets in (self.app.updates.sockets, self.app.market_data.sockets):
            for ws in list(sockets.outboxes):
                await ws.close()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with suppress(asyncio.CancelledError):
                await self._ticker
        if self._runner is not None:
            await self._runner.cleanup()
        if self.app is not None:
            self.app.broker.close()


def serve(server: SimServer) -> None:
    """Run in the foreground until SIGINT or SIGTERM; print the URL once listening."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        url = await server.start()
        print(f"listening on {url}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())


class ServerThread:
    """A SimServer on its own thread and loop, for tests and embedding; a context manager."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def app(self) -> SimApp:
        assert self.server.app is not None, "the server has started"
        return self.server.app

    def call(self, coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the server's loop (to inspect or steer it from a test)."""
        return asyncio.run_coroutine_threadsafe(coro_factory(), self._loop).result(10)
