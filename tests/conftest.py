"""Shared fixtures: engines on the simulator, in virtual time, over real SQLite journal files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import structlog

from engine import Engine, EngineConfig, MarketSpec, SimBroker, VirtualClock
from journal import Journal

START = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
# The walk a rig runs unless a test gives its own: the defaults, with the 10 s steps the
# seeded scenarios were written against (the default is 20 s since issue 17).
SCENARIO_CONFIG = EngineConfig(medium_step_wait_seconds=10.0)


@dataclass
class Rig:
    """An engine wired to a simulator and a journal file, sharing one virtual clock."""

    engine: Engine
    broker: SimBroker
    clock: VirtualClock
    journal_path: Path

    @property
    def journal(self) -> Journal:
        return self.engine.journal


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    """The CLI configures structlog when invoked in-process; no test sees another's set-up."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Any]:
    """make_rig(spec=None, config=None, broker_cls=SimBroker, **spec_fields) -> Rig."""
    rigs: list[Rig] = []

    def build(
        spec: MarketSpec | None = None,
        config: EngineConfig | None = None,
        broker_cls: type[SimBroker] = SimBroker,
        **spec_fields: Any,
    ) -> Rig:
        clock = VirtualClock(START)
        market = spec or MarketSpec(**spec_fields)
        broker = broker_cls(market, clock)
        path = tmp_path / f"journal-{len(rigs)}.db"
        engine = Engine(broker, path, config=config or SCENARIO_CONFIG, clock=clock)
        rig = Rig(engine, broker, clock, path)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        rig.engine.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster on 127.0.0.1 for the whole session (tests that ask
    for it only); tests/postgres_support.py."""
    from postgres_support import postgres_cluster  # here: psycopg only where a test uses it

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def new_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str | Path]:
    """new_journal() -> where a new, empty journal goes, in the store a test names by
    parametrizing this fixture indirectly ("sqlite", the default, or "postgresql"): a new
    file under tmp_path each call, or the session cluster's scratch database emptied each
    call (one journal at a time: the previous one is gone)."""
    store = getattr(request, "param", "sqlite")
    if store == "sqlite":
        names = count()
        return lambda: tmp_path / f"journal-{next(names)}.db"
    if store != "postgresql":
        raise ValueError(f"no journal store {store!r}: sqlite or postgresql")
    from postgres_support import scratch_journal  # here: psycopg only where a test uses it

    cluster = request.getfixturevalue("postgres")
    return lambda: scratch_journal(cluster)
