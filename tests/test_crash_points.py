"""Crash at every named crash point of every walk scenario, then resume on a fresh Engine.

The simulator stands for the broker that outlives the engine process: the same SimBroker
(its book, fills and positions) meets a new Engine opened on the same journal, as a restart
opens it. A crash is `SimulatedCrash`, raised at the armed point and caught by nothing in
the engine; the crashed engine's journal is closed (a PostgreSQL journal's lease let go).

On a SQLite journal file the sweep is whole: each point a scenario reaches, at its first hit
and its last. On a PostgreSQL journal (the session's throwaway cluster) `make test` crashes
each point once, at its first hit, in the scenario that reaches it with the fewest crash
points hit in all; `WALKBOOK_SOAK=long .venv/bin/pytest -m soak tests/test_crash_points.py`
(part of `make soak`) runs the whole sweep there too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from walk_support import NEVER, RecordingSimBroker, check_invariants, steady

from engine import (
    Engine,
    EngineConfig,
    MarketSpec,
    OrderSide,
    RebalancePlan,
    SymbolSpec,
    VirtualClock,
    parse_plan,
)
from engine.crash import BROKER_METHODS, CrashPoints, SimulatedCrash, all_crash_points
from engine.events import EVENT_KINDS, EventKind
from engine.fsm import TERMINAL_STATES
from engine.order import fold_orders

START = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
DEFAULT_CONFIG = EngineConfig()
# broker reads no scenario below makes, and why a crash around them needs no sweep
NOT_SWEPT = {
    "get_positions": "read by planners and by preflight (a partial sell's position), "
    "before anything is journaled: a crash there leaves nothing to resume",
    "latest_quotes": "read only to size 30 buys or more at once, before any walks: a crash "
    "there leaves every buy PENDING, sized afresh on resume",
}


@dataclass(frozen=True)
class Scenario:
    market: dict[str, Any]
    orders: list[dict[str, Any]]
    config: EngineConfig = DEFAULT_CONFIG
    # Engine.halt() this many virtual seconds into the walk
    halt_after_seconds: float | None = None

    def plan(self) -> RebalancePlan:
        return parse_plan({"plan_id": "crash", "orders": self.orders})


SPY = SymbolSpec(price=Decimal("480"), spread_bps=4, volatility_bps=2, fractionable=True)
SCENARIOS = {
    "fill_at_step_1": Scenario(
        {"symbols": steady(spread_bps=20), "fill_intensity": 1e9, "partial_fill_probability": 0},
        [{"symbol": "AAPL", "side": "buy", "quantity": "10"}],
    ),
    "partial_fills_across_steps": Scenario(
        {
            "seed": 8,
            "symbols": steady(spread_bps=20),
            "fill_intensity": 0.1,
            "partial_fill_probability": 1.0,
        },
        [{"symbol": "AAPL", "side": "buy", "quantity": "6"}],
    ),
    "escalation_to_market": Scenario(
        {
            "symbols": steady(spread_bps=20),
            "fill_intensity": NEVER,
            "market_partial_probability": 0.5,
            "seed": 3,
        },
        [{"symbol": "AAPL", "side": "buy", "quantity": "10"}],
        EngineConfig(replace_orders=True),  # the steps move by replace: its points are armed
    ),
    "full_close": Scenario(
        {"symbols": steady(spread_bps=20), "positions": {"AAPL": 7}, "fill_intensity": 0.05},
        [{"symbol": "AAPL", "side": "sell", "quantity": "7", "close_type": "full"}],
    ),
    "buy_shrunk_to_funds": Scenario(
        {"symbols": steady(spread_bps=20), "cash": Decimal(450), "fill_intensity": 0.05},
        [{"symbol": "AAPL", "side": "buy", "quantity": "10"}],
        EngineConfig(insufficient_funds="shrink"),
    ),
    "fractional": Scenario(
        {"symbols": {"SPY": SPY}, "fill_intensity": 0.05, "partial_fill_probability": 0.8},
        [{"symbol": "SPY", "side": "buy", "quantity": "2.5"}],
    ),
    "fraction_of_a_whole_share_asset": Scenario(
        {
            "symbols": {
                "AAPL": steady(spread_bps=20)["AAPL"].model_copy(update={"fractionable": False})
            },
            "positions": {"AAPL": Decimal("2.7")},
            "fill_intensity": 0.05,
        },
        [{"symbol": "AAPL", "side": "sell", "quantity": "2.7", "close_type": "full"}],
    ),
    # every quote from REST (the stream never has one) and half the broker's answers lost:
    # the close-position fraction is found among recent orders, the rest by client id
    "answers_lost": Scenario(
        {
            "seed": 3,
            "symbols": {
                "AAPL": steady(spread_bps=20)["AAPL"].model_copy(update={"fractionable": False})
            },
            "positions": {"AAPL": Decimal("2.7")},
            "fill_intensity": 0.05,
            "stream_gap_probability": 1.0,
            "submit_timeout_probability": 0.5,
        },
        [{"symbol": "AAPL", "side": "sell", "quantity": "2.7", "close_type": "full"}],
    ),
    # placements held back by a spread wider than max_spread_bps until the steps run out
    "held_back_by_the_spread": Scenario(
        {"symbols": steady(spread_bps=20), "fill_intensity": 0.05},
        [{"symbol": "AAPL", "side": "buy", "quantity": "10"}],
        EngineConfig(max_spread_bps=Decimal(10)),
    ),
    # a moving market: resting steps re-priced in place, inside a price band
    "repegged_in_a_band": Scenario(
        {
            "seed": 5,
            "symbols": {"AAPL": SymbolSpec(price=Decimal(100), spread_bps=20, volatility_bps=15)},
            "fill_intensity": 0.01,
        },
        [{"symbol": "AAPL", "side": "buy", "quantity": "10"}],
        EngineConfig(repeg_threshold_bps=Decimal(5), price_band_bps=Decimal(300)),
    ),
    "halted_mid_walk": Scenario(
        {
            "seed": 8,
            "symbols": steady(spread_bps=20),
            "fill_intensity": 0.1,
            "partial_fill_probability": 1.0,
        },
        [{"symbol": "AAPL", "side": "buy", "quantity": "60"}],
        halt_after_seconds=15,
    ),
}


@dataclass
class Survivor:
    """What outlives a crash: the journal file, the broker and the market's clock."""

    engine: Engine
    broker: RecordingSimBroker
    clock: VirtualClock

    @property
    def journal(self) -> Any:
        return self.engine.journal


