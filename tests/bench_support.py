"""The bench smoke's one `python -m bench.run_all --quick` run, started in the background as
soon as the session has collected a test that uses it (tests/conftest.py): the benchmarks
run one process at a time for about 40 s, mostly on the core the suite leaves idle, and the
smoke tests' fixture waits only for what is left. Their speed is never checked here (bench/ is
where it is), so a busy machine changes no verdict.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["QuickBench"]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_SECONDS = 300
STOP_SECONDS = 20


@dataclass
class QuickBench:
    """The run in progress: its process, and the directory of its output and scratch files."""

    process: subprocess.Popen[str]
    out: Path
    log: IO[str]

    @classmethod
    def start(cls) -> QuickBench:
        out = Path(tempfile.mkdtemp(prefix="walkbook-bench-smoke-"))
        log = (out / "run_all.log").open("w")
        command = [sys.executable, "-m", "bench.run_all", "--quick", "--out", str(out)]
        process = subprocess.Popen(
            [*command, "--workdir", str(out)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a process group of its own: stopped with its script
        )
        return cls(process, out, log)

    def results(self) -> dict[str, dict[str, Any]]:
        """Once the run has ended: each script's JSON by script name."""
        code = self.process.wait(timeout=TIMEOUT_SECONDS)
        self.log.close()
        assert code == 0, (self.out / "run_all.log").read_text()[-8000:]
        summary = json.loads((self.out / "results.json").read_text())
        return {result["script"]: result for result in summary["results"]}

    def stop(self) -> None:
        """At the session's end (an early one: -x, Ctrl-C): a run still going is interrupted
        like Ctrl-C, so its script stops the PostgreSQL cluster it started, and killed when
        it outstays STOP_SECONDS; its files are removed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.out, ignore_errors=True)
