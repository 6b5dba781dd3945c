"""`walkbook run`, `resume` and `demo`: the commands that walk orders to their end.

A stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) halts them (live orders cancelled, exit 3);
see engine.cli.exits for every exit code.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console

from journal import Journal
from journal.location import journal_holder
from journal.trust import in_flight_rows, trusted_end

from ..brokers.sim import MarketSpec, load_market_spec, parse_market_spec
from ..config import EngineConfig
from ..engine import Engine, ResumeReport
from ..errors import InputError
from ..files import write_private_text
from ..fsm import TERMINAL_STATES
from ..intents import RebalancePlan, load_plan, parse_plan
from ..results import PlanResult
from .brokers import BrokerChoice, broker_options
from .engines import JournalOpener, alpaca_engine, journal_opener, simulated_engine
from .exits import EXIT_CODES_HELP, bad_input_exits, outcome_exit_code, work_exits
from .options import (
    LEASE_SECONDS_OPTION,
    LOG_LEVEL_OPTION,
    MAX_PLAN_ORDERS_OPTION,
    FiniteFloatRange,
    JournalFile,
)
from .output import configure_output, report_console
from .progress import PLAIN, Progress, result_table
from .signals import halting_on_signals

if TYPE_CHECKING:
    from ..metrics import WalkbookMetrics

__all__ = [
    "ResumeRequest",
    "demo_command",
    "resume_command",
    "resume_journal",
    "resume_options",
    "run_command",
]


def _run_plan(
    engine_context: AbstractContextManager[Engine],
    plan: RebalancePlan,
    console: Console,
    metrics: WalkbookMetrics | None = None,
) -> PlanResult:
    with engine_context as engine, Progress(console, plan) as progress, work_exits(engine):
        if metrics is not None:
            metrics.attach(engine)
        progress.follow(engine)
        return engine.clock.run(halting_on_signals(engine, engine.execute_plan(plan)))


def _run_on_simulator(
    plan: RebalancePlan,
    journal_path: Path,
    market: MarketSpec,
    console: Console,
    sim_state: Path | None = None,
    config: EngineConfig | None = None,
) -> PlanResult:
    engine_context = simulated_engine(journal_path, market, sim_state, config=config)
    return _run_plan(engine_context, plan, console)


METRICS_PORT_OPTION = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics while the command runs "
    "(0: a free port, printed on stderr). See docs/metrics.md.",
)


@contextmanager
def _metrics_served(port: int | None) -> Iterator[WalkbookMetrics | None]:
    """With --metrics-port: the metrics, served on 127.0.0.1 until the command ends; a port
    that cannot be listened on is bad input (exit 2), refused before the journal is opened."""
    if port is None:
        yield None
        return
    from ..metrics import WalkbookMetrics, serve_metrics  # here: prometheus_client when used

    server = serve_metrics(port)
    click.echo(f"walkbook: metrics on http://127.0.0.1:{server.port}/metrics", err=True)
    try:
        yield WalkbookMetrics(server.registry)
    finally:
        server.close()


def _check_result_path(path: Path | None) -> None:
    """Before anything is journaled: the result file's directory exists and takes the file,
    so a plan that traded does not end in a traceback for want of a place to write to."""
    if path is None:
        return
    directory = path.parent
    if not directory.is_dir():
        raise InputError(f"--result-json {path}: directory {directory} does not exist")
    if path.exists():
        writable = os.access(path, os.W_OK)
    else:
        writable = os.access(directory, os.W_OK | os.X_OK)
    if not writable:
        raise InputError(f"--result-json {path}: not writable")


def _write_result(result: PlanResult, path: Path) -> None:
    """The result JSON, created 0600 like every file walkbook writes. A failure now (a full
    disk) is reported, and the exit code stays the plan's: the journal holds the result."""
    try:
        write_private_text(path, json.dumps(result.to_json_dict(), indent=2) + "\n")
    except OSError as exc:
        click.echo(f"walkbook: error: cannot write --result-json {path}: {exc.strerror}", err=True)


def _finish(result: PlanResult, console: Console, result_json: Path | None) -> NoReturn:
    console.print(result_table(result))
    for order in result.orders:
        if order.detail is not None:
            outcome = "SKIPPED" if order.skipped else "FAILED"
            console.print(f"{order.symbol} {order.order_id} {outcome} {order.failure}", **PLAIN)
    if result_json is not None:
        _write_result(result, result_json)
    sys.exit(outcome_exit_code(result.orders))


def _common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--seed", type=int, default=None, help="Simulator seed (overrides the spec)."),
        click.option(
            "--result-json",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Also write the plan result as JSON here.",
        ),
        LOG_LEVEL_OPTION,
    ]
    for option in reversed(options):
        command = option(command)
    return command


