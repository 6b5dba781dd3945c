"""Stopping from the command line: exit codes a scheduler acts on, signals, `walkbook halt`
and `walkbook abandon`.

Exit codes: 0 every order VALIDATED; 1 some order FAILED; 2 bad input or a refused
request, nothing sent and nothing journaled; 3 halted (a signal or `walkbook halt`),
nothing left live; 4 stopped with work possibly live at the broker: run `walkbook resume`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from journal import Journal, JournalLocked
from journal.lock import JournalLock

from .cli_alpaca import BrokerChoice, FiniteFloatRange, alpaca_engine, broker_options
from .engine import Engine
from .errors import InputError
from .fsm import TERMINAL_STATES, FailReason
from .results import OrderResult
from .stopping import HaltRequest, clear_halt_request, write_halt_request

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CODES_HELP",
    "EXIT_FAILED",
    "EXIT_HALTED",
    "EXIT_OK",
    "EXIT_WORK_LIVE",
    "abandon_command",
    "halt_command",
    "halting_on_signals",
    "outcome_exit_code",
    "work_exits",
]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_HALTED, EXIT_WORK_LIVE = 0, 1, 2, 3, 4
EXIT_CODES_HELP = (
    "Exit codes: 0 every order VALIDATED; 1 some order FAILED; 2 bad input or refused "
    "request (nothing sent, nothing journaled); 3 halted by a signal or `walkbook halt`, "
    "nothing left live; 4 stopped with work possibly live at the broker: run `walkbook resume`."
)
HALT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_HALT_WAIT_SECONDS = 120.0
POLL_SECONDS = 0.2
T = TypeVar("T")


def outcome_exit_code(results: Iterable[OrderResult]) -> int:
    """What a run or resume ended with, as the scheduler's exit code."""
    orders = list(results)
    if any(o.state not in TERMINAL_STATES for o in orders):
        return EXIT_WORK_LIVE
    if all(o.succeeded for o in orders):
        return EXIT_OK
    if any(o.reason == FailReason.CANCELLED for o in orders):
        return EXIT_HALTED
    return EXIT_FAILED


def stopped_with_work_live(message: str) -> NoReturn:
    click.echo(
        f"walkbook: stopped: {message}; orders may be live at the broker: "
        "run `walkbook resume` on this journal",
        err=True,
    )
    sys.exit(EXIT_WORK_LIVE)


@contextmanager
def work_exits(engine: Engine) -> Iterator[None]:
    """An error once something was journaled is exit 4, never 2: write-ahead means what
    was journaled may have been sent. Before that, errors go on to the bad-input exit."""
    start = engine.journal.last_seq
    try:
        yield
    except Exception as exc:
        if engine.journal.last_seq == start:
            raise
        stopped_with_work_live(getattr(exc, "message", None) or str(exc) or type(exc).__name__)


