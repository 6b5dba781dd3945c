"""Durable journal appends on PostgreSQL against raw single-row INSERT commits on the same server.

A throwaway cluster (bench/pgcluster.py: 127.0.0.1, fsync on) holds every database. The
journal side is `Journal.append` of one LIMIT_STEP transition and its order's projection
per commit, into a journal of its own database (its owner lease and all). The reference is
pgbench's simple-insert shape: one connection in autocommit, each INSERT its own commit, of
the same event row into a table created like `events` (its columns, primary key and
UNIQUE (order_id, order_seq); no triggers, no projection row), in a database of its own.

At 8 concurrent writers each writer is its own process with its own database: a journal
has exactly one owner, so 8 writers on one server are 8 journals (8 accounts, one database
each, as docs/scale-out.md deploys them), and the raw side gets the same 8 databases'
worth of connections. The figure is all writers' commits over the span from the first
one's start to the last one's end. Each row's note gives both sides' CPU per commit: the
writers' own (their timed commits) and the cluster's processes' (Linux /proc, warm-up
commits included), which says whether the row is bound by the CPU or by the disk. Then
walkbook's durable walk steps against DBOS Transact's on the same server
(bench/dbos_peer.py has the walk).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from itertools import count
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg

from journal import canonical_json

from .common import Report, Row, Target, bench_parser, interleaved, quiet_logs
from .dbos_peer import NAME as WALK_NAME
from .dbos_peer import STEPS, launch_dbos, walkbook_rate
from .dbos_peer import TARGET as WALK_TARGET
from .pgcluster import PostgresCluster, postgres_cluster
from .workload import TransitionWriter, sample_orders

TARGET = Target("ratio", ">=", 0.7)
WRITERS = (1, 8)
KINDS = ("journal", "raw")
UNIT = "commits/s"
RAW_TABLE = """
    CREATE TABLE raw (
        seq BIGINT PRIMARY KEY, order_id TEXT, order_seq BIGINT, plan_id TEXT,
        at TEXT NOT NULL, kind TEXT NOT NULL, from_state TEXT, to_state TEXT,
        data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
        UNIQUE (order_id, order_seq)
    )
"""
INSERT_RAW = "INSERT INTO raw VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
HASH = "0" * 64


class RawInserts:
    """One autocommit connection inserting the sample transitions' event rows, one a commit."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(RAW_TABLE)
        _, steps = sample_orders()
        self.events = [event for event, _ in steps]

    def commit(self, offset: int) -> None:
        event = self.events[offset % len(self.events)]
        row = (offset + 1, event.order_id, offset + 1, event.plan_id, "2026-11-23T14:30:00+00:00",
               event.kind, event.from_state, event.to_state, canonical_json(dict(event.data)),
               HASH, HASH)  # fmt: skip
        self.conn.execute(INSERT_RAW, row)

    def close(self) -> None:
        self.conn.close()


def _writer(kind: str, url: str) -> RawInserts | TransitionWriter:
    # Journal.open takes a database's URL where TransitionWriter's annotation says a path
    return RawInserts(url) if kind == "raw" else TransitionWriter(url)  # type: ignore[arg-type]


# One writer's timed commits: their monotonic start and end, and its CPU seconds meanwhile.
Span = tuple[float, float, float]
# A round of one kind: commits per second, then CPU microseconds per commit of the writers
# and of the cluster.
Round = tuple[float, float, float]


def timed_commits(commit: Callable[[int], None], commits: int) -> Span:
    """The span of `commits` commits, after as many untimed ones (the connection's
    statements prepared, the table's first pages written)."""
    for offset in range(commits):
        commit(offset)
    start, cpu = time.monotonic(), time.process_time()
    for offset in range(commits, 2 * commits):
        commit(offset)
    return start, time.monotonic(), time.process_time() - cpu


