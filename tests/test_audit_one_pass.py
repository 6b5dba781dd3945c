"""The audit's one pass over a journal: replay in seq order equals replaying each order from
its own query, the helper process that reads the rows (and checks the chain) changes no
verdict and no timeline, and the in-place fold equals the engine's `apply`."""

from __future__ import annotations

import sqlite3
import textwrap
import tracemalloc
from collections.abc import Iterator
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
from conftest import START

from engine import replay, verify
from engine.audit import OrderTimeline, ReplayRefused, feed, integrity, timeline
from engine.audit.fold import OrderFold
from engine.events import EventKind
from engine.order import OrderRecord
from journal import GENESIS_HASH, Journal, NewEvent, body_json, hash_body

SEED = 12


@pytest.fixture
def run(make_rig: Any) -> Any:
    """Two plans executed into one journal (orders walk concurrently, so events interleave)."""
    rig = make_rig(spec=audit_market().with_seed(SEED))
    run_audit_plan(rig)
    run_audit_plan(rig, plan_id="audit-2")
    rig.engine.close()
    return rig


@pytest.fixture(params=["own reads", "feed"])
def reads(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Audits reading the journal themselves, or through the helper process at any size."""
    if request.param == "feed":
        monkeypatch.setattr(feed, "worth_a_helper", lambda events: True)
    return str(request.param)


def created_order_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT order_id FROM events WHERE kind = 'created' ORDER BY seq")
        ids = [row[0] for row in rows]
    conn.close()
    return ids


def order_by_order(path: Path) -> Iterator[OrderTimeline]:
    """The replay as it was before the one pass: each order from its own indexed query."""
    for order_id in created_order_ids(path):
        yield from replay(path, order_id=order_id)


def finished_order(hand: HandJournal, order_id: str, seconds: float, symbol: str) -> None:
    """A buy of 1 share walked straight to market and VALIDATED: 12 events."""
    hand.create(order_id, seconds, symbol=symbol, side="buy", quantity="1")
    hand.write(order_id, seconds, EventKind.POSITION_READ, phase="before", qty="0",
               target_qty=None)  # fmt: skip
    quote = {"bid": "9.9", "ask": "10.1", "source": "stream", "quoted_at": "t", "estimated": None}
    hand.move(order_id, seconds, "quote", "QUOTED", quote=quote)
    hand.move(order_id, seconds, "escalate", "MARKET", quote=None)
    cid = f"wb-{order_id}-M-1"
    hand.submit(order_id, seconds, cid, "1", None, broker_id=f"b-{order_id}")
    hand.finish(order_id, seconds, f"b-{order_id}", cid, "1", "10", position="1")


def journal_behind_an_order_in_flight(path: Path, finished: int) -> None:
    """An order that never leaves PENDING, created first, then `finished` orders that end."""
    hand = HandJournal(path)
    hand.create("o1111111111111111", 0, symbol="STUCK", side="buy", quantity="1")
    for n in range(finished):
        finished_order(hand, f"o{n:016x}", n, f"S{n}")
    hand.close()


# -- replay ----------------------------------------------------------------------------


def test_one_pass_equals_the_order_by_order_replay(run: Any, reads: str) -> None:
    """Interleaved orders of two plans: the same timelines, records and entries, in order."""
    one_pass = list(replay(run.journal_path))
    assert [t.record.plan_id for t in one_pass].count("audit-2") == 5
    assert one_pass == list(order_by_order(run.journal_path))


def test_an_order_with_events_after_its_end_keeps_them(tmp_path: Path, reads: str) -> None:
    """A terminal state ends a timeline only where the order has no later event."""
    path = tmp_path / "late.db"
    hand = write_hand_journal(path)
    late = hand.write(A, 60, EventKind.POSITION_READ, phase="after", qty="10", expected="10")
    hand.close()
    timelines = list(replay(path))
    assert timelines[0].entries[-1].seq == late
    assert timelines == list(order_by_order(path))


def test_a_refused_order_raises_when_its_turn_comes(tmp_path: Path, reads: str) -> None:
    """Orders created before the refused one come out first, as order by order."""
    path = tmp_path / "refused.db"
    hand = write_hand_journal(path)
    seq = hand.move(B, 40, "quote", "QUOTED", quote=None)  # B is VALIDATED
    hand.close()
    for timelines in (replay(path), order_by_order(path)):
        assert next(timelines).record.order_id == A
        with pytest.raises(ReplayRefused, match="illegal transition") as refused:
            next(timelines)
        assert refused.value.seq == seq


def outcome(timelines: Iterator[OrderTimeline]) -> list[Any]:
    """The timelines a replay hands out, then what it raises, if anything."""
    seen: list[Any] = []
    try:
        seen.extend(timelines)
    except ReplayRefused as refused:
        seen.append((refused.seq, refused.problem))
    return seen


SWAPS = {
    # A's `created` after its next event: order by order reads them by order_seq
    "created after its next event": lambda path: (A, 0, A, 1),
    # two orders' events trade places
    "events of two orders": lambda path: (A, 3, B, 3),
    # the same order's events out of order, both of them moves
    "moves of one order": lambda path: (A, 2, A, 3),
}


@pytest.mark.parametrize("case", list(SWAPS))
def test_rows_out_of_seq_order_replay_as_order_by_order(
    tmp_path: Path, reads: str, case: str
) -> None:
    """Where seq order and order_seq order disagree, the one pass gives what each order's
    own indexed query gives: the same timelines, or the same refusal at the same seq."""
    path = tmp_path / "swapped.db"
    write_hand_journal(path).close()
    first, i, second, j = SWAPS[case](path)
    swap_rows(path, event_seqs(path, f"order_id = '{first}'")[i],
              event_seqs(path, f"order_id = '{second}'")[j])  # fmt: skip
    assert outcome(replay(path)) == outcome(order_by_order(path))


def test_events_without_a_created_event_are_not_replayed(tmp_path: Path, reads: str) -> None:
    """As order by order: an event of no known order belongs to no timeline."""
    path = tmp_path / "stray.db"
    hand = write_hand_journal(path)
    stray = NewEvent(EventKind.CANCEL_ACK, "o00000000000000ff", "hand", "PENDING", "PENDING",
                     {"broker_order_id": "b9"})  # fmt: skip
    hand.journal.append(stray, at=START)
    hand.close()
    assert [t.record.order_id for t in replay(path)] == [A, B, C]
    assert list(replay(path)) == list(order_by_order(path))


def peak_bytes_of_replay(path: Path) -> int:
    tracemalloc.start()
    try:
        for _ in replay(path):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_order_left_in_flight_holds_back_a_bounded_amount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later orders wait for an earlier one only up to HELD_ENTRIES_MAX entries: then it
    comes from its own query, and memory stays flat however long the journal goes on."""
    monkeypatch.setattr(timeline, "HELD_ENTRIES_MAX", 60)
    monkeypatch.setattr(feed, "ROWS_PER_FRAME", 16)  # rows are read a batch at a time
    small, large = tmp_path / "small.db", tmp_path / "large.db"
    journal_behind_an_order_in_flight(small, 20)
    journal_behind_an_order_in_flight(large, 160)
    timelines = list(replay(large))
    assert [t.record.state for t in timelines[:2]] == ["PENDING", "VALIDATED"]
    assert timelines == list(order_by_order(large))
    peak_bytes_of_replay(large)  # one-off costs of a first pass (caches) are not growth
    growth = peak_bytes_of_replay(large) - peak_bytes_of_replay(small)
    assert growth < 100_000, growth


# -- the feed ----------------------------------------------------------------------------


def stored_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT seq, order_id, order_seq, plan_id, at, kind, from_state, to_state, data "
            "FROM events ORDER BY seq"
        ).fetchall()
    conn.close()
    return rows


