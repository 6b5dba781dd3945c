"""The order state machine, built with `transitions`, persisted before it moves.

    PENDING -> QUOTED -> LIMIT_STEP_1 -> ... -> LIMIT_STEP_n -> MARKET -> SETTLING -> VALIDATED
    QUOTED -> MARKET (urgency HIGH);  LIMIT_STEP_k -> SETTLING (fully filled)
    any non-terminal state -> FAILED (with a reason code)

The journal append runs in `before_state_change`: if it raises, `transitions`
leaves the state untouched, so memory never runs ahead of the journal.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from functools import cache
from typing import Any

from transitions import Machine, MachineError

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
    BROKER_UNAVAILABLE = "broker_unavailable"
    INVALID_INTENT = "invalid_intent"


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


@cache
def _machine(steps: int) -> Machine:
    """One `transitions` machine per ladder length, shared by every order model."""
    return Machine(
        model=None,
        states=[str(s) for s in state_names(steps)],
        transitions=[{"trigger": t, "source": s, "dest": d} for t, s, d in transition_table(steps)],
        initial=str(OrderState.PENDING),
        auto_transitions=False,
        send_event=True,
        before_state_change="_persist_transition",
    )


class OrderMachine:
    """The state of one order. `fire` journals through `persist`, then moves."""

    state: str

    def __init__(self, steps: int, persist: Persist, initial: str = OrderState.PENDING) -> None:
        self.steps = steps
        self._persist = persist
        self._machine = _machine(steps)
        self._machine.add_model(self, initial=str(initial))
        self._released = False

    def can_fire(self, trigger: str) -> bool:
        return trigger in self._machine.get_triggers(self.state)

    def fire(self, trigger: str, **data: Any) -> None:
        """Journal the transition and move; an illegal trigger raises and journals nothing."""
        if not self.can_fire(trigger):
            raise IllegalTransition(
                f"{trigger} is not allowed from {self.state}", trigger=trigger, state=self.state
            )
        try:
            self._machine.events[trigger].trigger(self, **data)
        except MachineError as exc:
            raise IllegalTransition(str(exc.value), trigger=trigger, state=self.state) from None

    def _persist_transition(self, event: Any) -> None:
        self._persist(
            event.event.name, event.transition.source, event.transition.dest, event.kwargs
        )

    def release(self) -> None:
        """Detach from the shared machine once the order is done (again: no-op)."""
        if not self._released:
            self._released = True
            self._machine.remove_model(self)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES
