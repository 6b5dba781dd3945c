"""Real processes: `walkbook sim-server` keeps running while `walkbook run --broker alpaca` is
SIGKILLed mid-walk; `walkbook resume --broker alpaca` finishes the plan. The server's own
order book (read over REST and from its state file) shows no doubled client_order_id and
exactly the intended positions. Also: the CLI's answer to bad or missing keys, and the
library example of docs/alpaca.md run against the server."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from alpaca_support import (
    EAGER,
    KEYS,
    WALKBOOK,
    keyed_env,
    market,
    rest,
    sim_server_process,
    submitted,
)
from click.testing import CliRunner

from engine import MarketSpec
from engine.brokers.alpaca import BASE_URL_ENV
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer
from engine.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
POSITIONS = {"NVDA": "12", "AMD": "30"}
PLAN = {
    "plan_id": "killed",
    "orders": [
        {"symbol": "NVDA", "side": "sell", "quantity": "12", "close_type": "full"},
        {"symbol": "AMD", "side": "sell", "quantity": "10"},
        {"symbol": "AAPL", "side": "buy", "quantity": "8"},
        {"symbol": "MSFT", "side": "buy", "quantity": "2.5"},
        {"symbol": "TSLA", "side": "buy", "quantity": "6"},
        {"symbol": "ORCL", "side": "buy", "quantity": "5"},
    ],
}
EXPECTED = {"NVDA": None, "AMD": "20", "AAPL": "8", "MSFT": "2.5", "TSLA": "6", "ORCL": "5"}
# slow passive fills and 1 s steps: the walk is still in flight when it is killed
MARKET = {"latency_seconds": 0, "fill_intensity": 0.3, "partial_fill_probability": 0.5,
          "stream_gap_probability": 0, "positions": POSITIONS}  # fmt: skip
CONFIG = {"medium_step_wait_seconds": 1.0, "market_wait_seconds": 3, "settle_timeout_seconds": 5,
          "stream_quote_wait_seconds": 0.5, "broker_retry_backoff_seconds": 0.05}  # fmt: skip


@pytest.fixture
def sim_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`walkbook sim-server --port 0` in its own process; yields (URL, state file)."""
    with sim_server_process(tmp_path, MARKET) as served:
        yield served


