"""The two websockets alpaca-py connects to, served from the simulator.

trade_updates (`/stream`, JSON): authenticate, listen, then one message per order
change, found by diffing the simulator's per-order change counters after every
request and every tick. Market data (`/v2/<feed>`, msgpack): connected, auth (at most
`data_stream_connections` per key, else Alpaca's 406), subscribe, then quotes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import timedelta
from typing import Any

import msgpack
from aiohttp import WSMsgType, web

from ...broker import Quote
from ...errors import UnknownSymbol
from ...numbers import ZERO, decimal_text
from ..sim import SimBroker
from ..sim.orders import Activity
from .faults import FaultInjector
from .wire import IdMap, order_json, pack, quote_frame

__all__ = ["MarketData", "TradeUpdates"]

CLOSE = b""  # an outbox entry meaning: close the socket once everything before it is sent


class Sockets:
    """Open websockets with an outbox each; the drop fault closes each one after N seconds."""

    def __init__(self, faults: FaultInjector) -> None:
        self.faults = faults
        self.outboxes: dict[web.WebSocketResponse, asyncio.Queue[bytes]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.outboxes[ws] = asyncio.Queue()
        after = self.faults.spec.stream_drop_after_seconds
        if after is not None:
            asyncio.get_running_loop().call_later(after, self._drop, ws)
        return ws

    def _drop(self, ws: web.WebSocketResponse) -> None:
        if not ws.closed:
            self.faults.injected["stream_drop"] += 1
            self.spawn(ws.close())

    async def pump(self, ws: web.WebSocketResponse, binary: bool) -> None:
        """Send what is queued for `ws` until it closes."""
        outbox = self.outboxes[ws]
        try:
            while not ws.closed:
                frame = await outbox.get()
                if frame == CLOSE:
                    await ws.close()
                    return
                await (ws.send_bytes(frame) if binary else ws.send_str(frame.decode()))
        except (ConnectionError, RuntimeError):
            pass

    def post(self, ws: web.WebSocketResponse, frame: bytes) -> None:
        outbox = self.outboxes.get(ws)
        if outbox is not None and not ws.closed:
            outbox.put_nowait(frame)

    def forget(self, ws: web.WebSocketResponse) -> None:
        self.outboxes.pop(ws, None)


async def _serve(
    ws: web.WebSocketResponse,
    sockets: Sockets,
    binary: bool,
    on_message: Callable[[Any], None],
    decode: Callable[[Any], Any],
) -> None:
    """Run `ws`: its outbox pump, and each incoming message decoded and handled in turn."""
    pump = asyncio.ensure_future(sockets.pump(ws, binary))
    try:
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                on_message(decode(message.data))
    finally:
        pump.cancel()
        sockets.forget(ws)


class TradeUpdates:
    """`/stream`: Alpaca's trade_updates, one JSON message per observed order change."""

    def __init__(
        self, broker: SimBroker, ids: IdMap, keys: tuple[str, str], faults: FaultInjector
    ) -> None:
        self.broker = broker
        self.ids = ids
        self.keys = keys
        self.sockets = Sockets(faults)
        self.listening: set[web.WebSocketResponse] = set()
        broker.activity = []

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.sockets.open(request)
        authorized = False

        def on_message(payload: Any) -> None:
            nonlocal authorized
            if not isinstance(payload, dict):
                return
            action, data = payload.get("action"), payload.get("data") or {}
            if action == "authenticate":
                authorized = (data.get("key_id"), data.get("secret_key")) == self.keys
                status = "authorized" if authorized else "unauthorized"
                reply: dict[str, Any] = {"action": "authenticate", "status": status}
                if not authorized:
                    reply["message"] = "access key verification failed"
                self._send(ws, {"stream": "authorization", "data": reply})
                if not authorized:
                    self.sockets.post(ws, CLOSE)
            elif action == "listen" and authorized:
                streams = [s for s in data.get("streams", []) if s == "trade_updates"]
                if streams:
                    self.listening.add(ws)
                self._send(ws, {"stream": "listening", "data": {"streams": streams}})

        try:
            await _serve(ws, self.sockets, True, on_message, json.loads)
        finally:
            self.listening.discard(ws)
        return ws

    def _send(self, ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
        self.sockets.post(ws, json.dumps(message).encode())

    def publish(self) -> None:
        """Send what the simulator recorded since the last call, in order: one message per
        status change and one per execution (with the position right after it)."""
        activity, self.broker.activity = self.broker.activity or [], []
        for change in activity:
            self._broadcast(self._event(change))

    def _event(self, change: Activity) -> dict[str, Any]:
        data: dict[str, Any] = {
            "event": change.event,
            "order": order_json(change.order, self.ids, change.at),
            "timestamp": change.at.isoformat(),
        }
        if change.qty is not None and change.price is not None:
            data.update(
                execution_id=str(uuid.uuid4()),
                qty=decimal_text(change.qty),
                price=decimal_text(change.price),
                position_qty=decimal_text(change.position_qty or ZERO),
            )
        return {"stream": "trade_updates", "data": data}

    def _broadcast(self, message: dict[str, Any]) -> None:
        frame = json.dumps(message).encode()
        for ws in list(self.listening):
            self.sockets.post(ws, frame)


class MarketData:
    """`/v2/<feed>`: Alpaca's market-data stream of quotes, one connection per key allowed.

    On `/v2/iex` a connection holds at most `iex_symbol_limit` quote symbols (the free
    plan's 30): a subscription past it is refused whole with 405 and the connection keeps
    what it had, as Alpaca does (https://docs.alpaca.markets/docs/streaming-market-data).
    Each refusal counts as `symbol_limit_refused` in the server's stats.
    """

    iex_path = "/v2/iex"  # the free plan's feed; /v2/sip and /v2/test take any number

    def __init__(
        self,
        broker: SimBroker,
        keys: tuple[str, str],
        faults: FaultInjector,
        stats: Counter[str],
    ) -> None:
        self.broker = broker
        self.keys = keys
        self.faults = faults
        self.stats = stats
        self.sockets = Sockets(faults)
        self.subscribed: dict[web.WebSocketResponse, set[str]] = {}
        self.refused = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.sockets.open(request)
        self._send(ws, [{"T": "success", "msg": "connected"}])
        authorized = False
        limit = self.faults.spec.iex_symbol_limit if request.path == self.iex_path else None

        def on_message(payload: Any) -> None:
            nonlocal authorized
            if not isinstance(payload, dict):
                return
            action = payload.get("action")
            if action == "auth":
                authorized = self._authenticate(ws, payload)
            elif action == "subscribe" and authorized:
                added = set(payload.get("quotes", [])) - self.subscribed[ws]
                if limit is not None and len(self.subscribed[ws] | added) > limit:
                    self.stats["symbol_limit_refused"] += 1
                    self._send(ws, [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}])
                    return
                self.subscribed[ws] |= added
                self._send(ws, [self._subscription(ws)])
                if added:
                    self.sockets.spawn(self._push({ws: added}))

        try:
            await _serve(ws, self.sockets, True, on_message, msgpack.unpackb)
        finally:
            self.subscribed.pop(ws, None)
        return ws

    def _authenticate(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> bool:
        if (payload.get("key"), payload.get("secret")) != self.keys:
            self._send(ws, [{"T": "error", "code": 402, "msg": "auth failed"}])
            self.sockets.post(ws, CLOSE)
            return False
        if len(self.subscribed) >= self.faults.spec.data_stream_connections:
            self.refused += 1
            self._send(ws, [{"T": "error", "code": 406, "msg": "connection limit exceeded"}])
            self.sockets.post(ws, CLOSE)
            return False
        self.subscribed[ws] = set()
        self._send(ws, [{"T": "success", "msg": "authenticated"}])
        return True

    def _subscription(self, ws: web.WebSocketResponse) -> dict[str, Any]:
        return {
            "T": "subscription",
            "trades": [],
            "quotes": sorted(self.subscribed.get(ws, ())),
            "bars": [],
        }

    def _send(self, ws: web.WebSocketResponse, messages: list[dict[str, Any]]) -> None:
        self.sockets.post(ws, pack(messages))

    async def push_all(self) -> None:
        """One round of quotes for every subscribed symbol (the server's tick calls this)."""
        await self._push(self.subscribed)

    async def _push(self, wanted: dict[web.WebSocketResponse, set[str]]) -> None:
        symbols = sorted(set().union(*wanted.values())) if wanted else []
        quotes = dict(zip(symbols, await asyncio.gather(*map(self.quote, symbols)), strict=True))
        for ws, names in list(wanted.items()):
            batch = [q for s in sorted(names) if (q := quotes.get(s)) is not None]
            if batch:
                self.sockets.post(ws, quote_frame(batch))

    async def quote(self, symbol: str, rest: bool = False) -> Quote | None:
        """The simulator's stream (or REST) quote, aged by the stale-quote knob."""
        try:
            quote = await (
                self.broker.latest_quote(symbol) if rest else self.broker.stream_quote(symbol, 0)
            )
        except UnknownSymbol:
            return None
        return None if quote is None else self._aged(quote)

    async def rest_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        """REST quotes of many symbols in one simulator call (one latency, one save, as
        Alpaca answers a multi-symbol request once), each aged by the stale-quote knob."""
        quotes = await self.broker.latest_quotes(symbols)
        return {symbol: self._aged(quote) for symbol, quote in quotes.items()}

    def _aged(self, quote: Quote) -> Quote:
        age = self.faults.spec.quote_age(quote.symbol)
        return replace(quote, at=quote.at - timedelta(seconds=age)) if age else quote
