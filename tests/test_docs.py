"""The code shown in the README and docs runs and does what the text says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.S)


def test_readme_library_example_runs(tmp_path: Path) -> None:
    """The README's library example executes and prints a SUCCESS plan with two VALIDATED orders."""
    (code,) = python_blocks(ROOT / "README.md")
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    last_line = run.stdout.strip().splitlines()[-1]
    assert last_line.startswith("SUCCESS")
    assert last_line.count("'VALIDATED'") == 2
    assert (tmp_path / "journal.db").exists()


@pytest.fixture(scope="module")
def demo_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "journal.db"
    walkbook = Path(sys.executable).parent / "walkbook"
    subprocess.run([str(walkbook), "demo", "--journal", str(path)], check=True, capture_output=True)
    return path


def test_journal_format_chain_snippet_verifies_a_real_journal(demo_journal: Path) -> None:
    """The auditor's snippet in docs/journal-format.md verifies the demo journal's hash chain."""
    (snippet,) = python_blocks(ROOT / "docs" / "journal-format.md")
    run = subprocess.run(
        [sys.executable, "-c", snippet], cwd=demo_journal.parent, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_journal_format_snippet_catches_an_edit(demo_journal: Path, tmp_path: Path) -> None:
    """The same snippet fails on a copy whose triggers were dropped and one row edited."""
    import shutil
    import sqlite3

    copy = tmp_path / "journal.db"
    shutil.copy(demo_journal, copy)
    with sqlite3.connect(copy) as conn:
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute(
            "UPDATE events SET data = replace(data, '\"qty\"', '\"qtx\"') WHERE kind = 'fill'"
        )
    (snippet,) = python_blocks(ROOT / "docs" / "journal-format.md")
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True)
    assert run.returncode != 0


def test_every_event_kind_is_documented() -> None:
    """docs/journal-format.md has a row for every kind the engine writes."""
    from engine.events import EventKind

    text = (ROOT / "docs" / "journal-format.md").read_text()
    kinds = [v for k, v in vars(EventKind).items() if k.isupper()]
    assert kinds
    missing = [kind for kind in kinds if f"| `{kind}` |" not in text]
    assert not missing


def test_every_fail_reason_is_documented() -> None:
    """Each FailReason code appears in the journal format's FAILED reasons section."""
    from engine.fsm import FailReason

    section = (ROOT / "docs" / "journal-format.md").read_text().split("## FAILED reasons")[1]
    assert [r.value for r in FailReason if f"`{r.value}`" not in section] == []


def test_demo_target_is_what_the_readme_says() -> None:
    """README shows `make demo` and `make test` first, and the Makefile defines both."""
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make demo") < readme.index("## As a library")
    assert "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def test_every_crash_point_is_in_the_crash_recovery_doc() -> None:
    """docs/crash-recovery.md has a row for every journal append kind and every broker call."""
    from engine.crash import BROKER_METHODS
    from engine.events import EVENT_KINDS

    text = (ROOT / "docs" / "crash-recovery.md").read_text()
    rows = set(re.findall(r"^\| (.+?) \|", text, flags=re.M))
    named = {name for row in rows for name in re.findall(r"`(\w+)`", row)}
    assert set(EVENT_KINDS) <= named, set(EVENT_KINDS) - named
    assert set(BROKER_METHODS) <= named, set(BROKER_METHODS) - named


def test_embedding_example_runs_as_documented(tmp_path: Path) -> None:
    """docs/embedding.md's orchestration layer runs: shrinks a buy, trades once, refuses junk."""
    code = python_blocks(ROOT / "docs" / "embedding.md")[0]  # the sink: test_journal_follow
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("PARTIAL_SUCCESS sold ")
    assert lines[1:4] == [
        "MSFT VALIDATED 12 of 12 ",
        "AAPL VALIDATED 5 of 5 ",
        "NVDA VALIDATED 14 of 40  (shrunk to fit)",
    ]
    assert lines[4] == "fills seen: 4 failures seen: 0"
    assert lines[5] == "refused: order 0 (ZZZZ buy 1): unknown symbol"