def _run(scenario: Scenario, journal: str | Path, points: CrashPoints) -> tuple[Survivor, bool]:
    clock = VirtualClock(START)
    broker = RecordingSimBroker(MarketSpec(**scenario.market), clock)
    engine = Engine(broker, journal, config=scenario.config, clock=clock, crash_points=points)

    async def execute() -> None:
        if scenario.halt_after_seconds is None:
            await engine.execute_plan(scenario.plan())
            return

        async def halt_later(seconds: float) -> None:
            await clock.sleep(seconds)
            await engine.halt()

        await asyncio.gather(
            engine.execute_plan(scenario.plan()), halt_later(scenario.halt_after_seconds)
        )

    try:
        clock.run(execute())
    except SimulatedCrash:
        return Survivor(engine, broker, clock), True
    return Survivor(engine, broker, clock), False


def _points_reached() -> dict[str, dict[str, int]]:
    """How often a clean run of each scenario hits each crash point (the store plays no
    part in the walk, so one dry run on a SQLite file serves both stores)."""
    known = set(all_crash_points())
    reached = {}
    for name, scenario in SCENARIOS.items():
        points = CrashPoints()
        with _TemporaryJournal() as path:
            survivor, crashed = _run(scenario, path, points)
            survivor.engine.close()
        assert not crashed
        assert set(points.hits) <= known, sorted(set(points.hits) - known)
        reached[name] = dict(points.hits)
    return reached


