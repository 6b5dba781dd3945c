"""Whether a journal can be trusted before a writer acts on it.

`run` and `resume` act on what the journal says is live. A journal that was edited
(triggers dropped, rows rewritten or removed) must be refused, never appended to: an
append would chain new events onto a forged history and hide it. The check costs
the tail since the last check this journal recorded, not the whole chain, so a resume
of a large journal stays quick; `walkbook journal verify` checks everything.
"""

from __future__ import annotations

from collections.abc import Collection
from itertools import islice
from typing import Any

from .chain import GENESIS_HASH, chain_links
from .errors import JournalCorrupt
from .store import Journal

__all__ = ["check_before_acting", "in_flight_rows", "recorded_check", "trusted_end"]

CHECKED_SEQ_KEY, CHECKED_HASH_KEY = "checked_seq", "checked_hash"
_BATCH = 1024


def recorded_check(journal: Journal) -> tuple[int, str]:
    """The seq and hash of the last event a check found whole (0 and the genesis hash when
    none was recorded)."""
    meta = journal.recorder.meta([CHECKED_SEQ_KEY, CHECKED_HASH_KEY])
    if CHECKED_SEQ_KEY not in meta:
        return 0, GENESIS_HASH
    return int(meta[CHECKED_SEQ_KEY]), str(meta[CHECKED_HASH_KEY])


def trusted_end(journal: Journal) -> tuple[int, str]:
    """Refuse (JournalCorrupt, naming the first bad seq) a journal whose append-only
    triggers are gone, whose checked prefix changed or shrank, or whose chain breaks after
    it; else the seq and hash of its last event. Reads only: a reader that would declare
    the journal's work done (a resume with nothing in flight) checks this much too."""
    missing = journal.recorder.missing_guards()
    if missing:
        raise JournalCorrupt(
            f"{journal.location}: append-only trigger(s) {', '.join(missing)} are missing or "
            "altered: the journal may have been edited; refusing to act on it (walkbook "
            "journal verify)",
            missing_triggers=missing,
        )
    checked_seq, checked_hash = recorded_check(journal)
    if checked_seq:
        stored = journal.recorder.hash_at(checked_seq)
        if stored != checked_hash:
            raise JournalCorrupt(
                f"{journal.location}: event {checked_seq}, checked before, is "
                + ("gone" if stored is None else "changed")
                + ": events were removed or rewritten; refusing to act on it",
                seq=checked_seq,
            )
    return _check_tail(journal, checked_seq, checked_hash)


def check_before_acting(journal: Journal) -> None:
    """`trusted_end`, then record the new end as checked."""
    last_seq, last_hash = trusted_end(journal)
    if last_seq != recorded_check(journal)[0]:
        _record(journal, last_seq, last_hash)


def in_flight_rows(journal: Journal, ends: Collection[str]) -> dict[str, dict[str, Any]]:
    """The `orders` rows of orders not in one of `ends`, by order_id, once the hash-chained
    events agree on which orders those are. The rows are a projection anyone can edit: a
    row marked finished while its order is live would let a run or resume walk away from
    it, so a disagreement is refused (JournalCorrupt, naming the order)."""
    rows = {row["order_id"]: row for row in journal.orders(unless_state=ends)}
    unfinished = journal.recorder.unfinished_order_ids(ends)
    if rows.keys() != unfinished:
        order_id = min(rows.keys() ^ unfinished)
        said = "finished" if order_id in unfinished else "in flight"
        raise JournalCorrupt(
            f"{journal.location}: the orders row of {order_id} says it is {said} and its "
            "events say otherwise: the journal was edited; refusing to act on it (walkbook "
            "journal verify)",
            order_id=order_id,
        )
    return rows


def _check_tail(journal: Journal, checked_seq: int, checked_hash: str) -> tuple[int, str]:
    """Chain the events after `checked_seq` onto `checked_hash`; the last seq and hash."""
    events = journal.recorder.event_rows(after_seq=checked_seq)
    expected_seq, expected_prev = checked_seq + 1, checked_hash
    while rows := list(islice(events, _BATCH)):
        linked, problem = chain_links(rows, expected_seq, expected_prev)
        if problem is not None:
            seq, what = problem
            raise JournalCorrupt(
                f"{journal.location}: the hash chain breaks at seq {seq} ({what}); refusing to "
                "act on it (walkbook journal verify)",
                seq=seq,
            )
        expected_seq, expected_prev = rows[-1][0] + 1, rows[-1][10]
        assert linked == len(rows)
    return expected_seq - 1, expected_prev


def _record(journal: Journal, seq: int, hash_: str) -> None:
    """Both keys in one transaction: a check is recorded whole or not at all."""
    journal.recorder.set_meta({CHECKED_SEQ_KEY: str(seq), CHECKED_HASH_KEY: hash_})
