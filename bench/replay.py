"""Audit speed: `engine.audit` verify and replay of a 1,000,000-event journal against a raw scan.

The journal holds complete walks in the engine's own event shapes (`bench.workload`): a
third of the orders fill at the first limit step, a third move to the second step by
replace and fill there, a third fill partly, are cancelled and finish with a new order
at the third step, 11 to 22 events each. It is written by `Journal.append_many` group
commits and kept in bench/out/ (or --workdir), keyed by its size and schema version, so a
rerun skips the build. Each measurement is a fresh process reading the same file, the
three taken in turns three times (the figures are the medians): the reference
iterates `SELECT <every column> FROM events ORDER BY seq` with bare sqlite3; verify is
`engine.audit.verify`; replay consumes every timeline of `engine.audit.replay`. Both read
a journal this size through a helper process (`engine.audit.feed`: a second core reads the
rows, and for verify checks the hash chain); the time is the audit's wall-clock time, and
the note gives the helper's CPU time. Peak memory is the audit process's own, at a quarter
of the size and at the full size: an audit streams, so it must not grow with the journal.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine import EngineConfig, OrderIntent, OrderSide
from engine.events import EventKind
from engine.fsm import OrderState, Trigger, limit_step
from engine.numbers import decimal_text
from engine.order import OrderRecord, client_order_id
from journal import SCHEMA_VERSION, Journal, NewEvent

from .common import OUT_DIR, Report, Row, Target, bench_parser, median_run, peak_rss_mb
from .workload import START, created, follow, quote_data, step_data

Entry = tuple[NewEvent, dict[str, Any] | None]

SPEED_TARGET = Target("ratio", ">=", 0.3)
MEMORY_TARGET = Target("ratio", "<=", 1.1)
SIZE, QUICK_SIZE = 1_000_000, 20_000
COMMIT_EVENTS = 2_000
SYMBOLS = 200
RESULT_PREFIX = "RESULT "
ROUNDS = 3
MODES = ("verify", "replay")
SCAN = """
import json, sqlite3, sys, time
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
columns = "seq, order_id, order_seq, plan_id, at, kind, from_state, to_state, data, prev_hash, hash"
start = time.perf_counter()
rows = 0
for _ in conn.execute(f"SELECT {columns} FROM events ORDER BY seq"):
    rows += 1