def cluster_cpu_seconds(cluster: PostgresCluster) -> float:
    """CPU seconds the cluster's processes have used: the postmaster, its live children
    (backends, WAL writer, checkpointer) and those it has reaped (Linux /proc)."""
    postmaster = (cluster.root / "data" / "postmaster.pid").read_text().split()[0]
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if postmaster in (stat.parent.name, fields[1]):
            ticks += sum(int(field) for field in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _close(writer: RawInserts | TransitionWriter) -> None:
    if isinstance(writer, RawInserts):
        writer.close()
    else:
        writer.journal.close()


def _round(spans: list[Span], commits: int, server_seconds: float) -> Round:
    """All writers' commits over the first start to the last end; the writers' CPU per
    timed commit, the cluster's per commit (warm-up ones included: twice as many)."""
    first_start, last_end = min(span[0] for span in spans), max(span[1] for span in spans)
    total = len(spans) * commits
    client = sum(span[2] for span in spans)
    return (
        total / (last_end - first_start),
        1e6 * client / total,
        1e6 * server_seconds / (2 * total),
    )


def one_writer(cluster: PostgresCluster, kind: str, url: str, commits: int) -> Round:
    """One writer in this process."""
    writer = _writer(kind, url)
    try:
        server = cluster_cpu_seconds(cluster)
        span = timed_commits(writer.commit, commits)
        server = cluster_cpu_seconds(cluster) - server
    finally:
        _close(writer)
    return _round([span], commits, server)


def _writer_process(kind: str, url: str, commits: int, ready: Barrier, spans: Any) -> None:
    writer = _writer(kind, url)
    try:
        ready.wait()
        spans.put(timed_commits(writer.commit, commits))
    finally:
        _close(writer)


def many_writers(cluster: PostgresCluster, kind: str, urls: list[str], commits: int) -> Round:
    """All writers together, one process and one database each, started together once
    every one has connected (this process waits with them to read the cluster's CPU)."""
    context = multiprocessing.get_context("fork")
    ready, spans = context.Barrier(len(urls) + 1), context.Queue()
    processes = [
        context.Process(target=_writer_process, args=(kind, url, commits, ready, spans))
        for url in urls
    ]
    for process in processes:
        process.start()
    ready.wait()
    server = cluster_cpu_seconds(cluster)
    results: list[Span] = [spans.get(timeout=300) for _ in processes]
    server = cluster_cpu_seconds(cluster) - server
    for process in processes:
        process.join()
    return _round(results, commits, server)


def measure(cluster: PostgresCluster, kind: str, writers: int, commits: int) -> Round:
    """One round of `writers` writers of `kind`, each into a fresh database."""
    urls = [cluster.fresh_database() for _ in range(writers)]
    if writers == 1:
        return one_writer(cluster, kind, urls[0], commits)
    return many_writers(cluster, kind, urls, commits)


def _kept(rounds: list[Round], *args: Any) -> float:
    """`measure(*args)`'s rate, its round kept in `rounds` for the CPU figures."""
    rounds.append(measure(*args))
    return rounds[-1][0]


def _cpu(rounds: list[Round]) -> str:
    client = statistics.median(cpu for _, cpu, _ in rounds)
    server = statistics.median(cpu for _, _, cpu in rounds)
    return f"{client:.0f} + {server:.0f} µs"


def append_rows(report: Report, cluster: PostgresCluster, commits: int, rounds: int) -> None:
    """The 1- and 8-writer rows: journal against raw, measured in turns. Every writer makes
    `commits` commits: a span of a few seconds, so a neighbour's burst on a shared machine
    weighs on a round less than on a fraction of a second."""
    for writers in WRITERS:
        seen: dict[str, list[Round]] = {kind: [] for kind in KINDS}
        runs: dict[str, Callable[[], float]] = {
            kind: partial(_kept, seen[kind], cluster, kind, writers, commits) for kind in KINDS
        }
        rates = interleaved(rounds, runs)
        report.add(
            Row.measured(
                f"postgres journal append, {writers} writer{'s' * (writers > 1)}",
                rates["journal"],
                UNIT,
                rates["raw"],
                TARGET,
                note=f"reference: {writers} autocommit connection(s) of single-row INSERTs into "
                "an events-shaped table; "
                + ("in this process" if writers == 1 else "a process and a database each")
                + f"; {commits} commits each, medians of {rounds} rounds; CPU per commit "
                f"(writers + cluster): walkbook {_cpu(seen['journal'])}, "
                f"reference {_cpu(seen['raw'])}",
            )
        )


def walk_row(report: Report, cluster: PostgresCluster, walks: int, rounds: int) -> None:
    """walkbook's durable walk steps against DBOS's, both on this server."""
    name = f"{WALK_NAME}, PostgreSQL"
    dbos = launch_dbos(cluster.fresh_database())
    if isinstance(dbos, str):
        report.add(Row.skipped(name, "steps/s", WALK_TARGET, dbos))
        return
    fresh = count()
    try:
        rate = interleaved(
            rounds,
            {
                "walkbook": lambda: walkbook_rate(
                    cluster.fresh_database(), walks, f"pg{next(fresh)}"
                ),
                "dbos": lambda: dbos.rate(walks),
            },
        )
    finally:
        dbos.close()
    report.add(
        Row.measured(
            name,
            rate["walkbook"],
            "steps/s",
            rate["dbos"],
            WALK_TARGET,
            note="reference: DBOS steps with its system database on the same server; "
            f"{walks} walks x {len(STEPS)} steps, medians of {rounds} rounds",
        )
    )


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    commits, walks, rounds = (40, 5, 1) if args.quick else (800, 50, 5)
    quiet_logs()
    report = Report("postgres_append", args)
    with postgres_cluster(durable=True) as cluster:
        append_rows(report, cluster, commits, rounds)
        walk_row(report, cluster, walks, rounds)
    report.notes.append(
        "a throwaway PostgreSQL cluster on 127.0.0.1 with fsync on (bench/pgcluster.py); "
        "every writer in a fresh database of its own"
    )
    report.finish()


if __name__ == "__main__":
    main()
