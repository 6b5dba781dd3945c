"""walkbook: crash-safe walk-the-book order execution with a SQLite journal.

The public, typed API for embedding walkbook in an orchestration layer.
"""

from typing import TYPE_CHECKING

from .broker import Account, Asset, Broker, BrokerOrder, BrokerOrderStatus, MarketClock, Quote
from .brokers.sim import MarketSpec, SimBroker, SymbolSpec, load_market_spec
from .clock import Clock, RealClock, VirtualClock
from .config import DEFAULT_LADDER, EngineConfig
from .engine import Engine, ResumeReport
from .errors import (
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
    EngineHalting,
    IllegalTransition,
    InputError,
    InvalidIntent,
    InvalidPlan,
    PlanAtBroker,
    PlanHalted,
    PlansInFlight,
    RiskLimitBreached,
    UnknownBrokerOrders,
    UnknownSymbol,
    WalkbookError,
)
from .fsm import FailReason, OrderState
from .hooks import OrderFilled, OrderTransitioned, PlanCompleted
from .intents import (
    CloseType,
    OrderIntent,
    OrderSide,
    RebalancePlan,
    Urgency,
    load_plan,
    parse_plan,
)
from .order import OrderRecord
from .preview import PlanPreview, preview_plan
from .results import OrderResult, PlanResult, PlanStatus

if TYPE_CHECKING:
    from .audit import export, export_ledger, replay, report, report_html, verify

# Imported on first use (`__getattr__`): trading and resuming never need the audit, and
# importing it costs a resume about 60 ms.
_AUDIT_FUNCTIONS = frozenset(
    {"export", "export_ledger", "replay", "report", "report_html", "verify"}
)


def __getattr__(name: str) -> object:
    if name in _AUDIT_FUNCTIONS:
        from . import audit

        return getattr(audit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LADDER",
    "Account",
    "Asset",
    "Broker",
    "BrokerError",
    "BrokerOrder",
    "BrokerOrderStatus",
    "BrokerRejected",
    "BrokerUnavailable",
    "Clock",
    "CloseType",
    "Engine",
    "EngineConfig",
    "EngineHalting",
    "FailReason",
    "IllegalTransition",
    "InputError",
    "InvalidIntent",
    "InvalidPlan",
    "MarketClock",
    "MarketSpec",
    "OrderFilled",
    "OrderIntent",
    "OrderRecord",
    "OrderResult",
    "OrderSide",
    "OrderState",
    "OrderTransitioned",
    "PlanAtBroker",
    "PlanCompleted",
    "PlanHalted",
    "PlanPreview",
    "PlanResult",
    "PlanStatus",
    "PlansInFlight",
    "Quote",
    "RealClock",
    "RebalancePlan",
    "ResumeReport",
    "RiskLimitBreached",
    "SimBroker",
    "SymbolSpec",
    "UnknownBrokerOrders",
    "UnknownSymbol",
    "Urgency",
    "VirtualClock",
    "WalkbookError",
    "export",
    "export_ledger",
    "load_market_spec",
    "load_plan",
    "parse_plan",
    "preview_plan",
    "replay",
    "report",
    "report_html",
    "verify",
]
