"""The simulator's orders: their state, the status sets the market works with, and the
record of each change that trade_updates reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from ...broker import BrokerOrder, BrokerOrderStatus, OrderType, TimeInForce
from ...intents import OrderSide
from ...numbers import ZERO

__all__ = ["EVENT_NAMES", "OPEN", "PENDING_CHANGE", "WORKING", "Activity", "SimOrder"]

# in the book: the market may fill it on any tick
WORKING = frozenset(
    {
        BrokerOrderStatus.NEW,
        BrokerOrderStatus.PARTIALLY_FILLED,
        BrokerOrderStatus.PENDING_CANCEL,
        BrokerOrderStatus.PENDING_REPLACE,
    }
)
# not final: holds buying power or shares, and a listing of open orders shows it
OPEN = WORKING | {
    BrokerOrderStatus.ACCEPTED,
    BrokerOrderStatus.PENDING_NEW,
    BrokerOrderStatus.DONE_FOR_DAY,
}
PENDING_CHANGE = frozenset({BrokerOrderStatus.PENDING_CANCEL, BrokerOrderStatus.PENDING_REPLACE})
# trade_updates event names where they differ from the status
EVENT_NAMES = {
    BrokerOrderStatus.PARTIALLY_FILLED: "partial_fill",
    BrokerOrderStatus.FILLED: "fill",
}
_DECIMAL_FIELDS = ("qty", "limit_price", "filled_qty", "notional", "asked_notional")


@dataclass(frozen=True)
class Activity:
    """One change of one order as Alpaca's trade_updates reports it: the event, the order as
    it stood right after, and for an execution its size, price and the position after it."""

    event: str
    order: BrokerOrder
    at: datetime
    qty: Decimal | None = None
    price: Decimal | None = None
    position_qty: Decimal | None = None


@dataclass
class SimOrder:
    id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    order_type: OrderType
    qty: Decimal
    limit_price: Decimal | None
    status: BrokerOrderStatus = BrokerOrderStatus.NEW
    filled_qty: Decimal = ZERO
    notional: Decimal = ZERO
    replaced_by: str | None = None
    replaces: str | None = None
    version: int = 0
    submitted_at: str | None = None
    time_in_force: TimeInForce = "day"
    asked_notional: Decimal | None = None
    # accepted orders reach the venue (and can fill) only at `routes_at`; state files from
    # before the asynchronous lifecycle hold routed orders only
    routes_at: str | None = None
    routed: bool = True
    # the market time of the latest fill (the tick it happened in)
    filled_at: str | None = None

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled_qty

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in _DECIMAL_FIELDS:
            data[key] = None if data[key] is None else str(data[key])
        data["side"], data["status"] = self.side.value, self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimOrder:
        values = dict(data)
        for key in _DECIMAL_FIELDS:
            if values.get(key) is not None:
                values[key] = Decimal(values[key])
        values["side"] = OrderSide(values["side"])
        values["status"] = BrokerOrderStatus(values["status"])
        return cls(**values)

    def snapshot(self) -> BrokerOrder:
        return BrokerOrder(
            id=self.id,
            client_order_id=self.client_order_id,
            symbol=self.symbol,
            side=self.side,
            order_type=self.order_type,
            qty=self.qty,
            limit_price=self.limit_price,
            status=self.status,
            filled_qty=self.filled_qty,
            filled_avg_price=self.notional / self.filled_qty if self.filled_qty else None,
            replaced_by=self.replaced_by,
            replaces=self.replaces,
            time_in_force=self.time_in_force,
            notional=self.asked_notional,
            filled_at=None if self.filled_at is None else datetime.fromisoformat(self.filled_at),
        )
