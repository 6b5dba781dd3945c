"""The same walk as DBOS durable workflow steps on SQLite, against walkbook's journaled FSM.

A walk is seven durable steps (quote, three limit steps, market, settle, validate).
walkbook journals each as an FSM transition (`OrderMachine.fire` -> the walk's journal
writer -> `Journal.append`, hash chain and projection included); DBOS checkpoints each
as a `@DBOS.step` whose output is the same transition data. Neither side calls a broker,
so the figure compares the cost of durability per step. Both databases live in the same
directory and the two sides are measured in turns. bench/postgres_append.py runs the same
two sides with both databases on one PostgreSQL server.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import time
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

from engine import EngineConfig, MarketSpec, OrderIntent, OrderSide, SimBroker, VirtualClock
from engine.context import OrderJournal, WalkContext
from engine.events import EventKind, payload_of
from engine.fsm import OrderMachine
from engine.quotes import QuoteService
from journal import Journal

from .common import Report, Row, Target, bench_parser, interleaved, quiet_logs, scratch
from .workload import START, created, walk_steps

TARGET = Target("ratio", ">=", 5.0)
NAME = "walk, durable steps per second"
BID, ASK = Decimal("187.41"), Decimal("187.47")
STEPS = walk_steps("AAPL", BID, ASK)
SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def journaled_machine(book: OrderJournal, steps: int) -> OrderMachine:
    """An order's FSM whose transitions `book` journals before they happen, as the walk wires it."""

    def persist(trigger: str, source: str, dest: str, data: dict[str, Any]) -> None:
        move = payload_of(EventKind.TRANSITION, {"trigger": trigger, **data})
        book.write(move, from_state=source, to_state=dest)

    return OrderMachine(steps, persist)


def walkbook_rate(location: str | Path, walks: int, plan_id: str) -> float:
    """Durable steps per second: each walk is its `created` event then seven FSM transitions,
    into the journal at `location` (a file, or a PostgreSQL database's URL)."""
    clock = VirtualClock(START)
    config = EngineConfig()
    intent = OrderIntent(symbol="AAPL", side=OrderSide.BUY, quantity=Decimal(100))
    with Journal.open(location) as journal:
        broker = SimBroker(MarketSpec(), clock)
        quotes = QuoteService(broker, config.quote_freshness_seconds, 0.0)
        context = WalkContext(journal, broker, quotes, clock, config)
        start = time.perf_counter()
        for index in range(walks):
            event, record = created(plan_id, index, intent, config, journal.last_seq + 1)
            journal.append(event, at=clock.now(), projection=record.projection())
            book = OrderJournal(context, record)

            machine = journaled_machine(book, len(config.ladder))
            for step in STEPS:
                machine.fire(step.trigger, **step.data)
        return walks * len(STEPS) / (time.perf_counter() - start)


class DbosWalks:
    """DBOS launched on a system database (SQLite's or PostgreSQL's URL), with the walk as a
    workflow of seven steps."""

    def __init__(self, system_database_url: str) -> None:
        from dbos import DBOS, DBOSConfig

        config: DBOSConfig = {
            "name": "walkbook-bench",
            "system_database_url": system_database_url,
            "log_level": "WARNING",
        }
        DBOS(config=config)

        @DBOS.step()
        def transition(trigger: str, dest: str, data: dict[str, Any]) -> dict[str, Any]:
            return {"trigger": trigger, "to_state": dest, **data}

        @DBOS.workflow()
        def walk(order: int) -> int:
            for step in STEPS:
                transition(step.trigger, step.dest, step.data)
            return order

        self.walk = walk
        DBOS.launch()

    def rate(self, walks: int) -> float:
        """Durable steps per second over `walks` workflow runs."""
        start = time.perf_counter()
        for order in range(walks):
            self.walk(order)
        return walks * len(STEPS) / (time.perf_counter() - start)

    def close(self) -> None:
        from dbos import DBOS

        DBOS.destroy()


def sqlite_durability(path: Path) -> str:
    """How durable DBOS left its SQLite system database."""
    conn = sqlite3.connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        conn.close()
    return f"journal_mode={mode}, synchronous={SYNCHRONOUS_NAMES[level]}"


def launch_dbos(system_database_url: str) -> DbosWalks | str:
    """DBOS ready to run on that system database, or why it cannot run here."""
    if importlib.util.find_spec("dbos") is None:
        return "dbos is not installed; `make bench` installs it (pip install -e '.[bench]')"
    store = system_database_url.partition(":")[0]
    try:
        return DbosWalks(system_database_url)
    except Exception as exc:  # any launch failure means SKIP, with its reason
        return f"DBOS could not launch on {store} here: {type(exc).__name__}: {exc}"


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    walks, rounds = (10, 1) if args.quick else (100, 5)
    quiet_logs()
    report = Report("dbos_peer", args)
    with scratch(args.workdir) as directory:
        fresh = count()
        system_database = directory / "dbos-system.sqlite"
        dbos = launch_dbos(f"sqlite:///{system_database}")
        if isinstance(dbos, str):
            report.add(Row.skipped(NAME, "steps/s", TARGET, dbos))
        else:
            try:
                rate = interleaved(
                    rounds,
                    {
                        "walkbook": lambda: walkbook_rate(
                            directory / f"walkbook-{next(fresh)}.db", walks, "walkbook"
                        ),
                        "dbos": lambda: dbos.rate(walks),
                    },
                )
            finally:
                dbos.close()
            report.add(
                Row.measured(
                    NAME,
                    rate["walkbook"],
                    "steps/s",
                    rate["dbos"],
                    TARGET,
                    note=f"reference: DBOS steps on SQLite ({sqlite_durability(system_database)}); "
                    "walkbook: WAL, synchronous=FULL",
                )
            )
    report.notes.append(
        f"median of {rounds} interleaved rounds of {walks} walks x {len(STEPS)} durable steps; "
        "walkbook's count includes each walk's `created` commit, DBOS's its workflow status rows"
    )
    report.finish()


if __name__ == "__main__":
    main()
