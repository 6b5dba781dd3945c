"""Resume after a crash: a fresh process re-arms 10,000 in-flight orders; time and peak memory.

The journal holds 10,000 orders stopped mid-walk (created, position read, QUOTED,
LIMIT_STEP_1 with its limit order submitted and acknowledged), built with the engine's
own event shapes and folds; the simulator's state file holds the matching live orders.
A fresh process then runs `Engine.resume` with the engine's default concurrency, and
resume has re-armed every order once each one is reconciled with the broker (its live
order re-read, its fills counted) and the walks have resumed (the first walk waits on
its live order again). The reference is a fresh process scanning `SELECT * FROM events`
of the same journal with bare sqlite3. Scan and resume run three times in turns on the
same files (a resume stops before it writes anything); the figures are the medians.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine import (
    BrokerOrder,
    Engine,
    EngineConfig,
    MarketSpec,
    OrderIntent,
    OrderSide,
    SimBroker,
    SymbolSpec,
    VirtualClock,
)
from engine.broker import OrderRequest
from engine.engine import DEFAULT_CONCURRENCY, DEFAULT_RECONCILE_CONCURRENCY
from engine.events import EventKind
from engine.fsm import OrderState, Trigger, limit_step
from engine.numbers import decimal_text
from engine.order import client_order_id
from engine.pricing import limit_price
from engine.quotes import UsableQuote
from journal import Journal

from .common import (
    Report,
    Row,
    Target,
    bench_parser,
    median_run,
    peak_rss_mb,
    quiet_logs,
    scratch,
)
from .workload import START, Item, created, follow, step_data

SECONDS_TARGET = Target("value", "<=", 2.0)
MEMORY_TARGET = Target("value", "<=", 300.0)
SYMBOLS = 100
RATIO = "0.75"
SPREAD_BPS = 40.0
POSITION = Decimal(1_000_000)
QUANTITY = Decimal(10)
RESULT_PREFIX = "RESULT "
ROUNDS = 3
SCAN = """
import json, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1])
rows = conn.execute("SELECT * FROM events").fetchall()
done = time.monotonic()
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print("RESULT " + json.dumps({"marks": {"done": done}, "rows": len(rows), "peak_rss_mb": peak}))
"""


def market() -> MarketSpec:
    """A still market: no latency, so no time passes while orders are placed or reconciled,
    and spreads wide enough that a LIMIT_STEP_1 price rests instead of crossing."""
    names = [f"R{i:03d}" for i in range(SYMBOLS)]
    symbols = {
        name: SymbolSpec(price=Decimal(20 + i), spread_bps=SPREAD_BPS)
        for i, name in enumerate(names)
    }
    positions = dict.fromkeys(names, POSITION)
    return MarketSpec(symbols=symbols, positions=positions, latency_seconds=0)


async def mid_walk(
    broker: SimBroker,
    plan_id: str,
    index: int,
    intent: OrderIntent,
    config: EngineConfig,
    seq: int,
) -> list[Item]:
    """One order's events (the first stored at `seq`) up to its acknowledged LIMIT_STEP_1
    order, placing that order."""
    event, record = created(plan_id, index, intent, config, seq)
    items = [(event, record.projection())]

    def add(kind: str, data: dict[str, Any], to_state: str | None = None) -> None:
        nonlocal record
        event, record = follow(record, kind, data, to_state)
        items.append((event, record.projection()))

    quote = await broker.latest_quote(intent.symbol)
    assert quote is not None
    quoted = UsableQuote(quote).as_data()
    price = limit_price(intent.side, quote.bid, quote.ask, Decimal(RATIO))
    cid = client_order_id(record.order_id, "L1", 1)
    position = {"phase": "before", "qty": decimal_text(POSITION), "target_qty": None}
    add(EventKind.POSITION_READ, position)
    add(EventKind.TRANSITION, {"trigger": Trigger.QUOTE, "quote": quoted}, OrderState.QUOTED)
    start_walk = {"trigger": Trigger.START_WALK, **step_data(RATIO, price, quoted)}
    add(EventKind.TRANSITION, start_walk, limit_step(1))
    qty, limit = decimal_text(intent.shares), decimal_text(price)
    submit = {"client_order_id": cid, "order_type": "limit", "qty": qty, "limit_price": limit}
    add(EventKind.SUBMIT_INTENT, submit)
    request = OrderRequest(cid, intent.symbol, intent.side, intent.shares, "limit", price)
    order: BrokerOrder = await broker.submit_order(request)
    if order.filled_qty:
        raise RuntimeError(f"{cid} filled at once; the bench market must leave it resting")
    ack = {"client_order_id": cid, "broker_order_id": order.id, "status": order.status.value}
    add(EventKind.SUBMIT_ACK, ack | {"adopted": False})
    return items


def build(journal_path: Path, sim_path: Path, orders: int) -> None:
    """The journal of `orders` in-flight sells (plans of SYMBOLS) and the simulator's state.

    Sells, because the simulator checks a buy's buying power against every order it holds
    with decimal arithmetic, which makes placing 10,000 buys take minutes.
    """
    clock = VirtualClock(START)
    broker = SimBroker.open(sim_path, market(), clock)
    config = EngineConfig()
    # The simulator saves its whole state after every call; placing 10,000 orders that way
    # takes a minute, so it saves once, at the end, after one last call.
    store, broker.store = broker.store, None

    async def fill() -> None:
        with Journal.open(journal_path) as journal:
            for offset in range(0, orders, SYMBOLS):
                plan_id = f"resume-bench-{offset // SYMBOLS:04d}"
                items: list[Item] = []
                for index in range(min(SYMBOLS, orders - offset)):
                    intent = OrderIntent(
                        symbol=f"R{index:03d}", side=OrderSide.SELL, quantity=QUANTITY
                    )
                    seq = journal.last_seq + 1 + len(items)
                    items += await mid_walk(broker, plan_id, index, intent, config, seq)
                journal.append_many(items, at=START)
        broker.store = store
        await broker.get_clock()

    try:
        clock.run(fill())
    finally:
        broker.close()


@dataclass
class ArmWatch(SimBroker):
    """The simulator, noting resume's first broker call (everything before it is local: load
    and fold) and when every order was re-armed (each live order re-read by resume's
    reconcile, in its listing of open orders or on its own, then a walk waiting on its live
    order again), then ending the process there."""

    expected: int = field(init=False, default=0)
    marks: dict[str, float] = field(init=False, default_factory=dict)
    reread: set[str] = field(init=False, default_factory=set)

    async def open_orders(self) -> list[BrokerOrder]:
        self.marks.setdefault("first_broker_call", time.monotonic())
        listed = await super().open_orders()
        self.reread.update(order.id for order in listed)
        return listed

    async def get_order(self, order_id: str) -> BrokerOrder:
        self.marks.setdefault("first_broker_call", time.monotonic())
        self.reread.add(order_id)
        return await super().get_order(order_id)

    async def wait_for_update(self, order_id: str, timeout_seconds: float) -> BrokerOrder:
        if len(self.reread) == self.expected:
            self.marks["armed"] = time.monotonic()
            result = {"marks": self.marks, "rows": self.expected, "peak_rss_mb": peak_rss_mb()}
            print(RESULT_PREFIX + json.dumps(result), flush=True)
            # Every order is re-armed: that is the figure. Walking 10,000 orders to the end
            # is not, and nothing is being written at this instant, so stop here.
            os._exit(0)
        return await super().wait_for_update(order_id, timeout_seconds)


def resume_child(journal_path: Path, sim_path: Path, expected: int) -> None:
    """The measured process: resume the journal as `walkbook resume` would, on the same clock."""
    imported = time.monotonic()
    quiet_logs()
    journal = Journal.open(journal_path)
    times = [t for t in (SimBroker.saved_time(sim_path), journal.last_at()) if t]
    clock = VirtualClock(max(times))
    broker = ArmWatch.open(sim_path, market(), clock)
    assert isinstance(broker, ArmWatch)
    assert broker.store is not None
    # Loaded; from here the simulator stays in memory. Its own per-call state save (a JSON
    # of every book, one commit per broker call) is the simulator's durability, not
    # walkbook's, and would otherwise dominate the figure.
    broker.store.close()
    broker.store = None
    broker.expected = expected
    broker.marks["imported"] = imported
    Engine(broker, journal, clock=clock).resume_sync()
    sys.exit("resume ended before every order was re-armed")


def measure(command: list[str]) -> dict[str, Any]:
    """Run a fresh process; its RESULT line, with its marks made relative to the spawn."""
    spawned = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"{command[1:3]} failed ({run.returncode}): {run.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    result["marks"] = {k: v - spawned for k, v in result["marks"].items()}
    return result


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--child", nargs=3, metavar=("JOURNAL", "SIM", "ORDERS"), help="internal")
    args = parser.parse_args()
    if args.child:
        journal_path, sim_path, expected = args.child
        return resume_child(Path(journal_path), Path(sim_path), int(expected))
    orders = 200 if args.quick else 10_000
    report = Report("resume", args)
    with scratch(args.workdir) as directory:
        journal_path, sim_path = directory / "journal.db", directory / "sim.db"
        build_seconds = time.perf_counter()
        build(journal_path, sim_path, orders)
        build_seconds = time.perf_counter() - build_seconds
        child = [str(journal_path), str(sim_path), str(orders)]
        scans, resumes = [], []
        # In turns, each a fresh process on the same files: a resume stops before it
        # writes an event and leaves the simulator's file alone, so each run finds what
        # the first found (every scan counting the same rows checks that).
        for _ in range(1 if args.quick else ROUNDS):
            scans.append(measure([sys.executable, "-c", SCAN, str(journal_path)]))
            resumes.append(measure([sys.executable, "-m", "bench.resume", "--child", *child]))
    if len({scan["rows"] for scan in scans}) != 1:
        raise SystemExit(f"a resume run changed the journal: {[s['rows'] for s in scans]}")
    scan = median_run(scans, lambda run: float(run["marks"]["done"]))
    resumed = median_run(resumes, lambda run: float(run["marks"]["armed"]))
    marks = resumed["marks"]
    name = f"resume {orders:,} in-flight orders"
    report.add(
        Row.measured(
            f"{name}: start to all re-armed",
            marks["armed"],
            "s",
            scan["marks"]["done"],
            SECONDS_TARGET,
            note="reference: a fresh process's sqlite3 SELECT * FROM events "
            f"({scan['rows']:,} rows)",
        )
    )
    report.add(
        Row.measured(
            f"{name}: peak RSS",
            max(run["peak_rss_mb"] for run in resumes),
            "MB",
            scan["peak_rss_mb"],
            MEMORY_TARGET,
            note="the largest of the resume runs; reference: the raw scan process's peak RSS",
        )
    )
    report.notes.append(
        f"median of {len(resumes)} fresh resume processes taken in turns with the scan; "
        "start to all re-armed: " + ", ".join(f"{run['marks']['armed']:.2f} s" for run in resumes)
    )
    report.notes.append(
        f"phases from process start: imports done {marks['imported']:.2f} s; first broker call "
        f"(the journal loaded and folded) {marks['first_broker_call']:.2f} s; every order "
        f"reconciled and the walks resumed {marks['armed']:.2f} s"
    )
    report.notes.append(
        f"resume runs with the engine's defaults (reconcile {DEFAULT_RECONCILE_CONCURRENCY} "
        f"orders at a time, walk {DEFAULT_CONCURRENCY}); built the journal and the simulator's "
        f"live orders in {build_seconds:.1f} s"
    )
    report.details |= {"phases_s": marks, "orders": orders, "events": scan["rows"]}
    report.finish()


if __name__ == "__main__":
    main()
