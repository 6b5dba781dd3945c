"""Canonical JSON and the sha256 hash chain over journal events.

The chain is what makes the journal auditable without our code: each row's hash
covers the previous row's hash and the row's own canonical JSON, so an edited,
deleted or reordered row breaks every hash after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["GENESIS_HASH", "ChainBreak", "canonical_json", "event_hash", "first_chain_break"]

GENESIS_HASH = "0" * 64

HASHED_FIELDS = (
    "seq",
    "order_id",
    "order_seq",
    "plan_id",
    "at",
    "kind",
    "from_state",
    "to_state",
    "data",
    "prev_hash",
)


def _encode_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable in a journal event: {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8, Decimals as strings: one byte string per value."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_encode_default,
    )


def event_hash(row: Mapping[str, Any]) -> str:
    """sha256 hex of prev_hash followed by the canonical JSON of the hashed fields."""
    body = {name: row[name] for name in HASHED_FIELDS}
    body["data"] = json.loads(row["data"]) if isinstance(row["data"], str) else row["data"]
    payload = row["prev_hash"] + canonical_json(body)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    """The first row where the journal stops being the journal that was written."""

    seq: int
    problem: str


def first_chain_break(rows: Iterable[Mapping[str, Any]]) -> ChainBreak | None:
    """Walk rows in seq order; report the first gap, broken link or wrong hash."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            return ChainBreak(expected_seq, f"seq {expected_seq} is missing (next row is {seq})")
        if row["prev_hash"] != expected_prev:
            return ChainBreak(seq, "prev_hash does not match the hash of the previous row")
        if event_hash(row) != row["hash"]:
            return ChainBreak(seq, "hash does not match the row's contents")
        expected_prev = row["hash"]
        expected_seq += 1
    return None
