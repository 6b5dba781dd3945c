"""Shared fixtures: engines on the simulator, in virtual time, over real SQLite journal files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import structlog
from bench_support import QuickBench

from engine import Engine, EngineConfig, MarketSpec, SimBroker, VirtualClock
from journal import Journal

START = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
# The walk a rig runs unless a test gives its own: the defaults, with the ladder, the 10 s
# steps and no re-pricing, as the seeded scenarios were written against (issue 17 changed
# those defaults: 20 s steps, repeg_spread_fraction 0.2).
SCENARIO_CONFIG = EngineConfig(
    ladder=(Decimal("0.75"), Decimal("0.85"), Decimal("0.95")),
    medium_step_wait_seconds=10.0,
    repeg_spread_fraction=None,
)


# where temporary files go when the machine has a RAM-backed tmpfs (pytest_configure)
RAM_TEMP = Path("/dev/shm")
RAM_TEMP_MIN_FREE_BYTES = 2 << 30


def pytest_configure(config: pytest.Config) -> None:
    """Temporary files (tmp_path, every journal file, the PostgreSQL cluster, the processes'
    own) go to a RAM-backed tmpfs when there is one and nobody chose a place (TMPDIR,
    --basetemp): a SQLite journal commits with synchronous=FULL, and on a disk each commit
    waits for its fsync (two thirds of a killed-and-resumed walk's time, measured). A test's
    files never outlive the machine (as its cluster's fsync=off says); SQLite, its WAL and
    its locks work the same there."""
    if config.option.basetemp is None and "TMPDIR" not in os.environ and _roomy(RAM_TEMP):
        os.environ["TMPDIR"] = str(RAM_TEMP)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR afresh


def _roomy(directory: Path) -> bool:
    if not (directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)):
        return False
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize >= RAM_TEMP_MIN_FREE_BYTES


QUICK_BENCH = pytest.StashKey[QuickBench]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """When a test that uses quick_bench is to run, the one benchmark run starts now, in the
    background (tests/bench_support.py)."""
    if session.config.option.collectonly:
        return
    if any("quick_bench" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[QUICK_BENCH] = QuickBench.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    bench = session.config.stash.get(QUICK_BENCH, None)
    if bench is not None:
        bench.stop()


@pytest.fixture(scope="session")
def quick_bench(request: pytest.FixtureRequest) -> QuickBench:
    """The session's `python -m bench.run_all --quick` run, started once the tests were
    collected."""
    return request.config.stash[QUICK_BENCH]


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
def new_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., str | Path]:
    """new_journal(slot=0) -> where a new, empty journal goes, in the store a test names by
    parametrizing this fixture indirectly ("sqlite", the default, or "postgresql"): a new
    file under tmp_path each call, or the session cluster's scratch database number `slot`
    emptied each call (one journal at a time in a slot: its previous one is gone). Processes
    forked to make journals at once each use a slot of their own."""
    store = getattr(request, "param", "sqlite")
    if store == "sqlite":
        names = count()

        def new_file(slot: int = 0) -> Path:
            return tmp_path / f"journal-{slot}-{next(names)}.db"

        return new_file
    if store != "postgresql":
        raise ValueError(f"no journal store {store!r}: sqlite or postgresql")
    from postgres_support import scratch_journal  # here: psycopg only where a test uses it

    cluster = request.getfixturevalue("postgres")

    def emptied(slot: int = 0) -> str:
        return scratch_journal(cluster, slot)

    return emptied
