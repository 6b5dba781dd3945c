"""What preflight makes of an order's quantity, from its asset and position: the one rule
the engine applies before journaling and the preview shows."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_FLOOR, Decimal

from .broker import Asset
from .config import EngineConfig
from .errors import InvalidIntent
from .intents import CloseType, OrderIntent, OrderSide
from .numbers import ZERO

__all__ = ["ROUNDED_DOWN", "TRIMMED_TO_POSITION", "checked_quantity", "sells_part"]

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