def fed_rows(path: Path, last_seq: int) -> tuple[list[tuple[Any, ...]], feed.Feed]:
    watch = feed.Watch(path)
    rows = feed.Feed(path, integrity._EVENTS_UP_TO, last_seq, chain=True, watch=watch)
    try:
        return [row for batch in rows.batches() for row in batch], rows
    finally:
        rows.stop()
        watch.close()


def test_only_a_large_journal_with_a_second_cpu_gets_a_helper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feed.os, "sched_getaffinity", lambda pid: {0, 1})
    assert feed.worth_a_helper(feed.FEED_MIN_EVENTS)
    assert not feed.worth_a_helper(feed.FEED_MIN_EVENTS - 1)
    monkeypatch.setattr(feed.os, "sched_getaffinity", lambda pid: {0})
    assert not feed.worth_a_helper(feed.FEED_MIN_EVENTS)


def test_a_feed_sends_every_row_without_its_hashes(hand: Path) -> None:
    stored = stored_rows(hand)
    rows, sent = fed_rows(hand, len(stored))
    assert rows == stored
    assert (sent.complete, sent.problem) == (True, None)


def test_a_feed_stops_at_the_first_break_of_the_chain(hand: Path) -> None:
    seq = 9
    tamper(hand, f"UPDATE events SET at = 'x' WHERE seq = {seq}")
    rows, sent = fed_rows(hand, len(stored_rows(hand)))
    assert [row[0] for row in rows] == list(range(1, seq))
    assert sent.problem == (seq, "hash does not match the row's contents")


