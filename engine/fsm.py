"""The order state machine, built with `transitions`, persisted before it moves.

    PENDING -> QUOTED -> LIMIT_STEP_1 -> ... -> LIMIT_STEP_n -> MARKET -> SETTLING -> VALIDATED
    QUOTED -> MARKET (urgency HIGH);  LIMIT_STEP_k -> SETTLING (fully filled)
    any non-terminal state -> FAILED (with a reason code)

`transitions` defines and checks the machine (one per ladder length); each order
then moves through that machine's table of moves, so an order costs one small object
rather than a model registered on a shared machine (whose registration, a list
scan plus about 25 bound callbacks, made 10,000 resumed orders quadratic). The
journal append runs before the state changes: if it raises, the state is untouched,
so memory never runs ahead of the journal.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from functools import cache
from typing import Any

from transitions import Machine

from .errors import IllegalTransition

__all__ = [
    "TERMINAL_STATES",
    "FailReason",
    "OrderMachine",
    "OrderState",
    "Trigger",
    "is_limit_step",
    "limit_step",
    "state_names",
    "step_number",
    "transition_table",
]


class OrderState(StrEnum):
    """The fixed states; limit steps are named by `limit_step(k)`."""

    PENDING = "PENDING"
    QUOTED = "QUOTED"
    MARKET = "MARKET"
    SETTLING = "SETTLING"
    VALIDATED = "VALIDATED"
    FAILED = "FAILED"


class Trigger(StrEnum):
    QUOTE = "quote"
    START_WALK = "start_walk"
    NEXT_STEP = "next_step"
    # a resting step re-priced at its own fraction of a quote that moved (stays in its step)
    REPEG = "repeg"
    ESCALATE = "escalate"
    SETTLE = "settle"
    VALIDATE = "validate"
    FAIL = "fail"


class FailReason(StrEnum):
    """Why an order ended in FAILED; always journaled with the transition."""

    REJECTED = "rejected"
    NO_QUOTE = "no_quote"
    MARKET_CLOSED = "market_closed"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INSUFFICIENT_POSITION = "insufficient_position"
    NO_POSITION = "no_position"
    NOT_TRADABLE = "not_tradable"
    VALIDATION_MISMATCH = "validation_mismatch"
    PARTIAL_FILL = "partial_fill"
    CANCELLED = "cancelled"
    CANCELLED_EXTERNALLY = "cancelled_externally"
    REJECTED_AT_BROKER = "rejected_at_broker"
    EXPIRED = "expired"
    ABANDONED = "abandoned"
    PLACED_ELSEWHERE = "placed_elsewhere"
    ORDER_NOT_FOUND = "order_not_found"
    BROKER_UNAVAILABLE = "broker_unavailable"
    INVALID_INTENT = "invalid_intent"
    # pre-trade risk limits (engine/risk.py): refused or skipped before anything was sent
    RISK_LIMIT = "risk_limit"
    BELOW_MIN_NOTIONAL = "below_min_notional"
    BLOCKED_BY_SELLS = "blocked_by_sells"
    PRICE_BAND = "price_band"
    # refusals the broker gave a reason for (engine/brokers/alpaca/errors.py maps Alpaca's answers)
    UNKNOWN_SYMBOL = "unknown_symbol"
    NOT_PERMITTED = "not_permitted"
    BELOW_MINIMUM = "below_minimum"
    PATTERN_DAY_TRADER = "pattern_day_trader"


TERMINAL_STATES = frozenset({OrderState.VALIDATED.value, OrderState.FAILED.value})
_LIMIT_PREFIX = "LIMIT_STEP_"


def limit_step(k: int) -> str:
    return f"{_LIMIT_PREFIX}{k}"


def is_limit_step(state: str) -> bool:
    return state.startswith(_LIMIT_PREFIX)


def step_number(state: str) -> int:
    """k for LIMIT_STEP_k."""
    return int(state.removeprefix(_LIMIT_PREFIX))


def state_names(steps: int) -> list[str]:
    """All states for a ladder of `steps` limit steps, in walk order."""
    return [
        OrderState.PENDING,
        OrderState.QUOTED,
        *(limit_step(k) for k in range(1, steps + 1)),
        OrderState.MARKET,
        OrderState.SETTLING,
        OrderState.VALIDATED,
        OrderState.FAILED,
    ]


def transition_table(steps: int) -> list[tuple[str, str, str]]:
    """(trigger, source, dest) for every legal move with `steps` limit steps."""
    table: list[tuple[str, str, str]] = [(Trigger.QUOTE, OrderState.PENDING, OrderState.QUOTED)]
    if steps:
        table.append((Trigger.START_WALK, OrderState.QUOTED, limit_step(1)))
    table += [(Trigger.NEXT_STEP, limit_step(k), limit_step(k + 1)) for k in range(1, steps)]
    table += [(Trigger.REPEG, limit_step(k), limit_step(k)) for k in range(1, steps + 1)]
    table.append((Trigger.ESCALATE, OrderState.QUOTED, OrderState.MARKET))
    if steps:
        table.append((Trigger.ESCALATE, limit_step(steps), OrderState.MARKET))
    table += [(Trigger.SETTLE, limit_step(k), OrderState.SETTLING) for k in range(1, steps + 1)]
    table.append((Trigger.SETTLE, OrderState.MARKET, OrderState.SETTLING))
    table.append((Trigger.VALIDATE, OrderState.SETTLING, OrderState.VALIDATED))
    table += [
        (Trigger.FAIL, state, OrderState.FAILED)
        for state in state_names(steps)
        if state not in TERMINAL_STATES
    ]
    return [(str(t), str(s), str(d)) for t, s, d in table]


Persist = Callable[[str, str, str, dict[str, Any]], None]
Moves = dict[tuple[str, str], str]


@cache
def _machine(steps: int) -> Machine:
    """The `transitions` machine for a ladder length: the definition every order follows."""
    return Machine(
        model=None,
        states=[str(s) for s in state_names(steps)],
        transitions=[{"trigger": t, "source": s, "dest": d} for t, s, d in transition_table(steps)],
        initial=str(OrderState.PENDING),
        auto_transitions=False,
    )


@cache
def _moves(steps: int) -> Moves:
    """(state, trigger) -> destination, read back from the machine `transitions` built."""
    machine = _machine(steps)
    return {
        (source, trigger): str(moves[0].dest)
        for trigger, event in machine.events.items()
        for source, moves in event.transitions.items()
    }


class OrderMachine:
    """The state of one order. `fire` journals through `persist`, then moves."""

    __slots__ = ("_moves", "_persist", "state", "steps")

    def __init__(self, steps: int, persist: Persist, initial: str = OrderState.PENDING) -> None:
        self.steps = steps
        self._persist = persist
        self._moves = _moves(steps)
        if str(initial) not in _machine(steps).states:
            raise ValueError(f"{initial} is not a state of a {steps}-step ladder")
        self.state = str(initial)

    def can_fire(self, trigger: str) -> bool:
        return (self.state, trigger) in self._moves

    def fire(self, trigger: str, **data: Any) -> None:
        """Journal the transition and move; an illegal trigger raises and journals nothing."""
        source = self.state
        dest = self._moves.get((source, trigger))
        if dest is None:
            raise IllegalTransition(
                f"{trigger} is not allowed from {source}", trigger=trigger, state=source
            )
        self._persist(trigger, source, dest, data)
        self.state = dest

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES
