"""The `walkbook` CLI is a package whose modules import only downward: each imports alone in
a fresh interpreter, no import (late ones inside functions included) closes a cycle through
it, and `import engine.cli` loads each of its modules once and neither Alpaca's SDK, the
sim-server nor the PostgreSQL driver. Real interpreters: a process that already imported
the modules in a lucky order hides what a cycle does to a fresh one."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import engine

ENGINE_DIR = Path(engine.__file__).resolve().parent
ROOT = ENGINE_DIR.parent
CLI = "engine.cli"
# what `import engine.cli` must not load: kept for the commands that trade on or serve Alpaca
# the SDKs and drivers a command on the embedded simulator and a SQLite journal never needs
LOADED_ONLY_WHEN_USED = (
    "alpaca",
    "engine.brokers.alpaca",
    "engine.brokers.simserver",
    "psycopg",
    "journal.postgres",
    "journal.lease",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def engine_modules() -> dict[str, Path]:
    return {module_name(path): path for path in ENGINE_DIR.rglob("*.py")}


def is_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def cli_modules() -> list[str]:
    """engine.cli and its modules, from the files of the package."""
    package = ENGINE_DIR / "cli"
    assert (package / "__init__.py").is_file(), f"{CLI} is not a package ({package}/)"
    return sorted(module_name(path) for path in package.glob("*.py"))


@cache
def imported_by(name: str) -> frozenset[str]:
    """The engine modules `name` imports anywhere in its file, top level or in a function."""
    path = engine_modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(part for part in (base, node.module) if part)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"  # `from . import audit` imports a module
                targets.add(submodule if submodule in engine_modules() else base)
    return frozenset(targets & engine_modules().keys())


def cycle_through(start: str) -> list[str] | None:
    """The shortest chain of imports from `start` back to itself, if there is one."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            for target in sorted(imported_by(name)):
                if target == start:
                    chain = [name]
                    while chain[-1] != start:
                        chain.append(came_from[chain[-1]])
                    return [*reversed(chain), start]
                if target not in came_from:
                    came_from[target] = name
                    following.append(target)
        frontier = following
    return None


def test_each_cli_module_imports_alone_in_a_fresh_interpreter() -> None:
    modules = cli_modules()
    assert len(modules) > 1, f"{CLI} has no modules: {modules}"
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import {name}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in modules
    }
    failures = {}
    for name, process in processes.items():
        _, stderr = process.communicate()
        if process.returncode != 0:
            failures[name] = stderr.strip().splitlines()[-1:]
    assert not failures, failures


def test_no_import_cycle_passes_through_a_cli_module() -> None:
    cli = sorted(name for name in engine_modules() if is_cli(name))
    assert cli, f"no {CLI} module under {ENGINE_DIR}"
    cycles: dict[frozenset[str], str] = {}
    for name in cli:
        chain = cycle_through(name)
        if chain is not None:  # one line per cycle, not one per module on it
            cycles.setdefault(frozenset(chain), " -> ".join(chain))
    assert not cycles, "import cycles:\n" + "\n".join(cycles.values())


def test_importing_the_cli_loads_each_of_its_modules_once_and_no_sdk() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {CLI}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = Counter(
        line.rpartition("|")[2].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    )
    modules = cli_modules()
    times_loaded = {name: loaded[name] for name in {*modules, *filter(is_cli, loaded)}}
    assert times_loaded == dict.fromkeys(modules, 1)  # each once, none left out, none else
    assert not [name for name in LOADED_ONLY_WHEN_USED if name in loaded]


def test_the_sim_server_starts_without_the_alpaca_sdk() -> None:
    """It speaks Alpaca's API itself; importing alpaca-py for the two names of the key
    variables cost each start 0.4 s."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         "import engine.brokers.simserver; from engine.cli.simserver import _server_keys; "
         "_server_keys()"],
        cwd=ROOT,
        env={**os.environ, "APCA_API_KEY_ID": "PKTEST", "APCA_API_SECRET_KEY": "secret"},
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()}
    assert "alpaca" not in loaded
    assert "engine.brokers.alpaca" not in loaded
