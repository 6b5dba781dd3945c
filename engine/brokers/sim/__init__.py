"""The embedded market simulator: the default broker for the demo, tests and benchmarks."""

from .broker import SimBroker
from .spec import MarketSpec, SymbolSpec, load_market_spec, parse_market_spec

__all__ = ["MarketSpec", "SimBroker", "SymbolSpec", "load_market_spec", "parse_market_spec"]