def test_sigkill_mid_walk_then_resume_against_a_live_sim_server(
    tmp_path: Path, sim_server: tuple[str, Path]
) -> None:
    url, state = sim_server
    plan, config, journal = tmp_path / "plan.json", tmp_path / "config.json", tmp_path / "j.db"
    plan.write_text(json.dumps(PLAN))
    config.write_text(json.dumps(CONFIG))
    alpaca = ["--broker", "alpaca", "--alpaca-url", url, "--engine-config", str(config)]
    run = subprocess.Popen(
        [WALKBOOK, "run", str(plan), "--journal", str(journal), *alpaca],
        env=keyed_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while submitted(journal) < 3 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    assert run.wait(timeout=10) == -signal.SIGKILL, "the walk had already finished"

    resumed = subprocess.run(
        [WALKBOOK, "resume", "--journal", str(journal), *alpaca],
        env=keyed_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "REST calls" in resumed.stderr
    assert "found" in resumed.stdout

    orders = rest(url, "/v2/orders?status=all&limit=500")
    cids = Counter(o["client_order_id"] for o in orders)
    assert max(cids.values()) == 1, cids
    assert all(o["status"] in ("filled", "canceled", "replaced") for o in orders)
    held = {p["symbol"]: Decimal(p["qty"]) for p in rest(url, "/v2/positions")}
    assert held == {s: Decimal(q) for s, q in EXPECTED.items() if q is not None}
    with sqlite3.connect(state) as conn:  # the server's own file agrees: one row per id
        rows = conn.execute("SELECT count(*), count(DISTINCT client_order_id) FROM sim_orders")
        assert rows.fetchone() == (len(orders), len(orders))


def test_cli_refuses_bad_or_missing_keys_before_anything_is_journaled(tmp_path: Path) -> None:
    plan, journal = tmp_path / "plan.json", tmp_path / "j.db"
    plan.write_text(json.dumps(PLAN))
    server = SimServer(tmp_path / "sim.db", MarketSpec(), FaultSpec(), KEYS)
    with ServerThread(server) as thread:
        command = ["run", str(plan), "--journal", str(journal), "--broker", "alpaca",
                   "--alpaca-url", thread.url]  # fmt: skip
        wrong = CliRunner(env=keyed_env(secret="wrong-secret")).invoke(cli_main, command)
        assert wrong.exit_code == 2
        assert wrong.stderr.startswith("walkbook: error: Alpaca refused the API keys")
        assert "wrong-secret" not in wrong.output
        missing = CliRunner(env=keyed_env(secret="")).invoke(cli_main, command)
        assert missing.exit_code == 2
        assert "APCA_API_SECRET_KEY" in missing.stderr
        assert "nothing was sent" in missing.stderr
        assert not journal.exists()
        stats = thread.app.stats
        assert stats["forbidden"] == 1
        assert stats["requests"] == 0
        assert not thread.app.broker.orders


def test_the_docs_library_example_trades_on_the_sim_server(tmp_path: Path) -> None:
    """docs/alpaca.md's snippet, pointed at the sim-server by APCA_API_BASE_URL, fills."""
    text = (ROOT / "docs" / "alpaca.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    with ServerThread(SimServer(tmp_path / "sim.db", market(EAGER), FaultSpec(), KEYS)) as thread:
        env = {**keyed_env(), BASE_URL_ENV: thread.url}
        run = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True
        )
    assert run.returncode == 0, run.stderr
    (printed,) = re.findall(r"^(\w+) (\d+) (\d+)$", run.stdout, flags=re.M)
    status, rest_calls, polls = printed
    assert status == "SUCCESS"
    # one order: the open-orders check, asset, the lookup of its first client order id
    # (exactly-once per account), clock, position, submit, position after
    assert int(rest_calls) <= 8
    assert polls == "0"


def test_cli_alpaca_policies_reach_the_adapter(tmp_path: Path) -> None:
    """--alpaca-timeout bounds each REST answer (a server slower than it is unreachable, and
    nothing is journaled); --alpaca-rate-limit is the budget the run reports; both are
    refused with the simulator, and out-of-range values are usage errors (exit 2)."""
    plan, journal = tmp_path / "plan.json", tmp_path / "j.db"
    plan.write_text(json.dumps({"plan_id": "policies", "orders": [PLAN["orders"][2]]}))
    slow = FaultSpec(latency_seconds=0.25)
    runner = CliRunner(env=keyed_env())
    with ServerThread(SimServer(tmp_path / "sim.db", market(EAGER), slow, KEYS)) as thread:
        command = ["run", str(plan), "--journal", str(journal), "--broker", "alpaca",
                   "--alpaca-url", thread.url]  # fmt: skip
        # the key check retries as the engine config says (before: always 5 tries, 7.5 s)
        retries = tmp_path / "retries.json"
        retries.write_text('{"broker_retry_attempts": 2, "broker_retry_backoff_seconds": 0.01}')
        impatient = runner.invoke(
            cli_main, [*command, "--alpaca-timeout", "0.05", "--engine-config", str(retries)]
        )
        assert impatient.exit_code == 2, impatient.output
        assert impatient.stderr.startswith("walkbook: error: cannot reach Alpaca")
        assert not journal.exists()
        assert rest(thread.url, "/_sim/stats")["GET /v2/account"] == 2
        patient = runner.invoke(cli_main, [*command, "--alpaca-rate-limit", "1000"])
        assert patient.exit_code == 0, patient.output
        assert "REST calls (at most 1000 per 60 s)" in patient.stderr
    for wrong in (["--alpaca-rate-limit", "0"], ["--alpaca-timeout", "0"]):
        refused = runner.invoke(cli_main, [*command, *wrong])
        assert refused.exit_code == 2
        assert wrong[0] in refused.stderr
    on_sim = runner.invoke(cli_main, ["run", str(plan), "--journal", str(tmp_path / "s.db"),
                                      "--alpaca-rate-limit", "50"])  # fmt: skip
    assert on_sim.exit_code == 2
    assert on_sim.stderr.startswith("walkbook: error: --alpaca-url")


@pytest.mark.parametrize(
    "url", ["https://API.ALPACA.MARKETS/", "https://api.alpaca.markets:443", "https://x.example"]
)
def test_cli_refuses_a_non_paper_url_without_live_before_anything(tmp_path: Path, url: str) -> None:
    """The live endpoint however spelled, or any other host, needs --live: exit 2, one line,
    nothing journaled, and nothing sent (the check runs before any connection)."""
    plan, journal = tmp_path / "plan.json", tmp_path / "j.db"
    plan.write_text(json.dumps(PLAN))
    command = ["run", str(plan), "--journal", str(journal), "--broker", "alpaca",
               "--alpaca-url", url]  # fmt: skip
    refused = CliRunner(env=keyed_env()).invoke(cli_main, command)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.startswith("walkbook: error: ")
    assert "--live" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not journal.exists()
