"""The Alpaca test rig: the real alpaca-py SDK against walkbook's sim-server on 127.0.0.1.

Nothing here talks to Alpaca: every URL is the in-process sim-server's loopback
address. Walks run in real time, so the engine config keeps step waits short and the
simulated market fills eagerly where a test wants fills.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import requests
from walk_support import check_invariants

from engine import Engine, EngineConfig, MarketSpec, PlanResult, RealClock, SymbolSpec, parse_plan
from engine.brokers.alpaca import KEY_ID_ENV, SECRET_KEY_ENV, AlpacaBroker, AlpacaSettings
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer
from engine.engine import DEFAULT_CONCURRENCY
from engine.events import EventKind
from journal import Event

KEYS = ("PKTEST0000000000", "test-secret-never-logged")
EAGER = 50.0  # fill intensity: a resting order fills at the next one-second tick
NEVER = 1e-9  # fill intensity: resting orders never fill; market orders still do

FAST = EngineConfig(
    medium_step_wait_seconds=0.4,
    market_wait_seconds=3.0,
    settle_timeout_seconds=5.0,
    stream_quote_wait_seconds=0.5,
    broker_retry_backoff_seconds=0.05,
)
RESTING = FAST.model_copy(update={"medium_step_wait_seconds": 1.2})
# steps move by replace (PATCH), off by default since Alpaca's replace is not atomic with fills
REPLACING = FAST.model_copy(update={"replace_orders": True})
WALKBOOK = str(Path(sys.executable).with_name("walkbook"))


def keyed_env(key_id: str = KEYS[0], secret: str = KEYS[1]) -> dict[str, str]:
    return {**os.environ, KEY_ID_ENV: key_id, SECRET_KEY_ENV: secret}


@contextmanager
def sim_server_process(
    directory: Path, market_spec: dict[str, Any], faults: dict[str, Any] | None = None
) -> Iterator[tuple[str, Path]]:
    """`walkbook sim-server --port 0` in its own process (with `faults` as its --faults
    spec); yields (URL, state file)."""
    (directory / "market.json").write_text(json.dumps(market_spec))
    state = directory / "server.db"
    command = [WALKBOOK, "sim-server", "--port", "0", "--state", str(state)]
    if faults is not None:
        (directory / "faults.json").write_text(json.dumps(faults))
        command += ["--faults", str(directory / "faults.json")]
    server = subprocess.Popen(
        [*command, "--market", str(directory / "market.json")],
        env=keyed_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield line.split()[-1], state
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


def rest(url: str, path: str) -> Any:
    headers = {"APCA-API-KEY-ID": KEYS[0], "APCA-API-SECRET-KEY": KEYS[1]}
    return requests.get(url + path, headers=headers, timeout=5).json()


def submitted(journal: Path) -> int:
    """How many broker orders the journal has an acknowledgement for (0 before it exists)."""
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
            query = "SELECT count(*) FROM events WHERE kind IN ('submit_ack', 'replace_ack')"
            return int(conn.execute(query).fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def market(fill_intensity: float = EAGER, **fields: Any) -> MarketSpec:
    """A quick simulated market: no simulator latency, steady mids, no random stream gaps."""
    symbols = {
        "AAPL": SymbolSpec(price=Decimal("190"), spread_bps=10, volatility_bps=0),
        "MSFT": SymbolSpec(price=Decimal("410"), spread_bps=8, volatility_bps=0),
        "TSLA": SymbolSpec(price=Decimal("250"), spread_bps=12, volatility_bps=0),
    }
    base: dict[str, Any] = {
        "latency_seconds": 0.0,
        "fill_intensity": fill_intensity,
        "partial_fill_probability": 0.0,
        "market_partial_probability": 0.0,
        "stream_gap_probability": 0.0,
        "symbols": symbols,
    }
    return MarketSpec(**(base | fields))


def settings_for(url: str, keys: tuple[str, str] = KEYS, **policies: Any) -> AlpacaSettings:
    fast: dict[str, Any] = {
        "poll_interval_seconds": 0.2,
        "retry_backoff_seconds": 0.05,
        "http_timeout_seconds": 5.0,
    }
    return AlpacaSettings(key_id=keys[0], secret_key=keys[1], trading_url=url, **(fast | policies))


@dataclass
class AlpacaRig:
    """An engine on AlpacaBroker (real SDK, real sockets) against an in-process sim-server."""

    server: ServerThread
    broker: AlpacaBroker
    engine: Engine
    journal_path: Path
    results: list[PlanResult] = field(default_factory=list)

    def run(self, *orders: dict[str, Any], plan_id: str = "p1") -> PlanResult:
        result = self.engine.execute_plan_sync(
            parse_plan({"plan_id": plan_id, "orders": list(orders)})
        )
        self.results.append(result)
        return result

    def events(self, kind: str | None = None) -> list[Event]:
        return [e for e in self.engine.journal.events() if kind is None or e.kind == kind]

    def book(self) -> SimpleNamespace:
        """The server's simulator as the adapter saw it: orders keyed by their wire ids."""

        async def snapshot() -> SimpleNamespace:
            app = self.server.app
            orders = {}
            for order in app.broker.orders.values():
                wire = app.ids.wire(order.id)
                orders[wire] = replace(order, id=wire)
            return SimpleNamespace(
                orders=orders, positions=dict(app.broker.positions), spec=app.broker.spec
            )

        return self.server.call(snapshot)

    def check(self, result: PlanResult) -> None:
        """The engine's invariants, checked against the server's own order book."""
        check_invariants(SimpleNamespace(journal=self.engine.journal, broker=self.book()), result)


@contextmanager
def alpaca_rig(
    tmp_path: Path,
    spec: MarketSpec | None = None,
    faults: FaultSpec | None = None,
    config: EngineConfig = FAST,
    concurrency: int = DEFAULT_CONCURRENCY,
    **policies: Any,
) -> Iterator[AlpacaRig]:
    server = SimServer(tmp_path / "sim.db", spec or market(), faults or FaultSpec(), KEYS)
    with (
        ServerThread(server) as thread,
        AlpacaBroker(settings_for(thread.url, **policies)) as broker,
    ):
        asyncio.run(broker.check_keys())
        path = tmp_path / "journal.db"
        engine = Engine(broker, path, config=config, clock=RealClock(), concurrency=concurrency)
        with engine:
            yield AlpacaRig(thread, broker, engine, path)


def cids(events: list[Event]) -> list[str]:
    return [e.data["client_order_id"] for e in events]


def acks(rig: AlpacaRig) -> list[Event]:
    return rig.events(EventKind.SUBMIT_ACK) + rig.events(EventKind.REPLACE_ACK)


@contextmanager
def broker_on_server(
    state: Path, spec: MarketSpec, faults: FaultSpec | None = None, **policies: Any
) -> Iterator[tuple[ServerThread, AlpacaBroker]]:
    """An AlpacaBroker on a fresh sim-server and no engine, to drive the Broker protocol
    itself (the contract tests); `state` is the server's state file."""
    server = SimServer(state, spec, faults or FaultSpec(), KEYS)
    with (
        ServerThread(server) as thread,
        AlpacaBroker(settings_for(thread.url, **policies)) as broker,
    ):
        yield thread, broker