def test_a_feed_reads_no_further_than_the_snapshot_it_was_given(hand: Path) -> None:
    rows, sent = fed_rows(hand, 5)
    assert [row[0] for row in rows] == [1, 2, 3, 4, 5]
    assert sent.complete


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    path = tmp_path / "hand.db"
    write_hand_journal(path).close()
    return path


BROKEN_HELPERS = {
    # a helper that cannot run at all
    "missing": "raise SystemExit(3)",
    # a helper that sends its first frame, then dies
    "dies": textwrap.dedent(
        """
        import io, sys
        from engine.audit import feed
        real, sys.stdout = sys.stdout, io.TextIOWrapper(io.BytesIO())
        feed.ROWS_PER_FRAME = 7
        feed.main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
        frames = sys.stdout.buffer.getvalue()
        size = int.from_bytes(frames[:4], "little")
        real.buffer.write(frames[: 4 + size])
        real.flush()
        raise SystemExit(1)
        """
    ),
    # a helper that writes something else
    "garbage": "import sys; sys.stdout.buffer.write(b'\\x05\\x00\\x00\\x00hello')",
}


@pytest.mark.parametrize("helper", list(BROKEN_HELPERS))
def test_a_broken_helper_changes_no_timeline_and_no_verdict(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper: str
) -> None:
    """Whatever the helper does, replay reads the rest itself and verify decides alone."""
    expected_timelines = list(replay(run.journal_path))
    expected_verdict = verify(run.journal_path)
    script = tmp_path / "helper.py"
    script.write_text(BROKEN_HELPERS[helper])
    monkeypatch.setattr(feed, "_SCRIPT", str(script))
    monkeypatch.setattr(feed, "worth_a_helper", lambda events: True)
    assert list(replay(run.journal_path)) == expected_timelines
    assert verify(run.journal_path) == expected_verdict


def test_the_file_changed_before_the_helpers_snapshot(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection committed before the helper took its snapshot: its rows may not
    be this snapshot's, so replay reads them itself and the one-process pass decides."""
    expected = list(replay(run.journal_path))
    monkeypatch.setattr(feed, "worth_a_helper", lambda events: True)
    monkeypatch.setattr(feed.Watch, "changed", lambda self: True)
    passes: list[bool] = []
    verifier = integrity._Verifier

    def spy(journal: Journal, fed: Any = None) -> Any:
        passes.append(fed is not None)
        return verifier(journal, fed)

    monkeypatch.setattr(integrity, "_Verifier", spy)
    result = verify(run.journal_path)
    assert result.ok, result.summary()
    assert passes == [True, False]
    assert list(replay(run.journal_path)) == expected


def test_a_watch_sees_another_connections_commit(run: Any) -> None:
    watch = feed.Watch(run.journal_path)
    assert not watch.changed()
    with Journal.open(run.journal_path) as journal:
        journal.append(NewEvent("note", None, "audit"), at=START)
    assert watch.changed()
    watch.close()


def test_verify_with_a_feed_checks_the_chain(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass over fed rows leaves the hashes to the helper, which catches an edited row."""
    monkeypatch.setattr(feed, "worth_a_helper", lambda events: True)
    seq = 20
    tamper(run.journal_path, f"UPDATE events SET at = 'x' WHERE seq = {seq}")
    result = verify(run.journal_path)
    assert (result.first_bad_seq, result.problem) == (seq, "hash does not match the row's contents")


def rehash_from(path: Path, seq: int) -> None:
    """Rebuild the hash chain from `seq` on, as someone who can write the file could."""
    tamper(path)
    with sqlite3.connect(path) as conn:
        prev = GENESIS_HASH
        if seq > 1:
            (prev,) = conn.execute("SELECT hash FROM events WHERE seq = ?", [seq - 1]).fetchone()
        rows = conn.execute(
            "SELECT seq, order_id, order_seq, plan_id, at, kind, from_state, to_state, data "
            "FROM events WHERE seq >= ? ORDER BY seq",
            [seq],
        ).fetchall()
        for row in rows:
            hash_ = hash_body(prev, body_json(*row, prev))
            conn.execute(
                "UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", [prev, hash_, row[0]]
            )
            prev = hash_
    conn.close()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("' ' || data", "whitespace around the value"),
        ("replace(data, '\"4\"', 'NaN')", "data is not canonical JSON: "),
    ],
    ids=["whitespace", "NaN"],
)
def test_verify_refuses_data_that_is_not_canonical(
    hand: Path, reads: str, data: str, problem: str
) -> None:
    """Rehashed, so the chain holds: the row's data is still not text walkbook writes."""
    seq = event_seqs(hand, "kind = 'fill'")[0]
    tamper(hand, f"UPDATE events SET data = {data} WHERE seq = {seq}")
    rehash_from(hand, seq)
    result = verify(hand)
    assert result.first_bad_seq == seq, result.summary()
    assert str(result.problem).startswith("data is not canonical JSON: ")
    assert problem in str(result.problem)


# -- the fold ----------------------------------------------------------------------------


def test_the_in_place_fold_equals_apply(run: Any) -> None:
    """Event by event, the audit's record (started without `__init__`, changed in place)
    equals the engine's (`created`, then `apply` on a copy)."""
    records: dict[str, OrderRecord] = {}
    folds: dict[str, OrderFold] = {}
    with Journal.open_readonly(run.journal_path) as journal:
        events = list(journal.events())
    for event in events:
        if event.order_id is None:
            continue
        row = (event.seq, event.order_id, event.order_seq, event.plan_id, event.at,
               event.kind, event.from_state, event.to_state)  # fmt: skip
        if event.kind == EventKind.CREATED:
            records[event.order_id] = OrderRecord.created(event, event.at, event.seq)
            folds[event.order_id] = OrderFold.start(row, event.data)
        else:
            before = records[event.order_id]
            records[event.order_id] = before.apply_event(event)
            folds[event.order_id].apply(row, event.data)
            assert before.last_seq < event.seq  # `apply` left the earlier record alone
        assert folds[event.order_id].record == records[event.order_id]
    assert len(records) == 10