IN_FLIGHT_OPTION = click.option(
    "--in-flight",
    type=click.Choice(["refuse", "resume_first", "abandon"]),
    help="Other plans' orders in flight in the journal: refuse (the default), walk them "
    "to the end first, or abandon them.",
)
IGNORE_UNKNOWN_OPTION = click.option(
    "--ignore-unknown-orders",
    is_flag=True,
    help="Go on although the broker shows open walkbook orders this journal does not know.",
)


def _with_overrides(choice: BrokerChoice, **overrides: Any) -> BrokerChoice:
    """The broker choice with the engine-config settings given as their own options."""
    given = {k: v for k, v in overrides.items() if v}
    if given.pop("ignore_unknown_orders", False):
        given["unknown_orders"] = "ignore"
    return replace(choice, config_overrides=given)


@click.command("run", epilog=EXIT_CODES_HELP)
@click.argument("plan_file", type=click.Path(path_type=Path))
@click.option("--journal", "journal_path", required=True, type=JournalFile())
@click.option(
    "--market", type=click.Path(path_type=Path), help="Market spec JSON for the simulator."
)
@MAX_PLAN_ORDERS_OPTION
@click.option(
    "--sim-state",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the simulator's state in this SQLite file so a later resume meets the same book.",
)
@IN_FLIGHT_OPTION
@IGNORE_UNKNOWN_OPTION
@METRICS_PORT_OPTION
@LEASE_SECONDS_OPTION
@_common_options
@broker_options
def run_command(
    plan_file: Path,
    journal_path: str | Path,
    market: Path | None,
    max_plan_orders: int,
    sim_state: Path | None,
    in_flight: str | None,
    ignore_unknown_orders: bool,
    metrics_port: int | None,
    lease_seconds: float | None,
    seed: int | None,
    result_json: Path | None,
    log_level: str,
    broker_choice: BrokerChoice,
) -> None:
    """Execute PLAN_FILE, journaling into --journal: on the simulator in virtual time,
    or with --broker alpaca on an Alpaca account (paper unless --live) in real time.
    A stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) halts it (live orders cancelled, exit
    3); a second one exits at once."""
    configure_output(log_level)
    console = report_console()
    broker_choice = _with_overrides(
        broker_choice, in_flight=in_flight, ignore_unknown_orders=ignore_unknown_orders
    )
    with bad_input_exits():
        broker_choice.check(market=market, sim_state=sim_state, seed=seed)
        _check_result_path(result_json)
        plan = load_plan(plan_file, max_orders=max_plan_orders)
        open_journal = journal_opener(journal_path, lease_seconds)
        if broker_choice.is_alpaca:
            engine_context = alpaca_engine(journal_path, broker_choice, open_journal)
        else:
            spec = (load_market_spec(market) if market else MarketSpec()).with_seed(seed)
            config = broker_choice.engine_config()
            engine_context = simulated_engine(
                journal_path, spec, sim_state, config=config, open_journal=open_journal
            )
        with _metrics_served(metrics_port) as metrics:
            result = _run_plan(engine_context, plan, console, metrics)
    _finish(result, console, result_json)


@dataclass(frozen=True)
class ResumeRequest:
    """What `resume` and `standby` were asked, as their shared options give it."""

    journal_path: str | Path
    sim_state: Path | None
    max_age_seconds: float | None
    ignore_unknown_orders: bool
    metrics_port: int | None
    offline_seconds: float
    lease_seconds: float | None
    broker_choice: BrokerChoice


