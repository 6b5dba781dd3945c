"""A throwaway PostgreSQL cluster for the tests: started by them on 127.0.0.1, never a
system service, and removed when the session ends (bench/pgcluster.py starts it, for the
PostgreSQL benches too).

Each test gets a fresh database of its own, copied from an empty template (`CREATE
DATABASE ... TEMPLATE`): one database, one journal. Sweeps that need hundreds of journals
one after another reuse a scratch database instead, emptied for each (`scratch_journal`):
an emptied schema costs a third of a new database (50 ms against 190 ms with the journal's
migrations, measured) and leaves no database behind per case. Sweeps that run at once in
several processes use one scratch database each (its slot).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from bench.pgcluster import TEMPLATE, PostgresCluster, ServerMissing, server_binary
from bench.pgcluster import postgres_cluster as started_cluster

__all__ = ["PostgresCluster", "postgres_cluster", "scratch_journal"]

# the scratch databases made in this process, by cluster port and slot
_SCRATCH: set[tuple[int, int]] = set()


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


def scratch_journal(cluster: PostgresCluster, slot: int = 0) -> str:
    """The URL of the cluster's scratch database number `slot`, emptied (its schema dropped
    and made anew): where a new journal goes, the previous one in that slot gone. A process
    still writing the previous journal would hold the drop until it ends. Named by its slot,
    not by the cluster's counter, so that a forked process may make it: the counter it would
    advance is its own copy, and the parent's next database would take the same name."""
    database = f"scratch_{slot}"
    if (cluster.port, slot) not in _SCRATCH:
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
            made = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if made.fetchone() is None:
                admin.execute(f"CREATE DATABASE {database} TEMPLATE {TEMPLATE}")
        _SCRATCH.add((cluster.port, slot))
    url = cluster.url(database)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP SCHEMA public CASCADE")
        admin.execute("CREATE SCHEMA public")
    return url
