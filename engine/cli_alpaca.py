"""`--broker alpaca` for `walkbook run` and `resume`, and `walkbook sim-server`.

Keys come from APCA_API_KEY_ID / APCA_API_SECRET_KEY, never from the command line.
The account is paper unless `--live` is given. The keys are checked (one GET
/v2/account) before the journal is opened, so refused keys cost nothing and journal
nothing. The SDK and the server are imported only when used: `walkbook run` on the
simulator stays quick to start.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from .clock import RealClock
from .config import EngineConfig
from .engine import Engine
from .errors import InputError
from .jsonfile import load_model

__all__ = ["BrokerChoice", "FiniteFloatRange", "alpaca_engine", "broker_options", "sim_server"]

BROKERS = ("sim", "alpaca")
MAX_PORT = 65_535


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that refuses NaN and the infinities: NaN compares as inside any range."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@dataclass(frozen=True)
class BrokerChoice:
    """Which broker a run or resume talks to, with the Alpaca options and the engine config."""

    name: str = "sim"
    alpaca_url: str | None = None
    alpaca_data_url: str | None = None
    alpaca_feed: str = "iex"
    live: bool = False
    engine_config_path: Path | None = None
    alpaca_rate_limit: int | None = None
    alpaca_timeout: float | None = None
    # engine-config settings given as options of their own (run --in-flight, ...)
    config_overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_alpaca(self) -> bool:
        return self.name == "alpaca"

    def engine_config(self) -> EngineConfig | None:
        """The --engine-config file (ladder, step waits, timeouts) with the options that
        override it, or None for defaults."""
        path = self.engine_config_path
        config = None if path is None else load_model(path, EngineConfig, "engine config")
        if not self.config_overrides:
            return config
        return (config or EngineConfig()).model_copy(update=dict(self.config_overrides))

    def check(self, **simulator_options: object) -> None:
        """Refuse options that belong to the other broker (nothing is sent, nothing journaled)."""
        if self.is_alpaca:
            given = [f"--{k.replace('_', '-')}" for k, v in simulator_options.items() if v]
            if given:
                raise InputError(f"simulator options with --broker alpaca: {', '.join(given)}")
        elif self.alpaca_url or self.alpaca_data_url or self.live or self.alpaca_policies():
            raise InputError(
                "--alpaca-url, --alpaca-data-url, --alpaca-rate-limit, --alpaca-timeout and "
                "--live need --broker alpaca"
            )

    def alpaca_policies(self) -> dict[str, Any]:
        """The adapter policies given on the command line (the rest keep their defaults)."""
        given = {
            "rate_limit": self.alpaca_rate_limit,
            "http_timeout_seconds": self.alpaca_timeout,
        }
        return {name: value for name, value in given.items() if value is not None}


def broker_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--broker, the Alpaca options and --engine-config, passed as one `broker_choice`."""
    options = [
        click.option("--broker", type=click.Choice(BROKERS), default="sim", show_default=True),
        click.option("--alpaca-url", help="Trading API base URL (default: Alpaca paper)."),
        click.option(
            "--alpaca-data-url", help="Market data base URL (default: --alpaca-url if given)."
        ),
        click.option(
            "--alpaca-feed", type=click.Choice(["iex", "sip"]), default="iex", show_default=True
        ),
        click.option(
            "--alpaca-rate-limit",
            type=click.IntRange(min=1),
            help="REST requests per minute the adapter allows itself (default 190; "
            "Alpaca's basic plan allows 200).",
        ),
        click.option(
            "--alpaca-timeout",
            type=FiniteFloatRange(min=0, min_open=True),
            help="Seconds to wait for each REST answer (default 10).",
        ),
        click.option("--live", is_flag=True, help="Trade the LIVE account (real money)."),
        click.option(
            "--engine-config",
            type=click.Path(dir_okay=False, path_type=Path),
            help="EngineConfig JSON: ladder, step waits, timeouts.",
        ),
    ]

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        broker: str,
        alpaca_url: str | None,
        alpaca_data_url: str | None,
        alpaca_feed: str,
        alpaca_rate_limit: int | None,
        alpaca_timeout: float | None,
        live: bool,
        engine_config: Path | None,
        **kwargs: Any,
    ) -> Any:
        choice = BrokerChoice(
            broker,
            alpaca_url,
            alpaca_data_url,
            alpaca_feed,
            live,
            engine_config,
            alpaca_rate_limit,
            alpaca_timeout,
        )
        return command(*args, broker_choice=choice, **kwargs)

    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def _quiet_sdk_logging() -> None:
    """alpaca-py logs through stdlib logging, every reconnect with a traceback; the adapter
    reports what matters through structlog. websockets at DEBUG would print the auth frame
    (the secret key): it never goes below INFO here."""
    sdk = logging.getLogger("alpaca")
    if not any(isinstance(h, logging.NullHandler) for h in sdk.handlers):
        sdk.addHandler(logging.NullHandler())  # else stdlib's last-resort handler prints
    sdk.propagate = False
    logging.getLogger("websockets").setLevel(logging.INFO)


