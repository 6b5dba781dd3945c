"""The Alpaca adapter: the engine's Broker protocol over alpaca-py, paper by default."""

from .broker import AlpacaBroker
from .errors import (
    AlpacaConfigError,
    Forbidden,
    InsufficientBuyingPower,
    RateLimited,
    SubPennyPrice,
    error_from_response,
)
from .limiter import RateLimiter
from .rest import AlpacaCounters
from .settings import BASE_URL_ENV, KEY_ID_ENV, SECRET_KEY_ENV, AlpacaSettings

__all__ = [
    "BASE_URL_ENV",
    "KEY_ID_ENV",
    "SECRET_KEY_ENV",
    "AlpacaBroker",
    "AlpacaConfigError",
    "AlpacaCounters",
    "AlpacaSettings",
    "Forbidden",
    "InsufficientBuyingPower",
    "RateLimited",
    "RateLimiter",
    "SubPennyPrice",
    "error_from_response",
]