seconds = time.perf_counter() - start
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print("RESULT " + json.dumps({"events": rows, "seconds": seconds, "peak_rss_mb": peak}))
"""


CONFIG = EngineConfig()


class OrderWriter:
    """One order's walk, event by event, each folded into its record as the walk does."""

    def __init__(self, plan_id: str, index: int, seq: int) -> None:
        side = OrderSide.BUY if index % 2 else OrderSide.SELL
        intent = OrderIntent(symbol=f"Q{index % SYMBOLS:03d}", side=side, quantity=Decimal(30))
        event, self.record = created(plan_id, index, intent, CONFIG, seq)
        self.events: list[tuple[NewEvent, OrderRecord]] = [(event, self.record)]
        self.bid = Decimal(20 + index % SYMBOLS) + Decimal("0.01") * (index % 7)
        self.ask = self.bid + Decimal("0.04")
        self.broker_orders = 0

    def add(self, kind: str, data: dict[str, Any], to_state: str | None = None) -> None:
        event, self.record = follow(self.record, kind, data, to_state)
        self.events.append((event, self.record))

    def move(self, trigger: str, to_state: str, **data: Any) -> None:
        self.add(EventKind.TRANSITION, {"trigger": trigger, **data}, to_state)

    def step(self, k: int, ratio: str) -> Decimal:
        """Enter LIMIT_STEP_k priced at `ratio` of the spread; returns the limit price."""
        price = self.bid + Decimal(ratio) * (self.ask - self.bid)
        quote = quote_data(self.record.intent.symbol, self.bid, self.ask)
        trigger = Trigger.START_WALK if k == 1 else Trigger.NEXT_STEP
        self.move(trigger, limit_step(k), **step_data(ratio, price, quote))
        return price

    def acked(self, kind: str, cid: str, **extra: Any) -> str:
        self.broker_orders += 1
        broker_id = f"b-{self.record.order_id}-{self.broker_orders}"
        ack = {"client_order_id": cid, "broker_order_id": broker_id, "status": "new"}
        self.add(kind, {**ack, "adopted": False, **extra})
        return broker_id

    def submit(self, step: str, price: Decimal, qty: Decimal) -> tuple[str, str]:
        cid = client_order_id(self.record.order_id, step, 1)
        qty_text, limit = decimal_text(qty), decimal_text(price)
        intent = {"client_order_id": cid, "order_type": "limit", "qty": qty_text}
        self.add(EventKind.SUBMIT_INTENT, intent | {"limit_price": limit})
        return cid, self.acked(EventKind.SUBMIT_ACK, cid)

    def fill(self, broker_id: str, cid: str, qty: Decimal, price: Decimal) -> None:
        text = decimal_text(qty)
        data = {"broker_order_id": broker_id, "client_order_id": cid, "qty": text}
        price_text = decimal_text(price)
        self.add(EventKind.FILL, data | {"price": price_text, "cum_qty": text,
                                         "cum_avg_price": price_text})  # fmt: skip

    def final(self, broker_id: str, status: str, filled: Decimal) -> None:
        data = {"broker_order_id": broker_id, "status": status, "filled_qty": decimal_text(filled)}
        self.add(EventKind.ORDER_FINAL, data)

    def walk(self, variant: int) -> OrderWriter:
        """The whole walk, from `created` to VALIDATED."""
        qty = self.record.quantity
        before = Decimal(1_000)
        self.add(EventKind.POSITION_READ, {"phase": "before", "qty": "1000", "target_qty": None})
        quote = quote_data(self.record.intent.symbol, self.bid, self.ask)
        self.move(Trigger.QUOTE, OrderState.QUOTED, quote=quote)
        price = self.step(1, "0.75")
        cid, broker_id = self.submit("L1", price, qty)
        if variant == 0:
            self.fill(broker_id, cid, qty, price)
            self.final(broker_id, "filled", qty)
        else:
            price = self.step(2, "0.85")
            new_cid = client_order_id(self.record.order_id, "L2", 1)
            replace = {"client_order_id": new_cid, "broker_order_id": broker_id}
            sized = {"qty": decimal_text(qty), "limit_price": decimal_text(price)}
            self.add(EventKind.REPLACE_INTENT, replace | sized)
            new_id = self.acked(EventKind.REPLACE_ACK, new_cid, replaces=broker_id)
            self.final(broker_id, "replaced", Decimal(0))
            if variant == 1:
                self.fill(new_id, new_cid, qty, price)
                self.final(new_id, "filled", qty)
            else:
                part = qty / 3
                self.fill(new_id, new_cid, part, price)
                price = self.step(3, "0.95")
                self.add(EventKind.CANCEL_INTENT, {"broker_order_id": new_id})
                self.add(EventKind.CANCEL_ACK, {"broker_order_id": new_id})
                self.final(new_id, "canceled", part)
                cid, broker_id = self.submit("L3", price, qty - part)
                self.fill(broker_id, cid, qty - part, price)
                self.final(broker_id, "filled", qty - part)
        self.move(Trigger.SETTLE, OrderState.SETTLING)
        signed = qty if self.record.intent.side is OrderSide.BUY else -qty
        after = decimal_text(before + signed)
        self.add(EventKind.POSITION_READ, {"phase": "after", "qty": after, "expected": after})
        self.move(Trigger.VALIDATE, OrderState.VALIDATED, position=after)
        return self

    def items(self, count: int) -> list[Entry]:
        """The first `count` events, the last of them with the order's projection row (the
        journal then holds the row as those events leave it; one row per order keeps the
        build of a million events quick)."""
        events = self.events[:count]
        *head, (last, record) = events
        return [(event, None) for event, _ in head] + [(last, record.projection())]


def walks(journal: Journal, events: int) -> Iterator[list[Entry]]:
    """Commits of whole walks (about COMMIT_EVENTS events each), `events` in all; the last
    order is cut short where the count ends, still in flight, as a live journal ends."""
    written, index = 0, 0
    while written < events:
        batch: list[Entry] = []
        while len(batch) < COMMIT_EVENTS and written + len(batch) < events:
            seq = journal.last_seq + 1 + len(batch)
            order = OrderWriter(f"audit-bench-{index // 100:05d}", index, seq).walk(index % 3)
            batch += order.items(events - written - len(batch))
            index += 1
        written += len(batch)
        yield batch


def build(path: Path, events: int) -> None:
    """Write the journal of `events` events at `path`, through a temporary file, so an
    interrupted build is never taken for a finished one."""
    partial = path.with_name(path.name + ".partial")
    for leftover in path.parent.glob(partial.name + "*"):
        leftover.unlink()
    with Journal.open(partial, synchronous="NORMAL", lock=False) as journal:
        for batch in walks(journal, events):
            journal.append_many(batch, at=START)
    partial.rename(path)


