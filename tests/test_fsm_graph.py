"""The order state machine as a graph, and OrderMachine's persist-then-move contract."""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.errors import IllegalTransition
from engine.fsm import (
    TERMINAL_STATES,
    OrderMachine,
    OrderState,
    Trigger,
    limit_step,
    state_names,
    transition_table,
)
from engine.walk import LIMIT_STEP, STATE_HANDLERS

LADDERS = range(6)
PENDING = str(OrderState.PENDING)
QUOTED = str(OrderState.QUOTED)
MARKET = str(OrderState.MARKET)
SETTLING = str(OrderState.SETTLING)
VALIDATED = str(OrderState.VALIDATED)
FAILED = str(OrderState.FAILED)
ALL_TRIGGERS = [str(t) for t in Trigger]

PersistCall = tuple[str, str, str, dict[str, Any]]


def edges(steps: int) -> dict[str, set[str]]:
    """Adjacency (source -> set of dests) of the transition table."""
    graph: dict[str, set[str]] = defaultdict(set)
    for _, source, dest in transition_table(steps):
        graph[source].add(dest)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every state reachable from `start` (including itself)."""
    seen, queue = {start}, deque([start])
    while queue:
        for nxt in graph.get(queue.popleft(), set()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def moves(steps: int) -> dict[tuple[str, str], str]:
    """(source, trigger) -> dest from the transition table."""
    return {(s, t): d for t, s, d in transition_table(steps)}


def recorder(calls: list[PersistCall]) -> Any:
    """A persist callback that records its arguments."""

    def persist(trigger: str, source: str, dest: str, data: dict[str, Any]) -> None:
        calls.append((trigger, source, dest, dict(data)))

    return persist


# -- the graph ---------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", LADDERS)
def test_states_are_exactly_the_table_states(steps: int) -> None:
    """Every state named by state_names appears in the table and the table names no other."""
    names = [str(s) for s in state_names(steps)]
    assert len(names) == len(set(names)) == steps + 6
    in_table = {s for _, s, _ in transition_table(steps)} | {
        d for _, _, d in transition_table(steps)
    }
    assert in_table == set(names)
    assert [n for n in names if n.startswith("LIMIT_STEP_")] == [
        limit_step(k) for k in range(1, steps + 1)
    ]


@pytest.mark.parametrize("steps", LADDERS)
def test_pending_is_the_only_state_without_incoming_edges(steps: int) -> None:
    """Exactly one state (PENDING) has no incoming edge: the single initial state."""
    dests = {d for _, _, d in transition_table(steps)}
    sources_only = [str(s) for s in state_names(steps) if str(s) not in dests]
    assert sources_only == [PENDING]


@pytest.mark.parametrize("steps", LADDERS)
def test_every_state_reachable_from_pending(steps: int) -> None:
    """Every state can be reached from PENDING."""
    assert reachable(edges(steps), PENDING) == {str(s) for s in state_names(steps)}


@pytest.mark.parametrize("steps", LADDERS)
def test_terminal_reachable_from_every_state(steps: int) -> None:
    """From every state, VALIDATED or FAILED can be reached."""
    graph = edges(steps)
    for state in state_names(steps):
        assert reachable(graph, str(state)) & TERMINAL_STATES, state


@pytest.mark.parametrize("steps", LADDERS)
def test_nothing_leaves_a_terminal_state(steps: int) -> None:
    """VALIDATED and FAILED have no outgoing edges in the table."""
    assert [row for row in transition_table(steps) if row[1] in TERMINAL_STATES] == []
    assert {VALIDATED, FAILED} == TERMINAL_STATES


@pytest.mark.parametrize("steps", LADDERS)
def test_every_non_terminal_state_can_fail(steps: int) -> None:
    """Every non-terminal state has a `fail` edge to FAILED."""
    table = moves(steps)
    for state in state_names(steps):
        if str(state) not in TERMINAL_STATES:
            assert table.get((str(state), str(Trigger.FAIL))) == FAILED, state


@pytest.mark.parametrize("steps", LADDERS)
def test_the_walk_order_is_a_path(steps: int) -> None:
    """PENDING -> QUOTED -> LIMIT_STEP_1..n -> MARKET -> SETTLING -> VALIDATED is a path."""
    walk = [PENDING, QUOTED, *(limit_step(k) for k in range(1, steps + 1))]
    walk += [MARKET, SETTLING, VALIDATED]
    graph = edges(steps)
    for source, dest in itertools.pairwise(walk):
        assert dest in graph[source], f"{source} -> {dest} missing"


@pytest.mark.parametrize("steps", LADDERS)
def test_quoted_can_escalate_straight_to_market(steps: int) -> None:
    """QUOTED -> MARKET exists (urgency HIGH) for every ladder length."""
    assert moves(steps)[(QUOTED, str(Trigger.ESCALATE))] == MARKET


@pytest.mark.parametrize("steps", LADDERS)
def test_table_is_deterministic(steps: int) -> None:
    """No (source, trigger) pair has two different destinations."""
    pairs = [(s, t) for t, s, _ in transition_table(steps)]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize("steps", LADDERS)
def test_machine_allows_exactly_the_table(steps: int) -> None:
    """OrderMachine.can_fire agrees with transition_table for every (state, trigger) pair."""
    table = moves(steps)
    for state in state_names(steps):
        machine = OrderMachine(steps, recorder([]), initial=str(state))
        for trigger in [*ALL_TRIGGERS, "bogus"]:
            assert machine.can_fire(trigger) == ((str(state), trigger) in table)


# -- OrderMachine ------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", LADDERS)
def test_illegal_trigger_raises_and_persists_nothing(steps: int) -> None:
    """An illegal trigger raises IllegalTransition, keeps the state, and never calls persist."""
    table = moves(steps)
    for state in state_names(steps):
        for trigger in [*ALL_TRIGGERS, "bogus"]:
            if (str(state), trigger) in table:
                continue
            calls: list[PersistCall] = []
            machine = OrderMachine(steps, recorder(calls), initial=str(state))
            with pytest.raises(IllegalTransition, match=trigger) as info:
                machine.fire(trigger, reason="x")
            assert info.value.fields == {"trigger": trigger, "state": str(state)}
            assert machine.state == str(state)
            assert calls == []


class StateSpy:
    """A persist callback that records its calls and the machine's state at each call."""

    def __init__(self) -> None:
        self.machine: OrderMachine | None = None
        self.calls: list[PersistCall] = []
        self.states_seen: list[str] = []

    def __call__(self, trigger: str, source: str, dest: str, data: dict[str, Any]) -> None:
        assert self.machine is not None
        self.states_seen.append(self.machine.state)
        self.calls.append((trigger, source, dest, dict(data)))


