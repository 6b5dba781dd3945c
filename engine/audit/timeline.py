"""Replay: each order's timeline rebuilt from `events` alone, through its state machine.

The `orders` table is never read here; a replay is the evidence the projection is
checked against (see `verify`). The whole journal is replayed in one pass in seq order
(its rows read by a helper process for a large journal, see `feed`), a fold per order in
flight, and each order's timeline is handed out once its history is complete, in the
order the orders were created: exactly what folding the order's own indexed query gives,
which is where an order comes from when the pass cannot fold it (see `_OnePass`), and
how `--order` and `--plan` replay theirs. Memory holds the orders in flight and the
finished ones waiting for an earlier-created order, never the journal: an order that
holds back too much (one left in flight for good) comes from its query too.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import Any

import msgspec

from journal import Journal, decode_json
from journal.recorder import FOLD_FIELDS
from journal.sqlite import fold_stream_sql

from ..events import EventKind, Fill, Payload, Transition
from ..fsm import TERMINAL_STATES, OrderState
from ..numbers import decimal_text
from ..order import OrderRecord
from ..results import OrderResult
from . import feed
from .fold import OrderFold, ReplayRefused
from .source import EventRow, read_snapshot

__all__ = ["OrderTimeline", "TimelineEntry", "replay", "step_of"]

_CREATED, _FILL = EventKind.CREATED, EventKind.FILL
_CLIENT_ORDER_ID = re.compile(r"^wb-o[0-9a-f]+-(L[0-9]+|M)-[0-9]+$")


def step_of(client_order_id: str | None) -> str | None:
    """`L1`…`Ln` or `M` from a `wb-<order>-<step>-<attempt>` id; None for any other id."""
    match = _CLIENT_ORDER_ID.match(client_order_id or "")
    return match.group(1) if match else None


@dataclass(frozen=True)
class TimelineEntry:
    """One journaled event of an order, with the state, quote and limit in force after it.

    `quote` is the latest quote journaled by a transition of this order (the quote of
    the step in force; for a state entered without one, the one before), and
    `limit_price` the current limit step's price (None outside a limit step). What the
    event itself says is read from its typed `payload` when asked for: a replay builds
    one entry per event, and most are never read field by field.
    """

    seq: int
    at: str
    kind: str
    from_state: str | None
    state: str
    quote: dict[str, Any] | None
    limit_price: Decimal | None
    filled_qty: Decimal
    data: dict[str, Any]
    payload: Payload

    @property
    def trigger(self) -> str | None:
        payload = self.payload
        return payload.trigger if isinstance(payload, Transition) else None

    @property
    def reason(self) -> str | None:
        """The reason a failure, a refusal, a resize or a stop journaled."""
        reason: str | None = getattr(self.payload, "reason", None)
        return reason

    @property
    def client_order_id(self) -> str | None:
        client_order_id: str | None = getattr(self.payload, "client_order_id", None)
        return client_order_id

    @property
    def broker_order_id(self) -> str | None:
        broker_order_id: str | None = getattr(self.payload, "broker_order_id", None)
        return broker_order_id

    @property
    def fill_qty(self) -> Decimal | None:
        payload = self.payload
        return payload.qty if isinstance(payload, Fill) else None

    @property
    def fill_price(self) -> Decimal | None:
        payload = self.payload
        return payload.price if isinstance(payload, Fill) else None

    @property
    def fill_broker_at(self) -> str | None:
        """A fill's time at the broker (`at` is when the journal learned of it)."""
        payload = self.payload
        return payload.broker_at if isinstance(payload, Fill) else None

    @property
    def move_quote(self) -> dict[str, Any] | None:
        """The quote this very event journaled (a transition's), None for any other event."""
        move_quote: dict[str, Any] | None = getattr(self.payload, "quote", None)
        return move_quote

    @property
    def step(self) -> str | None:
        return step_of(self.client_order_id)

    def as_json(self) -> dict[str, Any]:
        """The entry's fields (the event's own quote is in `data` already)."""
        fields = {key: getattr(self, key) for key in _ENTRY_JSON_FIELDS}
        return {
            key: decimal_text(value) if isinstance(value, Decimal) else value
            for key, value in fields.items()
        }


# An entry's fields as `replay --json` prints them, in this order.
_ENTRY_JSON_FIELDS = (
    "seq", "at", "kind", "from_state", "state", "trigger", "reason", "quote",
    "limit_price", "client_order_id", "broker_order_id", "fill_qty", "fill_price",
    "fill_broker_at", "filled_qty", "data",
)  # fmt: skip


@dataclass(frozen=True)
class OrderTimeline:
    """Everything that happened to one order, in journal order, and the record it folds to."""

    record: OrderRecord
    entries: tuple[TimelineEntry, ...]

    def result(self) -> OrderResult:
        """The order's result exactly as the live engine reports it, from the replayed record."""
        return OrderResult.from_record(self.record)

    @property
    def arrival(self) -> TimelineEntry | None:
        """The move into QUOTED, whose quote is the arrival quote."""
        return next((e for e in self.entries if e.state == OrderState.QUOTED), None)

    @property
    def fills(self) -> list[TimelineEntry]:
        return [e for e in self.entries if e.kind == EventKind.FILL]

    def as_json(self) -> dict[str, Any]:
        return {
            "order": self.result().model_dump(mode="json"),
            "events": [entry.as_json() for entry in self.entries],
        }


def _entry(row: EventRow, data: dict[str, Any], fold: OrderFold) -> TimelineEntry:
    """The entry of an event just folded, filled in without the frozen `__init__`: a
    replay builds one per event of the journal (docs/benchmarks.md, "Speed tricks")."""
    record = fold.record
    entry = object.__new__(TimelineEntry)
    object.__setattr__(
        entry,
        "__dict__",
        {
            "seq": row[0],
            "at": row[4],
            "kind": row[5],
            "from_state": row[6],
            "state": record.state,
            "quote": fold.quote,
            "limit_price": record.step_limit_price,
            "filled_qty": record.filled_qty,
            "data": data,
            "payload": fold.payload,
        },
    )
    return entry


def _order_timeline(rows: Iterable[EventRow]) -> OrderTimeline:
    """Fold one order's events (in order, `created` first) into its timeline."""
    stream = iter(rows)
    created = next(stream)
    data = decode_json(created[8])
    fold = OrderFold.start(created, data)
    entries = [_entry(created, data, fold)]
    for row in stream:
        data = decode_json(row[8])
        fold.apply(row, data)
        entries.append(_entry(row, data, fold))
    return OrderTimeline(fold.record, tuple(entries))


class _Replaying:
    """An order of the one pass: its fold and entries so far, whether its history is
    complete (`done`), and whether it must come from its own query instead (`indexed`)."""

    __slots__ = ("done", "entries", "fold", "indexed", "order_id")

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.fold: OrderFold | None = None
        self.entries: list[TimelineEntry] = []
        self.done = False
        self.indexed = False


# The pass reads every event in seq order up to the seq the snapshot ends at (a feed's
# snapshot may end later) as `Recorder.fold_batches` gives it: without the hashes (a
# replay does not check them), and for a row leaving its order terminal, how many events
# of that order the snapshot holds beyond this row's order_seq. A fold that took order_seq
# 1, 2, ..., n in seq order, with none beyond n, holds exactly the events its indexed
# query reads.
_AFTER_IT = FOLD_FIELDS.index("events_after")
# A file journal's feed runs the SQLite recorder's own query in its helper.
_STREAM = fold_stream_sql(TERMINAL_STATES)
# `decode_json` without its call: the same msgspec decoding, with its fallback after it
_DECODE = msgspec.json.Decoder().decode
# Entries held (orders in flight and finished ones waiting for an earlier-created order)
# above which the oldest order still in flight is replayed from its own query instead.
HELD_ENTRIES_MAX = 20_000


