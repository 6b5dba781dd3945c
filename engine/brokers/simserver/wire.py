"""Alpaca's JSON (and msgpack) shapes for the simulator's facts, and Alpaca's error bodies.

Order ids on the wire are UUIDs, as alpaca-py insists; each simulator id maps to one
by uuid5, so the mapping survives a restart from the state file.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgpack
from aiohttp import web

from ...broker import Asset, BrokerOrder, MarketClock, Quote
from ...errors import (
    BrokerError,
    BrokerRejected,
    DuplicateClientOrderId,
    NotReplaceable,
    OrderNotFound,
    OutcomeUnknown,
    UnknownSymbol,
)
from ...numbers import decimal_text
from ..sim.ledger import PositionView, SimAccount

__all__ = [
    "IdMap",
    "account_json",
    "asset_json",
    "clock_json",
    "error",
    "error_for",
    "gateway_error",
    "order_json",
    "pack",
    "position_json",
    "quote_frame",
    "quote_json",
]

# an order Alpaca has taken but not yet sent to the exchange: a replace is refused with its
# own message (alpacahq/alpaca-trade-api-python#306)
UNROUTED = frozenset({"accepted", "pending_new"})
NAMESPACE = uuid.UUID("2f0c1a52-6b7e-4d8e-9a51-3c1d7e0b9a11")
# what an insufficient buying power or insufficient qty refusal shows beside its message
REFUSAL_FIGURES = (
    "buying_power",
    "cost_basis",
    "available",
    "existing_qty",
    "held_for_orders",
    "related_orders",
    "symbol",
)
GATEWAY_HTML = "<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>"


def _uuid(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, name))


def _text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


class IdMap:
    """Simulator order ids <-> wire UUIDs, and when the server first saw each order."""

    def __init__(self) -> None:
        self._sim: dict[str, str] = {}
        self.first_seen: dict[str, datetime] = {}

    def wire(self, sim_id: str) -> str:
        wire_id = _uuid(sim_id)
        self._sim[wire_id] = sim_id
        return wire_id

    def sim(self, wire_id: str) -> str | None:
        return self._sim.get(wire_id)

    def learn(self, sim_ids: list[str]) -> None:
        """Orders of an earlier run, first seen now, a microsecond apart in the order they
        were submitted: a listing pages through them (`after`) as through orders seen one
        by one."""
        now = datetime.now(UTC)
        for index, sim_id in enumerate(sim_ids):
            self.wire(sim_id)
            self.first_seen.setdefault(sim_id, now + timedelta(microseconds=index))


def order_json(order: BrokerOrder, ids: IdMap, now: datetime) -> dict[str, Any]:
    created = ids.first_seen.setdefault(order.id, now).isoformat()
    final_at = now.isoformat() if order.is_terminal else None
    status = order.status.value
    return {
        "id": ids.wire(order.id),
        "client_order_id": order.client_order_id,
        "created_at": created,
        "updated_at": now.isoformat(),
        "submitted_at": created,
        "filled_at": final_at if status == "filled" else None,
        "expired_at": final_at if status == "expired" else None,
        "canceled_at": final_at if status == "canceled" else None,
        "failed_at": final_at if status == "rejected" else None,
        "replaced_at": final_at if status == "replaced" else None,
        "replaced_by": None if order.replaced_by is None else ids.wire(order.replaced_by),
        "replaces": None if order.replaces is None else ids.wire(order.replaces),
        "asset_id": _uuid(f"asset/{order.symbol}"),
        "symbol": order.symbol,
        "asset_class": "us_equity",
        "notional": _text(order.notional),
        "qty": None if order.notional is not None else decimal_text(order.qty),  # as Alpaca
        "filled_qty": decimal_text(order.filled_qty),
        "filled_avg_price": _text(order.filled_avg_price),
        "order_class": "simple",
        "order_type": order.order_type,
        "type": order.order_type,
        "side": order.side.value,
        "time_in_force": order.time_in_force,
        "limit_price": _text(order.limit_price),
        "stop_price": None,
        "status": status,
        "extended_hours": False,
        "legs": None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
    }


def asset_json(asset: Asset) -> dict[str, Any]:
    return {
        "id": _uuid(f"asset/{asset.symbol}"),
        "class": "us_equity",
        "exchange": "NASDAQ",
        "symbol": asset.symbol,
        "name": f"{asset.symbol} (simulated)",
        "status": "active" if asset.tradable else "inactive",
        "tradable": asset.tradable,
        "marginable": True,
        "shortable": asset.shortable,
        "easy_to_borrow": asset.easy_to_borrow,
        "fractionable": asset.fractionable,
        "min_order_size": "1",
        "min_trade_increment": "0.000000001" if asset.fractionable else "1",
        "price_increment": _text(asset.price_increment),
    }


def position_json(position: PositionView) -> dict[str, Any]:
    """Alpaca's position object (a short: negative qty, market value and cost basis; a
    positive average entry price). Intraday figures equal the unrealized ones: the whole
    simulation is today (engine/brokers/sim/ledger.py)."""
    return {
        "asset_id": _uuid(f"asset/{position.symbol}"),
        "symbol": position.symbol,
        "exchange": "NASDAQ",
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": decimal_text(position.avg_entry_price),
        "qty": decimal_text(position.qty),
        "qty_available": decimal_text(position.qty_available),
        "side": position.side,
        "market_value": decimal_text(position.market_value),
        "cost_basis": decimal_text(position.cost_basis),
        "unrealized_pl": decimal_text(position.unrealized_pl),
        "unrealized_plpc": decimal_text(position.unrealized_plpc),
        "unrealized_intraday_pl": decimal_text(position.unrealized_pl),
        "unrealized_intraday_plpc": decimal_text(position.unrealized_plpc),
        "current_price": decimal_text(position.current_price),
        "lastday_price": decimal_text(position.lastday_price),
        "change_today": decimal_text(position.change_today),
    }


def account_json(account: SimAccount) -> dict[str, Any]:
    """Alpaca's account object (https://alpaca.markets/docs/api-references/trading-api/account/):
    equity = cash + long_market_value + short_market_value (the latter negative), and
    portfolio_value, its deprecated alias. Nothing is blocked, no transfer is pending and
    options are not traded."""
    return {
        "id": _uuid("account"),
        "account_number": "SIM000001",
        "status": "ACTIVE",
        "currency": "USD",
        "cash": decimal_text(account.cash),
        "buying_power": decimal_text(account.buying_power),
        "regt_buying_power": decimal_text(account.regt_buying_power),
        "non_marginable_buying_power": _text(account.non_marginable_buying_power),
        "options_buying_power": "0",
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "pending_transfer_out": "0",
        "equity": _text(account.equity),
        "last_equity": decimal_text(account.last_equity),
        "portfolio_value": _text(account.equity),
        "long_market_value": decimal_text(account.long_market_value),
        "short_market_value": decimal_text(account.short_market_value),
        "initial_margin": decimal_text(account.initial_margin),
        "maintenance_margin": decimal_text(account.maintenance_margin),
        "last_maintenance_margin": decimal_text(account.last_maintenance_margin),
        "sma": "0",
        "multiplier": decimal_text(account.multiplier),
        "shorting_enabled": account.shorting_enabled,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "trade_suspended_by_user": False,
        "created_at": account.created_at.isoformat(),
        "options_approved_level": 0,
        "options_trading_level": 0,
    }


def clock_json(clock: MarketClock) -> dict[str, Any]:
    """A session that closes in six hours while open, or opens in one hour while closed."""
    at = clock.at
    next_close = at + timedelta(hours=6 if clock.is_open else 7)
    next_open = at + timedelta(days=1 if clock.is_open else 0, hours=0 if clock.is_open else 1)
    return {
        "timestamp": at.isoformat(),
        "is_open": clock.is_open,
        "next_open": next_open.isoformat(),
        "next_close": next_close.isoformat(),
    }


def _quote_fields(quote: Quote) -> dict[str, Any]:
    return {
        "bp": float(quote.bid),
        "bs": float(quote.bid_size),
        "bx": "V",
        "ap": float(quote.ask),
        "as": float(quote.ask_size),
        "ax": "V",
        "c": ["R"],
        "z": "C",
    }


def quote_json(quote: Quote) -> dict[str, Any]:
    """One entry of GET /v2/stocks/quotes/latest."""
    return {"t": quote.at.isoformat(), **_quote_fields(quote)}


def pack(messages: list[dict[str, Any]]) -> bytes:
    """One market-data websocket frame: a msgpack array of messages."""
    frame: bytes = msgpack.packb(messages)
    return frame


def quote_frame(quotes: list[Quote]) -> bytes:
    """Quote messages as the data stream sends them: `t` is a msgpack Timestamp."""
    return pack(
        [
            {
                "T": "q",
                "S": q.symbol,
                "t": msgpack.Timestamp.from_datetime(q.at),
                **_quote_fields(q),
            }
            for q in quotes
        ]
    )


def error(status: int, code: int | None, message: str) -> web.Response:
    """Alpaca's error body: `{"code": int, "message": str}` (code omitted where Alpaca omits it)."""
    body: dict[str, Any] = (
        {"message": message} if code is None else {"code": code, "message": message}
    )
    return web.json_response(body, status=status)


