"""An archived journal (read-only file in a read-only directory) is audited without a byte
written beside it; every file walkbook writes is created 0600; verify notices dropped
append-only triggers."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from audit_support import audit_market, run_audit_plan
from click.testing import CliRunner, Result
from conftest import START

from engine.audit import feed, integrity
from engine.cli import main
from journal import Journal, NewEvent
from journal.schema import APPEND_ONLY_TRIGGERS

JOURNAL = "journal.db"
OUT = "{out}"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def closed_journal(make_rig: Any, tmp_path: Path) -> Path:
    """A real run's journal alone in a writable directory, its writer closed (so checkpointed:
    every event is in the one file)."""
    rig = make_rig(spec=audit_market().with_seed(12))
    run_audit_plan(rig)
    rig.engine.close()
    assert not wal_of(rig.journal_path).exists()
    path = tmp_path / "rw" / JOURNAL
    path.parent.mkdir()
    shutil.copy(rig.journal_path, path)
    return path


@contextmanager
def read_only_directory(where: Path, *files: Path) -> Iterator[Path]:
    """`where`, holding copies of `files` that this process cannot write: each file 0444, the
    directory 0555 and, for root (whom modes do not stop), a read-only bind mount of it."""
    source = where if os.geteuid() else where.with_name(where.name + "-source")
    source.mkdir()
    for file in files:
        shutil.copy(file, source / file.name)
        (source / file.name).chmod(0o444)
    source.chmod(0o555)
    try:
        if os.geteuid():
            yield sealed(where)
        else:
            with read_only_mount(source, where):
                yield sealed(where)
    finally:
        source.chmod(0o755)


def sealed(directory: Path) -> Path:
    """`directory`, checked to be as unwritable to this process as to an auditor."""
    for path in (directory, *directory.iterdir()):
        assert not os.access(path, os.W_OK), f"{path} is writable"
    return directory


@contextmanager
def read_only_mount(source: Path, target: Path) -> Iterator[None]:
    """`source` seen read-only at `target`; skips where mounting is not allowed."""
    if shutil.which("mount") is None:
        pytest.skip("running as root, which ignores file modes, and there is no mount command")
    target.mkdir()
    bound = subprocess.run(["mount", "--bind", source, target], capture_output=True, text=True)
    if bound.returncode:
        pytest.skip(
            "running as root, which ignores file modes, and a bind mount needs CAP_SYS_ADMIN: "
            + bound.stderr.strip()
        )
    try:
        sealed = subprocess.run(
            ["mount", "-o", "remount,ro,bind", target], capture_output=True, text=True
        )
        if sealed.returncode:
            pytest.skip("cannot remount the bind mount read-only: " + sealed.stderr.strip())
        yield
    finally:
        # lazily: a file a failed command left open must not hide why it failed
        subprocess.run(["umount", "--lazy", target], check=True)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every entry of `directory` with its bytes, mtime and mode."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(directory.iterdir())
    }


# -- A: auditing a read-only journal ---------------------------------------------------------

COMMANDS: dict[str, list[str]] = {
    "journal verify": ["journal", "verify"],
    "journal replay": ["journal", "replay"],
    "journal replay --json": ["journal", "replay", "--json"],
    "journal export": ["journal", "export"],
    "journal export --ledger --out": ["journal", "export", "--ledger", "--format", "csv",
                                      "--out", OUT],
    "status": ["status"],
    "status --json": ["status", "--json"],
    "report": ["report"],
    "report --html": ["report", "--html", OUT],
}  # fmt: skip


def run_command(command: str, journal: Path, out_dir: Path) -> tuple[Result, dict[str, bytes]]:
    """The command on `journal`, writing any file into the new `out_dir`: its result, with
    paths spelled alike whatever the journal, and the files it wrote."""
    out_dir.mkdir()
    args = [a.replace(OUT, str(out_dir / "out")) for a in COMMANDS[command]]
    result = invoke(*args, "--journal", journal)
    return result, {p.name: p.read_bytes() for p in out_dir.iterdir()}


def spelled_alike(result: Result, *paths: Path) -> str:
    text = result.output
    for path in paths:
        text = text.replace(str(path), "PATH")
    return text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_audit_command_reads_an_archived_journal_and_writes_nothing_beside_it(
    closed_journal: Path, tmp_path: Path, command: str
) -> None:
    """Exit 0 and what the same command says of the journal where it can be written."""
    expected, expected_files = run_command(command, closed_journal, tmp_path / "out-rw")
    assert expected.exit_code == 0, expected.output
    assert expected.stdout.strip() or expected_files
    with read_only_directory(tmp_path / "ro", closed_journal) as archive:
        journal = archive / JOURNAL
        before = snapshot(archive)
        result, files = run_command(command, journal, tmp_path / "out-ro")
        assert snapshot(archive) == before
    assert result.exit_code == 0, result.output
    assert spelled_alike(result, journal, tmp_path / "out-ro") == spelled_alike(
        expected, closed_journal, tmp_path / "out-rw"
    )
    assert files == expected_files


def test_the_audit_helper_process_reads_an_archived_journal(
    closed_journal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second process a large journal's verify and replay start reads it too."""
    monkeypatch.setattr(feed, "worth_a_helper", lambda events: True)
    with sqlite3.connect(closed_journal) as conn:
        (last_seq,) = conn.execute("SELECT max(seq) FROM events").fetchone()
    conn.close()
    with read_only_directory(tmp_path / "ro", closed_journal) as archive:
        before = snapshot(archive)
        watch = feed.Watch(archive / JOURNAL)
        rows = feed.Feed(
            archive / JOURNAL, integrity._EVENTS_UP_TO, last_seq, chain=True, watch=watch
        )
        try:
            sent = [row[0] for batch in rows.batches() for row in batch]
        finally:
            rows.stop()
            watch.close()
        verified = invoke("journal", "verify", "--journal", archive / JOURNAL)
        assert snapshot(archive) == before
    assert (sent, rows.complete, rows.problem) == (list(range(1, last_seq + 1)), True, None)
    assert verified.exit_code == 0, verified.output
    assert f"OK, {last_seq} events" in verified.stdout


