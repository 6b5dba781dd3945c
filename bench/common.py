"""What every bench script shares: arguments, timing, result rows, the table and the JSON file.

A row always carries its reference, measured in the same run, so a figure means the
same on a fast laptop and on a loaded 2-core CI box.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import math
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import structlog

__all__ = [
    "OUT_DIR",
    "ROW_HEADERS",
    "Report",
    "Row",
    "Target",
    "bench_parser",
    "format_table",
    "interleaved",
    "number",
    "peak_rss_mb",
    "percentile",
    "profiled",
    "quiet_logs",
    "row_cells",
    "scratch",
    "seconds",
    "top_self_time",
]

Status = Literal["PASS", "MISS", "SKIP", "INFO"]
OUT_DIR = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Target:
    """A bound a row must meet: on its ratio to the reference, or on its measured value."""

    on: Literal["ratio", "value"]
    op: Literal[">=", "<="]
    bound: float

    def describe(self, unit: str) -> str:
        return f"{self.op} {self.bound:g}" + ("x" if self.on == "ratio" else f" {unit}")

    def met(self, value: float, ratio: float | None) -> bool:
        subject = ratio if self.on == "ratio" else value
        if subject is None:
            return False
        return subject >= self.bound if self.op == ">=" else subject <= self.bound


@dataclass(frozen=True)
class Row:
    """One figure: what was measured, against which reference, and whether it met its target."""

    name: str
    value: float | None
    unit: str
    reference: float | None
    ratio: float | None
    target: str
    status: Status
    note: str = ""

    @classmethod
    def measured(
        cls,
        name: str,
        value: float,
        unit: str,
        reference: float | None = None,
        target: Target | None = None,
        note: str = "",
    ) -> Row:
        """A row with its ratio and verdict computed; no target means an informational row."""
        ratio = value / reference if reference else None
        if target is None:
            return cls(name, value, unit, reference, ratio, "—", "INFO", note)
        status: Status = "PASS" if target.met(value, ratio) else "MISS"
        return cls(name, value, unit, reference, ratio, target.describe(unit), status, note)

    @classmethod
    def skipped(cls, name: str, unit: str, target: Target | None, why: str) -> Row:
        """A row that could not be measured here: no fake number, the reason instead."""
        described = "—" if target is None else target.describe(unit)
        return cls(name, None, unit, None, None, described, "SKIP", why)


def number(value: float | None) -> str:
    """A figure for people: thousands separated, about three significant digits."""
    if value is None or math.isnan(value):
        return "—"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


ROW_HEADERS = ("name", "measured", "reference", "ratio", "target", "status")


def row_cells(row: Row) -> list[str]:
    """A row as the cells of ROW_HEADERS."""
    ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x"
    unit = f" {row.unit}" if row.value is not None else ""
    reference = number(row.reference) + (f" {row.unit}" if row.reference is not None else "")
    return [row.name, number(row.value) + unit, reference, ratio, row.target, row.status]


@dataclass
class Report:
    """A script's rows, notes and details: printed as a table, written as JSON for run_all."""

    script: str
    args: argparse.Namespace
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    tables: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A further table printed under the rows, for figures that are not ratios."""
        self.tables.append({"title": title, "headers": list(headers), "rows": rows})

    def finish(self) -> None:
        """Print the table (and notes), then write the JSON file when --json was given."""
        mode = " (--quick)" if self.args.quick else ""
        print(f"\n== {self.script}{mode}")
        print(format_table(ROW_HEADERS, [row_cells(r) for r in self.rows]))
        for row in self.rows:
            if row.note:
                print(f"  {row.name}: {row.note}")
        for table in self.tables:
            print(f"\n{table['title']}")
            print(format_table(table["headers"], table["rows"]))
        for note in self.notes:
            print(f"  note: {note}")
        if self.args.json is not None:
            payload = {
                "script": self.script,
                "quick": self.args.quick,
                "peak_rss_mb": peak_rss_mb(),
                "rows": [asdict(r) for r in self.rows],
                "notes": self.notes,
                "tables": self.tables,
                "details": self.details,
            }
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(json.dumps(payload, indent=2) + "\n")


class _OneLineErrors(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit 2, like walkbook's own commands."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _existing_directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not an existing directory")
    return path


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every script takes: --quick, --json PATH, --workdir DIR."""
    parser = _OneLineErrors(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    parser.add_argument(
        "--workdir",
        type=_existing_directory,
        help="where the scratch databases go (default: the system temp dir); same disk for all",
    )
    return parser


@contextmanager
def scratch(workdir: Path | None) -> Iterator[Path]:
    """A fresh directory for one script's databases, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="walkbook-bench-", dir=workdir) as path:
        yield Path(path)


def quiet_logs() -> None:
    """Keep the engine's logs (one INFO line per event, a WARNING per odd quote) out of the
    timings and the tables; errors still show."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def seconds(work: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def interleaved(rounds: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The median of each measurement over rounds taken in turn, so load from a neighbour on a
    shared machine falls on every measurement alike instead of on whichever ran last."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: statistics.median(values) for name, values in samples.items()}


Run = TypeVar("Run")


def median_run(runs: Sequence[Run], value: Callable[[Run], float]) -> Run:
    """The run whose `value` is the median of the runs (the lower of the middle two), so a
    table's figures and notes all come from one real run."""
    ordered = sorted(runs, key=value)
    return ordered[(len(ordered) - 1) // 2]


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` quantile (0..1) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux's VmHWM when there is one: getrusage's ru_maxrss survives exec, so a child
    spawned by a big parent would report the parent's peak as its own.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profiled(work: Callable[[], object]) -> pstats.Stats:
    """cProfile one call; the profile is for attribution only, never for a timed figure."""
    profile = cProfile.Profile()
    profile.runcall(work)
    return pstats.Stats(profile)


def top_self_time(stats: pstats.Stats, count: int) -> list[dict[str, Any]]:
    """The functions with the most self time, with their share of the whole profile."""
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values()) or 1.0
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [
        {
            "function": key[2] if key[0] == "~" else f"{key[0]}:{key[1]}({key[2]})",
            "calls": entry[1],
            "self_share": entry[2] / total,
            "cumulative_s": entry[3],
        }
        for key, entry in ranked
    ]
