"""`walkbook halt` and `walkbook abandon`: stop a journal's in-flight orders, through the
process running it when there is one, else here. The journal is a file or a PostgreSQL
database (`postgresql://USER@HOST:PORT/DB`); engine/stopping.py carries the request."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NoReturn

import click

from journal import Journal, JournalLocked
from journal.location import is_database_url, journal_holder
from journal.lock import JournalLock

from ..brokers.sim import MarketSpec
from ..engine import Engine
from ..errors import InputError
from ..fsm import TERMINAL_STATES, FailReason
from ..stopping import HaltRequest, clear_halt_request, write_halt_request
from .brokers import BrokerChoice, broker_options
from .engines import alpaca_engine, simulated_engine
from .exits import EXIT_CODES_HELP, EXIT_OK, bad_input_exits, stopped_with_work_live, work_exits
from .options import FiniteFloatRange, JournalFile
from .output import configure_output
from .signals import finishing_on_signals

__all__ = ["abandon_command", "halt_command"]

DEFAULT_HALT_WAIT_SECONDS = 120.0
POLL_SECONDS = 0.2


def _owner_pid(journal_path: str | Path) -> int | None:
    with Journal.open_readonly(journal_path) as journal:
        owner = journal.owner()
    return None if owner is None else int(owner["pid"])


def _lock_free(journal_path: str | Path) -> bool:
    """Whether no process owns the journal: a file's lock, probed by taking it; a
    database's owner, asked of the server."""
    if is_database_url(journal_path):
        return journal_holder(journal_path) is None
    lock = JournalLock(Path(journal_path))
    try:
        lock.acquire(f"pid {os.getpid()} (walkbook halt, probing)")
    except JournalLocked:
        return False
    lock.release()
    return True


def _still_in_flight(journal_path: str | Path, plan_id: str | None) -> list[dict[str, Any]]:
    with Journal.open_readonly(journal_path) as journal:
        return journal.orders(plan_id=plan_id, unless_state=TERMINAL_STATES)


def _ask_the_owner(journal_path: str | Path, request: HaltRequest, wait_seconds: float) -> bool:
    """Ask the process holding the journal to stop; True once what it was asked to stop has
    ended, False when it exited first (the lock is free: stop the rest here)."""
    name = write_halt_request(journal_path, request)
    deadline = time.monotonic() + wait_seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            if not _still_in_flight(journal_path, request.plan_id):
                return True
            if _lock_free(journal_path):
                return False
    finally:
        clear_halt_request(journal_path, name)
    stopped_with_work_live(
        f"the process holding the journal (pid {request.target_pid}) did not finish halting "
        f"within {wait_seconds:g} s"
    )


def _stop(
    journal_path: str | Path,
    plan_id: str | None,
    reason: FailReason,
    wait_seconds: float,
    open_engine: Callable[[], AbstractContextManager[Engine]],
) -> NoReturn:
    """Stop the chosen in-flight orders, through the running owner or, when none, here."""
    configure_output("warning")
    with bad_input_exits():
        if isinstance(journal_path, Path) and not journal_path.exists():
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
                    stopping = engine.halt()
                elif reason is FailReason.ABANDONED:
                    stopping = engine.abandon(plan_id)
                else:
                    stopping = engine.cancel_plan(plan_id)
                stopped = engine.clock.run(finishing_on_signals(stopping))
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
        click.option("--journal", "journal_path", required=True, type=JournalFile()),
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
    journal_path: str | Path, sim_state: Path | None, choice: BrokerChoice
) -> Callable[[], AbstractContextManager[Engine]]:
    choice.check(sim_state=sim_state)
    if choice.is_alpaca:
        return lambda: alpaca_engine(journal_path, choice)
    if sim_state is None or not sim_state.exists():
        raise InputError(
            "--sim-state (an existing simulator state file) is required on the simulator"
        )
    return lambda: simulated_engine(
        journal_path, MarketSpec(), sim_state, config=choice.engine_config()
    )


@click.command("halt", epilog=EXIT_CODES_HELP)
@click.option("--plan", "plan_id", help="Halt only this plan's orders.")
@_stop_options
def halt_command(
    journal_path: str | Path,
    sim_state: Path | None,
    wait_seconds: float,
    plan_id: str | None,
    broker_choice: BrokerChoice,
) -> None:
    """Halt the journal's in-flight orders: cancel their live broker orders and end each
    FAILED `cancelled`. A process running the journal is asked to halt and waited for;
    with none, the halt is done here. Exit 0 once nothing of it is live."""
    with bad_input_exits():
        opener = _engine_opener(journal_path, sim_state, broker_choice)
    _stop(journal_path, plan_id, FailReason.CANCELLED, wait_seconds, opener)


@click.command("abandon", epilog=EXIT_CODES_HELP)
@click.option("--plan", "plan_id", required=True, help="The plan to abandon.")
@_stop_options
def abandon_command(
    journal_path: str | Path,
    sim_state: Path | None,
    wait_seconds: float,
    plan_id: str,
    broker_choice: BrokerChoice,
) -> None:
    """Abandon a plan: cancel its live broker orders and end each in-flight order FAILED
    `abandoned`, never trading it further (a stale plan a new one replaces)."""
    with bad_input_exits():
        opener = _engine_opener(journal_path, sim_state, broker_choice)
    _stop(journal_path, plan_id, FailReason.ABANDONED, wait_seconds, opener)
