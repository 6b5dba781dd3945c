"""`walkbook` command line: a thin click layer over the library.

Exit codes (engine.cli_stop): 0 every order VALIDATED; 1 some order FAILED; 2 bad input
or a refused request (one line on stderr, nothing sent, nothing journaled); 3 halted,
nothing left live; 4 stopped with work possibly live: run `walkbook resume`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import structlog
from rich.console import Console
from rich.live import Live
from rich.table import Table

from journal import Journal, JournalError
from journal.lock import lock_holder

from .cli_alpaca import (
    BrokerChoice,
    FiniteFloatRange,
    alpaca_engine,
    broker_options,
    sim_server,
)
from .cli_stop import (
    EXIT_BAD_INPUT,
    EXIT_CODES_HELP,
    abandon_command,
    halt_command,
    halting_on_signals,
    outcome_exit_code,
    work_exits,
)
from .clock import VirtualClock
from .config import EngineConfig
from .engine import Engine, ResumeReport
from .errors import InputError
from .files import write_private_text
from .fsm import TERMINAL_STATES
from .hooks import OrderFilled, OrderTransitioned
from .intents import DEFAULT_MAX_PLAN_ORDERS, RebalancePlan, load_plan, parse_plan
from .numbers import decimal_text
from .order import fold_history
from .results import PlanResult
from .sim import MarketSpec, SimBroker, load_market_spec, parse_market_spec

__all__ = ["main"]


REPORT_WIDTH = 160


def _console() -> Console:
    """A console that does not squeeze the results table when output is piped."""
    console = Console()
    if not console.is_terminal:
        console.width = REPORT_WIDTH
    return console


def _printable(message: str) -> str:
    """`message` with every unprintable character escaped: a key named "\\n" or "\\x1b[2J" in
    a hostile file must neither break the one-line refusal nor reach the terminal raw."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _die(message: str) -> NoReturn:
    click.echo(f"walkbook: error: {_printable(message)}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@contextmanager
def _bad_input_exits() -> Iterator[None]:
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
def _usage_errors_on_one_line() -> Iterator[None]:
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


class WalkbookGroup(click.Group):
    """The `walkbook` group: its own and its commands' usage errors fit the exit-code
    contract (exit 2, one line on stderr)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _usage_errors_on_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_errors_on_one_line():
            return super().invoke(ctx)


class JournalFile(click.Path):
    """A journal's path: a file name, not a directory (its lock and WAL files sit beside it)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        if not path.name:
            self.fail(f"{value!r} names no file.", param, ctx)
        return path


def _configure_logging(level: str) -> None:
    """The CLI, not the library, decides where logs go: key=value lines on stderr."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
    )


class Progress:
    """Per-order state as the walk moves: a live table on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, plan: RebalancePlan) -> None:
        self.console = console
        self.intents = {intent.symbol: intent for intent in plan.orders}
        self.states = dict.fromkeys(self.intents, "PENDING")
        self.filled = dict.fromkeys(self.intents, "0")
        self.live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.live = Live(self._table(), console=self.console, refresh_per_second=8)
            self.live.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc_info)

    def follow(self, engine: Engine) -> None:
        engine.subscribe(OrderTransitioned, self.transitioned)
        engine.subscribe(OrderFilled, self.filled_some)

    def transitioned(self, notice: OrderTransitioned) -> None:
        self.states[notice.symbol] = notice.dest
        if self.live is not None:
            self.live.update(self._table())
            return
        detail = notice.reason or notice.limit_price or ""
        self.console.print(
            f"{notice.at} {notice.symbol:<6} {notice.order_id} {notice.dest} {detail}".rstrip(),
            highlight=False,
        )

    def filled_some(self, notice: OrderFilled) -> None:
        self.filled[notice.symbol] = str(notice.filled_qty)
        if self.live is not None:
            self.live.update(self._table())

    def _table(self) -> Table:
        table = Table(title="walkbook: orders in flight")
        for column in ("symbol", "side", "qty", "state", "filled"):
            table.add_column(column)
        for symbol, intent in self.intents.items():
            table.add_row(
                symbol,
                intent.side.value,
                str(intent.quantity),
                self.states[symbol],
                self.filled[symbol],
            )
        return table


def result_table(result: PlanResult) -> Table:
    table = Table(title=f"plan {result.plan_id}: {result.status.value}")
    for column in ("symbol", "side", "qty", "state", "reason", "filled", "avg price", "steps",
                   "arrival mid", "slippage bps"):  # fmt: skip
        table.add_column(column, justify="right" if column not in ("symbol", "state") else "left")
    for order in result.orders:
        table.add_row(
            order.symbol,
            order.side.value,
            str(order.quantity),
            order.state,
            order.reason or "",
            str(order.filled_qty),
            "" if order.avg_fill_price is None else decimal_text(order.avg_fill_price),
            str(order.steps_used),
            "" if order.arrival_mid is None else decimal_text(order.arrival_mid),
            "" if order.slippage_bps is None else str(order.slippage_bps),
        )
    table.caption = (
        f"traded value {result.traded_value}; value-weighted slippage "
        f"{result.slippage_bps if result.slippage_bps is not None else '-'} bps; "
        f"quotes {result.quote_counters}"
    )
    return table