def resume_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `resume` and `standby` share, passed as one `request` (a standby resumes
    as `resume` does); the log level is set before the command runs."""
    options = [
        click.option("--journal", "journal_path", required=True, type=JournalFile()),
        click.option(
            "--sim-state",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The simulator state file the interrupted run used (required on the simulator).",
        ),
        click.option(
            "--max-age",
            "max_age_seconds",
            type=FiniteFloatRange(min=0),
            help="Abandon (cancel, FAILED abandoned) in-flight orders created longer ago than "
            "this many seconds instead of walking them.",
        ),
        IGNORE_UNKNOWN_OPTION,
        METRICS_PORT_OPTION,
        click.option(
            "--offline-seconds",
            type=FiniteFloatRange(min=0),
            default=0.0,
            show_default=True,
            help="Virtual seconds the market moves on while the engine was down.",
        ),
        LEASE_SECONDS_OPTION,
        LOG_LEVEL_OPTION,
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, log_level: str, **kwargs: Any) -> Any:
        configure_output(log_level)
        asked = {name: kwargs.pop(name) for name in ResumeRequest.__dataclass_fields__}
        return command(*args, request=ResumeRequest(**asked), **kwargs)

    decorated: Callable[..., Any] = broker_options(wrapper)
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


@click.command("resume", epilog=EXIT_CODES_HELP)
@resume_options
def resume_command(request: ResumeRequest) -> None:
    """Finish every order a killed run left in flight: no duplicates, no lost fills.
    A stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) halts it (live orders cancelled, exit
    3). A journal with nothing in flight exits 0 at once; one whose live orders the broker
    does not know is refused."""
    journal_path = request.journal_path
    with bad_input_exits():
        if isinstance(journal_path, Path) and not journal_path.exists():
            raise InputError(f"journal {journal_path} does not exist")
        holder = journal_holder(journal_path)
        if holder is not None:  # asked before reading: the holder may be mid-commit
            raise InputError(f"journal is in use by {holder}")
        open_journal = journal_opener(journal_path, request.lease_seconds)
    resume_journal(request, open_journal)


def resume_journal(
    request: ResumeRequest, open_journal: JournalOpener, *, standby: bool = False
) -> NoReturn:
    """`resume`'s work: reconcile and walk every order in flight, then exit with the
    outcome's code. A `standby` stands by in `open_journal`, once its broker is ready, and
    only then is there work to look for: a journal with nothing in flight is not let go
    of at once."""
    journal_path, sim_state = request.journal_path, request.sim_state
    max_age_seconds, metrics_port = request.max_age_seconds, request.metrics_port
    broker_choice = _with_overrides(
        request.broker_choice, ignore_unknown_orders=request.ignore_unknown_orders
    )
    with bad_input_exits():
        if not standby and _nothing_in_flight(journal_path):
            _report(ResumeReport(orders=()))
        broker_choice.check(sim_state=sim_state)
        engine_context: AbstractContextManager[Engine]
        if broker_choice.is_alpaca:
            engine_context = alpaca_engine(journal_path, broker_choice, open_journal)
        elif sim_state is None:
            raise InputError("--sim-state is required to resume on the simulator")
        elif not sim_state.exists():
            raise InputError(f"simulator state {sim_state} does not exist")
        else:
            engine_context = simulated_engine(
                journal_path,
                MarketSpec(),
                sim_state,
                request.offline_seconds,
                broker_choice.engine_config(),
                open_journal,
            )
        with _metrics_served(metrics_port) as metrics, engine_context as engine, work_exits(engine):
            if metrics is not None:
                metrics.attach(engine)
            resumed = engine.resume(max_age_seconds=max_age_seconds)
            report = engine.clock.run(halting_on_signals(engine, resumed))
    _report(report)


def _nothing_in_flight(journal_path: str | Path) -> bool:
    """Read-only, before anything else: a journal with nothing in flight (one a run killed
    during start-up leaves, say) needs no broker, no simulator state and no lock. Only a
    journal found whole says so: an edited one is refused (JournalCorrupt) as a resume
    that acts on it would be."""
    with Journal.open_readonly(journal_path) as journal:
        trusted_end(journal)
        return not in_flight_rows(journal, TERMINAL_STATES)


def _report(report: ResumeReport) -> NoReturn:
    for line in report.lines():
        click.echo(line)
    sys.exit(outcome_exit_code(o.result for o in report.orders))


def _bundled(name: str) -> Any:
    return json.loads(resources.files("engine").joinpath("data", name).read_text(), parse_float=str)


def _fresh_demo_journal(path: Path) -> None:
    """The demo owns its journal: replace an old demo journal, refuse any other file."""
    if path.exists():
        Journal.open_readonly(path).close()
        for suffix in ("", "-wal", "-shm", ".lock"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)


@click.command("demo")
@click.option(
    "--journal",
    "journal_path",
    default=Path("demo-out/journal.db"),
    show_default=True,
    type=JournalFile(),
)
@_common_options
def demo_command(
    journal_path: Path, seed: int | None, result_json: Path | None, log_level: str
) -> None:
    """Run the bundled 10-order plan on the simulator into a fresh journal."""
    configure_output(log_level)
    console = report_console()
    with bad_input_exits():
        _check_result_path(result_json)
        plan = parse_plan(_bundled("demo_plan.json"))
        spec = parse_market_spec(_bundled("demo_market.json")).with_seed(seed)
        _fresh_demo_journal(journal_path)
        result = _run_on_simulator(plan, journal_path, spec, console)
    console.print(f"journal: {journal_path}  (walkbook status --journal {journal_path})")
    _finish(result, console, result_json)