def test_an_archived_journal_with_events_left_in_its_wal_is_refused_in_one_line(
    make_rig: Any, tmp_path: Path
) -> None:
    """Read without its -wal file, the journal would lack the second plan's events: refused,
    naming the cure, which works."""
    rig = make_rig(spec=audit_market().with_seed(12))
    run_audit_plan(rig)
    rig.journal.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    run_audit_plan(rig, plan_id="audit-2")
    last_seq = rig.journal.last_seq
    copies = tmp_path / "copies"
    copies.mkdir()
    for live in (rig.journal_path, wal_of(rig.journal_path)):  # as the writer left them
        shutil.copy(live, copies / live.name.replace(rig.journal_path.name, JOURNAL))
    rig.engine.close()
    journal, wal = copies / JOURNAL, wal_of(copies / JOURNAL)
    with sqlite3.connect(f"file:{journal}?immutable=1", uri=True) as conn:
        (in_file,) = conn.execute("SELECT count(*) FROM events").fetchone()
    conn.close()
    assert 0 < in_file < last_seq
    with read_only_directory(tmp_path / "ro", journal, wal) as archive:
        before = snapshot(archive)
        refused = invoke("journal", "verify", "--journal", archive / JOURNAL)
        assert snapshot(archive) == before
    assert refused.exit_code == 2, refused.output
    (line,) = refused.stderr.splitlines()
    assert f"{JOURNAL}-wal" in line
    assert "checkpoint" in line
    assert "copy" in line
    copied = invoke("journal", "verify", "--journal", journal)
    assert copied.exit_code == 0, copied.output
    assert f"OK, {last_seq} events" in copied.stdout


