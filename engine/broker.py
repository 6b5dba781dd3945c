"""The one small async protocol every broker implements, and the plain data it speaks."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal, Protocol

from .intents import OrderSide
from .numbers import ZERO

__all__ = [
    "Account",
    "Asset",
    "Broker",
    "BrokerOrder",
    "BrokerOrderStatus",
    "MarketClock",
    "OrderRequest",
    "OrderType",
    "Quote",
    "QuoteSource",
    "TimeInForce",
]

OrderType = Literal["limit", "market"]
QuoteSource = Literal["stream", "rest"]
# Alpaca's time-in-force values for equities; walkbook itself places DAY orders only.
TimeInForce = Literal["day", "gtc", "ioc", "fok", "opg", "cls"]


class BrokerOrderStatus(StrEnum):
    """Alpaca's order statuses that walkbook distinguishes."""

    NEW = "new"
    ACCEPTED = "accepted"
    PENDING_NEW = "pending_new"
    PARTIALLY_FILLED = "partially_filled"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    REPLACED = "replaced"
    DONE_FOR_DAY = "done_for_day"

    @property
    def is_terminal(self) -> bool:
        """No further fills can land on an order in a terminal status."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        BrokerOrderStatus.FILLED,
        BrokerOrderStatus.CANCELED,
        BrokerOrderStatus.EXPIRED,
        BrokerOrderStatus.REJECTED,
        BrokerOrderStatus.REPLACED,
    }
)


@dataclass(frozen=True)
class OrderRequest:
    """A new order; `client_order_id` is deterministic so a retry can never double it."""

    client_order_id: str
    symbol: str
    side: OrderSide
    qty: Decimal
    order_type: OrderType
    limit_price: Decimal | None = None
    time_in_force: TimeInForce = "day"
    # a dollar amount asked for instead of a quantity (market orders only): the broker
    # sizes the order and `qty` is not read
    notional: Decimal | None = None


@dataclass(frozen=True)
class BrokerOrder:
    """The broker's view of one order; fills are cumulative (`filled_qty`, `filled_avg_price`)."""

    id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    order_type: OrderType
    qty: Decimal
    limit_price: Decimal | None
    status: BrokerOrderStatus
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    replaced_by: str | None = None
    replaces: str | None = None
    time_in_force: TimeInForce = "day"
    notional: Decimal | None = None
    # when the broker says the order's latest fill happened (None: nothing filled, or a
    # broker that does not say)
    filled_at: datetime | None = None
    # the account's position in the symbol right after the fill that brought `filled_qty`
    # to its value, as the broker reported it with that fill (Alpaca's trade_updates
    # `position_qty`); None: the view came without it (a REST read of the order)
    position_after: Decimal | None = None

    @classmethod
    def accepted(cls, order_id: str, request: OrderRequest) -> BrokerOrder:
        """The order `request` asked for, just accepted: open, nothing filled."""
        return cls(
            id=order_id,
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            order_type=request.order_type,
            qty=request.qty,
            limit_price=request.limit_price,
            status=BrokerOrderStatus.NEW,
            filled_qty=ZERO,
            filled_avg_price=None,
            time_in_force=request.time_in_force,
            notional=request.notional,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclass(frozen=True)
class Quote:
    """Top of book for one symbol at one instant, as a source reported it."""

    symbol: str
    bid: Decimal
    ask: Decimal
    at: datetime
    source: QuoteSource
    bid_size: Decimal = Decimal(0)
    ask_size: Decimal = Decimal(0)

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


@dataclass(frozen=True)
class Asset:
    symbol: str
    tradable: bool
    fractionable: bool
    price_increment: Decimal | None = None
    shortable: bool = False
    easy_to_borrow: bool = False


@dataclass(frozen=True)
class Account:
    """The account's money as the broker reports it. On a margin account `buying_power`
    includes what the broker would lend; `non_marginable_buying_power` is what cash alone
    buys (None where a broker does not report it)."""

    cash: Decimal
    buying_power: Decimal
    equity: Decimal | None = None
    non_marginable_buying_power: Decimal | None = None
    multiplier: Decimal = Decimal(1)


@dataclass(frozen=True)
class MarketClock:
    is_open: bool
    at: datetime
    next_open: datetime | None = None
    next_close: datetime | None = None


class Broker(Protocol):
    """What the engine needs from a broker. Transient failures raise BrokerUnavailable,
    refusals BrokerRejected; a side effect whose outcome is unknown raises OutcomeUnknown."""

    name: str

    async def get_asset(self, symbol: str) -> Asset: ...

    async def get_clock(self) -> MarketClock: ...

    async def get_account(self) -> Account: ...

    async def get_position(self, symbol: str) -> Decimal: ...

    async def get_positions(self) -> dict[str, Decimal]:
        """Every position the account holds, symbol -> signed qty (a short is negative), in
        as few calls as the broker allows; a symbol not held is absent."""
        ...

    async def stream_quote(self, symbol: str, wait_seconds: float) -> Quote | None:
        """The latest streamed quote, waiting up to `wait_seconds` for a first one."""
        ...

    async def latest_quote(self, symbol: str) -> Quote | None:
        """A REST snapshot of the quote."""
        ...

    async def latest_quotes(self, symbols: Collection[str]) -> dict[str, Quote]:
        """REST snapshots of several symbols' quotes, in as few calls as the broker allows;
        a symbol without a quote is absent."""
        ...

    async def submit_order(self, request: OrderRequest) -> BrokerOrder: ...

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder: ...

    async def cancel_order(self, order_id: str) -> None: ...

    async def get_order(self, order_id: str) -> BrokerOrder: ...

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None: ...

    async def open_orders(self) -> list[BrokerOrder]:
        """The account's open orders of the types walkbook places, read in as few calls as
        the broker allows (an order missing from it may still be open: read it with
        `get_order`)."""
        ...

    async def close_position(self, symbol: str, qty: Decimal) -> BrokerOrder:
        """Sell `qty` of a long position through the broker's close-position route (Alpaca:
        `DELETE /v2/positions/{symbol}?qty=`), the only route for the fraction of a
        whole-share asset. The order it makes carries a client order id of the broker's."""
        ...

    async def recent_orders(self, symbol: str | None, since: datetime) -> list[BrokerOrder]:
        """The orders of `symbol` (None: of every symbol) submitted at or after `since` (a
        broker whose clock may differ includes a little before it), oldest first, whatever
        their status: finds a close-position order, whose client order id is not walkbook's,
        and a large plan's orders placed through another journal."""
        ...

    async def wait_for_update(self, order_id: str, timeout_seconds: float) -> BrokerOrder:
        """Return the order once it changes (fill, status) or when the timeout passes."""
        ...
