"""Audit from the journal alone: replay, verify, export, ledger, report and HTML, on real files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from audit_support import (
    A,
    B,
    C,
    HandJournal,
    audit_market,
    event_seqs,
    run_audit_plan,
    swap_rows,
    tamper,
    write_hand_journal,
)

from engine import export, export_ledger, replay, report, report_html, verify
from engine.audit import EVENT_COLUMNS, LEDGER_COLUMNS, ReplayRefused, feed
from engine.events import EventKind
from engine.numbers import decimal_text
from journal import (
    SCHEMA_VERSION,
    Event,
    Journal,
    JournalCorrupt,
    JournalError,
    JournalSchemaTooNew,
    JournalUnavailable,
    canonical_json,
    event_hash,
    first_chain_break,
)

SEED = 2  # a run that walks to LIMIT_STEP_3, goes to market and fails an order (KO)
DOC = Path(__file__).resolve().parent.parent / "docs" / "audit.md"


@pytest.fixture
def run(make_rig: Any) -> Any:
    """A rig that has executed the audit plan; its engine still holds the journal lock."""
    rig = make_rig(spec=audit_market().with_seed(SEED))
    rig.result = run_audit_plan(rig)
    return rig


@pytest.fixture
def closed_run(run: Any) -> Path:
    """The audit run's journal file with its writer closed, ready to tamper with."""
    run.engine.close()
    return Path(run.journal_path)


