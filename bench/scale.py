"""Cost against plan size: time and peak memory per order at 100, 1,000 and 10,000 orders.

Each plan is N one-share buys of N distinct symbols walked to the end on the embedded
simulator in virtual time (an eager market: orders fill at the first step), each size in
a fresh process so its peak memory is its own. The reference for each figure is the
100-order plan of the same run: linear cost means a 10,000-order plan takes no more time
per order than a 100-order one (issue 16: within 1.5x) and memory stays flat per order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine import Engine, EngineConfig, MarketSpec, SimBroker, VirtualClock, parse_plan
from engine.results import PlanStatus

from .common import Report, Row, Target, bench_parser, peak_rss_mb, quiet_logs, scratch
from .workload import START

SIZES = (100, 1_000, 10_000)
QUICK_SIZES = (10, 100)
TIME_TARGET = Target("ratio", "<=", 1.5)
MEMORY_TARGET = Target("ratio", "<=", 1.5)
RESULT_PREFIX = "RESULT "


def plan(orders: int) -> dict[str, Any]:
    lines = [{"symbol": f"Z{i:05d}", "side": "buy", "quantity": "1"} for i in range(orders)]
    return {"plan_id": f"scale-{orders}", "orders": lines}


def market() -> MarketSpec:
    """Made-up symbols, no latency, and fills at the first step, so the figure is the
    engine's and the journal's cost per order, not the simulated market's waiting."""
    return MarketSpec(
        universe="any",
        latency_seconds=0,
        fill_intensity=50.0,
        partial_fill_probability=0.0,
        stream_gap_probability=0.0,
        cash=Decimal(10) ** 12,
    )


def child(directory: Path, orders: int) -> None:
    """The measured process: one plan of `orders` buys from delivery to its result."""
    quiet_logs()
    clock = VirtualClock(START)
    broker = SimBroker(market(), clock)
    engine = Engine(broker, directory / f"journal-{orders}.db", config=EngineConfig(), clock=clock)
    parsed = parse_plan(plan(orders), max_orders=orders)
    base_rss = peak_rss_mb()
    started = time.perf_counter()
    result = clock.run(engine.execute_plan(parsed))
    seconds = time.perf_counter() - started
    engine.close()
    if result.status is not PlanStatus.SUCCESS:
        raise SystemExit(f"the {orders}-order plan ended {result.status}")
    figures = {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base_rss}
    print(RESULT_PREFIX + json.dumps(figures), flush=True)


def measure(directory: Path, orders: int) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.scale", "--child", str(directory), str(orders)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith(RESULT_PREFIX))
    figures: dict[str, float] = json.loads(line.removeprefix(RESULT_PREFIX))
    return figures


def _added_kib_per_order(run: dict[str, float], orders: int) -> float:
    """The peak memory a plan adds over the process before it, per order."""
    return max(run["peak_rss_mb"] - run["base_rss_mb"], 0.0) / orders * 1024


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--child", nargs=2, metavar=("DIR", "ORDERS"), help="internal")
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), int(args.child[1]))
    sizes = QUICK_SIZES if args.quick else SIZES
    report = Report("scale", args)
    with scratch(args.workdir) as directory:
        runs = {orders: measure(directory, orders) for orders in sizes}
    smallest = sizes[0]
    per_order = {n: run["seconds"] / n * 1000 for n, run in runs.items()}
    # memory a plan adds beyond the process before it, per order
    memory = {
        n: max(run["peak_rss_mb"] - run["base_rss_mb"], 0.0) / n * 1024 for n, run in runs.items()
    }
    for orders in sizes[1:]:
        report.add(
            Row.measured(
                f"time per order, {orders:,} vs {smallest:,} orders",
                per_order[orders],
                "ms/order",
                per_order[smallest],
                TIME_TARGET,
                note=f"reference: the {smallest:,}-order plan of this run",
            )
        )
    largest = sizes[-1]
    report.add(
        Row.measured(
            f"memory per order, {largest:,} vs {sizes[-2]:,} orders",
            memory[largest],
            "KiB/order",
            memory[sizes[-2]] or None,
            MEMORY_TARGET,
            note="peak RSS the plan adds over the process before it, per order",
        )
    )
    report.table(
        "per plan size",
        ["orders", "seconds", "ms/order", "peak RSS MiB", "KiB/order added"],
        [
            [
                f"{n:,}",
                f"{runs[n]['seconds']:.2f}",
                f"{per_order[n]:.2f}",
                f"{runs[n]['peak_rss_mb']:.0f}",
                f"{memory[n]:.1f}",
            ]
            for n in sizes
        ],
    )
    report.finish()


if __name__ == "__main__":
    main()