def cached_journal(directory: Path, events: int) -> Path:
    """The journal of `events` events in `directory`, built the first time."""
    path = directory / f"replay-journal-{events}-v{SCHEMA_VERSION}.db"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        build(path, events)
    return path


def child(mode: str, path: Path) -> None:
    """The measured process: verify or replay the journal, then print its result line."""
    from engine.audit import replay, verify

    helpers_before = _helper_cpu_seconds()
    start = time.perf_counter()
    if mode == "verify":
        result = verify(path)
        if not result.ok:
            raise SystemExit(f"the bench journal did not verify: {result.summary()}")
        events = result.events_checked
    else:
        events = sum(len(timeline.entries) for timeline in replay(path))
    seconds = time.perf_counter() - start
    result_line = {
        "events": events,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "helper_cpu_seconds": _helper_cpu_seconds() - helpers_before,
    }
    print(RESULT_PREFIX + json.dumps(result_line), flush=True)


def _helper_cpu_seconds() -> float:
    """CPU time of the processes this one started and waited for (the audit's helper)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(command: list[str]) -> dict[str, Any]:
    """Run a fresh process; its RESULT line."""
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"{command[1:4]} failed ({run.returncode}): {run.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return result


def _seconds(run: dict[str, Any]) -> float:
    return float(run["seconds"])


def audit(mode: str, path: Path) -> dict[str, Any]:
    return measure([sys.executable, "-m", "bench.replay", "--child", mode, str(path)])


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "JOURNAL"), help="internal")
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    size = QUICK_SIZE if args.quick else SIZE
    small = size // 4
    report = Report("replay", args)
    build_seconds = time.perf_counter()
    cache = args.workdir or OUT_DIR
    full, quarter = cached_journal(cache, size), cached_journal(cache, small)
    build_seconds = time.perf_counter() - build_seconds
    # In turns, so load from a neighbour on a shared machine falls on each alike; medians.
    rounds: dict[str, list[dict[str, Any]]] = {"scan": [], "verify": [], "replay": []}
    for _ in range(1 if args.quick else ROUNDS):
        rounds["scan"].append(measure([sys.executable, "-c", SCAN, str(full)]))
        for mode in ("verify", "replay"):
            rounds[mode].append(audit(mode, full))
    scan = median_run(rounds["scan"], _seconds)
    runs = {mode: median_run(rounds[mode], _seconds) for mode in MODES}
    smaller = {mode: audit(mode, quarter) for mode in MODES}
    scan_rate = scan["events"] / scan["seconds"]
    for mode, run in runs.items():
        if run["events"] != scan["events"]:
            raise SystemExit(f"{mode} read {run['events']} events, the scan {scan['events']}")
        helper = run["helper_cpu_seconds"]
        report.add(
            Row.measured(
                f"{mode}, {size:,} events",
                run["events"] / run["seconds"],
                "events/s",
                scan_rate,
                SPEED_TARGET,
                note=f"reference: a raw sqlite3 scan of every events column in seq order "
                f"({scan['seconds']:.2f} s); {mode} took {run['seconds']:.1f} s"
                + (f", its helper process {helper:.1f} s of CPU" if helper else "")
                + f"; medians of {len(rounds[mode])} rounds, {mode} "
                + ", ".join(f"{r['seconds']:.1f}" for r in rounds[mode])
                + " s, scan "
                + ", ".join(f"{r['seconds']:.2f}" for r in rounds["scan"])
                + " s",
            )
        )
    for mode, run in runs.items():
        report.add(
            Row.measured(
                f"{mode} peak RSS, {size:,} vs {small:,} events",
                run["peak_rss_mb"],
                "MB",
                smaller[mode]["peak_rss_mb"],
                MEMORY_TARGET,
                note=f"reference: the same audit of a journal a quarter the size; the raw scan "
                f"peaked at {scan['peak_rss_mb']:.0f} MB",
            )
        )
    report.notes.append(
        f"journals of {size:,} and {small:,} events ({full.stat().st_size / 2**20:.0f} MB and "
        f"{quarter.stat().st_size / 2**20:.0f} MB) cached in {cache}; "
        f"{'built' if build_seconds > 1 else 'found'} in {build_seconds:.1f} s"
    )
    report.details |= {
        "events": size,
        "scan": scan,
        "full": runs,
        "rounds": rounds,
        "quarter": smaller,
        "journal_bytes": full.stat().st_size,
    }
    report.finish()


if __name__ == "__main__":
    main()
