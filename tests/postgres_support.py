"""A throwaway PostgreSQL cluster for the tests: started by them on 127.0.0.1, never a
system service, and removed when the session ends (bench/pgcluster.py starts it, for the
PostgreSQL benches too).

Each test gets a fresh database of its own, copied from an empty template (`CREATE
DATABASE ... TEMPLATE`): one database, one journal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench.pgcluster import PostgresCluster, ServerMissing, server_binary
from bench.pgcluster import postgres_cluster as started_cluster

__all__ = ["PostgresCluster", "postgres_cluster"]


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's cluster, fsync off; without the server binaries the tests that asked
    for it fail saying how to install them."""
    try:
        server_binary("initdb")
        server_binary("pg_ctl")
    except ServerMissing as exc:
        pytest.fail(str(exc))
    with started_cluster() as cluster:
        yield cluster
