"""Hypothesis drives the engine with random plans, market faults, crashes and resumes.

One simulated broker and one journal file live for a whole example, as they would in
production; each rule is one engine process (a fresh Engine) that may be crashed at any
named point. After every rule the standing invariants hold, whatever is still in flight;
at the end, resuming until nothing is in flight leaves every order terminal and exact.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from walk_support import check_invariants

from engine import (
    Engine,
    EngineConfig,
    InvalidIntent,
    MarketSpec,
    PlansInFlight,
    SimBroker,
    SymbolSpec,
    VirtualClock,
    parse_plan,
)
from engine.broker import BrokerOrderStatus
from engine.crash import CrashPoints, SimulatedCrash, all_crash_points
from engine.events import EventKind
from engine.order import fold_orders
from journal import Journal

START = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
LONG = os.environ.get("WALKBOOK_SOAK") == "long"

SYMBOLS = {
    "AAPL": SymbolSpec(price=Decimal("190"), spread_bps=8, fractionable=False),
    "SPY": SymbolSpec(price=Decimal("480"), spread_bps=4, fractionable=True),
    "PNY": SymbolSpec(price=Decimal("0.4321"), spread_bps=60, fractionable=False),
}
START_POSITIONS = {"AAPL": Decimal(20), "SPY": Decimal("3.75"), "PNY": Decimal(500)}

FAULTS = st.fixed_dictionaries(
    {
        "fill_intensity": st.sampled_from([0.005, 0.05, 1e9]),
        "partial_fill_probability": st.sampled_from([0.0, 0.5, 1.0]),
        "market_partial_probability": st.sampled_from([0.0, 0.3]),
        "reject_probability": st.sampled_from([0.0, 0.0, 0.3]),
        "read_error_probability": st.sampled_from([0.0, 0.0, 0.2]),
        "submit_timeout_probability": st.sampled_from([0.0, 0.0, 0.3]),
        "stream_gap_probability": st.sampled_from([0.02, 0.6]),
    }
)
IN_FLIGHT = st.sampled_from(["refuse", "resume_first", "abandon"])
CRASHES = st.one_of(st.none(), st.tuples(st.sampled_from(all_crash_points()), st.integers(1, 4)))
CALM: dict[str, Any] = {
    "reject_probability": 0.0,
    "read_error_probability": 0.0,
    "submit_timeout_probability": 0.0,
    "fill_intensity": 0.05,
}


@st.composite
def orders(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One to three intents on distinct symbols; sells may exceed the position (refused)."""
    symbols = draw(st.lists(st.sampled_from(sorted(SYMBOLS)), min_size=1, max_size=3, unique=True))
    drawn = []
    for symbol in symbols:
        fractional = SYMBOLS[symbol].fractionable and draw(st.booleans())
        qty = draw(st.integers(1, 12)) + (Decimal("0.25") if fractional else 0)
        side = draw(st.sampled_from(["buy", "sell", "close"]))
        urgency = draw(st.sampled_from(["low", "medium", "high"]))
        order = {"symbol": symbol, "side": "sell" if side == "close" else side,
                 "quantity": str(qty), "urgency": urgency}  # fmt: skip
        if side == "close":
            order["close_type"] = "full"
        drawn.append(order)
    return drawn


@dataclass
class World:
    """What outlives every engine process: the broker's book and the journal file."""

    broker: SimBroker
    clock: VirtualClock
    journal_path: Path

    @property
    def journal(self) -> Journal:
        return Journal.open_readonly(self.journal_path)