# -- B: files created 0600, and the append-only triggers -------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file created without a mode of its own is 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize("through", ["its path", "a dangling symlink"])
@pytest.mark.usefixtures("umask_022")
def test_a_new_journal_its_wal_shm_and_lock_are_0600(tmp_path: Path, through: str) -> None:
    target = tmp_path / "data" / JOURNAL
    target.parent.mkdir()
    path = target
    if through == "a dangling symlink":
        path = tmp_path / "link.db"
        path.symlink_to(target)
    with Journal.open(path) as journal:
        journal.append(NewEvent(kind="error", data={"message": "one commit"}), at=START)
        written = {
            p.relative_to(tmp_path).as_posix(): mode(p)
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }
    assert {f"data/{JOURNAL}", f"data/{JOURNAL}-wal", f"data/{JOURNAL}-shm"} <= set(written)
    assert any(name.endswith(".lock") for name in written)
    assert written == dict.fromkeys(written, 0o600)


@pytest.mark.usefixtures("umask_022")
def test_a_run_s_simulator_state_and_result_json_are_0600(tmp_path: Path) -> None:
    """Every file a `walkbook run` writes holds the account's trades: none is world-readable."""
    plan = tmp_path / "plan.json"
    plan.write_text(
        '{"plan_id": "p", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": "1"}]}'
    )
    out = tmp_path / "out"
    out.mkdir()
    result = invoke(
        "run", plan, "--journal", out / "j.db", "--sim-state", out / "sim.db",
        "--result-json", out / "result.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = {p.name: mode(p) for p in out.iterdir()}
    assert {"j.db", "sim.db", "result.json"} <= set(written)
    assert written == dict.fromkeys(written, 0o600)


OUTPUTS: dict[str, list[str]] = {
    "journal export --out": ["journal", "export", "--out", OUT],
    "journal export --ledger --format csv --out": ["journal", "export", "--ledger", "--format",
                                                   "csv", "--out", OUT],
    "report --html": ["report", "--html", OUT],
}  # fmt: skip


@pytest.mark.parametrize("command", list(OUTPUTS))
@pytest.mark.usefixtures("umask_022")
def test_export_and_report_files_are_created_0600(
    closed_journal: Path, tmp_path: Path, command: str
) -> None:
    out = tmp_path / "out" / "file"
    out.parent.mkdir()
    args = [a.replace(OUT, str(out)) for a in OUTPUTS[command]]
    result = invoke(*args, "--journal", closed_journal)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    assert {p.name: mode(p) for p in out.parent.iterdir()} == {"file": 0o600}


@pytest.mark.usefixtures("umask_022")
def test_an_export_over_a_crashed_exports_partial_file_is_0600(
    closed_journal: Path, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    partial = tmp_path / "events.jsonl.partial"
    partial.write_text("left by an export killed mid-way\n")
    partial.chmod(0o644)
    result = invoke("journal", "export", "--journal", closed_journal, "--out", out)
    assert result.exit_code == 0, result.output
    assert mode(out) == 0o600
    assert not partial.exists()


@pytest.mark.parametrize(
    "dropped", [(name,) for name in APPEND_ONLY_TRIGGERS] + [APPEND_ONLY_TRIGGERS]
)
def test_verify_fails_naming_the_dropped_append_only_triggers(
    closed_journal: Path, dropped: tuple[str, ...]
) -> None:
    """The events still check out, but nothing stops their edit any more."""
    with sqlite3.connect(closed_journal) as conn:
        for name in dropped:
            conn.execute(f"DROP TRIGGER {name}")
    conn.close()
    result = invoke("journal", "verify", "--journal", closed_journal)
    assert result.exit_code == 1, result.output
    (line,) = result.stdout.splitlines()
    assert "FAILED" in line
    named = {name for name in APPEND_ONLY_TRIGGERS if name in line}
    assert named == set(dropped)
