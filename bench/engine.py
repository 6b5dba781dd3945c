"""Orders per second through complete walks on the simulator, and where the time goes.

Every walk is journaled with synchronous=FULL, so the ceiling is the journal: the
reference is the raw `Journal.append` rate measured in the same run, divided by the
events one order writes. A second, profiled run attributes the time to the journal
(sqlite3 included), the FSM (`transitions` and engine/fsm.py, minus the journal
callbacks it runs), the simulator and the rest of the engine.
"""

from __future__ import annotations

import pstats
import random
from collections.abc import Callable
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import transitions

import engine as engine_package
import journal as journal_package
from engine import CloseType, MarketSpec, OrderIntent, OrderSide, OrderState
from journal import Journal

from .common import (
    Report,
    Row,
    bench_parser,
    interleaved,
    profiled,
    quiet_logs,
    scratch,
    seconds,
)
from .workload import journal_append_rate, run_in_plans

PLAN_SIZE = 25
Func = tuple[str, int, str]
Entries = dict[Func, Any]


def package_dir(module: Any) -> str:
    return str(Path(module.__file__).parent) + "/"


JOURNAL_DIR = package_dir(journal_package)
ENGINE_DIR = package_dir(engine_package)
SIM_DIR = ENGINE_DIR + "brokers/sim/"
FSM_FILES = (package_dir(transitions), ENGINE_DIR + "fsm.py")


def order_intents(count: int) -> list[OrderIntent]:
    """Seeded buys and sells of whole shares on the simulator's default (seeded) symbols."""
    rng = random.Random(11)
    return [
        OrderIntent(
            symbol=f"E{index:04d}",
            side=OrderSide.SELL if index % 2 else OrderSide.BUY,
            quantity=Decimal(rng.randint(1, 300)),
            close_type=CloseType.PARTIAL if index % 2 else CloseType.NONE,
        )
        for index in range(count)
    ]


def market(intents: list[OrderIntent]) -> MarketSpec:
    """Default market (made-up symbols allowed), with twice each sell's quantity held so a
    sell never closes out."""
    positions = {i.symbol: i.shares * 2 for i in intents if i.side is OrderSide.SELL}
    return MarketSpec(seed=11, positions=positions, cash=Decimal(10) ** 9, universe="any")


def walk_all(path: Path, intents: list[OrderIntent]) -> tuple[int, int]:
    """Run every intent to a terminal state; (validated orders, journal events)."""
    with Journal.open(path) as journal:
        results = run_in_plans(
            intents, market(intents), journal, prefix=path.stem, plan_size=PLAN_SIZE
        )
        validated = sum(1 for r in results if r.state == OrderState.VALIDATED)
        return validated, journal.last_seq


def starts_with(prefixes: tuple[str, ...]) -> Callable[[Func], bool]:
    return lambda func: func[0].startswith(prefixes)


def inclusive(entries: Entries, member: Callable[[Func], bool]) -> float:
    """Seconds inside a group of functions and whatever they call: each entry from outside."""
    total = 0.0
    for func, (_, _, _, cumulative, callers) in entries.items():
        if member(func):
            outside = [c[3] for caller, c in callers.items() if not member(caller)]
            total += sum(outside) if callers else cumulative
    return total


def calls_out(
    entries: Entries, member: Callable[[Func], bool], to: Callable[[Func], bool]
) -> float:
    """Seconds of calls from a group into functions matching `to` (callbacks it runs)."""
    total = 0.0
    for func, (*_, callers) in entries.items():
        if to(func) and not member(func):
            total += sum(c[3] for caller, c in callers.items() if member(caller))
    return total


def time_shares(stats: pstats.Stats) -> dict[str, float]:
    """Share of the profiled run in the journal, its sqlite3 calls, the FSM, the simulator and
    the rest; the FSM's share excludes the journal writes it triggers as callbacks."""
    entries: Entries = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values())
    in_journal = starts_with((JOURNAL_DIR,))
    in_fsm = starts_with(FSM_FILES)
    fsm = inclusive(entries, in_fsm) - calls_out(entries, in_fsm, starts_with((ENGINE_DIR,)))
    journal = inclusive(entries, in_journal)
    simulator = inclusive(entries, starts_with((SIM_DIR,)))
    sqlite = sum(entry[2] for func, entry in entries.items() if "sqlite3." in func[2])
    return {
        "journal/ (sqlite3 included)": journal / total,
        "sqlite3 C calls (part of journal/)": sqlite / total,
        "FSM: transitions/ + engine/fsm.py": fsm / total,
        "simulator: engine/brokers/sim/": simulator / total,
        "other (walk, quotes, asyncio, ...)": (total - journal - fsm - simulator) / total,
    }


def walk_rate(path: Path, intents: list[OrderIntent], facts: dict[str, int]) -> float:
    """Orders per second of one `walk_all`; its validated and event counts go into `facts`."""
    outcome: list[tuple[int, int]] = []
    elapsed = seconds(lambda: outcome.append(walk_all(path, intents)))
    facts["validated"], facts["events"] = outcome[0]
    return len(intents) / elapsed


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    orders, appends, rounds = (20, 200, 1) if args.quick else (500, 2000, 3)
    quiet_logs()
    report = Report("engine", args)
    intents = order_intents(orders)
    facts: dict[str, int] = {}
    with scratch(args.workdir) as directory:
        fresh = count()

        def path(name: str) -> Path:
            return directory / f"{name}-{next(fresh)}.db"

        rate = interleaved(
            rounds,
            {
                "append": lambda: journal_append_rate(path("reference"), appends),
                "walks": lambda: walk_rate(path("timed"), intents, facts),
            },
        )
        stats = profiled(lambda: walk_all(path("profiled"), intents))
    per_order = facts["events"] / orders
    report.add(
        Row.measured(
            f"{orders} orders through complete walks",
            rate["walks"],
            "orders/s",
            rate["append"] / per_order,
            note=f"reference: Journal.append at {rate['append']:,.0f} events/s (FULL) / "
            f"{per_order:.1f} events per order; {facts['validated']}/{orders} VALIDATED",
        )
    )
    shares = time_shares(stats)
    for name, share in shares.items():
        report.add(Row.measured(f"time share: {name}", 100 * share, "%"))
    report.notes.append(
        f"median of {rounds} interleaved rounds; plans of {PLAN_SIZE} orders, each on a fresh "
        "simulator, default config and concurrency, virtual clock, journal synchronous=FULL, "
        "engine logs at ERROR"
    )
    report.notes.append(
        "shares come from a separate cProfile run (profiling inflates Python-heavy parts); "
        "time in a group includes what it calls, except the FSM's journal callbacks"
    )
    report.details |= {"time_shares": shares, "events_per_order": per_order}
    report.finish()


if __name__ == "__main__":
    main()