class EngineUnderFaults(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        clock = VirtualClock(START)
        spec = MarketSpec(seed=11, symbols=SYMBOLS, positions=START_POSITIONS)
        self.world = World(SimBroker(spec, clock), clock, Path(self._dir.name) / "j.db")
        self.plans = 0

    # -- one engine process per rule -------------------------------------------------

    def _engine_process(
        self,
        crash: tuple[str, int] | None,
        faults: dict[str, Any],
        config: EngineConfig | None = None,
    ) -> Engine:
        world = self.world
        world.broker.spec = world.broker.spec.model_copy(update=faults)
        points = CrashPoints() if crash is None else CrashPoints(armed=crash[0], nth=crash[1])
        return Engine(
            world.broker, world.journal_path, config, clock=world.clock, crash_points=points
        )

    def _in_flight(self) -> bool:
        if not self.world.journal_path.exists():
            return False
        with self.world.journal as journal:
            return any(row["state"] not in ("VALIDATED", "FAILED") for row in journal.orders())

    @rule(plan=orders(), crash=CRASHES, faults=FAULTS, in_flight=IN_FLIGHT)
    def deliver_plan(
        self,
        plan: list[dict[str, Any]],
        crash: tuple[str, int] | None,
        faults: dict[str, Any],
        in_flight: str,
    ) -> None:
        self.plans += 1
        sent_before = len(self.world.broker.orders)
        was_in_flight = self._in_flight()
        engine = self._engine_process(crash, faults, EngineConfig(in_flight=in_flight))
        seq_before = engine.journal.last_seq
        try:
            engine.execute_plan_sync(parse_plan({"plan_id": f"p{self.plans}", "orders": plan}))
        except PlansInFlight:
            event("plan refused: another plan in flight")
            assert was_in_flight
            assert in_flight == "refuse"
            assert engine.journal.last_seq == seq_before
            assert len(self.world.broker.orders) == sent_before
        except InvalidIntent:
            event("plan refused before anything was sent")
            # refused as written (a sell beyond the position): nothing of it journaled or
            # sent; with in_flight="resume_first" or "abandon" the plans it found in flight
            # were settled first (their own journaling and orders)
            assert engine.journal.first_event_of_plan(f"p{self.plans}") is None
            if not was_in_flight:
                assert engine.journal.last_seq == seq_before
                assert len(self.world.broker.orders) == sent_before
        except SimulatedCrash:
            event("crashed while executing a plan")
        finally:
            engine.close()

    @rule(crash=CRASHES, faults=FAULTS)
    def resume(self, crash: tuple[str, int] | None, faults: dict[str, Any]) -> None:
        in_flight = self._in_flight()
        engine = self._engine_process(crash, faults)
        try:
            report = engine.resume_sync()
            assert report.nothing_in_flight == (not in_flight)
        except SimulatedCrash:
            event("crashed while resuming")
        finally:
            engine.close()

    @rule(crash=CRASHES)
    def halt(self, crash: tuple[str, int] | None) -> None:
        engine = self._engine_process(crash, {})
        try:
            stopped = engine.clock.run(engine.halt())
            event("halted")
            assert all(order.state != "VALIDATED" for order in stopped)
        except SimulatedCrash:
            event("crashed while halting")
        finally:
            engine.close()

    @rule(seconds=st.sampled_from([1.0, 15.0, 120.0]))
    def market_moves_while_down(self, seconds: float) -> None:
        self.world.clock.run(self.world.clock.sleep(seconds))

    # -- invariants after every rule, whatever is in flight -------------------------

    @invariant()
    def journal_and_book_agree(self) -> None:
        if not self.world.journal_path.exists():
            return
        broker = self.world.broker
        with self.world.journal as journal:
            assert journal.verify_chain() is None
            events = list(journal.events())
            records = fold_orders(events)
            for order_id, record in records.items():
                assert journal.order(order_id) == record.projection()
        journaled_cids = {
            e.data["client_order_id"]
            for e in events
            if e.kind in (EventKind.SUBMIT_INTENT, EventKind.REPLACE_INTENT)
        }
        live_per_order: Counter[str] = Counter()
        broker_fills: dict[str, Decimal] = defaultdict(Decimal)
        for order in broker.orders.values():
            assert order.client_order_id in journaled_cids  # written ahead, always
            engine_order = order.client_order_id.split("-")[1]
            # an order pending_replace and its replacement are one order mid-change (the
            # broker replaces, or rejects the replacement, when it reaches the venue)
            replacing = order.status is BrokerOrderStatus.PENDING_REPLACE
            live_per_order[engine_order] += not order.status.is_terminal and not replacing
            broker_fills[engine_order] += order.filled_qty
        assert all(n <= 1 for n in live_per_order.values()), live_per_order
        stopped: set[str] = set()
        for e in events:  # a stopped order never places anything again
            if e.kind == EventKind.STOP_REQUESTED:
                stopped.add(str(e.order_id))
            elif e.kind in (EventKind.SUBMIT_INTENT, EventKind.REPLACE_INTENT):
                assert e.order_id not in stopped, e
        for order_id, record in records.items():
            if record.is_terminal and order_id in stopped:
                assert record.reason in ("cancelled", "abandoned", "cancelled_externally")
            assert record.filled_qty <= broker_fills[order_id]  # never a fill the broker lacks
            assert broker_fills[order_id] <= record.quantity  # never over-filled at the broker
            if record.is_terminal:
                assert live_per_order[order_id] == 0
                assert record.filled_qty == broker_fills[order_id]  # no fill lost

    def teardown(self) -> None:
        try:
            for _ in range(3):
                if not self._in_flight():
                    break
                self.resume(None, CALM)
            assert not self._in_flight()
            if self.world.journal_path.exists():
                with self.world.journal as journal:
                    check_invariants(_Reader(journal, self.world.broker))
        finally:
            self._dir.cleanup()


@dataclass
class _Reader:
    journal: Journal
    broker: SimBroker


EngineUnderFaults.TestCase.settings = settings(
    max_examples=300 if LONG else 40,
    stateful_step_count=12 if LONG else 6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_engine_under_faults = pytest.mark.soak(EngineUnderFaults.TestCase)