@contextmanager
def _simulated_engine(
    journal_path: Path,
    market: MarketSpec,
    sim_state: Path | None,
    offline_seconds: float = 0.0,
    config: EngineConfig | None = None,
) -> Iterator[Engine]:
    """An engine on the simulator in virtual time; the journal lock is taken first.

    With `sim_state` the simulator lives in that file, and virtual time continues
    from the later of its last save and the journal's last event, plus `offline_seconds`
    during which the market moves on without the engine.
    """
    journal = Journal.open(journal_path)
    try:
        if sim_state is None:
            clock = VirtualClock()
            broker = SimBroker(market, clock)
        else:
            times = [t for t in (SimBroker.saved_time(sim_state), journal.last_at()) if t]
            start = max(times) + timedelta(seconds=offline_seconds) if times else None
            clock = VirtualClock(start)
            broker = SimBroker.open(sim_state, market, clock)
    except BaseException:
        journal.close()
        raise
    try:
        with Engine(broker, journal, config=config, clock=clock) as engine:
            yield engine
    finally:
        broker.close()


def _run_plan(
    engine_context: AbstractContextManager[Engine], plan: RebalancePlan, console: Console
) -> PlanResult:
    with engine_context as engine, Progress(console, plan) as progress, work_exits(engine):
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
    engine_context = _simulated_engine(journal_path, market, sim_state, config=config)
    return _run_plan(engine_context, plan, console)


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
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"]),
            default="warning",
            show_default=True,
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(cls=WalkbookGroup, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="walkbook")
def main() -> None:
    """walkbook: crash-safe walk-the-book order execution with a SQLite journal."""


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


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("plan_file", type=click.Path(path_type=Path))
@click.option("--journal", "journal_path", required=True, type=JournalFile())
@click.option(
    "--market", type=click.Path(path_type=Path), help="Market spec JSON for the simulator."
)
@click.option(
    "--max-plan-orders",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PLAN_ORDERS,
    show_default=True,
    help="Refuse a plan with more orders than this.",
)
@click.option(
    "--sim-state",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the simulator's state in this SQLite file so a later resume meets the same book.",
)
@IN_FLIGHT_OPTION
@IGNORE_UNKNOWN_OPTION
@_common_options
@broker_options
def run(
    plan_file: Path,
    journal_path: Path,
    market: Path | None,
    max_plan_orders: int,
    sim_state: Path | None,
    in_flight: str | None,
    ignore_unknown_orders: bool,
    seed: int | None,
    result_json: Path | None,
    log_level: str,
    broker_choice: BrokerChoice,
) -> None:
    """Execute PLAN_FILE, journaling into --journal: on the simulator in virtual time,
    or with --broker alpaca on an Alpaca account (paper unless --live) in real time.
    SIGINT or SIGTERM halts it (live orders cancelled, exit 3); a second one exits at once."""
    _configure_logging(log_level)
    console = _console()
    broker_choice = _with_overrides(
        broker_choice, in_flight=in_flight, ignore_unknown_orders=ignore_unknown_orders
    )
    with _bad_input_exits():
        broker_choice.check(market=market, sim_state=sim_state, seed=seed)
        _check_result_path(result_json)
        plan = load_plan(plan_file, max_orders=max_plan_orders)
        if broker_choice.is_alpaca:
            result = _run_plan(alpaca_engine(journal_path, broker_choice), plan, console)
        else:
            spec = (load_market_spec(market) if market else MarketSpec()).with_seed(seed)
            config = broker_choice.engine_config()
            result = _run_on_simulator(plan, journal_path, spec, console, sim_state, config)
    _finish(result, console, result_json)


