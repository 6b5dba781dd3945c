"""walkbook's durable journal: append-only, hash-chained events with an orders projection, in a
SQLite file or a PostgreSQL database (journal/recorder.py is the seam between them).

`journal` never imports `engine`; it stores facts and guards their integrity.
"""

from .chain import (
    GENESIS_HASH,
    ChainBreak,
    body_json,
    canonical_json,
    chain_links,
    decode_canonical,
    decode_json,
    event_hash,
    first_chain_break,
    hash_body,
    link_problem,
)
from .errors import (
    JournalCorrupt,
    JournalError,
    JournalLeaseLost,
    JournalLocked,
    JournalMoved,
    JournalSchemaTooNew,
    JournalUnavailable,
    JournalWriteConflict,
)
from .schema import FORMAT_NAME, ORDER_COLUMNS, SCHEMA_VERSION
from .store import Event, HistoryRow, Journal, NewEvent, Synchronous, stamp

__all__ = [
    "FORMAT_NAME",
    "GENESIS_HASH",
    "ORDER_COLUMNS",
    "SCHEMA_VERSION",
    "ChainBreak",
    "Event",
    "HistoryRow",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalLeaseLost",
    "JournalLocked",
    "JournalMoved",
    "JournalSchemaTooNew",
    "JournalUnavailable",
    "JournalWriteConflict",
    "NewEvent",
    "Synchronous",
    "body_json",
    "canonical_json",
    "chain_links",
    "decode_canonical",
    "decode_json",
    "event_hash",
    "first_chain_break",
    "hash_body",
    "link_problem",
    "stamp",
]
