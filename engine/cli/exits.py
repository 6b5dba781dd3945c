"""How a `walkbook` command ends: the exit codes a scheduler acts on, and the one-line
refusals that go with them.

Exit codes: 0 every order VALIDATED (or skipped: worth less than `min_order_notional`);
1 some order FAILED; 2 bad input or a refused request, nothing sent and nothing
journaled; 3 halted (a signal or `walkbook halt`), nothing left live; 4 stopped with work
possibly live at the broker: run `walkbook resume`; 5 (`walkbook preview` only) the
preview says some order or the plan would be refused.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, NoReturn

import click

from journal import JournalError, JournalLeaseLost

from ..engine import Engine
from ..errors import InputError, PlanHalted
from ..fsm import TERMINAL_STATES, FailReason
from ..results import OrderResult

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CODES_HELP",
    "EXIT_FAILED",
    "EXIT_HALTED",
    "EXIT_OK",
    "EXIT_WORK_LIVE",
    "EXIT_WOULD_REFUSE",
    "OneLineUsageError",
    "bad_input_exits",
    "outcome_exit_code",
    "stopped_with_work_live",
    "usage_errors_on_one_line",
    "work_exits",
]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_HALTED, EXIT_WORK_LIVE = 0, 1, 2, 3, 4
# a preview found an order or the plan that would be refused: nothing failed (nothing ran),
# so not 1, and the request itself was fine, so not 2
EXIT_WOULD_REFUSE = 5
EXIT_CODES_HELP = (
    "Exit codes: 0 every order VALIDATED (or skipped: worth less than min_order_notional); "
    "1 some order FAILED; 2 bad input or refused "
    "request (nothing sent, nothing journaled); 3 halted by a signal or `walkbook halt`, "
    "nothing left live; 4 stopped with work possibly live at the broker: run `walkbook resume`; "
    "5 `walkbook preview`: some order or the plan would be refused."
)


def outcome_exit_code(results: Iterable[OrderResult]) -> int:
    """What a run or resume ended with, as the scheduler's exit code."""
    orders = list(results)
    if any(o.state not in TERMINAL_STATES for o in orders):
        return EXIT_WORK_LIVE
    if all(o.done_as_asked for o in orders):
        return EXIT_OK
    if any(o.reason == FailReason.CANCELLED for o in orders):
        return EXIT_HALTED
    return EXIT_FAILED


def _printable(message: str) -> str:
    """`message` with every unprintable character escaped: a key named "\\n" or "\\x1b[2J" in
    a hostile file must neither break the one-line refusal nor reach the terminal raw."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _die(message: str) -> NoReturn:
    click.echo(f"walkbook: error: {_printable(message)}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@contextmanager
def bad_input_exits() -> Iterator[None]:
    """Turn every typed input or journal error into one line and exit code 2."""
    try:
        yield
    except (InputError, JournalError) as exc:
        _die(exc.message)


class OneLineUsageError(click.ClickException):
    """A usage error shown like every other refusal: one `walkbook: error:` line, exit 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"walkbook: error: {_printable(self.format_message())}", err=True)


@contextmanager
def usage_errors_on_one_line() -> Iterator[None]:
    """Click's usage errors (a bad option value, a missing argument) as OneLineUsageError;
    `walkbook` alone still shows the help."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.UsageError as exc:
        command = "walkbook" if exc.ctx is None else exc.ctx.command_path
        message = exc.format_message().rstrip(".")
        raise OneLineUsageError(f"{message} (see `{command} --help`)") from None


def stopped_with_work_live(message: str) -> NoReturn:
    click.echo(
        f"walkbook: stopped: {message}; orders may be live at the broker: "
        "run `walkbook resume` on this journal",
        err=True,
    )
    sys.exit(EXIT_WORK_LIVE)


def _lease_lost(exc: JournalLeaseLost) -> NoReturn:
    """Fenced: the append was refused and nothing more was sent; exit 4, one line, naming
    the process that carries the orders on (if none does yet, `resume` is the way on)."""
    if not exc.fields.get("owner_live"):
        stopped_with_work_live(exc.message)
    click.echo(
        f"walkbook: stopped: {_printable(exc.message)}, which carries the orders on; "
        "this process sent nothing more",
        err=True,
    )
    sys.exit(EXIT_WORK_LIVE)


@contextmanager
def work_exits(engine: Engine) -> Iterator[None]:
    """An error once something was journaled is exit 4, never 2: write-ahead means what
    was journaled may have been sent. Before that, errors go on to the bad-input exit; a
    lost lease is exit 4 either way (another process owns the orders now), and a plan
    halted while it was being checked is exit 3 (nothing journaled, nothing sent)."""
    start = engine.journal.last_seq
    try:
        yield
    except JournalLeaseLost as exc:
        _lease_lost(exc)
    except PlanHalted as exc:
        click.echo(f"walkbook: {_printable(exc.message)}", err=True)
        sys.exit(EXIT_HALTED)
    except Exception as exc:
        if engine.journal.last_seq == start:
            raise
        stopped_with_work_live(getattr(exc, "message", None) or str(exc) or type(exc).__name__)