class _OnePass:
    """The whole journal's timelines, in creation order, from one pass over its events.

    Each timeline equals the order's own indexed query folded: an order whose events the
    pass cannot take in order_seq order 1, 2, 3, ... (its fold refuses one: a bad event,
    or rows out of seq order), or whose history the pass did not bring whole, comes from
    that query, which gives the same result or raises the same `ReplayRefused`.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.queue: deque[_Replaying] = deque()  # not yet handed out, in creation order
        self.open: dict[str, _Replaying] = {}  # the same orders, while their history goes on
        self.last_seq = 0

    def batches(self) -> Iterator[Iterable[EventRow]]:
        """The pass's rows, a batch at a time: from a feed for a large journal file (see
        `feed`), and from the recorder for the rest (all of a small one, or of a journal
        in a database)."""
        recorder, path, after = self.journal.recorder, self.journal.path, 0
        watch = None if path is None else feed.Watch(path)
        try:
            # the snapshot's first read: from here on it sees no other commit
            tail = recorder.tail()
            if tail is None:
                return
            last_seq = self.last_seq = tail[0]
            if path is not None and watch is not None and feed.worth_a_helper(last_seq):
                rows = feed.Feed(path, _STREAM, last_seq, chain=False, watch=watch)
                try:
                    for batch in rows.batches():
                        if batch:
                            yield batch
                            after = batch[-1][0]
                finally:
                    rows.stop()
                if rows.complete:
                    return
        finally:
            if watch is not None:
                watch.close()
        yield from recorder.fold_batches(after, last_seq, TERMINAL_STATES)

    def timelines(self) -> Iterator[OrderTimeline]:
        """The one pass; its per-event work is inline, as it runs for every event."""
        open_orders, queue, start, entry_of = self.open, self.queue, OrderFold.start, _entry
        decode = _DECODE
        held = 0  # entries of the orders in the queue
        for row in chain.from_iterable(self.batches()):
            order_id = row[1]
            if order_id is None:
                continue
            order = open_orders.get(order_id)
            if order is None:
                if row[5] != _CREATED:
                    # no `created` before it: not an order a replay knows (as with the
                    # indexed query), or one whose timeline comes from that query
                    continue
                order = open_orders[order_id] = _Replaying(order_id)
                queue.append(order)
            try:
                try:
                    data = decode(row[8])
                except msgspec.DecodeError:
                    data = decode_json(row[8])  # what msgspec refuses, as every read does
                fold = order.fold
                if fold is None:
                    fold = order.fold = start(row, data)
                else:
                    fold.apply(row, data)
            except (ReplayRefused, ValueError):
                held -= len(order.entries)
                order.entries, order.indexed = [], True
                after_it = 0
            else:
                order.entries.append(entry_of(row, data, fold))
                held += 1
                after_it = row[_AFTER_IT]
            if after_it is not None:
                del open_orders[order_id]
                order.done, order.indexed = True, order.indexed or after_it != 0
                if order is queue[0]:
                    held = yield from self.ready(held)
            elif held > HELD_ENTRIES_MAX:
                held = yield from self.ready(held)
        count = self.journal.recorder.order_event_count
        for order in open_orders.values():
            # the journal's end ends every history; one the pass did not bring whole (an
            # event out of seq order) comes from its own query
            assert order.fold is not None
            events = count(order.order_id, self.last_seq)
            order.done, order.indexed = True, events != order.fold.order_seq
        yield from self.ready(held)

    def ready(self, held: int) -> Generator[OrderTimeline, None, int]:
        """Hand out the finished orders at the head of the queue; while more than
        HELD_ENTRIES_MAX entries are held, the oldest order in flight comes from its own
        query instead (one left in flight for good would hold back every later order).
        Returns the entries still held."""
        queue = self.queue
        while queue:
            order = queue[0]
            if not order.done and held <= HELD_ENTRIES_MAX:
                break
            queue.popleft()
            held -= len(order.entries)
            if order.done and not order.indexed:
                assert order.fold is not None
                yield OrderTimeline(order.fold.record, tuple(order.entries))
            else:
                self.open.pop(order.order_id, None)
                yield _order_timeline(self.journal.recorder.order_event_rows(order.order_id))
        return held


def replay(
    path: str | Path, order_id: str | None = None, plan_id: str | None = None
) -> Iterator[OrderTimeline]:
    """Every order's timeline (or one order's, or one plan's), in the order they were created.

    Reads a snapshot without the lock, so it is safe while another process writes.
    Raises `ReplayRefused` (a `JournalCorrupt`) at the first event its order's state
    machine does not allow, when that order's turn comes.
    """
    with read_snapshot(path) as journal:
        if order_id is None and plan_id is None:
            yield from _OnePass(journal).timelines()
            return
        recorder = journal.recorder
        created = recorder.order_ids_of_kind(_CREATED, order_id=order_id, plan_id=plan_id)
        for found in created:
            yield _order_timeline(recorder.order_event_rows(found))
