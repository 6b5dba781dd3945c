"""Dollars to shares: a notional order's size, and the orders a target-weight plan derives.

Both size at a quote: a buy at the ask and a sell at the bid, what the shares would cost
or fetch at once. A fractionable asset is sized to 9 decimal places, a whole-share asset in
whole shares, always rounded down, so an order never spends more than it was given nor a
position ends above its weight. A target plan is derived once, from one snapshot of the
account (equity, positions) and a quote and asset per symbol; the derived orders are
journaled under the plan and are the plan from then on (docs/plans.md, "Target plans").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from .broker import Asset
from .errors import InvalidPlan
from .fsm import FailReason
from .intents import MAX_QUANTITY_DECIMALS, CloseType, OrderIntent, OrderSide
from .numbers import ZERO, decimal_text, floor_to
from .quotes import UsableQuote
from .risk import Refusal

__all__ = [
    "DEFAULT_MIN_CHANGE",
    "Derivation",
    "DerivedOrder",
    "Hold",
    "NotionalSizing",
    "Snapshot",
    "derive_orders",
    "derive_targets",
    "involved_symbols",
    "price_for",
    "shares_for",
    "size_notional",
    "target_equity",
    "target_refused",
]

# Alpaca's smallest notional order is $1 (docs.alpaca.markets/docs/fractional-trading): a
# change worth less is a HOLD unless `min_order_notional` sets the bar
DEFAULT_MIN_CHANGE = Decimal(1)
_SMALLEST_FRACTION = Decimal(10) ** -MAX_QUANTITY_DECIMALS
_WHOLE = Decimal(1)


def shares_for(dollars: Decimal, price: Decimal, fractionable: bool) -> Decimal:
    """The most shares `dollars` buys at `price`: 9 decimals, or whole shares."""
    step = _SMALLEST_FRACTION if fractionable else _WHOLE
    return _plain(floor_to(dollars / price, step))


def price_for(side: OrderSide, quote: UsableQuote) -> tuple[Decimal, str]:
    """The price an order is sized at and the side of the book it is: ask for a buy."""
    return (quote.ask, "ask") if side is OrderSide.BUY else (quote.bid, "bid")


@dataclass(frozen=True)
class NotionalSizing:
    """What a dollar order came to at its arrival quote, journaled on its `created` event
    before anything is sent, so a resumed walk trades the same size."""

    notional: Decimal
    quantity: Decimal
    price: Decimal
    side_of_book: str
    fractionable: bool
    quote: UsableQuote

    def created_fields(self) -> dict[str, Any]:
        return {
            "notional": self.notional,
            "sizing": {
                "method": "notional",
                "price": decimal_text(self.price),
                "side_of_book": self.side_of_book,
                "quote": self.quote.as_data(),
            },
        }

    def refusal(self) -> Refusal:
        """A notional too small for the smallest quantity the asset trades in: skipped."""
        unit = _SMALLEST_FRACTION if self.fractionable else _WHOLE
        smallest = unit * self.price
        return Refusal(
            reason=FailReason.BELOW_MIN_NOTIONAL,
            limit="smallest_quantity",
            limit_value=smallest,
            figure=self.notional,
            message=f"notional {decimal_text(self.notional)} comes to no "
            f"{'share' if unit == _WHOLE else 'fraction of a share'} at the "
            f"{self.side_of_book} {decimal_text(self.price)}; nothing sent",
        )


def size_notional(intent: OrderIntent, quote: UsableQuote, fractionable: bool) -> NotionalSizing:
    """A dollar order's shares at `quote`: its notional over the ask (a buy) or bid (a sell)."""
    assert intent.notional is not None
    price, side_of_book = price_for(intent.side, quote)
    quantity = shares_for(intent.notional, price, fractionable)
    return NotionalSizing(intent.notional, quantity, price, side_of_book, fractionable, quote)


def _plain(value: Decimal) -> Decimal:
    """No trailing zeros (floor_to leaves 9 of them): the form intents hold."""
    return value.quantize(_WHOLE) if value == value.to_integral_value() else value.normalize()


class Hold(BaseModel):
    """A symbol of a target plan that trades nothing: already at its weight, or a change
    worth less than the threshold (`value` is that change in dollars, signed shares in
    `change`: positive a buy not made, negative a sell)."""

    model_config = ConfigDict(frozen=True)

    symbol: str
    target_weight: Decimal
    held: Decimal
    change: Decimal
    value: Decimal
    threshold: Decimal

    def as_data(self) -> dict[str, str]:
        return {name: decimal_text(v) if isinstance(v, Decimal) else v for name, v in self}


@dataclass(frozen=True)
class Snapshot:
    """What a target plan is derived from, read once before anything is journaled."""

    equity: Decimal
    positions: Mapping[str, Decimal]
    assets: Mapping[str, Asset]
    quotes: Mapping[str, UsableQuote]


@dataclass(frozen=True)
class DerivedOrder:
    """One order a target plan needs, and the figures it was derived from (journaled on
    its `created` event as `sizing`)."""

    intent: OrderIntent
    sizing: dict[str, Any]


@dataclass(frozen=True)
class Derivation:
    """The orders (sells first) and the holds of one target plan."""

    orders: tuple[DerivedOrder, ...]
    holds: tuple[Hold, ...]


def involved_symbols(targets: Mapping[str, Decimal], positions: Mapping[str, Decimal]) -> list[str]:
    """Every symbol named with a weight above zero or held: the ones that need a quote."""
    held = {symbol for symbol, qty in positions.items() if qty != 0}
    return sorted(held | {symbol for symbol, weight in targets.items() if weight > 0})


def target_equity(plan_id: str, equity: Decimal | None) -> Decimal:
    """The equity a target plan's weights are of: none positive refuses the plan."""
    if equity is None or equity <= 0:
        raise InvalidPlan(
            f"plan {plan_id} refused: the broker reports no positive equity to weigh "
            "its targets against; nothing sent",
            plan_id=plan_id,
        )
    return equity


def target_refused(plan_id: str, symbol: str, problem: str) -> InvalidPlan:
    """A symbol of the snapshot the broker cannot trade (unknown, untradable): the plan
    is refused, nothing journaled."""
    return InvalidPlan(
        f"plan {plan_id} refused: targets: {symbol}: {problem}; nothing sent",
        plan_id=plan_id,
        symbol=symbol,
    )


def derive_targets(
    plan_id: str,
    targets: Mapping[str, Decimal],
    equity: Decimal,
    positions: Mapping[str, Decimal],
    assets: Mapping[str, Asset],
    quotes: Mapping[str, UsableQuote],
    min_order_notional: Decimal | None,
) -> Derivation:
    """`derive_orders` from what was read for the snapshot, as Engine.execute_plan and the
    preview both derive: a symbol without a usable quote refuses the plan, and a change
    under `min_order_notional` (else `DEFAULT_MIN_CHANGE`) is a Hold."""
    symbols = involved_symbols(targets, positions)
    unquoted = [symbol for symbol in symbols if symbol not in quotes]
    if unquoted:
        raise InvalidPlan(
            f"plan {plan_id} refused: no usable quote for {', '.join(unquoted)} to derive "
            "its orders from; nothing sent",
            plan_id=plan_id,
            symbols=unquoted,
        )
    threshold = min_order_notional or DEFAULT_MIN_CHANGE
    snapshot = Snapshot(equity, positions, assets, quotes)
    return derive_orders(plan_id, targets, snapshot, threshold)


def derive_orders(
    plan_id: str,
    targets: Mapping[str, Decimal],
    snapshot: Snapshot,
    threshold: Decimal,
) -> Derivation:
    """The sells and buys that bring each symbol to `weight x equity`, a held symbol not
    named (or named at 0) closed in full; a change worth less than `threshold` is a Hold.

    A buy is sized at the ask, a sell at the bid; a symbol whose weight lies between the
    two (inside the spread) is already there. Long positions only: a short one is refused.
    """
    sells: list[DerivedOrder] = []
    buys: list[DerivedOrder] = []
    holds: list[Hold] = []
    for symbol in involved_symbols(targets, snapshot.positions):
        held = snapshot.positions.get(symbol, ZERO)
        if held < 0:
            raise InvalidPlan(
                f"plan {plan_id} refused: target plans trade long positions and {symbol} is "
                f"held short ({decimal_text(held)}); nothing sent",
                plan_id=plan_id,
                symbol=symbol,
            )
        line = _Line(symbol, targets.get(symbol, ZERO), held, snapshot, threshold)
        derived = line.derived()
        if isinstance(derived, Hold):
            holds.append(derived)
        elif derived.intent.side is OrderSide.SELL:
            sells.append(derived)
        else:
            buys.append(derived)
    return Derivation(tuple(sells + buys), tuple(holds))


@dataclass(frozen=True)
class _Line:
    symbol: str
    weight: Decimal
    held: Decimal
    snapshot: Snapshot
    threshold: Decimal

    def derived(self) -> DerivedOrder | Hold:
        quote = self.snapshot.quotes[self.symbol]
        fractionable = self.snapshot.assets[self.symbol].fractionable
        dollars = self.weight * self.snapshot.equity
        if self.weight == 0:
            return self._order(OrderSide.SELL, self.held, ZERO, quote)
        at_ask = shares_for(dollars, quote.ask, fractionable)
        at_bid = shares_for(dollars, quote.bid, fractionable)
        if at_ask > self.held:
            return self._order(OrderSide.BUY, self._whole(at_ask - self.held), at_ask, quote)
        if at_bid < self.held:
            return self._order(OrderSide.SELL, self._whole(self.held - at_bid), at_bid, quote)
        return self._hold(ZERO, ZERO)

    def _whole(self, change: Decimal) -> Decimal:
        """A change of a whole-share asset in whole shares (a fraction held stays)."""
        if self.snapshot.assets[self.symbol].fractionable:
            return change
        return change.to_integral_value(rounding=ROUND_FLOOR)

    def _order(
        self, side: OrderSide, qty: Decimal, target_qty: Decimal, quote: UsableQuote
    ) -> DerivedOrder | Hold:
        price, side_of_book = price_for(side, quote)
        value = qty * price
        signed = qty if side is OrderSide.BUY else -qty
        if qty <= 0 or value < self.threshold:
            return self._hold(signed, value)
        closing = side is OrderSide.SELL and target_qty == 0
        close_type = CloseType.FULL if closing else CloseType.PARTIAL
        intent = OrderIntent.build(
            symbol=self.symbol,
            side=side,
            quantity=qty,
            close_type=close_type if side is OrderSide.SELL else CloseType.NONE,
        )
        sizing = {
            "method": "target_weight",
            "target_weight": decimal_text(self.weight),
            "equity": decimal_text(self.snapshot.equity),
            "held": decimal_text(self.held),
            "target_qty": decimal_text(target_qty),
            "price": decimal_text(price),
            "side_of_book": side_of_book,
            "quote": quote.as_data(),
        }
        return DerivedOrder(intent, sizing)

    def _hold(self, change: Decimal, value: Decimal) -> Hold:
        return Hold(
            symbol=self.symbol,
            target_weight=self.weight,
            held=self.held,
            change=change,
            value=value.quantize(Decimal("0.01")),
            threshold=self.threshold,
        )