async def halting_on_signals(engine: Engine, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; the first SIGINT or SIGTERM halts the engine (live orders cancelled, each
    order FAILED `cancelled`), a second one exits at once with code 4."""
    loop = asyncio.get_running_loop()
    halts: list[asyncio.Future[Any]] = []

    def second(name: str) -> None:
        click.echo(f"walkbook: {name} again: exiting now, leaving the rest to resume", err=True)
        os._exit(EXIT_WORK_LIVE)

    def first(name: str) -> None:
        click.echo(
            f"walkbook: {name}: halting, cancelling live orders ({name} again to exit now)",
            err=True,
        )
        halts.append(asyncio.ensure_future(engine.halt()))
        for sig in HALT_SIGNALS:
            loop.add_signal_handler(sig, second, sig.name)

    for sig in HALT_SIGNALS:
        loop.add_signal_handler(sig, first, sig.name)
    try:
        result = await work
        for halt in halts:
            await halt
        return result
    finally:
        for sig in HALT_SIGNALS:
            loop.remove_signal_handler(sig)


def _owner_pid(journal_path: Path) -> int | None:
    with Journal.open_readonly(journal_path) as journal:
        owner = journal.owner()
    return None if owner is None else int(owner["pid"])


def _lock_free(journal_path: Path) -> bool:
    lock = JournalLock(journal_path)
    try:
        lock.acquire(f"pid {os.getpid()} (walkbook halt, probing)")
    except JournalLocked:
        return False
    lock.release()
    return True


def _still_in_flight(journal_path: Path, plan_id: str | None) -> list[dict[str, Any]]:
    with Journal.open_readonly(journal_path) as journal:
        return journal.orders(plan_id=plan_id, unless_state=TERMINAL_STATES)


def _ask_the_owner(journal_path: Path, request: HaltRequest, wait_seconds: float) -> bool:
    """Ask the process holding the journal to stop; True once what it was asked to stop has
    ended, False when it exited first (the lock is free: stop the rest here)."""
    write_halt_request(journal_path, request)
    deadline = time.monotonic() + wait_seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            if not _still_in_flight(journal_path, request.plan_id):
                return True
            if _lock_free(journal_path):
                return False
    finally:
        clear_halt_request(journal_path)
    stopped_with_work_live(
        f"the process holding the journal (pid {request.target_pid}) did not finish halting "
        f"within {wait_seconds:g} s"
    )


def _stop(
    journal_path: Path,
    plan_id: str | None,
    reason: FailReason,
    wait_seconds: float,
    open_engine: Callable[[], AbstractContextManager[Engine]],
) -> NoReturn:
    """Stop the chosen in-flight orders, through the running owner or, when none, here."""
    from .cli import _bad_input_exits, _configure_logging  # late: engine.cli imports this

    _configure_logging("warning")
    with _bad_input_exits():
        if not journal_path.exists():
            raise InputError(f"journal {journal_path} does not exist")
        while not _lock_free(journal_path):
            pid = _owner_pid(journal_path)
            if pid is not None and _ask_the_owner(
                journal_path, HaltRequest(plan_id, reason, pid), wait_seconds
            ):
                click.echo(f"walkbook: pid {pid} halted: nothing of it is left in flight")
                sys.exit(EXIT_OK)
        try:
            with open_engine() as engine, work_exits(engine):
                if plan_id is None:
                    stopped = engine.clock.run(engine.halt())
                elif reason is FailReason.ABANDONED:
                    stopped = engine.clock.run(engine.abandon(plan_id))
                else:
                    stopped = engine.clock.run(engine.cancel_plan(plan_id))
        except JournalLocked as exc:  # another process took it between probe and open
            raise InputError(f"{exc.message}; try again") from None
    if not stopped:
        whose = "" if plan_id is None else f" of plan {plan_id}"
        click.echo(f"nothing in flight{whose}: every such order is already terminal")
    for order in stopped:
        click.echo(
            f"{order.symbol} {order.order_id}: {order.state}"
            + (f" ({order.reason})" if order.reason else "")
            + f", filled {order.filled_qty}/{order.quantity}"
        )
    live = [o for o in stopped if o.state not in TERMINAL_STATES]
    if live:
        stopped_with_work_live(f"{len(live)} order(s) could not be stopped")
    sys.exit(EXIT_OK)


def _stop_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--journal", "journal_path", required=True, type=click.Path(path_type=Path)),
        click.option(
            "--sim-state",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The simulator state file the run used (on the simulator).",
        ),
        click.option(
            "--wait",
            "wait_seconds",
            type=FiniteFloatRange(min=0, min_open=True, max=24 * 3600),
            default=DEFAULT_HALT_WAIT_SECONDS,
            show_default=True,
            help="How long to wait for a running process to stop its orders.",
        ),
    ]
    decorated = broker_options(command)
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def _engine_opener(
    journal_path: Path, sim_state: Path | None, choice: BrokerChoice
) -> Callable[[], AbstractContextManager[Engine]]:
    from .cli import _simulated_engine  # late: engine.cli imports this module
    from .sim import MarketSpec

    choice.check(sim_state=sim_state)
    if choice.is_alpaca:
        return lambda: alpaca_engine(journal_path, choice)
    if sim_state is None or not sim_state.exists():
        raise InputError(
            "--sim-state (an existing simulator state file) is required on the simulator"
        )
    return lambda: _simulated_engine(
        journal_path, MarketSpec(), sim_state, config=choice.engine_config()
    )


@click.command("halt", epilog=EXIT_CODES_HELP)
@click.option("--plan", "plan_id", help="Halt only this plan's orders.")
@_stop_options
def halt_command(
    journal_path: Path,
    sim_state: Path | None,
    wait_seconds: float,
    plan_id: str | None,
    broker_choice: BrokerChoice,
) -> None:
    """Halt the journal's in-flight orders: cancel their live broker orders and end each
    FAILED `cancelled`. A process running the journal is asked to halt and waited for;
    with none, the halt is done here. Exit 0 once nothing of it is live."""
    from .cli import _bad_input_exits

    with _bad_input_exits():
        opener = _engine_opener(journal_path, sim_state, broker_choice)
    _stop(journal_path, plan_id, FailReason.CANCELLED, wait_seconds, opener)


@click.command("abandon", epilog=EXIT_CODES_HELP)
@click.option("--plan", "plan_id", required=True, help="The plan to abandon.")
@_stop_options
def abandon_command(
    journal_path: Path,
    sim_state: Path | None,
    wait_seconds: float,
    plan_id: str,
    broker_choice: BrokerChoice,
) -> None:
    """Abandon a plan: cancel its live broker orders and end each in-flight order FAILED
    `abandoned`, never trading it further (a stale plan a new one replaces)."""
    from .cli import _bad_input_exits

    with _bad_input_exits():
        opener = _engine_opener(journal_path, sim_state, broker_choice)
    _stop(journal_path, plan_id, FailReason.ABANDONED, wait_seconds, opener)