@contextmanager
def alpaca_engine(journal_path: Path, choice: BrokerChoice) -> Iterator[Engine]:
    """An engine on Alpaca in real time; the keys are checked before the journal is opened."""
    from .alpaca import AlpacaBroker, AlpacaSettings

    _quiet_sdk_logging()
    config = choice.engine_config()
    settings = AlpacaSettings.from_env(
        trading_url=choice.alpaca_url,
        data_url=choice.alpaca_data_url,
        feed=choice.alpaca_feed,
        live=choice.live,
        **choice.alpaca_policies(),
    )
    with AlpacaBroker(settings) as broker:
        asyncio.run(broker.check_keys())
        try:
            with Engine(broker, journal_path, config=config, clock=RealClock()) as engine:
                yield engine
        finally:
            counters = broker.counters
            click.echo(
                f"walkbook: alpaca: {counters.rest_calls} REST calls "
                f"(at most {settings.rate_limit} per {settings.rate_window_seconds:g} s), "
                f"{counters.status_polls} status polls, {counters.trade_updates} trade updates, "
                f"{counters.stream_quotes} streamed quotes, "
                f"quote stream refused {counters.quote_stream_refused}x",
                err=True,
            )


def _server_keys() -> tuple[str, str]:
    from .alpaca import KEY_ID_ENV, SECRET_KEY_ENV

    key_id, secret = os.environ.get(KEY_ID_ENV, ""), os.environ.get(SECRET_KEY_ENV, "")
    if not key_id or not secret:
        raise InputError(f"set {KEY_ID_ENV} and {SECRET_KEY_ENV}: the keys the server accepts")
    return key_id, secret


@click.command("sim-server")
@click.option(
    "--port",
    type=click.IntRange(0, MAX_PORT),
    default=0,
    show_default=True,
    help="0: any free port.",
)
@click.option("--state", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--market", type=click.Path(path_type=Path), help="Market spec JSON.")
@click.option("--faults", type=click.Path(path_type=Path), help="Fault spec JSON.")
@click.option("--seed", type=int, default=None, help="Simulator seed (overrides the spec).")
def sim_server(
    port: int, state: Path, market: Path | None, faults: Path | None, seed: int | None
) -> None:
    """Serve Alpaca's REST and websocket API on 127.0.0.1, backed by the simulator.

    Prints `listening on http://127.0.0.1:PORT` once ready; runs until SIGINT/SIGTERM.
    Accepts the keys in APCA_API_KEY_ID / APCA_API_SECRET_KEY.
    """
    from .cli import _bad_input_exits  # late: engine.cli imports this module
    from .sim import MarketSpec, load_market_spec
    from .simserver import SimServer, load_fault_spec, serve

    with _bad_input_exits():
        spec = (load_market_spec(market) if market else MarketSpec()).with_seed(seed)
        server = SimServer(state, spec, load_fault_spec(faults), _server_keys(), port)
        try:
            serve(server)
        except OSError as exc:  # the port is taken, say
            raise InputError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}") from None
