"""alpaca-py's models to and from the engine's plain broker data.

The SDK carries prices and quantities as floats or strings; they become Decimals via
their text, so 187.15 stays 187.15. Statuses the engine does not name (held, stopped,
calculated, ...) are not final, so they read as `accepted`: the engine keeps waiting.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

from alpaca.data.models import Quote as SdkQuote
from alpaca.trading.enums import OrderSide as SdkSide
from alpaca.trading.enums import OrderType as SdkOrderType
from alpaca.trading.enums import TimeInForce, TradeEvent
from alpaca.trading.models import Asset as SdkAsset
from alpaca.trading.models import Clock as SdkClock
from alpaca.trading.models import Order as SdkOrder
from alpaca.trading.models import TradeAccount, TradeUpdate
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from pydantic import ValidationError

from ...broker import (
    Account,
    Asset,
    BrokerOrder,
    BrokerOrderStatus,
    MarketClock,
    OrderRequest,
    OrderType,
    Quote,
    QuoteSource,
)
from ...errors import BrokerUnavailable
from ...intents import OrderSide
from ...numbers import ZERO

__all__ = [
    "UnsupportedOrder",
    "account_from_sdk",
    "asset_from_sdk",
    "clock_from_sdk",
    "listed_assets",
    "order_from_sdk",
    "order_from_update",
    "order_request_to_sdk",
    "positions_from_wire",
    "quote_from_sdk",
]

_STATUSES = {status.value: status for status in BrokerOrderStatus}
# the trade_updates events that are executions (they carry qty, price and position_qty)
EXECUTIONS = frozenset({TradeEvent.FILL, TradeEvent.PARTIAL_FILL})
_ORDER_TYPES: dict[SdkOrderType, OrderType] = {
    SdkOrderType.LIMIT: "limit",
    SdkOrderType.MARKET: "market",
}


class UnsupportedOrder(ValueError):
    """An order walkbook never places (stop, trailing, multi-leg): seen on the stream, ignored."""


def _decimal(value: Any) -> Decimal | None:
    return None if value is None or value == "" else Decimal(str(value))


def order_from_sdk(order: SdkOrder) -> BrokerOrder:
    kind = order.order_type or order.type
    if kind not in _ORDER_TYPES or order.side is None or order.symbol is None:
        raise UnsupportedOrder(f"order {order.id} of type {kind} is not walkbook's")
    return BrokerOrder(
        id=str(order.id),
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=OrderSide(order.side.value),
        order_type=_ORDER_TYPES[kind],
        qty=_decimal(order.qty) or ZERO,
        limit_price=_decimal(order.limit_price),
        status=_STATUSES.get(order.status.value, BrokerOrderStatus.ACCEPTED),
        filled_qty=_decimal(order.filled_qty) or ZERO,
        filled_avg_price=_decimal(order.filled_avg_price),
        replaced_by=None if order.replaced_by is None else str(order.replaced_by),
        replaces=None if order.replaces is None else str(order.replaces),
        filled_at=order.filled_at,
    )


def order_from_update(data: dict[str, Any]) -> BrokerOrder:
    """A trade_updates message's order; an execution (`fill`, `partial_fill`) also gives
    when it happened and the position right after it, taken from Alpaca's own text (the
    SDK's model makes `position_qty` a float)
    (https://docs.alpaca.markets/docs/websocket-streaming#trade-updates)."""
    # position_qty is read here, not by the SDK: one it cannot parse must not lose the fill
    update = TradeUpdate(**{k: v for k, v in data.items() if k != "position_qty"})
    order = order_from_sdk(update.order)
    if update.event not in EXECUTIONS:
        return order
    return replace(order, filled_at=update.timestamp, position_after=_figure(data, "position_qty"))


def _figure(data: dict[str, Any], key: str) -> Decimal | None:
    """A finite number, or None: a figure that does not parse is no figure (validation then
    reads the position), and never reaches a comparison as NaN."""
    try:
        value = _decimal(data.get(key))
    except InvalidOperation:
        return None
    return value if value is not None and value.is_finite() else None


def order_request_to_sdk(request: OrderRequest) -> LimitOrderRequest | MarketOrderRequest:
    """A DAY order (the only kind Alpaca takes for fractional qty), with our client_order_id."""
    fields: dict[str, Any] = {
        "symbol": request.symbol,
        "qty": float(request.qty),
        "side": SdkSide(request.side.value),
        "time_in_force": TimeInForce.DAY,
        "client_order_id": request.client_order_id,
    }
    if request.order_type == "limit":
        assert request.limit_price is not None, "a limit order needs its price"
        return LimitOrderRequest(limit_price=float(request.limit_price), **fields)
    return MarketOrderRequest(**fields)


def quote_from_sdk(quote: SdkQuote, source: QuoteSource) -> Quote:
    return Quote(
        symbol=quote.symbol,
        bid=Decimal(str(quote.bid_price)),
        ask=Decimal(str(quote.ask_price)),
        at=quote.timestamp,
        source=source,
        bid_size=Decimal(str(quote.bid_size)),
        ask_size=Decimal(str(quote.ask_size)),
    )


def asset_from_sdk(asset: SdkAsset) -> Asset:
    """Tick from `price_increment` when Alpaca reports one (else the engine's $1 rule)."""
    increment = _decimal(asset.price_increment)
    return Asset(
        symbol=asset.symbol,
        tradable=asset.tradable,
        fractionable=asset.fractionable,
        price_increment=increment if increment else None,
    )


def _wire_list(answer: object, what: str) -> list[dict[str, Any]]:
    if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
        raise BrokerUnavailable(f"alpaca: unexpected answer to {what}")
    return answer


def listed_assets(answer: object) -> dict[str, Asset]:
    """`GET /v2/assets` by symbol. Each entry is parsed on its own, so one the SDK cannot
    parse is left out (its symbol is then read alone) instead of failing them all."""
    listed = {}
    for entry in _wire_list(answer, "GET /v2/assets"):
        with suppress(ValidationError):
            asset = asset_from_sdk(SdkAsset(**entry))
            listed[asset.symbol] = asset
    return listed


def positions_from_wire(answer: object) -> dict[str, Decimal]:
    """`GET /v2/positions` as symbol -> Alpaca's signed `qty`, read off the JSON, so a
    position of a kind the SDK's model does not know (an option) cannot fail them all."""
    try:
        return {
            str(held["symbol"]): Decimal(str(held["qty"]))
            for held in _wire_list(answer, "GET /v2/positions")
        }
    except (KeyError, InvalidOperation):
        raise BrokerUnavailable("alpaca: a position without a symbol or a qty") from None


def clock_from_sdk(clock: SdkClock) -> MarketClock:
    return MarketClock(
        is_open=clock.is_open,
        at=clock.timestamp,
        next_open=clock.next_open,
        next_close=clock.next_close,
    )


def account_from_sdk(account: TradeAccount) -> Account:
    """The account's money; on a margin account `buying_power` includes what Alpaca would
    lend, `non_marginable_buying_power` is what cash alone buys
    (https://docs.alpaca.markets/docs/account-plans,
    https://docs.alpaca.markets/v1.1/docs/margin-and-short-selling)."""
    return Account(
        cash=_decimal(account.cash) or ZERO,
        buying_power=_decimal(account.buying_power) or ZERO,
        equity=_decimal(account.equity),
        non_marginable_buying_power=_decimal(account.non_marginable_buying_power),
        multiplier=_decimal(account.multiplier) or Decimal(1),
    )
