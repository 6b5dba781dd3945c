"""The audit commands: `walkbook journal replay|verify|export`, `walkbook report`, exit codes."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from audit_support import audit_market, event_seqs, run_audit_plan, tamper
from click.testing import CliRunner, Result

from engine.audit import LEDGER_COLUMNS
from engine.cli import main

WALKBOOK = str(Path(sys.executable).parent / "walkbook")


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def run(make_rig: Any) -> Any:
    """The audit plan executed into a journal; the engine is closed so files can be broken."""
    rig = make_rig(spec=audit_market().with_seed(12))
    rig.result = run_audit_plan(rig)
    rig.engine.close()
    return rig


def test_verify_clean_journal_exits_0_with_one_line(run: Any) -> None:
    result = invoke("journal", "verify", "--journal", run.journal_path)
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert "OK" in line
    assert f"{len(run.result.orders)} orders" in line


def test_verify_tampered_journal_exits_1_naming_the_first_bad_seq(run: Any) -> None:
    seq = event_seqs(run.journal_path, "kind = 'transition'")[3]
    tamper(
        run.journal_path, f"UPDATE events SET at = '2030-01-01T00:00:00+00:00' WHERE seq = {seq}"
    )
    result = invoke("journal", "verify", "--journal", run.journal_path)
    assert result.exit_code == 1
    assert f"FAILED at seq {seq}: hash does not match" in result.stdout


def break_file(path: Path, case: str) -> None:
    if case == "missing":
        path.unlink()
    elif case == "text file":
        path.write_text("not a database\n")
    elif case == "newer schema":
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        conn.close()
    else:
        with path.open("r+b") as handle:
            handle.truncate(path.stat().st_size // 2)


COMMANDS = {
    "verify": ["journal", "verify"],
    "replay": ["journal", "replay"],
    "export": ["journal", "export", "--format", "csv"],
    "report": ["report"],
}
NEEDLES = {
    "missing": "does not exist",
    "text file": "not a walkbook journal",
    "newer schema": "newer than this walkbook",
    "truncated": "is damaged (truncated or corrupted)",
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(NEEDLES))
def test_unusable_journal_exits_2_with_one_line(run: Any, case: str, command: str) -> None:
    """Missing, foreign, newer or cut-in-half files: exit 2 and one `walkbook: error:` line."""
    break_file(run.journal_path, case)
    result = invoke(*COMMANDS[command], "--journal", run.journal_path)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("walkbook: error:")
    assert NEEDLES[case] in line


def test_replay_prints_each_order_and_its_events(run: Any) -> None:
    result = invoke("journal", "replay", "--journal", run.journal_path)
    assert result.exit_code == 0, result.output
    headers = [line for line in result.stdout.splitlines() if line.startswith("order ")]
    assert [h.split()[1] for h in headers] == [o.order_id for o in run.result.orders]
    assert "no_position" in result.stdout
    assert len(result.stdout.splitlines()) == len(headers) + len(event_seqs(run.journal_path, "1"))


def test_replay_json_and_filters(run: Any) -> None:
    everything = json.loads(
        invoke("journal", "replay", "--journal", run.journal_path, "--json").stdout
    )
    assert [t["order"]["order_id"] for t in everything] == [o.order_id for o in run.result.orders]
    assert sum(len(t["events"]) for t in everything) == len(event_seqs(run.journal_path, "1"))
    wanted = run.result.orders[1]
    args = ["journal", "replay", "--journal", run.journal_path, "--order", wanted.order_id]
    one = json.loads(invoke(*args, "--json").stdout)
    assert [t["order"]["state"] for t in one] == [wanted.state]
    plan = invoke("journal", "replay", "--journal", run.journal_path, "--plan", "audit", "--json")
    assert len(json.loads(plan.stdout)) == len(run.result.orders)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--order", "o1", "--plan", "audit"], "not both"),
        (["--order", "o0000000000000000"], "no order o0000000000000000"),
        (["--plan", "nope"], "no plan nope"),
    ],
)
def test_replay_bad_filters_exit_2(run: Any, args: list[str], needle: str) -> None:
    result = invoke("journal", "replay", "--journal", run.journal_path, *args)
    assert result.exit_code == 2
    assert needle in result.stderr


def test_export_events_to_a_file_and_the_ledger_to_stdout(run: Any, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "events.jsonl"
    result = invoke("journal", "export", "--journal", run.journal_path, "--out", out)
    assert result.exit_code == 0, result.output
    events = event_seqs(run.journal_path, "1")
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == events
    assert f"exported {len(events)} events to {out}" in result.stderr
    assert list(out.parent.iterdir()) == [out]  # no partial file left behind
    ledger = invoke(
        "journal", "export", "--journal", run.journal_path, "--format", "csv", "--ledger"
    )
    rows = list(csv.reader(io.StringIO(ledger.stdout)))
    assert tuple(rows[0]) == LEDGER_COLUMNS
    assert len(rows) - 1 == len(event_seqs(run.journal_path, "kind = 'fill'")) > 0


def test_failed_export_leaves_no_output_file(run: Any, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    break_file(run.journal_path, "truncated")
    result = invoke("journal", "export", "--journal", run.journal_path, "--out", tmp_path / "out/e")
    assert result.exit_code == 2
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [["report", "--html"], ["journal", "export", "--out"]],
    ids=["report --html", "export --out"],
)
def test_unwritable_output_exits_2_with_one_line(run: Any, tmp_path: Path, args: list[str]) -> None:
    result = invoke(*args, tmp_path / "no-such-dir" / "out", "--journal", run.journal_path)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("walkbook: error: cannot write ")
    assert "No such file or directory" in line


def test_report_prints_quality_and_writes_html(run: Any, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    result = invoke("report", "--journal", run.journal_path, "--html", html)
    assert result.exit_code == 0, result.output
    assert "execution quality" in result.stdout
    assert f"plan audit: {run.result.status.value}" in result.stdout
    assert "escalated to market:" in result.stdout
    assert html.read_text().count("<svg") == len(run.result.orders)
    as_json = json.loads(invoke("report", "--journal", run.journal_path, "--json").stdout)
    (plan,) = as_json["plans"]
    assert plan["traded_value"] == str(run.result.traded_value)


def test_the_installed_walkbook_command_has_the_audit_commands(run: Any) -> None:
    """The console script registers `journal` and `report` on the main group."""
    verify = subprocess.run(
        [WALKBOOK, "journal", "verify", "--journal", str(run.journal_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    assert "OK" in verify.stdout
