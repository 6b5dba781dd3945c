"""`walkbook standby`: a second host's watch over a PostgreSQL journal. It waits while the
owner's lease is live; once the lease has run out with orders in flight, it takes the lease
with the next epoch and resumes them exactly as `walkbook resume` does (docs/scale-out.md).

A stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) while it waits exits 3 at once: nothing
was live for it. Once it has taken over, they halt it as they halt `resume`.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

from journal import Journal, JournalUnavailable
from journal.location import is_database_url

from ..errors import InputError
from ..fsm import TERMINAL_STATES
from .engines import journal_opener
from .exits import EXIT_CODES_HELP, EXIT_HALTED, bad_input_exits
from .options import FiniteFloatRange
from .run import ResumeRequest, resume_journal, resume_options
from .signals import stop_signals

__all__ = ["standby_command"]

DEFAULT_POLL_SECONDS = 0.5


def _quit_waiting(signum: int, frame: FrameType | None) -> None:
    sys.exit(EXIT_HALTED)


@contextmanager
def _exit_on_signals() -> Iterator[None]:
    """While standing by, a stop signal exits 3 quietly (a lease just taken is let go on
    the way out); once the walk starts, resume's own handlers (engine.cli.signals)."""
    previous = {sig: signal.signal(sig, _quit_waiting) for sig in stop_signals()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _look(url: str) -> tuple[str | None, bool]:
    """Who holds the journal's live lease (or None), and whether orders are in flight."""
    with Journal.open_readonly(url) as journal:
        return journal.holder(), bool(journal.orders(unless_state=TERMINAL_STATES))


def _stand_by(url: str, poll_seconds: float) -> None:
    """Return once no live lease holds the journal and orders are in flight; say once, on
    stderr, that it stands by and for whom. The database out of reach meanwhile (a failover)
    is waited out, said on stderr when it goes and when it comes back, so an operator
    watching a silent standby knows whether it still sees the journal."""
    announced = unreachable = False
    while True:
        try:
            holder, in_flight = _look(url)
        except JournalUnavailable as exc:
            if not unreachable:
                click.echo(
                    f"walkbook: standing by: {exc}; trying again every {poll_seconds:g} s",
                    err=True,
                )
                unreachable = True
            time.sleep(poll_seconds)
            continue
        if unreachable:
            click.echo("walkbook: standing by: the journal is within reach again", err=True)
            unreachable = False
        if holder is None and in_flight:
            return
        if not announced:
            waiting_for = (
                f"the lease of {holder} to run out"
                if holder is not None
                else "an owner's lease to run out with orders in flight"
            )
            click.echo(f"walkbook: standing by: waiting for {waiting_for}", err=True)
            announced = True
        time.sleep(poll_seconds)


@click.command("standby", epilog=EXIT_CODES_HELP)
@click.option(
    "--poll-seconds",
    type=FiniteFloatRange(min=0, min_open=True),
    default=DEFAULT_POLL_SECONDS,
    show_default=True,
    help="How often to look whether the owner's lease has run out.",
)
@resume_options
def standby_command(poll_seconds: float, request: ResumeRequest) -> None:
    """Stand by for the owner of a PostgreSQL journal: once its lease runs out with orders
    in flight, take the lease and finish them as `walkbook resume` does, then exit with
    resume's code. A stop signal while waiting exits 3."""
    with bad_input_exits():
        if not is_database_url(request.journal_path):
            raise InputError(
                "walkbook standby needs a PostgreSQL journal (--journal postgresql://...): "
                "a journal file is owned through its lock, on its own host"
            )
        url = str(request.journal_path)
        Journal.open(url, lock=False).close()  # the schema, for a journal not yet written
        take_over = journal_opener(
            url, request.lease_seconds, wait_for_lease=True, poll_seconds=poll_seconds
        )

    def open_journal(location: str | Path) -> Journal:
        """Stand by, then take the lease: called once the broker is ready (on Alpaca, its
        keys checked), so the takeover's first broker call follows the lease at once."""
        with _exit_on_signals():
            _stand_by(url, poll_seconds)
            return take_over(location)

    resume_journal(request, open_journal, standby=True)