@pytest.mark.parametrize("steps", LADDERS)
def test_legal_trigger_persists_once_before_moving(steps: int) -> None:
    """A legal trigger calls persist once with (trigger, source, dest, data), still at source."""
    for trigger, source, dest in transition_table(steps):
        spy = StateSpy()
        machine = spy.machine = OrderMachine(steps, spy, initial=source)
        machine.fire(trigger, reason="why", n=3)
        assert spy.calls == [(trigger, source, dest, {"reason": "why", "n": 3})]
        assert spy.states_seen == [source]
        assert machine.state == dest


class PersistFailed(RuntimeError):
    """Raised by a persist callback that simulates a failed journal write."""


@pytest.mark.parametrize("steps", LADDERS)
def test_persist_failure_leaves_state_unchanged(steps: int) -> None:
    """When persist raises, the error propagates and the machine stays at its source state."""
    for trigger, source, _ in transition_table(steps):

        def persist(t: str, s: str, d: str, data: dict[str, Any]) -> None:
            raise PersistFailed(t)

        machine = OrderMachine(steps, persist, initial=source)
        with pytest.raises(PersistFailed):
            machine.fire(trigger)
        assert machine.state == source
        assert machine.can_fire(trigger)


def test_persist_failure_then_retry_succeeds() -> None:
    """After a failed persist, the same trigger can be fired again and then moves once."""
    attempts: list[str] = []

    def persist(t: str, s: str, d: str, data: dict[str, Any]) -> None:
        attempts.append(t)
        if len(attempts) == 1:
            raise PersistFailed(t)

    machine = OrderMachine(3, persist)
    with pytest.raises(PersistFailed):
        machine.fire(str(Trigger.QUOTE))
    assert machine.state == PENDING
    machine.fire(str(Trigger.QUOTE))
    assert machine.state == QUOTED
    assert attempts == [str(Trigger.QUOTE), str(Trigger.QUOTE)]


