"""What preflight makes of an order, from its asset, position and arrival quote: the one
rule the engine applies before journaling and the preview shows (a dollar order sized,
a quantity fit to the asset and the position)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from .broker import Asset
from .config import EngineConfig
from .errors import InvalidIntent
from .intents import CloseType, OrderIntent, OrderSide
from .numbers import ZERO, decimal_text
from .quotes import UsableQuote
from .targets import NotionalSizing, size_notional

__all__ = [
    "ROUNDED_DOWN",
    "TRIMMED_TO_POSITION",
    "CheckedIntent",
    "check_intent",
    "checked_quantity",
    "described",
    "sells_part",
    "tradable",
]

ROUNDED_DOWN, TRIMMED_TO_POSITION = "rounded_down", "trimmed_to_position"


def sells_part(intent: OrderIntent) -> bool:
    """A sell of a given quantity, which preflight checks against the position (a FULL
    close sells whatever is held)."""
    return intent.side is OrderSide.SELL and intent.close_type is not CloseType.FULL


def checked_quantity(
    intent: OrderIntent, asset: Asset, positions: Mapping[str, Decimal], config: EngineConfig
) -> tuple[OrderIntent, list[str]]:
    """The intent with its quantity fit to the asset and, for a sell, to the position, and
    what was changed (`ROUNDED_DOWN`, `TRIMMED_TO_POSITION`); InvalidIntent when it cannot
    be fit."""
    symbol, changes = intent.symbol, []
    # a FULL close sells what the broker holds, its fraction through close-position
    if intent.is_fractional and not asset.fractionable and intent.close_type is not CloseType.FULL:
        whole = intent.shares.to_integral_value(rounding=ROUND_FLOOR)
        if config.fractional_on_whole_share_asset == "refuse" or whole <= 0:
            raise InvalidIntent(
                "asset is not fractionable; use a whole-share quantity", symbol=symbol
            )
        intent, changes = intent.model_copy(update={"quantity": whole}), [ROUNDED_DOWN]
    position = positions.get(symbol, ZERO)
    if sells_part(intent) and intent.shares > max(position, ZERO):
        held = position if asset.fractionable else position.to_integral_value(ROUND_FLOOR)
        if held <= 0 or intent.shares > position * (1 + config.oversell_tolerance):
            raise InvalidIntent(
                f"sell of {intent.shares} exceeds the position of {position}", symbol=symbol
            )
        intent = OrderIntent.build(**{**intent.model_dump(), "quantity": held})
        changes.append(TRIMMED_TO_POSITION)
    return intent, changes


def described(intent: OrderIntent) -> str:
    """An order as preflight's problems name it: `AAPL buy 10`, `AAPL buy $1500`."""
    size = decimal_text(intent.shares) if intent.notional is None else f"${intent.notional}"
    return f"{intent.symbol} {intent.side.value} {size}"


def tradable(asset: Asset) -> Asset:
    """The asset, if the broker trades it; else InvalidIntent."""
    if not asset.tradable:
        raise InvalidIntent("asset is not tradable", symbol=asset.symbol)
    return asset


@dataclass(frozen=True)
class CheckedIntent:
    """An intent as preflight leaves it: `intent` as it will be sent, how a dollar order
    was sized, and what `checked_quantity` changed. A dollar order that came to no share
    keeps its notional intent (`unsized`): it is skipped, `below_min_notional`."""

    intent: OrderIntent
    sizing: NotionalSizing | None = None
    changes: tuple[str, ...] = ()

    @property
    def unsized(self) -> bool:
        return self.sizing is not None and self.sizing.quantity == 0


def check_intent(
    intent: OrderIntent,
    asset: Asset,
    position: Decimal,
    quote: UsableQuote | None,
    config: EngineConfig,
) -> CheckedIntent:
    """Preflight's rules for one order, from what was read for it (the quote is needed for
    a dollar order only); InvalidIntent names what cannot pass. Engine.preflight and the
    preview (engine/preview.py) both call it, so what one shows the other does."""
    symbol, sizing = intent.symbol, None
    tradable(asset)
    if intent.notional is not None:
        if quote is None:
            raise InvalidIntent("no usable quote to size the notional at", symbol=symbol)
        sizing = size_notional(intent, quote, asset.fractionable)
        if sizing.quantity == 0:
            return CheckedIntent(intent, sizing)
        intent = intent.sized(sizing.quantity)
    checked, changes = checked_quantity(intent, asset, {symbol: position}, config)
    return CheckedIntent(checked, sizing, tuple(changes))
