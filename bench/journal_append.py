"""Durable journaled transitions per second against raw sqlite3 commits of the same size.

The journal's promise is that durability costs what SQLite's commit costs and little
more: hashing, canonical JSON and the projection row must stay small beside the fsync.
So the reference is a bare single-row INSERT commit of the same payload size, WAL +
synchronous=FULL, in the same directory, measured in turns with the journal.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable
from itertools import count
from pathlib import Path

from journal import Journal, Synchronous, canonical_json, stamp
from journal.sqlite import INSERT_EVENT, UPSERT_ORDER

from .common import Report, Row, Target, bench_parser, interleaved, profiled, scratch, top_self_time
from .workload import START, TransitionWriter, journal_append_rate, sample_orders, steady_rate

TARGET = Target("ratio", ">=", 0.8)
GROUP = 50
HASH_TEXT_BYTES = 2 * 64
WAL_FRAME_HEADER_BYTES = 24
FRAME_SAMPLE_COMMITS = 300
PER_ORDER_INDEX = "UNIQUE (order_id, order_seq)"


def transition_bytes() -> int:
    """Text bytes one journaled LIMIT_STEP transition commits: its event row and its order row."""
    _, steps = sample_orders()
    event, projection = steps[0]
    texts = [event.order_id, event.plan_id, stamp(START), event.kind, event.from_state]
    texts += [event.to_state, canonical_json(dict(event.data))]
    texts += [str(value) for value in projection.values() if value is not None]
    return sum(len(text.encode()) for text in texts if text) + HASH_TEXT_BYTES


class RawWriter:
    """A fresh WAL database taking one single-row INSERT commit per `commit` call."""

    def __init__(self, path: Path, payload_bytes: int, synchronous: Synchronous) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        self.payload = "x" * payload_bytes

    def commit(self, _offset: int) -> None:
        self.conn.execute("BEGIN")
        self.conn.execute("INSERT INTO raw (payload) VALUES (?)", [self.payload])
        self.conn.execute("COMMIT")


def drop_per_order_index(conn: sqlite3.Connection) -> None:
    """Rebuild a journal's `events` table as its own stored definition minus
    UNIQUE(order_id, order_seq), triggers and all: what an append would cost if the
    journal gave up its per-order index (duplicate-write guard and every per-order read)."""
    (table,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
    triggers = [sql for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE type = "
                                               "'trigger' AND tbl_name = 'events'")]  # fmt: skip
    lean = re.sub(rf",\s*{re.escape(PER_ORDER_INDEX)}", "", table)
    if lean == table:
        raise RuntimeError(f"the journal's events table no longer has {PER_ORDER_INDEX}")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE events RENAME TO events_indexed")
    conn.execute(lean)
    conn.execute("INSERT INTO events SELECT * FROM events_indexed")
    conn.execute("DROP TABLE events_indexed")
    for trigger in triggers:
        conn.execute(trigger)
    conn.execute("COMMIT")
    if conn.execute("SELECT count(*) FROM pragma_index_list('events')").fetchone()[0]:
        raise RuntimeError("the rebuilt events table still has an index")


class SchemaFloorWriter:
    """The journal's own file, schema and SQL, fed rows computed beforehand: one event row
    and its order's row per commit, as `Journal.append` commits them, without any of
    walkbook's Python (JSON, hashing, bookkeeping). What SQLite alone charges for the
    journal's three B-trees per commit: events, UNIQUE(order_id, order_seq), the orders row."""

    def __init__(self, path: Path, synchronous: Synchronous, *, per_order_index: bool) -> None:
        births, steps = sample_orders()
        with Journal.open(path, synchronous=synchronous) as journal:
            journal.append_many(births, at=START)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        if not per_order_index:
            drop_per_order_index(self.conn)
        at = stamp(START)
        self.rows = [
            (event.order_id, event.plan_id, at, event.kind, event.from_state, event.to_state,
             canonical_json(dict(event.data)), [*projection.values()])
            for event, projection in steps
        ]  # fmt: skip
        self.seq = len(births)
        self.order_seqs = dict.fromkeys((event.order_id for event, _ in births), 1)

    def commit(self, offset: int) -> None:
        order_id, plan_id, at, kind, source, dest, data, order_row = self.rows[
            offset % len(self.rows)
        ]
        self.seq += 1
        self.order_seqs[order_id] += 1
        event_row = (self.seq, order_id, self.order_seqs[order_id], plan_id, at, kind, source,
                     dest, data, "0" * 64, "f" * 64)  # fmt: skip
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(INSERT_EVENT, event_row)
        self.conn.execute(UPSERT_ORDER, [*order_row[:-1], self.seq])
        self.conn.execute("COMMIT")


