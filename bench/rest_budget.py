"""REST calls per order through the Alpaca adapter, counted at the server, trade_updates live.

A plan (a third sells, the rest buys, some partial fills, some orders stepping down the
ladder) runs through the real alpaca-py SDK against walkbook's sim-server on 127.0.0.1,
which counts every REST request it answers. The rate limits are lifted (adapter and
server) so the count is not bent by throttling; what the count allows at Alpaca's 200
requests a minute is then worked out: 200 / (calls per order) orders a minute. The
references are the seed's figure (11.2 calls an order with fills found by polling: 18
orders a minute) and the one-call limit (every order one REST call: 200 a minute).
Quotes stream on the `sip` feed, which takes any number of symbols; `--feed iex` shows
the free plan's 30-symbol stream, past which quotes come from REST.

Nothing is compressed: the engine walks with its default configuration (a MEDIUM step
rests 20 s or more) in real time against the simulator's one-second ticks, so an order has
the fill chances a user's order has. The bench once ran 1 s steps on those 1 s ticks: one
fill chance a step instead of twenty, and about 40 % of the orders stepped (a cancel and a
new order each time) for that reason alone. Steps now come from the market: one symbol in
`THIN_EVERY` is thin, filling at the simulator's default intensity instead of the
plan's eager one, and the report gives the share of orders that stepped. `--quick` (the
test suite's smoke) runs 12 orders with 1 s steps: it checks that the bench runs, and its
figure is not the measure.
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
BUDGET_PER_MINUTE = 200  # Alpaca's REST budget per account
SEED_CALLS_PER_ORDER = 11.2  # the seed's adapter, fills found by polling
TARGET_CALLS_PER_ORDER = 1.5  # issue 16
UNLIMITED = 1_000_000  # requests a window: the count is measured unthrottled
HTTP_METHODS = ("GET", "POST", "PATCH", "DELETE")  # the server's per-route counts start so
CONFIG = EngineConfig()  # what a user runs, nothing compressed
# the smoke's config: seconds, not minutes (its figure is not the measure)
QUICK_CONFIG = EngineConfig(
    medium_step_wait_seconds=1.0,
    market_wait_seconds=3.0,
    settle_timeout_seconds=5.0,
    stream_quote_wait_seconds=0.5,
    broker_retry_backoff_seconds=0.05,
)
EAGER_FILL_INTENSITY = 5.0  # fills a second at the far touch, on most of the plan's symbols
THIN_EVERY = 5  # one symbol in five is thin: its orders are the ones that step
# a thin symbol fills at the simulator's default intensity (MarketSpec.fill_intensity)
THIN_LIQUIDITY = MarketSpec.model_fields["fill_intensity"].default / EAGER_FILL_INTENSITY
# Alpaca's limits as the free plan has them, but for the REST budget (lifted to count)
FAULTS = FaultSpec(rate_limit_per_minute=UNLIMITED, data_rate_limit_per_minute=UNLIMITED)


def plan(orders: int) -> tuple[dict[str, Any], MarketSpec]:
    """A third sells, the rest buys, on steady symbols that fill eagerly but partly, but
    for one in `THIN_EVERY`, which fills slowly enough that its orders often step."""
    symbols = {
        f"S{i:03d}": SymbolSpec(
            price=Decimal(20 + (7 * i) % 380),
            spread_bps=12,
            volatility_bps=0,
            liquidity=THIN_LIQUIDITY if i % THIN_EVERY == 0 else 1.0,
        )
        for i in range(orders)
    }
    sells = orders // 3
    lines = [{"symbol": f"S{i:03d}", "side": "sell", "quantity": "10"} for i in range(sells)]
    lines += [{"symbol": f"S{i:03d}", "side": "buy", "quantity": "6"} for i in range(sells, orders)]
    spec = MarketSpec(
        latency_seconds=0.0,
        fill_intensity=EAGER_FILL_INTENSITY,
        partial_fill_probability=0.3,
        market_partial_probability=0.0,
        stream_gap_probability=0.0,
        symbols=symbols,
        positions={f"S{i:03d}": Decimal(10) for i in range(sells)},
    )
    return {"plan_id": "rest-budget", "orders": lines}, spec


def rest_calls(
    directory: Path,
    orders: int,
    feed: str = "sip",
    faults: FaultSpec = FAULTS,
    config: EngineConfig = CONFIG,
) -> dict[str, Any]:
    """Run the plan against a fresh sim-server: the REST requests it answered, by route."""
    payload, spec = plan(orders)
    server = SimServer(directory / "sim.db", spec, faults, KEYS)
    with ServerThread(server) as thread:
        settings = AlpacaSettings(
            key_id=KEYS[0],
            secret_key=KEYS[1],
            trading_url=thread.url,
            feed=feed,
            poll_interval_seconds=0.5,
            rate_limit=UNLIMITED,
        )
        with AlpacaBroker(settings) as broker:
            asyncio.run(broker.check_keys())
            with Engine(
                broker, directory / "journal.db", config=config, clock=RealClock()
            ) as engine:
                result = engine.execute_plan_sync(parse_plan(payload))
            stats = dict(thread.app.stats)
            counters = broker.counters
            routes = {k: v for k, v in stats.items() if k.split(" ")[0] in HTTP_METHODS}
            return {
                "status": result.status.value,
                "validated": sum(o.state == "VALIDATED" for o in result.orders),
                "steps": sum(o.steps_used for o in result.orders),
                "stepped": sum(o.steps_used > 1 for o in result.orders),
                "server_requests": stats.get("requests", 0),
                "per_order": stats.get("requests", 0) / orders,
                "by_route": dict(sorted(routes.items(), key=lambda kv: -kv[1])),
                "adapter": counters.as_dict(),
                "quotes": dict(result.quote_counters),
                "seconds": result.seconds_to_complete or 0.0,
            }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--feed", choices=("sip", "iex"), default="sip", help="the quote feed")
    args = parser.parse_args()
    orders = 12 if args.quick else 200
    quiet_logs()
    report = Report("rest_budget", args)
    with scratch(args.workdir) as directory:
        config = QUICK_CONFIG if args.quick else CONFIG
        run = rest_calls(directory, orders, args.feed, config=config)
    per_order = run["per_order"]
    per_minute = BUDGET_PER_MINUTE / per_order
    report.add(
        Row.measured(
            f"{orders}-order plan, REST calls per order, trade_updates live",
            per_order,
            "calls/order",
            SEED_CALLS_PER_ORDER,
            Target("value", "<=", TARGET_CALLS_PER_ORDER),
            note="counted at the server; reference: the seed's adapter (fills by polling)",
        )
    )
    report.add(
        Row.measured(
            "orders a minute at 200 REST calls a minute, vs the seed",
            per_minute,
            "orders/min",
            BUDGET_PER_MINUTE / SEED_CALLS_PER_ORDER,
            Target("value", ">=", BUDGET_PER_MINUTE / TARGET_CALLS_PER_ORDER),
        )
    )
    report.add(
        Row.measured(
            "orders a minute at 200 REST calls a minute, vs one call an order",
            per_minute,
            "orders/min",
            BUDGET_PER_MINUTE,
            note="reference: the one-call limit",
        )
    )
    report.table(
        f"REST requests the server answered ({run['server_requests']} for {orders} orders)",
        ("route", "requests", "per order"),
        [[route, str(n), f"{n / orders:.2f}"] for route, n in run["by_route"].items()],
    )
    report.details = run
    report.notes.append(
        f"feed {args.feed}; plan {run['status']}: {run['validated']}/{orders} validated, "
        f"{run['steps']} steps in {run['seconds']:.0f} s; "
        f"{run['stepped'] / orders:.0%} of the orders stepped ({run['stepped']}); "
        f"MEDIUM steps of {config.medium_step_wait_seconds:g} s; quotes {run['quotes']}; "
        f"status polls {run['adapter']['status_polls']}, "
        f"order refreshes {run['adapter']['order_refreshes']}"
    )
    report.finish()


if __name__ == "__main__":
    main()
