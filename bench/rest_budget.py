"""REST calls per order through the Alpaca adapter, with trade_updates live and without.

The same plan (sells then buys, some partial fills) runs through the real alpaca-py SDK
against walkbook's sim-server on 127.0.0.1, twice: once with the trade_updates stream
up, and once with the server dropping every WebSocket 50 ms after it connects, so the
adapter falls back to bounded polling. The reference is the polling run, measured in
the same process; the figure is the streaming run's REST calls per order against it.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine import Engine, EngineConfig, MarketSpec, RealClock, SymbolSpec, parse_plan
from engine.brokers.alpaca import AlpacaBroker, AlpacaSettings
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer

from .common import Report, Row, Target, bench_parser, quiet_logs, scratch

KEYS = ("PKBENCH000000000", "bench-secret-never-logged")
BUDGET_PER_MINUTE = 200
CONFIG = EngineConfig(
    medium_step_wait_seconds=1.0,
    market_wait_seconds=3.0,
    settle_timeout_seconds=5.0,
    stream_quote_wait_seconds=0.5,
    broker_retry_backoff_seconds=0.05,
)
TARGET = Target("ratio", "<=", 1.0)  # streaming never costs more REST calls than polling


def plan(orders: int) -> tuple[dict[str, Any], MarketSpec]:
    """A third sells, the rest buys, on steady symbols that fill eagerly but partly."""
    symbols = {
        f"S{i:02d}": SymbolSpec(price=Decimal(40 + 7 * i), spread_bps=12, volatility_bps=0)
        for i in range(orders)
    }
    sells = orders // 3
    lines = [{"symbol": f"S{i:02d}", "side": "sell", "quantity": "10"} for i in range(sells)]
    lines += [{"symbol": f"S{i:02d}", "side": "buy", "quantity": "6"} for i in range(sells, orders)]
    spec = MarketSpec(
        latency_seconds=0.0,
        fill_intensity=5.0,
        partial_fill_probability=0.3,
        market_partial_probability=0.0,
        stream_gap_probability=0.0,
        symbols=symbols,
        positions={f"S{i:02d}": Decimal(10) for i in range(sells)},
    )
    return {"plan_id": "rest-budget", "orders": lines}, spec


def rest_calls(directory: Path, orders: int, faults: FaultSpec) -> dict[str, Any]:
    """Run the plan against a fresh sim-server; the adapter's REST counters afterwards."""
    payload, spec = plan(orders)
    server = SimServer(directory / "sim.db", spec, faults, KEYS)
    with ServerThread(server) as thread:
        settings = AlpacaSettings(
            key_id=KEYS[0], secret_key=KEYS[1], trading_url=thread.url, poll_interval_seconds=0.5
        )
        with AlpacaBroker(settings) as broker:
            asyncio.run(broker.check_keys())
            with Engine(
                broker, directory / "journal.db", config=CONFIG, clock=RealClock()
            ) as engine:
                result = engine.execute_plan_sync(parse_plan(payload))
            counters = broker.counters
            return {
                "status": result.status.value,
                "rest_calls": counters.rest_calls,
                "per_order": counters.rest_calls / orders,
                "status_polls": counters.status_polls,
                "by_endpoint": dict(counters.by_endpoint),
                "seconds": (result.seconds_to_complete or 0.0),
            }


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    orders = 6 if args.quick else 20
    quiet_logs()
    report = Report("rest_budget", args)
    with scratch(args.workdir) as directory:
        (directory / "stream").mkdir()
        (directory / "poll").mkdir()
        streaming = rest_calls(directory / "stream", orders, FaultSpec())
        polling = rest_calls(directory / "poll", orders, FaultSpec(stream_drop_after_seconds=0.05))
    report.add(
        Row.measured(
            f"{orders}-order plan, REST calls per order, trade_updates live",
            streaming["per_order"],
            "calls/order",
            polling["per_order"],
            TARGET,
            note="reference: the same plan with every WebSocket dropped (fills by polling)",
        )
    )
    # a run shorter than a minute: its total bounds the calls in any one-minute window
    peak = streaming["rest_calls"] / max(streaming["seconds"] / 60.0, 1.0)
    report.add(
        Row.measured(
            "REST calls in the busiest minute, trade_updates live",
            peak,
            "calls/min",
            BUDGET_PER_MINUTE,
            Target("value", "<=", BUDGET_PER_MINUTE),
            note="reference: Alpaca's budget per account",
        )
    )
    report.details = {"streaming": streaming, "polling": polling}
    report.notes.append(
        f"streaming: {streaming['by_endpoint']} ({streaming['status_polls']} status polls); "
        f"polling: {polling['by_endpoint']} ({polling['status_polls']} status polls)"
    )
    report.finish()


if __name__ == "__main__":
    main()