def _site(store: str, name: str, point: str, nth: int) -> Any:
    # a PostgreSQL site is part of `make soak` (-m soak), which runs the whole sweep there
    marks = [pytest.mark.soak] if store == "postgresql" else []
    return pytest.param(store, name, point, nth, id=f"{store}-{name}-{point}-{nth}", marks=marks)


def _whole_sweep(store: str, reached: dict[str, dict[str, int]]) -> list[Any]:
    """Every (scenario, point, nth) a clean run of the scenario actually reaches.

    Each point is crashed at its first hit and at its last, so both the first
    attempt and the last step of a walk are covered.
    """
    return [
        _site(store, name, point, nth)
        for name, hits in reached.items()
        for point, last in sorted(hits.items())
        for nth in sorted({1, last})
    ]


def _each_point_once(store: str, reached: dict[str, dict[str, int]]) -> list[Any]:
    """Each point crashed once, at its first hit, in the scenario that reaches it with the
    fewest crash points hit in all: the cheapest run to crash and resume."""
    cheapest_first = sorted(reached, key=lambda name: sum(reached[name].values()))
    scenario_of: dict[str, str] = {}
    for name in cheapest_first:
        for point in reached[name]:
            scenario_of.setdefault(point, name)
    return [_site(store, name, point, 1) for point, name in sorted(scenario_of.items())]


class _TemporaryJournal:
    """A journal path in a fresh temporary directory, for collection-time dry runs."""

    def __enter__(self) -> Path:
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        return Path(self._dir.name) / "dry.db"

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()


REACHED = _points_reached()
SQLITE_SITES = _whole_sweep("sqlite", REACHED)
POSTGRES_SITES = (
    _whole_sweep("postgresql", REACHED)
    if os.environ.get("WALKBOOK_SOAK") == "long"
    else _each_point_once("postgresql", REACHED)
)


def test_every_named_point_is_reached_by_some_scenario() -> None:
    """The sweep is exhaustive: each append kind and broker call the walk uses gets a crash."""
    reached = {point for hits in REACHED.values() for point in hits}
    # a withdrawn intent needs a stop to meet an unanswered intent: a crash, then a halt
    # (test_halt_after_a_crash_withdraws_what_the_broker_never_had)
    walk_kinds = set(EVENT_KINDS) - {
        EventKind.ERROR,
        EventKind.REJECTED,
        EventKind.INTENT_WITHDRAWN,
    }
    expected = {f"{w}_append.{kind}" for kind in walk_kinds for w in ("before", "after")}
    walk_methods = set(BROKER_METHODS) - set(NOT_SWEPT)
    expected |= {f"{w}_broker.{method}" for w in ("before", "after") for method in walk_methods}
    assert expected <= reached, sorted(expected - reached)
    # a method listed as not swept must really not be reached: else it belongs in the sweep
    assert not {f"before_broker.{m}" for m in NOT_SWEPT} & reached
    # each store's sweep crashes every point reached
    for sites in (SQLITE_SITES, POSTGRES_SITES):
        assert {site.values[2] for site in sites} == reached


@pytest.mark.parametrize(
    ("new_journal", "scenario_name", "point", "nth"),
    SQLITE_SITES + POSTGRES_SITES,
    indirect=["new_journal"],
)
def test_crash_then_resume_keeps_every_invariant(
    new_journal: Callable[[], str | Path], scenario_name: str, point: str, nth: int
) -> None:
    scenario = SCENARIOS[scenario_name]
    journal = new_journal()
    survivor, crashed = _run(scenario, journal, CrashPoints(armed=point, nth=nth))
    assert crashed
    survivor.engine.close()

    resumed = Survivor(
        Engine(survivor.broker, journal, config=scenario.config, clock=survivor.clock),
        survivor.broker,
        survivor.clock,
    )
    try:
        in_flight = [r for r in resumed.journal.orders() if r["state"] not in TERMINAL_STATES]
        report = resumed.engine.resume_sync()
        # resume reports exactly the orders the crash left in flight
        assert sorted(o.order_id for o in report.orders) == sorted(r["order_id"] for r in in_flight)
        if not resumed.journal.orders():
            # killed before the order was journaled: nothing was sent, the plan is re-delivered
            assert not survivor.broker.orders
            resumed.engine.execute_plan_sync(scenario.plan())
        _assert_outcome(resumed, scenario)
        again = resumed.engine.resume_sync()
        assert again.nothing_in_flight
    finally:
        resumed.engine.close()


