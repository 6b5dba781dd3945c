"""A helper process that reads a journal's events for an audit, so the audit's own process
only folds them; and the hash chain's row checks, which that helper can run as it reads.

Reading rows through `sqlite3` is a large share of an audit's time, and decoding them from
msgpack a fraction of that (docs/benchmarks.md, "Speed tricks"). For a large journal
`replay` and `verify` start a `Feed`: a second process (this module run as a script, so it
imports `journal` and the standard library, never `engine`) reads the rows of its own
read-only snapshot, bounded to `seq <= last_seq` (where the audit's snapshot ends), checks
their chain if asked (then it ships them without the hashes), and writes them to a pipe in
msgpack frames, the last of which says how many rows it sent and the first chain problem,
if any.

The two snapshots are the same commit when no other connection committed between the
audit's first read and the helper's (`Watch`, made before the former and asked once the
helper's first rows arrive); otherwise the feed sends nothing. A feed that stops early
(the file changed, or a helper could not start, died or wrote nonsense) is not an error:
`batches` ends where the good rows end, `complete` says whether they all came, and the
audit reads the rest itself.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from journal import GENESIS_HASH, chain_links
from journal.store import readonly_uri

__all__ = ["FEED_MIN_EVENTS", "Feed", "Watch", "worth_a_helper"]

# Below this many events, starting the helper (about 0.2 s) costs more than it saves.
FEED_MIN_EVENTS = 50_000
ROWS_PER_FRAME = 1024
_LENGTH = struct.Struct("<I")
_SCRIPT = str(Path(__file__).resolve())
# The stored columns a chain check needs, in this order, at the start of each row.
_HASHED = ("seq", "order_id", "order_seq", "plan_id", "at", "kind", "from_state", "to_state",
           "data", "prev_hash", "hash")  # fmt: skip
_DATA, _PREV_HASH, _HASH = map(_HASHED.index, ("data", "prev_hash", "hash"))
_SPACED = "data is not canonical JSON: whitespace around the value"

Row = tuple[Any, ...]


def worth_a_helper(events: int) -> bool:
    """A feed pays for a journal of `FEED_MIN_EVENTS` events or more, when this process
    may run on a second CPU beside its helper (on one, the two would only take turns)."""
    cpus = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    return events >= FEED_MIN_EVENTS and len(cpus) > 1


def _first_spaced(rows: list[Row]) -> int | None:
    """The index of the first row whose `data` has whitespace around it, which
    `journal.decode_canonical` refuses: the part of that check a plain decode of the
    shipped text does not make. (`strip` drops exactly what `isspace` calls whitespace.)"""
    return next(
        (index for index, row in enumerate(rows) if len(row[_DATA].strip()) != len(row[_DATA])),
        None,
    )


class Watch:
    """Whether another connection committed to the file since this was made (`PRAGMA
    data_version`, on a connection of its own, opened as the journal's readers are)."""

    def __init__(self, path: str | Path) -> None:
        self.conn = sqlite3.connect(readonly_uri(path), uri=True)
        self.version = self.data_version()

    def data_version(self) -> int:
        version: int = self.conn.execute("PRAGMA data_version").fetchone()[0]
        return version

    def changed(self) -> bool:
        return self.data_version() != self.version

    def close(self) -> None:
        self.conn.close()


class Feed:
    """The rows of `sql` (named parameters `after` = 0 and `last_seq`), read by a helper
    process. With `chain`, the columns of `sql` are `_HASHED`: the helper checks the hash
    chain of those rows and that no `data` has whitespace around it, and ships each row
    without its two hash columns (decoding `data` is then all `decode_canonical` has left
    to check). `watch` was made before the audit's snapshot took its first read."""

    def __init__(
        self, path: str | Path, sql: str, last_seq: int, *, chain: bool, watch: Watch
    ) -> None:
        self.watch = watch
        self.complete = False  # every row came, and the helper said so
        self.problem: tuple[int, str] | None = None  # the chain's first, with `chain`
        command = [sys.executable, "-P", _SCRIPT, str(path), sql, str(last_seq), str(int(chain))]
        try:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        except OSError:
            self.process = None

    def batches(self) -> Iterator[list[Row]]:
        """The rows, in order and a frame at a time, as long as the helper sends good ones
        of the audit's own snapshot."""
        if self.process is None or self.process.stdout is None:
            return
        decoder = msgspec.msgpack.Decoder(list[tuple[Any, ...]] | dict[str, Any])
        sent = 0
        for frame in _frames(self.process.stdout):
            try:
                batch = decoder.decode(frame)
            except msgspec.DecodeError:
                return
            if isinstance(batch, dict):
                problem = batch.get("problem")
                self.problem = None if problem is None else (problem[0], problem[1])
                self.complete = batch.get("rows") == sent
                return
            # the helper's snapshot is taken by now: the same commit as the audit's?
            if not sent and self.watch.changed():
                return
            yield batch
            sent += len(batch)

    def stop(self) -> None:
        """End the helper, whether it finished or not."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _frames(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        head = stream.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        (size,) = _LENGTH.unpack(head)
        frame = stream.read(size)
        if len(frame) < size:
            return
        yield frame


def _write_frame(out: IO[bytes], payload: bytes) -> None:
    out.write(_LENGTH.pack(len(payload)))
    out.write(payload)


def main(path: str, sql: str, last_seq: int, chain: bool) -> None:
    """The helper: one read-only snapshot, its rows up to `last_seq` in frames, then the
    count (and with `chain`, the first problem of the chain, after which it stops)."""
    conn = sqlite3.connect(readonly_uri(path), uri=True, isolation_level=None)
    conn.execute("BEGIN")
    out, encode = sys.stdout.buffer, msgspec.msgpack.Encoder().encode
    cursor = conn.execute(sql, {"after": 0, "last_seq": last_seq})
    expected_prev, expected_seq, sent = GENESIS_HASH, 1, 0
    problem = None
    while problem is None and (batch := cursor.fetchmany(ROWS_PER_FRAME)):
        if chain:
            links, problem = chain_links(batch, expected_seq, expected_prev)
            spaced = _first_spaced(batch[:links])
            if spaced is not None:
                links, problem = spaced, (batch[spaced][0], _SPACED)
            if links:
                expected_prev, expected_seq = batch[links - 1][_HASH], batch[links - 1][0] + 1
            batch = [row[:_PREV_HASH] for row in batch[:links]]
        _write_frame(out, encode(batch))
        sent += len(batch)
    if chain and problem is None and expected_seq <= last_seq:
        problem = expected_seq, f"seq {expected_seq} is missing (the journal ends before it)"
    _write_frame(out, encode({"rows": sent, "problem": problem}))
    out.flush()
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
