"""The benchmarks run end to end in --quick mode and report the rows they promise.

Speed lives in `make bench`, never here: these tests only check that every script runs,
exits 0 and writes positive figures (or a SKIP with its reason), so a benchmark cannot
rot unnoticed between runs.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from bench_support import QuickBench

from bench.journal_append import drop_per_order_index
from bench.workload import TransitionWriter

SHARES = (
    "journal/ (sqlite3 included)",
    "sqlite3 C calls (part of journal/)",
    "FSM: transitions/ + engine/fsm.py",
    "simulator: engine/brokers/sim/",
    "other (walk, quotes, asyncio, ...)",
)
EXPECTED_ROWS = {
    "journal_append": [
        "journal append, FULL, 1 event/commit",
        "journal append vs its own SQL alone, FULL, 1 event/commit",
        "the journal's own SQL alone vs raw, FULL, 1 event/commit",
        "without UNIQUE (order_id, order_seq): its own SQL vs raw, FULL",
        "without UNIQUE (order_id, order_seq): journal append vs raw, FULL",
        "journal append_many, FULL, 50 events/commit",
        "journal append, NORMAL, 1 event/commit",
    ],
    "dbos_peer": ["walk, durable steps per second"],
    "postgres_append": [
        "postgres journal append, 1 writer",
        "postgres journal append, 8 writers",
        "walk, durable steps per second, PostgreSQL",
    ],
    "resume": [
        "resume 200 in-flight orders: start to all re-armed",
        "resume 200 in-flight orders: peak RSS",
    ],
    "replay": [
        "verify, 20,000 events",
        "replay, 20,000 events",
        "verify peak RSS, 20,000 vs 5,000 events",
        "replay peak RSS, 20,000 vs 5,000 events",
    ],
    "engine": ["20 orders through complete walks", *(f"time share: {s}" for s in SHARES)],
    "quality": [
        "walkbook defaults: mean slippage",
        "original ladder, 1 quote: mean slippage",
        "walkbook defaults: orders VALIDATED",
        *(
            f"walkbook defaults vs {other}: {figure} slippage advantage"
            for other in ("original ladder, 1 quote", "market order at once")
            for figure in ("mean", "p95")
        ),
    ],
    "rest_budget": [
        "12-order plan, REST calls per order, trade_updates live",
        "orders a minute at 200 REST calls a minute, vs the seed",
        "orders a minute at 200 REST calls a minute, vs one call an order",
    ],
    "scale": ["time per order, 100 vs 10 orders", "memory per order, 100 vs 10 orders"],
    "takeover": ["takeover: owner SIGKILL to standby's first broker call"],
}
# DBOS is an optional extra (`.[bench]`): without it those rows are a SKIP with its reason.
MAY_SKIP = {"walk, durable steps per second", "walk, durable steps per second, PostgreSQL"}
# a difference between two policies' figures, which a quick run's few orders may leave at
# or below zero
SIGNED = {name for name in EXPECTED_ROWS["quality"] if name.endswith("advantage")}


@pytest.fixture(scope="module")
def results(quick_bench: QuickBench) -> dict[str, dict[str, Any]]:
    """The session's one `python -m bench.run_all --quick` run (started in the background by
    conftest), each script's JSON by script name."""
    return quick_bench.results()


def test_run_all_runs_every_script_once(results: dict[str, dict[str, Any]]) -> None:
    assert sorted(results) == sorted(EXPECTED_ROWS)
    assert all(result["exit"] == 0 for result in results.values())


@pytest.mark.parametrize("script", sorted(EXPECTED_ROWS))
def test_script_reports_its_rows_with_positive_figures(
    results: dict[str, dict[str, Any]], script: str
) -> None:
    result = results[script]
    rows = result["rows"]
    assert [row["name"] for row in rows] == EXPECTED_ROWS[script]
    assert result["quick"] is True
    assert result["peak_rss_mb"] > 0
    for row in rows:
        if row["status"] == "SKIP":
            assert row["name"] in MAY_SKIP
            assert row["note"], "a SKIP says why"
            assert row["value"] is None
            continue
        assert row["status"] in {"PASS", "MISS", "INFO"}
        assert math.isfinite(row["value"]) if row["name"] in SIGNED else row["value"] > 0, row
        if row["reference"] is not None:
            assert row["reference"] > 0, row
            assert row["ratio"] == pytest.approx(row["value"] / row["reference"])
        assert (row["target"] == "—") == (row["status"] == "INFO"), row


def test_dropping_the_per_order_index_keeps_the_rows_and_the_append_only_triggers(
    tmp_path: Path,
) -> None:
    """The journal_append rows `without UNIQUE (order_id, order_seq)` measure a journal
    that differs from the real one in that index alone."""
    with TransitionWriter(tmp_path / "journal.db") as writer:
        writer.commit(0)
        conn = writer.journal.conn
        before = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
        assert conn.execute("SELECT count(*) FROM pragma_index_list('events')").fetchone()[0]
        drop_per_order_index(conn)
        assert conn.execute("SELECT * FROM events ORDER BY seq").fetchall() == before
        assert not conn.execute("SELECT count(*) FROM pragma_index_list('events')").fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events")
        writer.commit(1)
        assert writer.journal.verify_chain() is None
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(before) + 1
