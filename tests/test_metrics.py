"""Prometheus metrics (engine/metrics.py): counted exactly as the journal says, served by
`walkbook run|resume --metrics-port` on 127.0.0.1, REST calls by endpoint as the sim-server
saw them through the real alpaca-py SDK, and every metric listed in docs/metrics.md."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca_support import KEYS, NEVER, alpaca_rig, market
from click.testing import CliRunner
from conftest import SCENARIO_CONFIG
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from walk_support import run_plan

from engine import (
    Engine,
    EngineConfig,
    MarketSpec,
    OrderSide,
    SimBroker,
    SymbolSpec,
    VirtualClock,
    parse_plan,
)
from engine.brokers.simserver import FaultSpec
from engine.cli import main
from engine.events import EventKind
from engine.fsm import TERMINAL_STATES, OrderState
from engine.hooks import OrderTransitioned
from engine.metrics import (
    ORDER_SECONDS_BUCKETS,
    SLIPPAGE_BPS_BUCKETS,
    STEP_BUCKETS,
    WalkbookMetrics,
)
from engine.order import fold_orders
from engine.results import OrderResult

ROOT = Path(__file__).resolve().parent.parent
WALKBOOK = str(Path(sys.executable).parent / "walkbook")
METRICS_LINE = re.compile(r"walkbook: metrics on http://127\.0\.0\.1:(\d+)/metrics")

# symbols that walk and fill at random (a market order fills only in part: FAILED
# partial_fill with fills; VOLA's mid falls under its buy: a negative cost), one that may
# not be traded at all
MIXED_MARKET = MarketSpec(
    seed=12,
    market_partial_probability=1.0,
    positions={"TSLA": Decimal(30)},
    symbols={
        "AAPL": SymbolSpec(price=Decimal("190"), spread_bps=8, volatility_bps=2),
        "MSFT": SymbolSpec(price=Decimal("410"), spread_bps=6, volatility_bps=2),
        "TSLA": SymbolSpec(price=Decimal("250"), spread_bps=12, volatility_bps=3),
        "ILLQ": SymbolSpec(price=Decimal("14"), spread_bps=90, volatility_bps=3, liquidity=0.2),
        "KO": SymbolSpec(price=Decimal("69"), spread_bps=5, volatility_bps=1),
        "VOLA": SymbolSpec(price=Decimal("30"), spread_bps=10, volatility_bps=20),
        "HALT": SymbolSpec(price=Decimal("10"), tradable=False),
    },
)
MIXED_ORDERS = [
    {"symbol": "TSLA", "side": "sell", "quantity": "30", "close_type": "full"},
    {"symbol": "AAPL", "side": "buy", "quantity": "40", "urgency": "low"},
    {"symbol": "MSFT", "side": "buy", "quantity": "12"},
    {"symbol": "ILLQ", "side": "buy", "quantity": "300"},
    {"symbol": "HALT", "side": "buy", "quantity": "5"},
    {"symbol": "KO", "side": "buy", "quantity": "20", "urgency": "high"},
    {"symbol": "VOLA", "side": "buy", "quantity": "50", "urgency": "low"},
]


def le(bound: float) -> str:
    """A bucket's `le` label as prometheus-client writes it."""
    return str(float(bound))


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_counters_match_the_journal(make_rig: Any) -> None:
    """A plan with fills, walks of several steps and a refused order on the embedded
    simulator: every order metric is what the journal holds, exactly; orders in flight match
    the journal at every transition."""
    # the walk this plan was written against (price improvement on some orders): the
    # original ladder without re-pricing, as the defaults were before issue 17
    walk = SCENARIO_CONFIG.model_copy(
        update={"validation": "skip_invalid", "medium_step_wait_seconds": 20.0}
    )
    rig = make_rig(MIXED_MARKET, walk)
    registry = CollectorRegistry()
    metrics = WalkbookMetrics(registry).attach(rig.engine)
    in_flight_seen: list[tuple[float | None, int]] = []

    def compare_in_flight(_: OrderTransitioned) -> None:
        live = rig.journal.orders(unless_state=TERMINAL_STATES)
        in_flight_seen.append((value(registry, "walkbook_orders_in_flight"), len(live)))

    rig.engine.subscribe(OrderTransitioned, compare_in_flight)
    result = run_plan(rig, *MIXED_ORDERS)

    events = list(rig.journal.events())
    records = fold_orders(events)
    results = [OrderResult.from_record(r) for r in records.values()]
    assert len(results) == len(MIXED_ORDERS)
    # the plan gave what this test needs to mean something
    finished = Counter((r.state, r.reason or "") for r in results)
    assert finished[(OrderState.VALIDATED, "")] >= 3
    assert finished[(OrderState.FAILED, "invalid_intent")] == 1
    assert finished[(OrderState.FAILED, "partial_fill")] >= 1
    assert len({r.steps_used for r in results}) >= 3

    assert metrics.registry is registry
    for (state, reason), count in finished.items():
        assert (
            value(registry, "walkbook_orders_finished_total", state=state, reason=reason) == count
        )
    assert value(registry, "walkbook_orders_in_flight") == 0
    assert [seen for seen, _ in in_flight_seen] == [float(n) for _, n in in_flight_seen]
    # the first notice is the refused HALT's: the other orders are in flight, none walked yet
    assert in_flight_seen[0][1] == len(MIXED_ORDERS) - 1

    steps = [r.steps_used for r in results]
    assert value(registry, "walkbook_order_steps_used_count") == len(steps)
    assert value(registry, "walkbook_order_steps_used_sum") == sum(steps)
    for bound in STEP_BUCKETS:
        expected = sum(s <= bound for s in steps)
        assert value(registry, "walkbook_order_steps_used_bucket", le=le(bound)) == expected

    fills = [e for e in events if e.kind == EventKind.FILL]
    assert fills
    for side in OrderSide:
        mine = [e for e in fills if records[str(e.order_id)].intent.side is side]
        dollars = sum(Decimal(e.data["qty"]) * Decimal(e.data["price"]) for e in mine)
        assert value(registry, "walkbook_fills_total", side=side.value) == len(mine)
        assert value(registry, "walkbook_filled_dollars_total", side=side.value) == pytest.approx(
            float(dollars), rel=1e-12
        )

    slipped = [r for r in results if r.slippage_bps is not None]
    assert len(slipped) == sum(r.filled_qty > 0 for r in results)
    assert min(r.slippage_bps or 0 for r in slipped) < 0 < max(r.slippage_bps or 0 for r in slipped)
    assert value(registry, "walkbook_slippage_bps_count") == len(slipped)
    for bound in SLIPPAGE_BPS_BUCKETS:
        expected = sum(r.slippage_bps is not None and r.slippage_bps <= bound for r in slipped)
        assert value(registry, "walkbook_slippage_bps_bucket", le=le(bound)) == expected
    net = Decimal(0)
    for r in slipped:
        record = records[r.order_id]
        assert record.avg_price is not None
        assert r.arrival_mid is not None
        cost = record.avg_price - r.arrival_mid
        net += (cost if r.side is OrderSide.BUY else -cost) * r.filled_qty
    assert value(registry, "walkbook_slippage_dollars_count") == len(slipped)
    assert value(registry, "walkbook_slippage_net_dollars") == pytest.approx(float(net), rel=1e-9)

    seconds = [r.seconds_to_complete or 0.0 for r in results]
    assert value(registry, "walkbook_order_seconds_count") == len(seconds)
    assert value(registry, "walkbook_order_seconds_sum") == pytest.approx(sum(seconds))
    for bound in ORDER_SECONDS_BUCKETS:
        expected = sum(s <= bound for s in seconds)
        assert value(registry, "walkbook_order_seconds_bucket", le=le(bound)) == expected

    # one commit per event, but the plan's `created` events go in one group commit
    created = sum(e.kind == EventKind.CREATED for e in events)
    assert value(registry, "walkbook_journal_commit_seconds_count") == len(events) - created + 1

    quotes = result.quote_counters
    assert quotes["streaming_success"] > 0
    assert value(registry, "walkbook_quotes_total", source="stream") == quotes["streaming_success"]
    assert value(registry, "walkbook_quotes_total", source="rest") == quotes["rest_fallback"]
    assert value(registry, "walkbook_quote_problems_total", problem="no_quote") == 0
    # the embedded simulator sends no REST request: nothing measured, not zero
    text = generate_latest(registry).decode()
    assert "# TYPE walkbook_rest_calls_total counter" in text
    assert not re.search(r"^walkbook_(rest|rate)_\w+ ", text, flags=re.M)