@pytest.fixture(params=["own reads", "feed"])
def reads(request: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay and verify reading the journal themselves, or through the helper process
    (`engine.audit.feed`) that large journals get, whatever the journal's size."""
    if request.param == "feed":
        monkeypatch.setattr(feed, "worth_a_helper", lambda events: True)


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    path = tmp_path / "hand.db"
    write_hand_journal(path).close()
    return path


def all_events(path: Path) -> list[Event]:
    with Journal.open_readonly(path) as journal:
        return list(journal.events())


# -- replay -------------------------------------------------------------------------


@pytest.mark.usefixtures("reads")
def test_replay_equals_the_live_plan_result(run: Any) -> None:
    """Each order replayed from events alone has the live result's state, fills, price, reason."""
    timelines = list(replay(run.journal_path))
    live = run.result.orders
    assert [t.record.order_id for t in timelines] == [o.order_id for o in live]
    for timeline, result in zip(timelines, live, strict=True):
        replayed = timeline.result()
        assert (replayed.state, replayed.filled_qty, replayed.avg_fill_price, replayed.reason) == (
            result.state,
            result.filled_qty,
            result.avg_fill_price,
            result.reason,
        )
        assert replayed == result
    # the run walked the ladder, went to market and failed an order: the replay saw it all
    states = {entry.state for t in timelines for entry in t.entries}
    assert {"LIMIT_STEP_3", "MARKET", "VALIDATED", "FAILED"} <= states


@pytest.mark.usefixtures("reads")
def test_replay_timeline_holds_every_event_with_its_facts(run: Any) -> None:
    """Every event of the order, in seq order, with quote, limit, broker ids and fills."""
    journal = run.journal
    for timeline in replay(run.journal_path):
        order_id = timeline.record.order_id
        stored = list(journal.events(order_id=order_id))
        assert [e.seq for e in timeline.entries] == [e.seq for e in stored]
        assert [e.kind for e in timeline.entries] == [e.kind for e in stored]
        for entry, event in zip(timeline.entries, stored, strict=True):
            assert entry.state == event.to_state
            if event.kind == EventKind.FILL:
                assert entry.fill_qty == Decimal(event.data["qty"])
                assert entry.fill_price == Decimal(event.data["price"])
                assert entry.broker_order_id == event.data["broker_order_id"]
            if event.kind == EventKind.TRANSITION and str(event.to_state).startswith("LIMIT_"):
                assert entry.limit_price == Decimal(event.data["limit_price"])
                assert entry.quote == event.data["quote"]
        assert timeline.entries[-1].filled_qty == timeline.record.filled_qty


def test_replay_filters_by_order_and_by_plan(run: Any) -> None:
    """--order gives that order; --plan gives only that plan's orders, in creation order."""
    second = run_audit_plan(run, plan_id="audit-2")
    assert [t.record.plan_id for t in replay(run.journal_path)].count("audit-2") == 5
    only_second = [t.record.order_id for t in replay(run.journal_path, plan_id="audit-2")]
    assert only_second == [o.order_id for o in second.orders]
    wanted = run.result.orders[2].order_id
    (one,) = replay(run.journal_path, order_id=wanted)
    assert one.record.order_id == wanted
    assert list(replay(run.journal_path, order_id="o0000000000000000")) == []


@pytest.mark.usefixtures("reads")
def test_replay_reads_one_snapshot_while_a_writer_appends(run: Any) -> None:
    """A replay started before a new plan is written never sees half of that plan."""
    timelines = replay(run.journal_path)
    first = next(timelines)
    run_audit_plan(run, plan_id="audit-late")
    rest = list(timelines)
    assert {t.record.plan_id for t in [first, *rest]} == {"audit"}
    assert len(list(replay(run.journal_path, plan_id="audit-late"))) == 5


@pytest.mark.usefixtures("reads")
def test_replay_refuses_an_illegal_transition(tmp_path: Path) -> None:
    """A hand-written journal whose rejected order jumps to VALIDATED does not replay."""
    hand = write_hand_journal(tmp_path / "bad.db")
    seq = hand.move(C, 40, "validate", "VALIDATED", position="3")
    hand.close()
    with pytest.raises(ReplayRefused, match="illegal transition") as refused:
        list(replay(tmp_path / "bad.db", order_id=C))
    assert refused.value.seq == seq


# -- verify -------------------------------------------------------------------------


@pytest.mark.usefixtures("reads")
def test_verify_passes_a_clean_journal_while_its_writer_holds_the_lock(run: Any) -> None:
    """Read-only and lock-free: the engine still owns the journal, verify reads it anyway."""
    result = verify(run.journal_path)
    assert result.ok, result.summary()
    assert result.events_checked == run.journal.last_seq
    assert result.orders_checked == len(run.result.orders)
    assert result.first_bad_seq is None
    assert "OK" in result.summary()


def middle_fill(path: Path) -> int:
    fills = event_seqs(path, "kind = 'fill'")
    return fills[len(fills) // 2]


TAMPERS: dict[str, Callable[[Path, int], None]] = {
    "edited": lambda path, seq: tamper(
        path, f"UPDATE events SET data = replace(data, '\"qty\"', '\"qtx\"') WHERE seq = {seq}"
    ),
    "deleted": lambda path, seq: tamper(path, f"DELETE FROM events WHERE seq = {seq}"),
    "reordered": lambda path, seq: swap_rows(path, seq, seq + 2),
}
PROBLEMS = {
    "edited": "hash does not match",
    "deleted": "is missing",
    "reordered": "prev_hash does not match",
}


@pytest.mark.parametrize("case", list(TAMPERS))
@pytest.mark.usefixtures("reads")
def test_verify_names_the_first_tampered_row(closed_run: Path, case: str) -> None:
    """An edited, deleted or swapped row is reported at its own seq."""
    seq = middle_fill(closed_run)
    TAMPERS[case](closed_run, seq)
    result = verify(closed_run)
    assert not result.ok
    assert result.first_bad_seq == seq, result.summary()
    assert PROBLEMS[case] in str(result.problem)
    assert result.events_checked == seq - 1


@pytest.mark.usefixtures("reads")
def test_verify_catches_an_edited_orders_row(closed_run: Path) -> None:
    """The projection must equal the replay: an edited filled_qty is found at its last_seq."""
    with sqlite3.connect(closed_run) as conn:
        order_id, last_seq = conn.execute(
            "SELECT order_id, last_seq FROM orders WHERE filled_qty != '0' LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE orders SET filled_qty = '999' WHERE order_id = ?", [order_id])
    conn.close()
    result = verify(closed_run)
    assert result.first_bad_seq == last_seq
    assert f"orders row of {order_id} differs" in str(result.problem)
    assert "filled_qty is '999'" in str(result.problem)


@pytest.mark.parametrize("moved", [0, -1], ids=["created-before", "created-after"])
@pytest.mark.usefixtures("reads")
def test_verify_catches_an_orders_row_naming_another_orders_event(
    closed_run: Path, moved: int
) -> None:
    """An orders row whose last_seq is another order's event is found at that seq."""
    with sqlite3.connect(closed_run) as conn:
        rows = conn.execute("SELECT order_id, last_seq FROM orders ORDER BY rowid").fetchall()
        (_, target_seq), (order_id, _) = rows[len(rows) // 2], rows[moved]
        conn.execute("UPDATE orders SET last_seq = ? WHERE order_id = ?", [target_seq, order_id])
    conn.close()
    result = verify(closed_run)
    assert result.first_bad_seq == target_seq, result.summary()
    assert f"orders row of {order_id}" in str(result.problem)


@pytest.mark.usefixtures("reads")
def test_verify_catches_a_deleted_last_event(closed_run: Path) -> None:
    """Cutting the tail leaves no seq gap, but the orders row still names the missing event."""
    last = event_seqs(closed_run, "1")[-1]
    tamper(closed_run, f"DELETE FROM events WHERE seq = {last}")
    result = verify(closed_run)
    assert result.first_bad_seq == last
    assert "events are missing" in str(result.problem)


def forge_illegal_transition(hand: HandJournal) -> int:
    return hand.move(C, 40, "validate", "VALIDATED", position="3")


def forge_overfill(hand: HandJournal) -> int:
    return hand.fill(A, 41, "b2", f"wb-{A}-L2-1", "1", "100.12")


def forge_wrong_from_state(hand: HandJournal) -> int:
    return hand.write(B, 40, EventKind.TRANSITION, "SETTLING", "LIMIT_STEP_1", trigger="settle")


FORGERIES = {
    "illegal transition": (forge_illegal_transition, "illegal transition FAILED -> VALIDATED"),
    "fills beyond the quantity": (forge_overfill, "more than its quantity 10"),
    "wrong from_state": (forge_wrong_from_state, "starts from LIMIT_STEP_1 but the order is"),
}


@pytest.mark.parametrize("case", list(FORGERIES))
@pytest.mark.usefixtures("reads")
def test_verify_rejects_a_rehashed_forgery(tmp_path: Path, case: str) -> None:
    """Rows with a valid hash chain that the engine could never have written."""
    path = tmp_path / "forged.db"
    hand = write_hand_journal(path)
    assert verify(path).ok
    forge, problem = FORGERIES[case]
    seq = forge(hand)
    hand.close()
    result = verify(path)
    assert result.first_bad_seq == seq, result.summary()
    assert problem in str(result.problem)


def truncated(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def not_a_journal(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE trades (id INTEGER)")
    conn.close()


def newer_schema(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)]
        )
    conn.close()


AUDITS: dict[str, Callable[[Path], Any]] = {
    "verify": verify,
    "replay": lambda path: list(replay(path)),
    "report": report,
    "export": lambda path: export(path, "jsonl", out=io.StringIO()),
}
BROKEN_FILES = {
    "truncated": (truncated, JournalCorrupt),
    "not a journal": (not_a_journal, JournalCorrupt),
    "text file": (lambda path: path.write_text("seq,kind\n1,created\n"), JournalCorrupt),
    "newer schema": (newer_schema, JournalSchemaTooNew),
    "missing": (lambda path: path.unlink(), JournalUnavailable),
}


@pytest.mark.parametrize("audit", list(AUDITS))
@pytest.mark.parametrize("case", list(BROKEN_FILES))
@pytest.mark.usefixtures("reads")
def test_unreadable_files_raise_typed_journal_errors(
    closed_run: Path, case: str, audit: str
) -> None:
    """Truncated, foreign, newer or missing files: the journal's own errors, no traceback."""
    damage, error = BROKEN_FILES[case]
    damage(closed_run)
    with pytest.raises(error) as raised:
        AUDITS[audit](closed_run)
    assert isinstance(raised.value, JournalError)
    assert raised.value.message
    assert "\n" not in raised.value.message


@pytest.mark.usefixtures("reads")
def test_damage_inside_the_file_names_the_last_readable_seq(tmp_path: Path) -> None:
    """Garbage over pages in the middle: verify checks up to there, then a typed error."""
    path = tmp_path / "damaged.db"
    busy_order_journal(path, 300)
    with path.open("r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        handle.write(b"\xff" * 8192)
    with pytest.raises(JournalCorrupt, match=r"damaged or truncated after seq [0-9]+") as raised:
        verify(path)
    assert 1 < raised.value.fields["seq"] < 300


# -- export -------------------------------------------------------------------------


def test_jsonl_export_round_trips_to_the_same_events_and_hashes(run: Any) -> None:
    """Every line is a stored row: back into Events it equals the journal, and re-hashes."""
    out = io.StringIO()
    count = export(run.journal_path, "jsonl", out=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(rows) == run.journal.last_seq
    assert all(list(row) == list(EVENT_COLUMNS) for row in rows)
    assert [Event(**row) for row in rows] == all_events(run.journal_path)
    assert all(event_hash(row) == row["hash"] for row in rows)
    assert first_chain_break(rows) is None


def test_csv_export_has_stable_columns_and_canonical_data(run: Any) -> None:
    """The CSV header is EVENT_COLUMNS; data is the stored canonical JSON; hashes match."""
    out = io.StringIO()
    export(run.journal_path, "csv", out=out)
    reader = csv.DictReader(io.StringIO(out.getvalue()))
    assert tuple(reader.fieldnames or ()) == EVENT_COLUMNS
    rows = list(reader)
    events = all_events(run.journal_path)
    assert [r["hash"] for r in rows] == [e.hash for e in events]
    assert [r["data"] for r in rows] == [canonical_json(e.data) for e in events]
    first = {**rows[0], "seq": 1, "order_seq": 1, "from_state": None}
    assert event_hash(first) == events[0].hash


def test_export_refuses_an_unknown_format(hand: Path) -> None:
    """A typo'd format is an error, not an empty export."""
    out = io.StringIO()
    with pytest.raises(ValueError, match="unknown export format 'xml'"):
        export(hand, "xml", out=out)  # type: ignore[arg-type]
    assert out.getvalue() == ""


def expected_ledger(path: Path) -> list[dict[str, Any]]:
    """Each journaled fill with the quote the order's latest transition carried."""
    intents: dict[str, dict[str, Any]] = {}
    quotes: dict[str, dict[str, Any]] = {}
    rows = []
    for event in all_events(path):
        order_id = str(event.order_id)
        if event.kind == EventKind.CREATED:
            intents[order_id] = event.data["intent"]
        if event.kind == EventKind.TRANSITION and event.data.get("quote"):
            quotes[order_id] = event.data["quote"]
        if event.kind == EventKind.FILL:
            intent, quote = intents[order_id], quotes[order_id]
            qty, price = Decimal(event.data["qty"]), Decimal(event.data["price"])
            rows.append({
                "seq": event.seq, "at": event.at, "broker_at": event.data.get("broker_at"),
                "order_id": order_id, "plan_id": event.plan_id,
                "correlation_id": intent["correlation_id"],
                "strategy_id": intent["strategy_id"], "strategy_weight": "1",
                "symbol": intent["symbol"], "side": intent["side"],
                "qty": event.data["qty"], "price": event.data["price"],
                "notional": decimal_text(qty * price),
                "bid": quote["bid"], "ask": quote["ask"],
                "step": event.data["client_order_id"].split("-")[2],
                "client_order_id": event.data["client_order_id"],
                "broker_order_id": event.data["broker_order_id"],
            })  # fmt: skip
    return rows


def test_ledger_rows_equal_the_journaled_fills(run: Any) -> None:
    """One row per fill event, with the step's bid/ask, symbol, side and strategy."""
    out = io.StringIO()
    count = export_ledger(run.journal_path, "jsonl", out=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(list(row) == list(LEDGER_COLUMNS) for row in rows)
    expected = expected_ledger(run.journal_path)
    assert count == len(expected) > 0
    assert sorted(rows, key=lambda r: r["seq"]) == expected


def test_ledger_of_the_hand_journal(hand: Path) -> None:
    """The three hand-written fills, as CSV, with the bid/ask of the step in force."""
    out = io.StringIO()
    export_ledger(hand, "csv", out=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    picked = [
        (r["order_id"], r["symbol"], r["side"], r["qty"], r["price"], r["bid"], r["ask"], r["step"])
        for r in rows
    ]
    assert picked == [
        (A, "XYZ", "buy", "4", "100.05", "99.9", "100.1", "L1"),
        (A, "XYZ", "buy", "6", "100.12", "99.95", "100.15", "L2"),
        (B, "ABC", "sell", "5", "49.4", "49", "50", "M"),
    ]


# -- report -------------------------------------------------------------------------


def test_report_numbers_match_the_hand_computed_fills(hand: Path) -> None:
    """Arrival mid, average fill, signed slippage, steps and time to fill, by hand."""
    result = report(hand)
    a, b, c = result.orders
    assert a.result.arrival_mid == Decimal("100")
    assert a.result.avg_fill_price == Decimal("100.092")  # (4*100.05 + 6*100.12) / 10
    assert a.result.slippage_bps == Decimal("9.20")  # buy above the mid: worse, positive
    assert (a.result.steps_used, a.time_to_fill_seconds) == (2, 13.0)
    assert a.filled_by_step == {"L1": Decimal(4), "L2": Decimal(6)}
    assert b.result.arrival_mid == Decimal("49.5")
    assert b.result.slippage_bps == Decimal("20.20")  # sell below the mid: worse, positive
    assert (b.result.steps_used, b.time_to_fill_seconds, b.escalated) == (1, 1.0, True)
    assert (c.result.state, c.result.reason, c.time_to_fill_seconds) == (
        "FAILED",
        "insufficient_funds",
        None,
    )
    assert not a.escalated
    # by traded value, in test_report_html
    assert result.filled_by_step == {"L1": Decimal(4), "L2": Decimal(6), "M": Decimal(5)}
    assert (result.escalated_orders, result.quoted_orders) == (1, 3)
    assert result.escalated_share == Decimal("0.3333")
    assert result.quote_sources == {"stream": 3, "rest": 1, "estimated_bid": 1, "estimated_ask": 0}
    (plan,) = result.plans
    assert (plan.plan_id, plan.status) == ("hand", "PARTIAL_SUCCESS")
    assert plan.result.traded_value == Decimal("1247.92")  # 10*100.092 + 5*49.4
    assert plan.result.slippage_bps == Decimal("11.38")  # (9.20*1000.92 + 20.20*247) / 1247.92


def test_report_of_a_run_agrees_with_the_plan_result(run: Any) -> None:
    """A report read the morning after gives the run's own traded value and slippage."""
    (plan,) = report(run.journal_path).plans
    assert plan.result.traded_value == run.result.traded_value
    assert plan.result.slippage_bps == run.result.slippage_bps
    assert plan.status == run.result.status


class StrictHTML(HTMLParser):
    """Collects tags and fails on any element closed out of order."""

    VOID = frozenset({"meta", "br"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.started: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.started.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.started.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack.pop() == tag, f"</{tag}> closes out of order"


def test_html_report_is_self_contained_with_one_chart_per_order(run: Any, tmp_path: Path) -> None:
    """It parses, every element closes in order, one SVG per order, no URL and no script."""
    out = tmp_path / "report.html"
    returned = report_html(run.journal_path, out)
    page = out.read_text(encoding="utf-8")
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    tags = [tag for tag, _ in parser.started]
    order_ids = [o.order_id for o in run.result.orders]
    assert tags.count("svg") == len(order_ids) == len(returned.orders)
    figures = [attrs["id"] for tag, attrs in parser.started if tag == "figure"]
    assert figures == order_ids
    assert "http://" not in page
    assert "https://" not in page
    assert "script" not in tags
    # each walked order's chart draws its fills and its limit steps
    assert tags.count("circle") == len(expected_ledger(run.journal_path))
    limits = [e for t in replay(run.journal_path) for e in t.entries if e.limit_price is not None]
    steps = {(e.seq, e.state) for e in limits if e.kind == EventKind.TRANSITION}
    assert len(re.findall(r"<title>L[0-9]+ limit ", page)) == len(steps) > 0


# -- scale --------------------------------------------------------------------------


def busy_order_journal(path: Path, fills: int) -> None:
    """One order that fills one share at a time: `fills` + a few events, few orders."""
    hand = HandJournal(path)
    hand.create(A, 0, symbol="XYZ", side="buy", quantity=str(fills))
    hand.write(A, 0, EventKind.POSITION_READ, phase="before", qty="0", target_qty=None)
    quote = {"bid": "99.9", "ask": "100.1", "source": "stream", "quoted_at": "t", "estimated": None}
    hand.move(A, 1, "quote", "QUOTED", quote=quote)
    hand.move(A, 1, "escalate", "MARKET", quote=None)
    cid = f"wb-{A}-M-1"
    hand.submit(A, 1, cid, str(fills), None, broker_id="b1")
    for n in range(1, fills + 1):
        hand.write(A, 2, EventKind.FILL, broker_order_id="b1", client_order_id=cid, qty="1",
                   price="100", cum_qty=str(n), cum_avg_price="100")  # fmt: skip
    hand.close()


def peak_bytes(audit: Callable[[Path], Any], path: Path) -> int:
    tracemalloc.start()
    try:
        audit(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_verify_and_export_memory_stays_flat_as_events_grow(tmp_path: Path) -> None:
    """8x the events, about the same peak: nothing holds the event list."""
    small, large = tmp_path / "small.db", tmp_path / "large.db"
    busy_order_journal(small, 250)
    busy_order_journal(large, 2000)
    assert verify(large).ok
    with open(os.devnull, "w") as sink:
        audits: list[Callable[[Path], Any]] = [verify, lambda p: export(p, "jsonl", out=sink)]
        for audit in audits:
            audit(large)  # one-off costs of a first pass (caches, free lists) are not growth
            growth = peak_bytes(audit, large) - peak_bytes(audit, small)
            assert growth < 50_000, growth


# -- docs ---------------------------------------------------------------------------


def test_the_audit_doc_example_runs(make_rig: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """docs/audit.md's Python example runs on a real journal and writes the ledger."""
    rig = make_rig(spec=audit_market().with_seed(SEED))
    run_audit_plan(rig, plan_id="rebalance-2026-11-23")
    rig.engine.close()
    work = tmp_path / "doc"
    work.mkdir()
    shutil.copy(rig.journal_path, work / "journal.db")
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    monkeypatch.chdir(work)
    exec(compile(code, str(DOC), "exec"), {})
    ledger = list(csv.DictReader((work / "ledger.csv").open()))
    assert len(ledger) == len(expected_ledger(work / "journal.db")) > 0


def test_importing_engine_leaves_the_audit_until_it_is_used() -> None:
    """`import engine` (all a resume or a trading run needs) does not import the audit; its
    functions are still `engine`'s names, the audit's own functions once asked for."""
    probe = (
        "import sys, engine\n"
        "print('engine.audit' in sys.modules)\n"
        "names = ('export', 'export_ledger', 'replay', 'report', 'report_html', 'verify')\n"
        "found = [getattr(engine, name) for name in names]\n"
        "import engine.audit as audit\n"
        "print(found == [getattr(audit, name) for name in names])\n"
        "print(hasattr(engine, 'no_such_name'))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False", "True", "False"]
