"""A journal file deleted, moved or replaced under its writer (a cleanup script, an `rm -rf`
of the output directory): the writer journals nothing more, saves everything it journaled
(its open connection still reaches the file when no name does) and puts it back at its
path; what it journaled is never lost with the last reference to the deleted file.
tests/test_stopping_processes.py has a real `walkbook run` whose journal is deleted
mid-walk."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from journal import Journal, JournalMoved, NewEvent

AT = datetime(2026, 12, 4, 14, 30, tzinfo=UTC)


def facts(journal: Journal, count: int) -> None:
    for i in range(count):
        journal.append(NewEvent("fact", f"o{i % 2}", "plan-1", data={"i": i}), at=AT)


def seqs(path: Path) -> list[int]:
    """The seqs of the journal at `path`, whose hash chain verifies."""
    with Journal.open_readonly(path) as journal:
        assert journal.verify_chain() is None
        return [event.seq for event in journal.events()]


def test_a_deleted_journal_refuses_every_append_then_is_put_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as writer:
        facts(writer, 5)
        path.unlink()
        with pytest.raises(JournalMoved) as refused:
            facts(writer, 1)
        saved = Path(refused.value.fields["saved_to"])
        assert seqs(saved) == [1, 2, 3, 4, 5]
        with pytest.raises(JournalMoved):  # and again: nothing lands in the deleted file
            facts(writer, 1)
        assert writer.last_seq == 5
    assert seqs(path) == [1, 2, 3, 4, 5]
    assert not saved.exists()
    with Journal.open(path) as resumed:  # a writer goes on from it
        facts(resumed, 1)
    assert seqs(path) == [1, 2, 3, 4, 5, 6]


def test_a_journal_deleted_after_its_last_append_is_saved_when_it_closes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as writer:
        facts(writer, 4)
        path.unlink()
    assert seqs(path) == [1, 2, 3, 4]


def test_a_moved_journal_is_refused_and_put_back_whole_at_its_path(tmp_path: Path) -> None:
    """The moved file itself may lack what sat in the -wal, which keeps the old name (SQLite
    does not checkpoint a moved database when it closes it): the copy at the path has it."""
    path = tmp_path / "j.db"
    with Journal.open(path) as writer:
        facts(writer, 3)
        path.rename(tmp_path / "moved.db")
        with pytest.raises(JournalMoved):
            facts(writer, 1)
    assert seqs(path) == [1, 2, 3]


def test_a_replaced_journal_is_left_alone_and_the_copy_kept_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as writer:
        facts(writer, 3)
        path.unlink()
        path.write_text("someone else's file")
        with pytest.raises(JournalMoved) as refused:
            facts(writer, 1)
    writer.close()  # closing again does nothing
    assert path.read_text() == "someone else's file"
    saved = Path(refused.value.fields["saved_to"])
    assert list(tmp_path.glob("j.db.saved-*")) == [saved]
    assert seqs(saved) == [1, 2, 3]


@pytest.mark.parametrize("appends_after", [True, False])
def test_a_deleted_directory_s_journal_is_saved_in_the_working_directory_only_while_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, appends_after: bool
) -> None:
    """A live writer (it appends after the directory went: an `rm -rf` of a run's output)
    saves its copy in the working directory; a closing one (the last append came before:
    cleaning up, most likely, as a test's temporary directory) leaves nothing there."""
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    path = tmp_path / "out" / "j.db"
    path.parent.mkdir()
    with Journal.open(path) as writer:
        facts(writer, 2)
        shutil.rmtree(path.parent)
        if appends_after:
            with pytest.raises(JournalMoved) as refused:
                facts(writer, 1)
    if appends_after:
        saved = Path(refused.value.fields["saved_to"])
        assert list(working.iterdir()) == [saved] == [working / f"j.db.saved-{os.getpid()}"]
        assert seqs(saved) == [1, 2]
    else:
        assert list(working.iterdir()) == []