def gateway_error(status: int) -> web.Response:
    """What a load balancer in front of Alpaca answers: HTML, not JSON."""
    return web.Response(
        status=status, text=GATEWAY_HTML.format(status=status), content_type="text/html"
    )


def error_for(exc: BrokerError | UnknownSymbol) -> web.Response:
    """The answer Alpaca gives for each refusal or failure the simulator raises."""
    if isinstance(exc, DuplicateClientOrderId):
        return error(422, 40010001, "client_order_id must be unique")
    if isinstance(exc, UnknownSymbol):
        return error(404, 40410000, f"asset not found for {exc.fields.get('symbol', '')}".strip())
    if isinstance(exc, OrderNotFound):
        return error(404, 40410000, "order not found")
    if isinstance(exc, NotReplaceable):
        if "fractional" in exc.message:
            return error(422, 42210000, "order is not replaceable")
        if exc.fields.get("status") in UNROUTED:  # Alpaca's words for an order not yet routed
            return error(422, 42210000, "unable to replace order, order isn't sent to exchange yet")
        return error(422, 42210000, "unable to replace order, order isn't sufficiently open")
    if isinstance(exc, OutcomeUnknown):
        return gateway_error(504)
    if isinstance(exc, BrokerRejected):
        if exc.reason in ("insufficient_funds", "insufficient_position"):
            # Alpaca's 403 carries the figures it counted beside code and message
            figures = {k: v for k, v in exc.fields.items() if k in REFUSAL_FIGURES}
            if "related_orders" in figures:
                figures["related_orders"] = [_uuid(i) for i in figures["related_orders"]]
            body = {"code": 40310000, "message": exc.message, **figures}
            return web.json_response(body, status=403)
        if exc.reason == "below_minimum":  # an order worth under Alpaca's $1 minimum
            return error(403, 40310000, exc.message)
        return error(422, 42210000, exc.message)
    return error(503, 50310000, "service unavailable")