def test_an_engine_takes_a_registry_once_and_attaches_once(tmp_path: Path) -> None:
    """`Engine(metrics_registry=)` feeds the caller's registry; a second engine on the same
    registry is refused before it opens its journal, and one engine is attached once."""
    registry = CollectorRegistry()
    clock = VirtualClock()

    def engine(name: str, **metrics: Any) -> Engine:
        return Engine(SimBroker(MarketSpec(), clock), tmp_path / name, clock=clock, **metrics)

    with engine("a.db", metrics_registry=registry) as fed:
        plan = {"plan_id": "p", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": "5"}]}
        fed.execute_plan_sync(parse_plan(plan))
        assert value(registry, "walkbook_orders_finished_total", state="VALIDATED", reason="") == 1
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            engine("b.db", metrics_registry=registry)
        assert not (tmp_path / "b.db").exists()
        assert fed.metrics is not None
        with pytest.raises(ValueError, match="already attached"):
            fed.metrics.attach(fed)
    with engine("c.db") as without:
        assert without.metrics is None
        assert without.journal.commit_observers == []


def test_rest_calls_by_endpoint_are_what_the_server_saw(tmp_path: Path) -> None:
    """Through the real alpaca-py SDK against the sim-server, with a rate budget the walk
    must wait on: calls by endpoint add up to the requests the server counted, each endpoint
    to its own route, and the waits are the adapter's. No key reaches the exposition."""
    faults = FaultSpec(rate_limit_per_minute=6, rate_limit_window_seconds=2.0)
    with alpaca_rig(tmp_path, market(NEVER), faults, rate_limit=5, rate_window_seconds=2.0) as rig:
        registry = CollectorRegistry()
        WalkbookMetrics(registry).attach(rig.engine)
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "5"})
        assert result.orders[0].state == OrderState.VALIDATED
        stats = rig.server.app.stats
        counters = rig.broker.counters
        families = {
            f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
        calls = {s.labels["endpoint"]: s.value for s in families["walkbook_rest_calls"].samples
                 if s.name == "walkbook_rest_calls_total"}  # fmt: skip
        assert sum(calls.values()) == stats["requests"] > 6
        assert calls["submit_order"] == stats["POST /v2/orders"] >= 2
        assert calls.get("replace_order", 0) == stats["PATCH /v2/orders/{order_id}"]
        assert calls["get_account"] == stats["GET /v2/account"]
        assert calls["get_clock"] == stats["GET /v2/clock"]
        assert calls == dict(counters.by_endpoint)
        waits = value(registry, "walkbook_rate_limiter_waits_total")
        assert waits == counters.throttled >= 1
        assert value(registry, "walkbook_rest_rate_limited_total") == stats["rate_limited"] == 0
        assert value(registry, "walkbook_rest_retries_total") == counters.rest_retries
        text = generate_latest(registry).decode()
        assert KEYS[0] not in text
        assert KEYS[1] not in text


# -- the command line -------------------------------------------------------------------------


def slow_plan(tmp_path: Path, orders: int) -> tuple[Path, Path]:
    """A plan of LOW urgency buys on a market whose limit orders rarely fill: each order walks
    every step, so the run journals thousands of events (seconds of real time)."""
    symbols = {
        f"S{i:03d}": {"price": "50", "spread_bps": 20, "volatility_bps": 0} for i in range(orders)
    }
    market_file, plan_file = tmp_path / "market.json", tmp_path / "plan.json"
    market_file.write_text(json.dumps({"universe": "any", "fill_intensity": 0.01,
                                       "latency_seconds": 0, "symbols": symbols}))  # fmt: skip
    plan_file.write_text(json.dumps({"plan_id": "slow", "orders": [
        {"symbol": s, "side": "buy", "quantity": "10", "urgency": "low"} for s in symbols
    ]}))  # fmt: skip
    return plan_file, market_file


def listening_address(port: int) -> str:
    """The local address the kernel has a listening TCP socket on `port` bound to."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
            return socket.inet_ntoa(bytes.fromhex(address)[::-1])
    raise AssertionError(f"nothing listens on port {port}")


def scrapes(url: str, run: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    """The run's metrics, parsed, scrape after scrape while it runs."""
    while run.poll() is None:
        try:
            text = requests.get(url, timeout=5).text
        except requests.ConnectionError:  # the run ended between poll and get
            return
        yield {f.name: f for f in text_string_to_metric_families(text)}
        time.sleep(0.01)


def total(families: dict[str, Any], name: str) -> float:
    """A family's samples added up, `_created` timestamps left out (0 with none)."""
    return sum(s.value for s in families[name].samples if not s.name.endswith("_created"))


def test_run_serves_metrics_on_loopback_while_it_walks(tmp_path: Path) -> None:
    """`walkbook run --metrics-port 0` on the simulator: the port on stderr, bound to
    127.0.0.1, the exposition parses, and a scrape mid-walk shows orders in flight; the run
    ends as it would without metrics, and its server with it."""
    orders = 100
    plan_file, market_file = slow_plan(tmp_path, orders)
    command = [WALKBOOK, "run", str(plan_file), "--journal", str(tmp_path / "j.db"),
               "--market", str(market_file), "--metrics-port", "0"]  # fmt: skip
    with (tmp_path / "stdout").open("w") as stdout:
        run = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stderr is not None
        line = run.stderr.readline()
        found = METRICS_LINE.fullmatch(line.strip())
        assert found, line
        port = int(found[1])
        assert listening_address(port) == "127.0.0.1"
        mid_walk = next(
            (f for f in scrapes(f"http://127.0.0.1:{port}/metrics", run)
             if 0 < total(f, "walkbook_orders_in_flight") < orders),
            None,
        )  # fmt: skip
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 0, stderr
    assert mid_walk is not None, "no scrape caught the run walking"
    types = {name: family.type for name, family in mid_walk.items()}
    assert {name: types.get(name) for name in documented()} == {
        name: kind for name, (kind, _) in documented().items()
    }
    assert types["process_resident_memory_bytes"] == "gauge"
    in_flight = total(mid_walk, "walkbook_orders_in_flight")
    assert in_flight + total(mid_walk, "walkbook_orders_finished") <= orders
    assert total(mid_walk, "walkbook_quotes") >= orders - in_flight
    assert mid_walk["walkbook_journal_commit_seconds"].samples
    assert not mid_walk["walkbook_rest_calls"].samples
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another socket listens on, on 127.0.0.1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def refused(result: Any, port: int) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"walkbook: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


def test_a_port_in_use_is_refused_before_the_journal_is_opened(
    tmp_path: Path, taken_port: int
) -> None:
    """run and resume: one line, exit 2, nothing journaled; a port out of range likewise."""
    plan_file, market_file = slow_plan(tmp_path, 1)
    journal = tmp_path / "j.db"
    runner = CliRunner()
    run = [str(plan_file), "--journal", str(journal), "--market", str(market_file)]
    refused(runner.invoke(main, ["run", *run, "--metrics-port", str(taken_port)]), taken_port)
    assert not journal.exists()
    out_of_range = runner.invoke(main, ["run", *run, "--metrics-port", "65536"])
    assert out_of_range.exit_code == 2
    assert len(out_of_range.stderr.strip().splitlines()) == 1
    assert "65536 is not in the range 0<=x<=65535" in out_of_range.stderr


def event_count(journal: Path) -> int:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def test_resume_serves_metrics_and_refuses_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    """A run killed mid-walk; resume with a taken port is refused and journals nothing; with
    port 0 it serves, says where, and finishes the orders."""
    plan_file, market_file = slow_plan(tmp_path, 2)
    journal, sim_state = tmp_path / "j.db", tmp_path / "sim.db"
    killed = subprocess.run(
        [WALKBOOK, "run", str(plan_file), "--journal", str(journal), "--market", str(market_file),
         "--sim-state", str(sim_state)],
        env={**os.environ, "WALKBOOK_CRASH_AT": "after_append.submit_ack:1"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert killed.returncode == 137, killed.stderr
    before = event_count(journal)
    resume = ["resume", "--journal", str(journal), "--sim-state", str(sim_state)]
    runner = CliRunner()
    refused(runner.invoke(main, [*resume, "--metrics-port", str(taken_port)]), taken_port)
    assert event_count(journal) == before
    served = runner.invoke(main, [*resume, "--metrics-port", "0"])
    assert served.exit_code == 0, served.output
    assert METRICS_LINE.fullmatch(served.stderr.strip().splitlines()[0]), served.stderr
    assert event_count(journal) > before
    assert served.stdout.count("now VALIDATED") == 2


# -- the docs ---------------------------------------------------------------------------------


def documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's table: each metric's family name (without `_total`), its type and
    its labels."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| `walkbook_") and len(cells) == 4:
            name, kind, labels, _ = cells
            rows[name.strip("`").removesuffix("_total")] = (
                kind,
                set(re.findall(r"`(\w+)`", labels)),
            )
    return rows


def test_docs_list_every_metric_with_its_type_and_labels(make_rig: Any) -> None:
    """Every family walkbook registers has a row in docs/metrics.md with its type and the
    labels its samples carry, and every row is a family walkbook registers."""
    rig = make_rig(MIXED_MARKET, EngineConfig(validation="skip_invalid"))
    registry = CollectorRegistry()
    WalkbookMetrics(registry).attach(rig.engine)
    run_plan(rig, *MIXED_ORDERS)
    families = list(registry.collect())
    rows = documented()
    assert {f.name: f.type for f in families} == {name: kind for name, (kind, _) in rows.items()}
    for family in families:
        if family.samples:  # the REST families have none on the simulator
            labels = {label for s in family.samples for label in s.labels} - {"le"}
            assert rows[family.name][1] == labels, family.name
    assert any(not family.samples for family in families)


def test_docs_example_runs(tmp_path: Path) -> None:
    """docs/metrics.md's embedding example counts its one VALIDATED order, none in flight,
    and prints the exposition text."""
    (code,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "metrics.md").read_text(), re.S)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "\n1.0\n0.0\n# HELP walkbook_" in run.stdout
    assert 'walkbook_orders_finished_total{reason="",state="VALIDATED"} 1.0\n' in run.stdout
