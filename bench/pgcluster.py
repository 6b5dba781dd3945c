"""A throwaway PostgreSQL cluster on 127.0.0.1, never a system service: the tests' (through
tests/postgres_support.py) and the PostgreSQL benches'.

The server binaries are found on the PATH or where Debian's `postgresql` package puts
them (`make unit` installs it when missing). initdb refuses to run as root, so as root
the cluster runs as the `postgres` user. A test's cluster skips fsync (it never outlives
the machine); a bench's keeps it, as its figures are about durable commits.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import psycopg

__all__ = ["USER", "PostgresCluster", "ServerMissing", "postgres_cluster", "server_binary"]

USER = "walkbook"
TEMPLATE = "walkbook_empty"


class ServerMissing(RuntimeError):
    """PostgreSQL's server binaries are not installed here."""


def server_binary(name: str) -> str:
    """`initdb`, `pg_ctl`: on the PATH, or in Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which(name)
    if found is None:
        debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
        found = debian[0] if debian else None
    if found is None:
        raise ServerMissing(
            f"PostgreSQL's {name} is missing: `make unit` installs Debian's postgresql, or "
            "run `apt-get install postgresql`"
        )
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresCluster:
    """A running cluster: its port and a counter naming each new database."""

    root: Path
    port: int
    started_seconds: float
    _names: Iterator[int] = field(default_factory=count)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        """A new, empty database's URL."""
        name = f"journal_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)


@contextmanager
def postgres_cluster(*, durable: bool = False) -> Iterator[PostgresCluster]:
    """initdb in the system's temp directory (which the `postgres` user can reach), start
    on a free port of 127.0.0.1, yield, stop and delete; as root, as the `postgres` user.
    Not `durable`: fsync off."""
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="walkbook-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "log", _free_port()
    started = time.monotonic()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8",
         "--no-instructions", *([] if durable else ["--no-sync"])],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    options = f"-k {root} -h 127.0.0.1 -p {port} -c max_connections=200" + (
        "" if durable else " -F"
    )
    ctl = [*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w"]
    subprocess.run([*ctl, "-o", options, "start"], check=True, capture_output=True, text=True)
    try:
        cluster = PostgresCluster(root, port, time.monotonic() - started)
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {TEMPLATE} IS_TEMPLATE true")
        yield cluster
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
