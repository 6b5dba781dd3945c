"""Run every benchmark, each in its own process, and print one summary table.

A script per process keeps each one's peak memory its own. Each writes its rows as JSON
into the output directory; this collects them into results.json and one table, and
exits non-zero only when a script fails to run (a MISS is a finding, not a failure).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import OUT_DIR, ROW_HEADERS, Row, format_table, number, row_cells

# In run order; add a script by adding its module name.
SCRIPTS = (
    "journal_append",
    "dbos_peer",
    "postgres_append",
    "resume",
    "replay",
    "engine",
    "quality",
    "rest_budget",
    "scale",
    "takeover",
)
ROOT = Path(__file__).resolve().parent.parent
SCRIPT_TIMEOUT_SECONDS = 300


def run_script(name: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One script in a subprocess; its JSON, plus how it ran."""
    json_path = out / f"{name}.json"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", f"bench.{name}", "--json", str(json_path)]
    command += ["--quick"] if args.quick else []
    command += ["--workdir", str(args.workdir)] if args.workdir else []
    start = time.perf_counter()
    try:
        status = subprocess.run(command, cwd=ROOT, check=False, timeout=SCRIPT_TIMEOUT_SECONDS)
        code: int | str = status.returncode
    except subprocess.TimeoutExpired:
        code = f"timeout {SCRIPT_TIMEOUT_SECONDS} s"
    result: dict[str, Any] = {"rows": [], "peak_rss_mb": None}
    if code == 0 and json_path.exists():
        result = json.loads(json_path.read_text())
    command_text = f"python -m bench.{name}" + (" --quick" if args.quick else "")
    elapsed = time.perf_counter() - start
    return {**result, "script": name, "exit": code, "seconds": elapsed, "command": command_text}


def markdown(results: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, for docs/benchmarks.md."""
    headers = ["benchmark", *ROW_HEADERS[1:], "command"]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for result in results:
        for row in result["rows"]:
            cells = row_cells(Row(**row))
            lines.append(f"| {' | '.join(cells)} | `{result['command']}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every script with --quick")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the JSON files go")
    parser.add_argument("--workdir", type=Path, help="where the scripts' scratch databases go")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [run_script(name, args.out, args) for name in SCRIPTS]
    total = time.perf_counter() - started
    print("\n== summary" + (" (--quick)" if args.quick else ""))
    print(
        format_table(
            ["script", "exit", "seconds", "peak RSS MB"],
            [
                [r["script"], str(r["exit"]), number(r["seconds"]), number(r["peak_rss_mb"])]
                for r in results
            ],
        )
    )
    print()
    rows = [[r["script"], *row_cells(Row(**row))] for r in results for row in r["rows"]]
    print(format_table(["script", *ROW_HEADERS], rows))
    print(f"\nall benchmarks: {total:.0f} s")
    if args.markdown:
        print("\n" + markdown(results))
    summary = {"quick": args.quick, "seconds": total, "results": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    if any(r["exit"] != 0 for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