def test_machines_sharing_a_ladder_are_independent() -> None:
    """Two orders with the same ladder length do not share state or persist callbacks."""
    calls_a: list[PersistCall] = []
    calls_b: list[PersistCall] = []
    a = OrderMachine(2, recorder(calls_a))
    b = OrderMachine(2, recorder(calls_b))
    a.fire(str(Trigger.QUOTE))
    a.fire(str(Trigger.START_WALK))
    assert (a.state, b.state) == (limit_step(1), PENDING)
    b.fire(str(Trigger.FAIL), reason="no_quote")
    assert (a.state, b.state) == (limit_step(1), FAILED)
    assert [c[0] for c in calls_a] == ["quote", "start_walk"]
    assert calls_b == [("fail", PENDING, FAILED, {"reason": "no_quote"})]


# -- random walks against a model built from the table ----------------------------------------


class OrderMachineModel(RuleBasedStateMachine):
    """Random triggers at an OrderMachine, checked against the transition table."""

    def __init__(self) -> None:
        super().__init__()
        self.machine: OrderMachine | None = None
        self.calls: list[PersistCall] = []
        self.model_state = PENDING
        self.legal_moves = 0
        self.table: dict[tuple[str, str], str] = {}

    @initialize(steps=st.integers(0, 5))
    def build(self, steps: int) -> None:
        self.table = moves(steps)
        self.machine = OrderMachine(steps, recorder(self.calls))

    @precondition(lambda self: self.machine is not None)
    @rule(trigger=st.sampled_from([*ALL_TRIGGERS, "bogus", "to_FAILED"]), tag=st.integers(0, 99))
    def fire(self, trigger: str, tag: int) -> None:
        assert self.machine is not None
        dest = self.table.get((self.model_state, trigger))
        if dest is None:
            with pytest.raises(IllegalTransition):
                self.machine.fire(trigger, tag=tag)
        else:
            self.machine.fire(trigger, tag=tag)
            assert self.calls[-1] == (trigger, self.model_state, dest, {"tag": tag})
            self.model_state = dest
            self.legal_moves += 1

    @invariant()
    def matches_model(self) -> None:
        if self.machine is None:
            return
        assert self.machine.state == self.model_state
        assert len(self.calls) == self.legal_moves
        assert self.machine.is_terminal == (self.model_state in TERMINAL_STATES)

    @invariant()
    def terminal_is_absorbing(self) -> None:
        assert [c for c in self.calls if c[1] in TERMINAL_STATES] == []


OrderMachineModel.TestCase.settings = settings(max_examples=100, stateful_step_count=25)
TestOrderMachineModel = OrderMachineModel.TestCase


def test_orders_do_not_register_on_the_shared_machine() -> None:
    """Ten thousand orders leave the ladder's `transitions` machine without models: an order
    costs one small object, not a registration (which made large resumes quadratic)."""
    from engine.fsm import _machine

    machines = [OrderMachine(3, recorder([]), initial=limit_step(1)) for _ in range(10_000)]
    assert _machine(3).models == []
    machines[0].fire(str(Trigger.NEXT_STEP))
    assert (machines[0].state, machines[1].state) == (limit_step(2), limit_step(1))


def test_an_unknown_initial_state_is_refused() -> None:
    """The initial state must be one of the ladder's states, as `transitions` required."""
    with pytest.raises(ValueError, match="LIMIT_STEP_4"):
        OrderMachine(3, recorder([]), initial=limit_step(4))


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_every_state_a_walk_can_stand_in_has_a_handler(steps: int) -> None:
    """The walk dispatches from a table keyed by state: every non-terminal state of the
    graph (each limit step through the shared key) has exactly one handler, and no handler
    waits for a state the graph does not have."""
    open_states = [s for s in state_names(steps) if s not in TERMINAL_STATES]
    keys = {LIMIT_STEP if s.startswith("LIMIT_STEP_") else s for s in open_states}
    assert keys == set(STATE_HANDLERS)
