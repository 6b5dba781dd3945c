"""The simulator's own SQLite file, so the market outlives any one engine process.

State is written at the end of every broker call, before its answer reaches the
engine: whatever the engine has seen, the broker still knows after a SIGKILL.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from journal import decode_json

from ...errors import InputError
from ...files import create_private

__all__ = ["SimStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sim_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sim_orders (
    id TEXT PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL
);
"""


class SimStore:
    """Market state as one JSON row plus one row per broker order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            create_private(self.path)
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA busy_timeout = 5000")
            self.conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise InputError(f"cannot use simulator state {self.path}: {exc}") from None

    def load(self) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]] | None:
        """(spec, state, orders) as saved, or None for a new file."""
        meta = dict(self.conn.execute("SELECT key, value FROM sim_meta").fetchall())
        if "state" not in meta:
            return None
        orders = [decode_json(row[0]) for row in self.conn.execute("SELECT data FROM sim_orders")]
        return decode_json(meta["spec"]), decode_json(meta["state"]), orders

    def saved_state(self) -> dict[str, Any] | None:
        """The market state alone (clock, cash, books), without reading every order."""
        row = self.conn.execute("SELECT value FROM sim_meta WHERE key = 'state'").fetchone()
        return None if row is None else dict(decode_json(row[0]))

    def save(
        self, spec: dict[str, Any] | None, state: dict[str, Any], orders: list[dict[str, Any]]
    ) -> None:
        """One transaction: the market state, the spec (first time) and changed orders."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if spec is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO sim_meta (key, value) VALUES ('spec', ?)",
                    [json.dumps(spec)],
                )
            conn.execute(
                "INSERT OR REPLACE INTO sim_meta (key, value) VALUES ('state', ?)",
                [json.dumps(state)],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO sim_orders (id, client_order_id, data) VALUES (?, ?, ?)",
                [(o["id"], o["client_order_id"], json.dumps(o)) for o in orders],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()