def schema_floor_rate(
    path: Path, commits: int, synchronous: Synchronous, *, per_order_index: bool = True
) -> float:
    """Commits per second of the journal's rows through bare sqlite3 (see SchemaFloorWriter)."""
    writer = SchemaFloorWriter(path, synchronous, per_order_index=per_order_index)
    try:
        return steady_rate(commits, 1, writer.commit)
    finally:
        writer.conn.close()


def journal_without_index_rate(path: Path, commits: int) -> float:
    """`journal_append_rate` on a journal whose per-order index was dropped first."""
    with TransitionWriter(path) as writer:
        drop_per_order_index(writer.journal.conn)
        return steady_rate(commits, 1, writer.commit)


def raw_commit_rate(
    path: Path, commits: int, payload_bytes: int, synchronous: Synchronous
) -> float:
    """Single-row INSERT commits per second into a fresh WAL database at `path`."""
    writer = RawWriter(path, payload_bytes, synchronous)
    try:
        return steady_rate(commits, 1, writer.commit)
    finally:
        writer.conn.close()


def wal_frames_per_commit(
    conn: sqlite3.Connection, wal: Path, commit: Callable[[int], None]
) -> float:
    """Pages one commit writes to the WAL: the I/O a commit costs beside its fsync."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    for offset in range(FRAME_SAMPLE_COMMITS):
        commit(offset)
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    frames = os.path.getsize(wal) / (page_size + WAL_FRAME_HEADER_BYTES)
    conn.execute("PRAGMA wal_autocheckpoint = 1000")
    return frames / FRAME_SAMPLE_COMMITS


def frames_per_commit(directory: Path, payload_bytes: int) -> tuple[float, float]:
    """WAL pages per commit for a journal append and for the raw single-row commit."""
    journal_path, raw_path = directory / "frames-journal.db", directory / "frames-raw.db"
    with TransitionWriter(journal_path) as writer:
        journal = wal_frames_per_commit(
            writer.journal.conn, Path(f"{journal_path}-wal"), writer.commit
        )
    raw_writer = RawWriter(raw_path, payload_bytes, "FULL")
    try:
        raw = wal_frames_per_commit(raw_writer.conn, Path(f"{raw_path}-wal"), raw_writer.commit)
    finally:
        raw_writer.conn.close()
    return journal, raw


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    events, rounds = (200, 1) if args.quick else (2000, 9)
    report = Report("journal_append", args)
    size = transition_bytes()
    with scratch(args.workdir) as directory:
        fresh = count()

        def path(name: str) -> Path:
            return directory / f"{name}-{next(fresh)}.db"

        runs: dict[str, Callable[[], float]] = {
            "raw_full": lambda: raw_commit_rate(path("raw"), events, size, "FULL"),
            "floor_full": lambda: schema_floor_rate(path("floor"), events, "FULL"),
            "lean_floor_full": lambda: schema_floor_rate(
                path("floor"), events, "FULL", per_order_index=False
            ),
            "lean_journal_full": lambda: journal_without_index_rate(path("journal"), events),
            "journal_full": lambda: journal_append_rate(path("journal"), events),
            "journal_group": lambda: journal_append_rate(path("group"), events, batch=GROUP),
            "raw_normal": lambda: raw_commit_rate(path("raw"), events, size, "NORMAL"),
            "floor_normal": lambda: schema_floor_rate(path("floor"), events, "NORMAL"),
            "journal_normal": lambda: journal_append_rate(
                path("journal"), events, synchronous="NORMAL"
            ),
        }
        rate = interleaved(rounds, runs)
        journal_frames, raw_frames = frames_per_commit(directory, size)
        single = report.add(
            Row.measured(
                "journal append, FULL, 1 event/commit",
                rate["journal_full"],
                "events/s",
                rate["raw_full"],
                TARGET,
                note=f"reference: raw sqlite3 1-row INSERT commits of {size} B, WAL+FULL",
            )
        )
        report.add(
            Row.measured(
                "journal append vs its own SQL alone, FULL, 1 event/commit",
                rate["journal_full"],
                "events/s",
                rate["floor_full"],
                note="reference: bare sqlite3 committing the same event and orders rows into "
                "the journal's own schema with its own statements (no JSON, hashing or "
                "bookkeeping): the three B-trees a journal commit must write",
            )
        )
        report.add(
            Row.measured(
                "the journal's own SQL alone vs raw, FULL, 1 event/commit",
                rate["floor_full"],
                "events/s",
                rate["raw_full"],
                note="the ceiling of the first row: an append whose Python cost nothing would "
                "reach this ratio and no more",
            )
        )
        report.add(
            Row.measured(
                f"without {PER_ORDER_INDEX}: its own SQL vs raw, FULL",
                rate["lean_floor_full"],
                "events/s",
                rate["raw_full"],
                note="the ceiling if the journal gave up its per-order index: the event row "
                "and its projection row, which the design commits in one transaction",
            )
        )
        report.add(
            Row.measured(
                f"without {PER_ORDER_INDEX}: journal append vs raw, FULL",
                rate["lean_journal_full"],
                "events/s",
                rate["raw_full"],
                note="Journal.append on a journal rebuilt without the per-order index",
            )
        )
        report.add(
            Row.measured(
                f"journal append_many, FULL, {GROUP} events/commit",
                rate["journal_group"],
                "events/s",
                rate["raw_full"],
                note="group commit; reference: the same raw WAL+FULL 1-row commits",
            )
        )
        report.add(
            Row.measured(
                "journal append, NORMAL, 1 event/commit",
                rate["journal_normal"],
                "events/s",
                rate["raw_normal"],
                note="no fsync per commit, so this ratio is the CPU cost of an append; "
                f"reference: raw sqlite3 1-row INSERT commits of {size} B, WAL+NORMAL",
            )
        )
        report.notes.append(
            f"median of {rounds} interleaved rounds of {events} timed events each, after as "
            "many untimed; each event is a LIMIT_STEP_1 -> LIMIT_STEP_2 transition with its "
            "quote plus the order's projection row, in one transaction"
        )
        report.notes.append(
            f"WAL pages written per commit: journal {journal_frames:.1f}, raw {raw_frames:.1f}"
        )
        cpu = {name: 1e6 / rate[f"{name}_normal"] for name in ("raw", "floor", "journal")}
        report.notes.append(
            "microseconds per commit without fsync (NORMAL): raw insert "
            f"{cpu['raw']:.0f}, the journal's own SQL {cpu['floor']:.0f}, the journal "
            f"{cpu['journal']:.0f}; with FULL each adds the same fsync, so the FULL ratio is "
            "bounded by (fsync + raw) / (fsync + the journal's SQL)"
        )
        report.details |= {
            "wal_frames_per_commit": {"journal": journal_frames, "raw": raw_frames},
            "normal_commit_microseconds": cpu,
        }
        if single.status == "MISS":
            stats = profiled(lambda: journal_append_rate(path("profile"), events))
            top = top_self_time(stats, 12)
            report.details["profile_top_self_time"] = top
            report.notes += [
                f"profile (missed): {entry['self_share']:.0%} self time in {entry['function']}"
                for entry in top[:6]
            ]
    report.details["payload_bytes"] = size
    report.finish()


if __name__ == "__main__":
    main()
