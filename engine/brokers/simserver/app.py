"""Alpaca's REST API (the paths alpaca-py calls) over the simulator, with Alpaca's guards.

Requests pass, in order: the key check (401 without keys, 403 with wrong ones), the
account's rate limit (429 past `rate_limit_per_minute` for trading paths, past
`data_rate_limit_per_minute` for market data; every answer from there on carries Alpaca's
X-Ratelimit-* headers), the fault knobs, then the handler; after each one the
trade_updates stream is told what changed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from ...broker import BrokerOrder, BrokerOrderStatus, OrderRequest, TimeInForce
from ...errors import BrokerError, BrokerRejected, OrderNotFound, UnknownSymbol
from ...intents import OrderSide
from ...numbers import ZERO, decimal_text
from ..sim import SimBroker
from .faults import FaultInjector
from .ratelimit import RateLimits
from .streams import MarketData, TradeUpdates
from .wire import (
    IdMap,
    account_json,
    asset_json,
    clock_json,
    error,
    error_for,
    gateway_error,
    order_json,
    position_json,
    quote_json,
)

__all__ = ["SimApp"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STREAM_PATHS = frozenset({"/stream", "/v2/iex", "/v2/sip", "/v2/test"})
STATS_PATH = "/_sim/stats"
MAX_ORDERS_LISTED = 500
# Order types the server accepts and never executes: such an order rests, open, as another
# system's stop orders rest in a real account, so walkbook meets orders in the account
# that are not its own and not of a type it places.
RESTING_TYPES = frozenset({"stop", "stop_limit"})
# Alpaca's opg and cls (auction) orders are not simulated: refused, never silently made DAY
SIMULATED_TIME_IN_FORCE: tuple[TimeInForce, ...] = ("day", "gtc", "ioc", "fok")


class _BadRequest(BrokerRejected):
    """A request body Alpaca would refuse with 422 before looking at the account."""


def _timestamp(value: str | None, name: str) -> datetime | None:
    """An RFC 3339 query parameter (UTC when it names no zone), or None when absent."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _BadRequest(f"invalid {name}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _decimal(value: Any, name: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _BadRequest(f"invalid {name}") from None
    if not number.is_finite() or number <= 0:
        raise _BadRequest(f"{name} must be > 0")
    return number


def _order_request(body: dict[str, Any]) -> tuple[OrderRequest, str]:
    """The order a `POST /v2/orders` body asks for, and its wire type; Alpaca's 422 for a
    body it would refuse before looking at the account."""
    order_type = body.get("type") or body.get("order_type")
    if order_type not in ("limit", "market", *RESTING_TYPES):
        raise _BadRequest("type must be market, limit, stop or stop_limit")
    if ("qty" in body) == ("notional" in body):
        raise _BadRequest("qty or notional is required, not both")
    notional = None if "notional" not in body else _decimal(body["notional"], "notional")
    if notional is not None and order_type != "market":
        raise _BadRequest("the simulator takes notional orders as market orders only")
    tif = body.get("time_in_force")
    if tif not in SIMULATED_TIME_IN_FORCE:
        raise _BadRequest(f"time_in_force must be one of {', '.join(SIMULATED_TIME_IN_FORCE)}")
    qty = ZERO if notional is not None else _decimal(body["qty"], "qty")
    if (notional is not None or qty != qty.to_integral_value()) and tif != "day":
        raise _BadRequest("fractional orders must be DAY orders")
    try:
        side = OrderSide(str(body.get("side", "")).lower())
    except ValueError:
        raise _BadRequest("side must be buy or sell") from None
    limit = body.get("limit_price")
    if limit is None and order_type in ("limit", "stop_limit"):
        raise _BadRequest(f"limit_price is required for {order_type} orders")
    order_request = OrderRequest(
        client_order_id=str(body.get("client_order_id") or uuid.uuid4()),
        symbol=str(body.get("symbol", "")).upper(),
        side=side,
        qty=qty,
        # a resting order keeps the simulated type it would trade as once triggered
        order_type="limit" if order_type in ("limit", "stop_limit") else "market",
        limit_price=None if limit is None else _decimal(limit, "limit_price"),
        time_in_force=tif,
        notional=notional,
    )
    return order_request, order_type


class SimApp:
    """The aiohttp application: one SimBroker, one key pair, one set of faults."""

    def __init__(self, broker: SimBroker, faults: FaultInjector, keys: tuple[str, str]) -> None:
        self.broker = broker
        self.faults = faults
        self.keys = keys
        self.ids = IdMap()
        self.ids.learn(list(broker.order_versions()))
        self.updates = TradeUpdates(broker, self.ids, keys, faults)
        self.stats: Counter[str] = Counter()
        self.market_data = MarketData(broker, keys, faults, self.stats)
        self.limits = RateLimits(faults.spec)
        # sim-style id -> a resting order (its order_type stands in), and what its JSON says
        self.resting: dict[str, BrokerOrder] = {}
        self._resting_fields: dict[str, dict[str, Any]] = {}

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_routes(
            [
                web.post("/v2/orders", self.submit),
                web.get("/v2/orders", self.list_orders),
                web.get("/v2/orders:by_client_order_id", self.by_client_order_id),
                web.get("/v2/orders/{order_id}", self.get_order),
                web.patch("/v2/orders/{order_id}", self.replace),
                web.delete("/v2/orders/{order_id}", self.cancel),
                web.get("/v2/positions", self.positions),
                web.get("/v2/positions/{symbol}", self.position),
                web.delete("/v2/positions/{symbol}", self.close_position),
                web.get("/v2/account", self.account),
                web.get("/v2/clock", self.clock),
                web.get("/v2/assets", self.assets),
                web.get("/v2/assets/{symbol}", self.asset),
                web.get("/v2/stocks/quotes/latest", self.latest_quotes),
                web.get("/stream", self.updates.handle),
                *(web.get(path, self.market_data.handle) for path in STREAM_PATHS - {"/stream"}),
                web.get(STATS_PATH, self.stats_view),
            ]
        )
        return app

    # -- the guard: keys, rate limit, faults ----------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in STREAM_PATHS:
            return await handler(request)
        key = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        if not key or not secret:
            self.stats["unauthorized"] += 1
            return error(401, 40110000, "request is not authorized")
        if (key, secret) != self.keys:
            self.stats["forbidden"] += 1
            return error(403, None, "forbidden.")
        if request.path == STATS_PATH:
            return await handler(request)
        self.stats["requests"] += 1
        resource = request.match_info.route.resource
        route = request.path if resource is None else resource.canonical
        self.stats[f"{request.method} {route}"] += 1
        verdict = self.limits.take(request.path)
        if not verdict.admitted:
            self.stats["rate_limited"] += 1
            self.stats[f"rate_limited_{verdict.api}"] += 1
            return verdict.stamp(error(429, 42910000, "rate limit exceeded"))
        faulted = await self._inject(request)
        if faulted is not None:  # an injected 429 names no reset: no headers
            return faulted
        try:
            response = await handler(request)
        except (BrokerError, UnknownSymbol) as exc:
            response = error_for(exc)
        finally:
            self.updates.publish()
        return verdict.stamp(response)

    async def _inject(self, request: web.Request) -> web.StreamResponse | None:
        spec, faults = self.faults.spec, self.faults
        if not spec.applies_to(request.method, request.path):
            return None
        if spec.latency_seconds:
            await request.read()  # a slow server has the request: it acts even if the client left
            await asyncio.sleep(spec.latency_seconds)
        if faults.roll("http_429", spec.http_429_probability):
            return error(429, 42910000, "rate limit exceeded")
        if faults.roll("http_5xx", spec.http_5xx_probability):
            return gateway_error(502)
        if faults.roll("drop", spec.drop_probability) and request.transport is not None:
            request.transport.abort()
            return web.Response(status=499)
        return None

    # -- orders -----------------------------------------------------------------------

    def _json(self, order: BrokerOrder, now: datetime) -> dict[str, Any]:
        return order_json(order, self.ids, now) | self._resting_fields.get(order.id, {})

    def _order(self, order: BrokerOrder) -> web.Response:
        return web.json_response(self._json(order, datetime.now(UTC)))

    def _snapshot(self, sim_id: str) -> BrokerOrder:
        resting = self.resting.get(sim_id)
        return self.broker.order_snapshot(sim_id) if resting is None else resting

    def _sim_id(self, request: web.Request) -> str:
        sim_id = self.ids.sim(request.match_info["order_id"])
        if sim_id is None:
            raise OrderNotFound("order not found")
        return sim_id

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _BadRequest("request body format is invalid") from None
        if not isinstance(body, dict):
            raise _BadRequest("request body format is invalid")
        return body

    async def submit(self, request: web.Request) -> web.Response:
        """`POST /v2/orders`: refused at once when malformed (422) or unaffordable (403);
        otherwise `accepted`, with what happens next reported on trade_updates."""
        body = await self._body(request)
        order_request, order_type = _order_request(body)
        try:
            if order_type in RESTING_TYPES:
                await self.broker.get_asset(order_request.symbol)
                stop = _decimal(body.get("stop_price"), "stop_price")
                return self._order(self._rest(order_request, order_type, stop))
            order = await self.broker.submit_order(order_request)
        except UnknownSymbol:
            return error(422, 40010001, f"could not find us_equity asset {order_request.symbol}")
        if self.faults.roll("submit_504", self.faults.spec.submit_504_probability):
            return gateway_error(504)
        return self._order(order)

    async def list_orders(self, request: web.Request) -> web.Response:
        """Alpaca's listing: by submission time, `after` it (exclusive) when given, newest
        first unless `direction=asc`, at most `limit` (itself at most 500)."""
        status = request.query.get("status", "open")
        try:
            limit = min(int(request.query.get("limit", "50")), MAX_ORDERS_LISTED)
        except ValueError:
            raise _BadRequest("limit must be a whole number") from None
        after = _timestamp(request.query.get("after"), "after")
        self.broker.catch_up()
        now, seen = datetime.now(UTC), self.ids.first_seen
        orders = [self.broker.order_snapshot(i) for i in self.broker.order_versions()]
        orders += self.resting.values()
        if status != "all":
            orders = [o for o in orders if o.is_terminal == (status == "closed")]
        symbols = {s.strip().upper() for s in request.query.get("symbols", "").split(",")}
        if symbols - {""}:
            orders = [o for o in orders if o.symbol in symbols]
        orders.sort(key=lambda o: seen.setdefault(o.id, now))
        if after is not None:
            orders = [o for o in orders if seen[o.id] > after]
        if request.query.get("direction", "desc") == "desc":
            orders.reverse()
        return web.json_response([self._json(o, now) for o in orders[:limit]])

    async def get_order(self, request: web.Request) -> web.Response:
        sim_id = self._sim_id(request)
        resting = self.resting.get(sim_id)
        return self._order(await self.broker.get_order(sim_id) if resting is None else resting)

    def _rest(self, request: OrderRequest, order_type: str, stop_price: Decimal) -> BrokerOrder:
        """Accept an order of a `RESTING_TYPES` type: open, never filled, never triggered."""
        sim_id = f"resting-{len(self.resting) + 1}"
        self.ids.wire(sim_id)
        order = self.resting[sim_id] = BrokerOrder.accepted(sim_id, request)
        self._resting_fields[sim_id] = {
            "type": order_type,
            "order_type": order_type,
            "stop_price": decimal_text(stop_price),
        }
        return order

    async def by_client_order_id(self, request: web.Request) -> web.Response:
        order = await self.broker.get_order_by_client_id(request.query.get("client_order_id", ""))
        if order is None:
            raise OrderNotFound("order not found")
        return self._order(order)

    async def replace(self, request: web.Request) -> web.Response:
        sim_id = self._sim_id(request)
        body = await self._body(request)
        if self.faults.roll("replace_filled", self.faults.spec.replace_filled_probability):
            self.broker.fill_now(sim_id)
        old = self.broker.order_snapshot(sim_id)
        limit = body.get("limit_price", old.limit_price)
        unchanged = ("qty" not in body or _decimal(body["qty"], "qty") == old.qty) and (
            limit is None or _decimal(limit, "limit_price") == old.limit_price
        )
        if unchanged:
            return error(403, 40310000, "order parameters are not changed")
        order = await self.broker.replace_order(
            sim_id,
            _decimal(body["qty"], "qty") if "qty" in body else old.qty,
            _decimal(limit, "limit_price"),
            str(body.get("client_order_id") or uuid.uuid4()),
        )
        if self.faults.roll("replace_rejected", self.faults.spec.replace_rejected_probability):
            self.broker.fill_now(sim_id)
        return self._order(order)

    async def cancel(self, request: web.Request) -> web.Response:
        """204, or 422 for an order already final, as Alpaca answers a cancel that lost the
        race to a fill (it answered 204 there until 2021)."""
        sim_id = self._sim_id(request)
        status = self._snapshot(sim_id).status
        if status.is_terminal:
            return error(422, 42210000, f'order is already in "{status.value}" state')
        if sim_id in self.resting:
            self.resting[sim_id] = replace(self.resting[sim_id], status=BrokerOrderStatus.CANCELED)
        else:
            await self.broker.cancel_order(sim_id)
        return web.Response(status=204)

    # -- account, market ------------------------------------------------------------

    async def positions(self, request: web.Request) -> web.Response:
        return web.json_response([position_json(p) for p in self.broker.position_views()])

    async def position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"].upper()
        await self.broker.get_position(symbol)  # an unknown symbol is refused
        held = self.broker.position_views(symbol)
        if not held:
            return error(404, 40410000, "position does not exist")
        return web.json_response(position_json(held[0]))

    async def close_position(self, request: web.Request) -> web.Response:
        """`DELETE /v2/positions/{symbol}?qty=`: a market sell of that much of the position,
        fractions allowed on any asset, under a client order id of the server's."""
        symbol = request.match_info["symbol"].upper()
        if not await self.broker.get_position(symbol):
            return error(404, 40410000, "position does not exist")
        if "qty" not in request.query:
            raise _BadRequest("the simulator closes a position by qty only")
        qty = _decimal(request.query["qty"], "qty")
        return self._order(await self.broker.close_position(symbol, qty))

    async def account(self, request: web.Request) -> web.Response:
        return web.json_response(account_json(await self.broker.get_account()))

    async def clock(self, request: web.Request) -> web.Response:
        return web.json_response(clock_json(await self.broker.get_clock()))

    async def asset(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"].upper()
        return web.json_response(asset_json(await self.broker.get_asset(symbol)))

    async def assets(self, request: web.Request) -> web.Response:
        """`GET /v2/assets`: every listed asset, filtered as Alpaca filters (status: all by
        default; asset_class: us_equity by default, the only class simulated; exchange;
        attributes: any of them, which no simulated asset has). A value Alpaca does not
        list is refused, so a typo cannot pass as an empty filter.
        https://docs.alpaca.markets/docs/working-with-assets"""
        status = request.query.get("status")
        asset_class = request.query.get("asset_class", "us_equity")
        if status not in (None, "active", "inactive"):
            raise _BadRequest("invalid status")
        if asset_class not in ("us_equity", "us_option", "crypto"):
            raise _BadRequest("invalid asset_class")
        if asset_class != "us_equity" or request.query.get("attributes"):
            return web.json_response([])
        listed = [asset_json(asset) for asset in self.broker.assets()]
        exchange = request.query.get("exchange")
        return web.json_response(
            [
                asset
                for asset in listed
                if status in (None, asset["status"]) and exchange in (None, asset["exchange"])
            ]
        )

    async def latest_quotes(self, request: web.Request) -> web.Response:
        symbols = [s for s in request.query.get("symbols", "").upper().split(",") if s]
        if not symbols:
            return error(400, 40010000, "symbols is required")
        quotes = await self.market_data.rest_quotes(symbols)
        return web.json_response({"quotes": {s: quote_json(q) for s, q in quotes.items()}})

    async def stats_view(self, request: web.Request) -> web.Response:
        """Not Alpaca's: what the server saw and injected, for tests and operators."""
        return web.json_response(
            {
                **self.stats,
                "injected": dict(self.faults.injected),
                "data_stream_refused": self.market_data.refused,
                "orders": len(self.broker.order_versions()),
            }
        )