@main.command(epilog=EXIT_CODES_HELP)
@click.option("--journal", "journal_path", required=True, type=JournalFile())
@click.option(
    "--sim-state",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The simulator state file the interrupted run used (required on the simulator).",
)
@click.option(
    "--max-age",
    "max_age_seconds",
    type=FiniteFloatRange(min=0),
    help="Abandon (cancel, FAILED abandoned) in-flight orders created longer ago than "
    "this many seconds instead of walking them.",
)
@IGNORE_UNKNOWN_OPTION
@click.option(
    "--offline-seconds",
    type=FiniteFloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Virtual seconds the market moves on while the engine was down.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
@broker_options
def resume(
    journal_path: Path,
    sim_state: Path | None,
    max_age_seconds: float | None,
    ignore_unknown_orders: bool,
    offline_seconds: float,
    log_level: str,
    broker_choice: BrokerChoice,
) -> None:
    """Finish every order a killed run left in flight: no duplicates, no lost fills.
    SIGINT or SIGTERM halts it (live orders cancelled, exit 3). A journal with nothing in
    flight exits 0 at once; one whose live orders the broker does not know is refused."""
    _configure_logging(log_level)
    broker_choice = _with_overrides(broker_choice, ignore_unknown_orders=ignore_unknown_orders)
    with _bad_input_exits():
        if not journal_path.exists():
            raise InputError(f"journal {journal_path} does not exist")
        holder = lock_holder(journal_path)
        if holder is not None:  # asked before reading: the holder may be mid-commit
            raise InputError(f"journal is in use by {holder}")
        if _nothing_in_flight(journal_path):
            _report(ResumeReport(orders=()))
        broker_choice.check(sim_state=sim_state)
        engine_context: AbstractContextManager[Engine]
        if broker_choice.is_alpaca:
            engine_context = alpaca_engine(journal_path, broker_choice)
        elif sim_state is None:
            raise InputError("--sim-state is required to resume on the simulator")
        elif not sim_state.exists():
            raise InputError(f"simulator state {sim_state} does not exist")
        else:
            engine_context = _simulated_engine(
                journal_path,
                MarketSpec(),
                sim_state,
                offline_seconds,
                broker_choice.engine_config(),
            )
        with engine_context as engine, work_exits(engine):
            resumed = engine.resume(max_age_seconds=max_age_seconds)
            report = engine.clock.run(halting_on_signals(engine, resumed))
    _report(report)


def _nothing_in_flight(journal_path: Path) -> bool:
    """Read-only, before anything else: a journal with nothing in flight (one a run killed
    during start-up leaves, say) needs no broker, no simulator state and no lock."""
    with Journal.open_readonly(journal_path) as journal:
        return not journal.orders(unless_state=TERMINAL_STATES)


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


@main.command()
@click.option(
    "--journal",
    "journal_path",
    default=Path("demo-out/journal.db"),
    show_default=True,
    type=JournalFile(),
)
@_common_options
def demo(journal_path: Path, seed: int | None, result_json: Path | None, log_level: str) -> None:
    """Run the bundled 10-order plan on the simulator into a fresh journal."""
    _configure_logging(log_level)
    console = _console()
    with _bad_input_exits():
        _check_result_path(result_json)
        plan = parse_plan(_bundled("demo_plan.json"))
        spec = parse_market_spec(_bundled("demo_market.json")).with_seed(seed)
        _fresh_demo_journal(journal_path)
        result = _run_on_simulator(plan, journal_path, spec, console)
    console.print(f"journal: {journal_path}  (walkbook status --journal {journal_path})")
    _finish(result, console, result_json)


STATUS_COLUMNS = ("order_id", "plan_id", "symbol", "side", "quantity", "state", "reason",
                  "filled_qty", "avg_price", "steps_used", "limit_price", "state_since",
                  "live_client_order_id", "live_broker_order_id", "created_at",
                  "updated_at")  # fmt: skip


def _who_walks(journal_path: Path, in_flight: int) -> str:
    """Whether a live process walks the journal's orders: a held lock, or nobody."""
    holder = lock_holder(journal_path)
    if holder is not None:
        return f"walking: held by {holder}"
    if in_flight:
        return (
            f"NOT WALKING: no process holds this journal, and {in_flight} order(s) are in "
            "flight (live at the broker, unwatched): run `walkbook resume` or `walkbook halt`"
        )
    return "idle: no process holds this journal; nothing is in flight"


@main.command()
@click.option("--journal", "journal_path", required=True, type=JournalFile())
@click.option("--json", "as_json", is_flag=True, help="Print the orders as a JSON list.")
@click.option("--in-flight", "in_flight_only", is_flag=True, help="Only orders not yet final.")
@click.option("--plan", "plan_id", help="Only this plan's orders.")
def status(journal_path: Path, as_json: bool, in_flight_only: bool, plan_id: str | None) -> None:
    """List a journal's orders in the order they were created, and say whether a live process
    is walking them (read-only; safe while a run is writing). The first line (on stderr with
    --json) says `walking`, `idle`, or `NOT WALKING` when orders are in flight and nobody
    holds the journal."""
    with _bad_input_exits(), Journal.open_readonly(journal_path) as journal:
        walking = fold_history(journal.order_history(unless_state=TERMINAL_STATES))
        rows = journal.orders(
            plan_id=plan_id, unless_state=TERMINAL_STATES if in_flight_only else ()
        )
    for row in rows:
        # where an in-flight order stands in its walk: its step's price and since when
        record = walking.get(row["order_id"])
        price = None if record is None else record.step_limit_price
        row["limit_price"] = None if price is None else decimal_text(price)
        row["state_since"] = None if record is None else record.state_entered_at
    click.echo(_who_walks(journal_path, len(walking)), err=as_json)
    if as_json:
        click.echo(json.dumps([{c: row[c] for c in STATUS_COLUMNS} for row in rows], indent=2))
        return
    table = Table(title=f"{journal_path}: {len(rows)} orders")
    for column in STATUS_COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in STATUS_COLUMNS))
    _console().print(table)


from .cli_audit import journal_group, report_command  # noqa: E402 -- registered together at the end

main.add_command(journal_group)
main.add_command(report_command)
main.add_command(sim_server)
main.add_command(halt_command)
main.add_command(abandon_command)
