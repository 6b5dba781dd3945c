"""One error hierarchy for the engine, each error with structured fields.

`InputError` subclasses are the user's mistakes (CLI exit 2, nothing sent to a broker);
`BrokerError` subclasses describe what a broker answered or failed to answer.
"""

from __future__ import annotations

import difflib
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

__all__ = [
    "BrokerError",
    "BrokerRejected",
    "BrokerUnavailable",
    "DuplicateClientOrderId",
    "EngineHalting",
    "ForeignJournal",
    "IllegalTransition",
    "InputError",
    "InvalidIntent",
    "InvalidPlan",
    "NotReplaceable",
    "OrderNotFound",
    "OutcomeUnknown",
    "PlanAtBroker",
    "PlanHalted",
    "PlansInFlight",
    "RiskLimitBreached",
    "UnknownBrokerOrders",
    "UnknownSymbol",
    "WalkbookError",
    "first_validation_error",
]


class WalkbookError(Exception):
    """Base of every walkbook engine error; `fields` feed structured logs."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class InputError(WalkbookError):
    """Bad input from the caller: refused before anything is journaled as sent."""


class InvalidIntent(InputError):
    """An order intent that cannot be executed as written."""


class UnknownSymbol(InvalidIntent):
    """The broker does not know the symbol."""


class InvalidPlan(InputError):
    """A plan file or plan object that is malformed or inconsistent."""


class RiskLimitBreached(InputError):
    """A pre-trade risk limit (engine/risk.py) refuses a plan before anything is journaled
    or sent: `limit` names the EngineConfig field, `limit_value` its setting, `figure` what
    the plan came to (None when it could not be priced)."""

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        limit_value: Decimal,
        figure: Decimal | None,
        **fields: Any,
    ) -> None:
        super().__init__(message, limit=limit, limit_value=limit_value, figure=figure, **fields)
        self.limit = limit
        self.limit_value = limit_value
        self.figure = figure


class PlansInFlight(InputError):
    """A new plan while orders of other plans are in flight in the journal (`in_flight="refuse"`);
    `orders` names them, `plans` their plans."""


class PlanAtBroker(InputError):
    """The broker already has orders of this plan that the journal does not know (the plan
    was delivered through another journal, or this one was restored from an older copy)."""


class UnknownBrokerOrders(InputError):
    """Open orders at the broker carry walkbook client order ids this journal does not know."""


class ForeignJournal(InputError):
    """The broker knows none of the live orders the journal says it acknowledged: the journal
    was written against another account, and acting on it here would end orders live there."""


class EngineHalting(InputError):
    """The engine is halting; it takes no new work until the halt has finished."""


class PlanHalted(WalkbookError):
    """A halt reached a plan while it was still being checked: nothing of it was journaled
    or sent, and delivering it again runs it afresh."""


class IllegalTransition(WalkbookError):
    """A trigger that the order state machine does not allow from its current state."""


class BrokerError(WalkbookError):
    """Base for answers (or silences) from a broker."""


class BrokerRejected(BrokerError):
    """The broker refused the request; `reason` is a FAILED reason code."""

    def __init__(self, message: str, reason: str = "rejected", **fields: Any) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason


class DuplicateClientOrderId(BrokerRejected):
    """The broker already has an order with this client_order_id: adopt it, never resend."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, reason="duplicate_client_order_id", **fields)


class BrokerUnavailable(BrokerError):
    """A transient failure (timeout, 5xx, dropped connection): retry, never treat as rejected."""


class OutcomeUnknown(BrokerUnavailable):
    """A side effect may or may not have happened; resolve it by client_order_id."""


class OrderNotFound(BrokerError):
    """The broker has no order with that id or client_order_id."""


class NotReplaceable(BrokerError):
    """The broker refused a replace, typically because the order already filled."""


def first_validation_error(exc: ValidationError) -> str:
    """One readable line from a pydantic error: where, then what. An unknown field comes
    first, with the missing field it most likely meant: a typo'd `qty` is the cause of
    `quantity` being missing, and says so."""
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    error = (unknown or errors)[0]
    where = ".".join(str(part) for part in error["loc"])
    if unknown:
        return _unknown_field(error, [e for e in errors if e["type"] == "missing"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _unknown_field(error: Any, missing: list[Any]) -> str:
    *parent, name = error["loc"]
    siblings = [str(e["loc"][-1]) for e in missing if list(e["loc"][:-1]) == parent]
    guess = difflib.get_close_matches(str(name), siblings, n=1, cutoff=0.4)
    if not guess and len(siblings) == 1:
        guess = siblings
    where = ".".join(str(part) for part in parent)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    return f"{where + ': ' if where else ''}unknown field '{name}'{hint}"
