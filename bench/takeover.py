"""Standby takeover: from the owner's SIGKILL to the standby's first broker call.

`walkbook run --broker alpaca` walks a plan into a PostgreSQL journal (a throwaway cluster,
bench/pgcluster.py) against walkbook's sim-server on 127.0.0.1, in this process's thread;
`walkbook standby` waits beside it. Once an order is live at the server the owner is
SIGKILLed; the figure is the time until the server answers its next request, which only
the standby can send. The owner's lease runs out at most a lease after its last renewal,
so the target is the lease plus 2 s (issue 19), the lease the reference.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from engine import MarketSpec, SymbolSpec
from engine.brokers.alpaca import KEY_ID_ENV, SECRET_KEY_ENV
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer
from journal import Journal, JournalError

from .common import Report, Row, Target, bench_parser, scratch
from .pgcluster import PostgresCluster, ServerMissing, postgres_cluster

KEYS = ("PKBENCH000000000", "bench-secret-never-logged")
WALKBOOK = str(Path(sys.executable).with_name("walkbook"))
SLACK_SECONDS = 2.0
POLL_SECONDS = 0.1
# resting orders fill slowly: the walk is in flight when the owner dies
CONFIG = {"medium_step_wait_seconds": 1.0, "market_wait_seconds": 3.0,
          "settle_timeout_seconds": 5.0, "stream_quote_wait_seconds": 0.5}  # fmt: skip
PLAN = {
    "plan_id": "takeover",
    "orders": [{"symbol": s, "side": "buy", "quantity": "5"} for s in ("AAPL", "MSFT", "TSLA")],
}
MARKET = MarketSpec(
    latency_seconds=0.0,
    fill_intensity=0.05,
    partial_fill_probability=0.0,
    market_partial_probability=0.0,
    stream_gap_probability=0.0,
    symbols={s: SymbolSpec(price=Decimal(p), spread_bps=10, volatility_bps=0)
             for s, p in (("AAPL", 190), ("MSFT", 410), ("TSLA", 250))},
)  # fmt: skip


def _acknowledged(url: str) -> bool:
    try:
        with Journal.open_readonly(url) as journal:
            return any(e.kind == "submit_ack" for e in journal.events())
    except JournalError:  # the owner has not created the schema yet
        return False


def takeover_seconds(cluster: PostgresCluster, directory: Path, lease: float) -> float:
    """One takeover on a fresh database and server: SIGKILL to the standby's first request."""
    url = cluster.fresh_database()
    (directory / "plan.json").write_text(json.dumps(PLAN))
    (directory / "config.json").write_text(json.dumps(CONFIG))
    env = {**os.environ, KEY_ID_ENV: KEYS[0], SECRET_KEY_ENV: KEYS[1]}
    server = SimServer(directory / "sim.db", MARKET, FaultSpec(), KEYS)
    with ServerThread(server) as thread:
        common = ["--journal", url, "--broker", "alpaca", "--alpaca-url", thread.url,
                  "--engine-config", str(directory / "config.json"),
                  "--lease-seconds", f"{lease:g}"]  # fmt: skip
        quiet = {"stdout": subprocess.DEVNULL, "env": env}
        owner = subprocess.Popen(
            [WALKBOOK, "run", str(directory / "plan.json"), *common],
            stderr=subprocess.DEVNULL,
            **quiet,  # type: ignore[call-overload]
        )
        standby = subprocess.Popen(
            [WALKBOOK, "standby", *common, "--poll-seconds", str(POLL_SECONDS)],
            stderr=subprocess.PIPE,
            text=True,
            **quiet,  # type: ignore[call-overload]
        )
        try:
            assert standby.stderr is not None
            line = standby.stderr.readline()  # its keys checked: it stands by
            if not line.startswith("walkbook: standing by"):
                raise RuntimeError(f"walkbook standby: {line.strip() or 'exited'}")
            while not _acknowledged(url):
                if owner.poll() is not None:
                    raise RuntimeError(f"walkbook run exited {owner.returncode} before the kill")
                time.sleep(0.01)
            owner.send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            owner.wait()
            stats = thread.app.stats
            answered = stats["requests"]
            while stats["requests"] == answered:
                if standby.poll() is not None:
                    raise RuntimeError(f"walkbook standby exited {standby.returncode}")
                time.sleep(0.002)
            return time.perf_counter() - killed
        finally:
            for process in (owner, standby):
                process.kill()
                process.wait()


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    lease, rounds = (2.0, 1) if args.quick else (10.0, 3)
    report = Report("takeover", args)
    name = "takeover: owner SIGKILL to standby's first broker call"
    target = Target("value", "<=", lease + SLACK_SECONDS)
    try:
        with postgres_cluster() as cluster, scratch(args.workdir) as directory:
            samples = []
            for round_ in range(rounds):
                here = directory / str(round_)
                here.mkdir()
                samples.append(takeover_seconds(cluster, here, lease))
    except ServerMissing as missing:
        report.add(Row.skipped(name, "s", target, str(missing)))
    else:
        report.add(
            Row.measured(
                name,
                statistics.median(samples),
                "s",
                lease,
                target,
                note=f"lease {lease:g} s, the reference; median of {rounds}, seen at the server",
            )
        )
        report.details["samples_seconds"] = samples
    report.finish()


if __name__ == "__main__":
    main()
