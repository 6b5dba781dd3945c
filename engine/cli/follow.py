"""`walkbook journal follow`: every event as it commits, for a consumer outside the writer's
process (journal/follow.py has the contract: at-least-once, in seq order, nothing skipped).

Read-only and without the lock, like the other `journal` commands. Each line is flushed as
it is printed, so a pipe's reader sees each event at once. Exit codes: 0 when it ends (idle
for --until-idle seconds, a stop signal such as SIGTERM or Ctrl-C, or its reader closed the
pipe); 2 for a journal that is missing, not a walkbook journal or damaged, or a --from-seq
it cannot be followed from (one line on stderr).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

from journal import Event, Journal, canonical_json

from ..audit.tables import EVENT_COLUMNS, json_line
from .exits import bad_input_exits
from .options import FiniteFloatRange, JournalFile
from .output import to_devnull
from .signals import stop_signals

__all__ = ["follow_command", "text_line"]


def text_line(event: Event) -> str:
    """One event for a person reading along, laid out as `journal replay` lays out its
    events: seq, time, kind, order, state (from->to on a transition), then its data."""
    state = event.to_state or "-"
    if event.from_state is not None and event.from_state != event.to_state:
        state = f"{event.from_state}->{state}"
    return (
        f"{event.seq:>8} {event.at} {event.kind:<15} {event.order_id or '-'} {state} "
        f"{canonical_json(event.data)}\n"
    )


def _jsonl_line(event: Event) -> str:
    return json_line(EVENT_COLUMNS, vars(event))


RENDERERS: dict[str, Callable[[Event], str]] = {"jsonl": _jsonl_line, "text": text_line}


@contextmanager
def _stop_signals() -> Iterator[Callable[[], bool]]:
    """Whether a stop signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT) came: it asks the feed to end
    after the line it prints, or within a poll when it waits, so every line is printed whole
    and the count on stderr is exact."""
    came: list[int] = []

    def ask(signum: int, frame: FrameType | None) -> None:
        came.append(signum)

    previous = {sig: signal.signal(sig, ask) for sig in stop_signals()}
    try:
        yield lambda: bool(came)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _reader_gone_quietly() -> Iterator[None]:
    """A reader that closed the pipe ends the feed (exit 0), without a traceback."""
    try:
        yield
    except BrokenPipeError:
        to_devnull(sys.stdout)


@click.command("follow")
@click.option("--journal", "journal_path", required=True, type=JournalFile())
@click.option(
    "--from-seq",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Print the events after this seq: a cursor, the last seq the consumer handled.",
)
@click.option(
    "--format", "format_", type=click.Choice(sorted(RENDERERS)), default="jsonl", show_default=True
)
@click.option(
    "--until-idle",
    type=FiniteFloatRange(min=0),
    help="End (exit 0) after this many seconds without a new event (0: once caught up); "
    "without it, follow until stopped.",
)
def follow_command(
    journal_path: Path, from_seq: int, format_: str, until_idle: float | None
) -> None:
    """Print every event after --from-seq as it commits, in seq order, nothing skipped, from
    a second, read-only process; one line each (JSON lines as `journal export` writes them,
    or text), flushed at once. Ends (exit 0) after --until-idle seconds without a new event,
    on a stop signal (SIGTERM, Ctrl-C, ...), or when the reader closes the pipe; the last
    line on stderr gives the seq to resume from."""
    render, printed, last_seq = RENDERERS[format_], 0, from_seq
    with (
        bad_input_exits(),
        Journal.open_readonly(journal_path) as journal,
        _stop_signals() as stopped,
        _reader_gone_quietly(),
    ):
        for event in journal.follow(from_seq, until_idle=until_idle, stop=stopped):
            sys.stdout.write(render(event))
            sys.stdout.flush()
            printed, last_seq = printed + 1, event.seq
            if stopped():
                break
    resume = f"resume with --from-seq {last_seq}"
    click.echo(f"walkbook: followed {printed} event(s); {resume}", err=True)