def _assert_outcome(survivor: Survivor, scenario: Scenario) -> None:
    records = check_invariants(survivor)
    assert len(records) == len(scenario.orders)
    broker = survivor.broker
    for record in records.values():
        assert record.is_terminal, record.state
        start = broker.spec.positions.get(record.intent.symbol, Decimal(0))
        moved = broker.positions.get(record.intent.symbol, Decimal(0)) - start
        intended = record.quantity if record.intent.side is OrderSide.BUY else -record.quantity
        if record.state == "VALIDATED":
            assert moved == intended
        else:
            assert record.reason is not None
            assert abs(moved) <= abs(intended)
    # no second order was ever placed while one of the same engine order was live
    for cid, live in broker.live_at_submit:
        assert not live, (cid, live)
    # resume never invented a broker order the journal does not know about: each was
    # journaled ahead by its client id, or (a close-position, whose id is the broker's)
    # acknowledged, and one close-position at most per engine order
    events = list(survivor.journal.events())
    journaled = {
        e.data["client_order_id"]
        for e in events
        if e.kind in (EventKind.SUBMIT_INTENT, EventKind.REPLACE_INTENT)
    }
    acked = {e.data["broker_order_id"] for e in events if e.kind == EventKind.SUBMIT_ACK}
    closes = [o for o in broker.orders.values() if o.client_order_id not in journaled]
    assert {o.id for o in closes} <= acked
    assert len(closes) <= len(records)
    assert fold_orders(survivor.journal.events()).keys() == records.keys()


@pytest.mark.parametrize("new_journal", ["sqlite", "postgresql"], indirect=True)
def test_halt_after_a_crash_withdraws_what_the_broker_never_had(
    new_journal: Callable[[], str | Path],
) -> None:
    """Killed between journaling a submit and sending it, then halted instead of resumed:
    the intent is withdrawn (journaled), never sent, and the order ends FAILED cancelled."""
    scenario = SCENARIOS["fill_at_step_1"]
    journal = new_journal()
    points = CrashPoints(armed="before_broker.submit_order", nth=1)
    survivor, crashed = _run(scenario, journal, points)
    assert crashed
    survivor.engine.close()
    assert not survivor.broker.orders
    with Engine(survivor.broker, journal, clock=survivor.clock) as engine:
        stopped = survivor.clock.run(engine.halt())
        assert [(o.state, o.reason) for o in stopped] == [("FAILED", "cancelled")]
        kinds = [e.kind for e in engine.journal.events()]
        assert kinds[-3:] == [
            EventKind.STOP_REQUESTED,
            EventKind.INTENT_WITHDRAWN,
            EventKind.TRANSITION,
        ]
        assert engine.resume_sync().nothing_in_flight
    assert not survivor.broker.orders


def test_the_crashing_broker_wraps_every_method_of_the_protocol() -> None:
    """BROKER_METHODS is read off the Broker protocol, and CrashingBroker defines each: a
    method added to the protocol cannot go without its crash points."""
    from engine.broker import Broker
    from engine.crash import CrashingBroker

    assert "open_orders" in BROKER_METHODS
    assert "name" not in BROKER_METHODS
    assert set(BROKER_METHODS) == {n for n in vars(Broker) if not n.startswith("_")} - {"name"}
    missing = [m for m in BROKER_METHODS if m not in vars(CrashingBroker)]
    assert not missing, missing
