"""Canonical JSON and the sha256 hash chain over journal events.

The chain is what makes the journal auditable without our code: each row's hash
covers the previous row's hash and the row's own canonical JSON, so an edited,
deleted or reordered row breaks every hash after it.

The hashed body is built as text around the row's stored `data` text (canonical JSON
by construction), so neither the writer nor a verifier decodes and re-encodes `data`
to hash a row: for canonical `data` this is byte for byte the documented
`canonical_json(body)`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

import msgspec

__all__ = [
    "GENESIS_HASH",
    "ChainBreak",
    "body_json",
    "canonical_json",
    "chain_links",
    "decode_canonical",
    "decode_json",
    "event_hash",
    "first_chain_break",
    "hash_body",
    "link_problem",
]

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


_CANONICAL = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    default=_encode_default,
)
# The C encoder json.dumps itself runs for these options, built once rather than per call
# (docs/benchmarks.md, "Speed tricks"); undeclared in the stdlib's stubs, and None without
# the C extension, when `_CANONICAL` encodes instead.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_CANONICAL_C: Any = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None,  # markers: no circular-reference check (journal data is a plain tree)
        _encode_default,
        encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8, Decimals as strings: one byte string per value."""
    if _CANONICAL_C is None:
        return _CANONICAL.encode(value)
    text: str = "".join(_CANONICAL_C(value, 0))
    return text


# msgspec decodes JSON to the same values as json.loads (integers of any size included),
# faster (docs/benchmarks.md, "Speed tricks"); it refuses what json.loads accepts beyond
# JSON itself: NaN, Infinity, out-of-range floats, lone surrogates.
_FAST = msgspec.json.Decoder()


def decode_json(text: str) -> Any:
    """`json.loads(text)`, value for value, decoded by msgspec wherever it can.

    Every read of the journal decodes each event's `data`; text msgspec refuses goes to
    `json.loads`, so the result never differs.
    """
    try:
        return _FAST.decode(text)
    except msgspec.MsgspecError:
        return json.loads(text)


def decode_canonical(text: str) -> Any:
    """The value of text `canonical_json` could have written; ValueError for any other
    text, such as NaN or Infinity, or whitespace around the value."""
    if text[:1].isspace() or text[-1:].isspace():
        raise ValueError("whitespace around the value")
    try:
        return _FAST.decode(text)
    except msgspec.MsgspecError as exc:
        raise ValueError(str(exc)) from None


# A str, or an int (SQLite and the journal never give a bool here), as canonical JSON;
# TypeError for any other type.
_text = encode_basestring
_integer = int.__repr__


def body_json(
    seq: int,
    order_id: str | None,
    order_seq: int | None,
    plan_id: str | None,
    at: str,
    kind: str,
    from_state: str | None,
    to_state: str | None,
    data_text: str,
    prev_hash: str,
) -> str:
    """canonical_json of a row's hashed fields (in stored column order), with `data_text`
    as the data's JSON.

    Keys in sorted order, as `canonical_json` would write them: at, data, from_state,
    kind, order_id, order_seq, plan_id, prev_hash, seq, to_state. Every row is hashed
    when written and again when verified, so the columns' usual types (text, integers,
    NULL) are encoded inline; any other value takes `canonical_json`.
    """
    try:
        return (
            f'{{"at":{_text(at)},"data":{data_text},'
            f'"from_state":{"null" if from_state is None else _text(from_state)},'
            f'"kind":{_text(kind)},"order_id":{"null" if order_id is None else _text(order_id)},'
            f'"order_seq":{"null" if order_seq is None else _integer(order_seq)},'
            f'"plan_id":{"null" if plan_id is None else _text(plan_id)},'
            f'"prev_hash":{_text(prev_hash)},"seq":{_integer(seq)},'
            f'"to_state":{"null" if to_state is None else _text(to_state)}}}'
        )
    except TypeError:
        scalar = canonical_json
        return (
            f'{{"at":{scalar(at)},"data":{data_text},"from_state":{scalar(from_state)},'
            f'"kind":{scalar(kind)},"order_id":{scalar(order_id)},'
            f'"order_seq":{scalar(order_seq)},"plan_id":{scalar(plan_id)},'
            f'"prev_hash":{scalar(prev_hash)},"seq":{scalar(seq)},"to_state":{scalar(to_state)}}}'
        )


def hash_body(prev_hash: str, body: str) -> str:
    """sha256 hex of prev_hash followed by the body's canonical JSON."""
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def event_hash(row: Mapping[str, Any]) -> str:
    """sha256 hex of prev_hash followed by the canonical JSON of the hashed fields.

    `data` may be the stored text (hashed as it is: the journal stores canonical JSON)
    or the object itself.
    """
    data = row["data"]
    data_text = data if isinstance(data, str) else canonical_json(data)
    fields = [row[name] for name in HASHED_FIELDS]
    fields[HASHED_FIELDS.index("data")] = data_text
    return hash_body(row["prev_hash"], body_json(*fields))


@dataclass(frozen=True)
class ChainBreak:
    """The first row where the journal stops being the journal that was written."""

    seq: int
    problem: str


def link_problem(
    row: Sequence[Any], expected_seq: int, expected_prev: str
) -> tuple[int, str] | None:
    """What is wrong with a stored row (`HASHED_FIELDS` then `hash`, `data` as its stored
    text) as the next link of the chain, and the seq it is reported at; None when it is
    that link."""
    return chain_links((row,), expected_seq, expected_prev)[1]


def chain_links(
    rows: Sequence[Sequence[Any]], expected_seq: int, expected_prev: str
) -> tuple[int, tuple[int, str] | None]:
    """How many of `rows` (stored rows as `link_problem` takes them, in seq order) are the
    next links of the chain from `expected_seq` and `expected_prev`, and what is wrong
    with the row after them (None when all are links). Every chain check (the journal's,
    an audit's, its helper process's) runs this one loop, a batch of rows at a time
    where it can: it runs once per event of the journal."""
    body, hashed = body_json, hash_body
    for index, row in enumerate(rows):
        seq, prev_hash = row[0], row[9]
        if seq != expected_seq:
            return index, (expected_seq, f"seq {expected_seq} is missing (next row is {seq})")
        if prev_hash != expected_prev:
            return index, (seq, "prev_hash does not match the hash of the previous row")
        expected_prev = row[10]
        if hashed(prev_hash, body(*row[:10])) != expected_prev:
            return index, (seq, "hash does not match the row's contents")
        expected_seq = seq + 1
    return len(rows), None


def first_chain_break(rows: Iterable[Mapping[str, Any]]) -> ChainBreak | None:
    """Walk rows in seq order; report the first gap, broken link or wrong hash."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for row in rows:
        stored = [row[name] for name in (*HASHED_FIELDS, "hash")]
        stored[0] = int(stored[0])
        data = stored[8]
        stored[8] = data if isinstance(data, str) else canonical_json(data)
        problem = link_problem(stored, expected_seq, expected_prev)
        if problem is not None:
            return ChainBreak(*problem)
        expected_prev = row["hash"]
        expected_seq += 1
    return None
