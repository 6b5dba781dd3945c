"""`--broker sim|alpaca` and its options, shared by every command that trades.

Keys come from APCA_API_KEY_ID / APCA_API_SECRET_KEY, never from the command line.
The account is paper unless `--live` is given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..config import EngineConfig
from ..errors import InputError
from ..jsonfile import load_model
from .options import FiniteFloatRange

__all__ = ["BrokerChoice", "broker_options"]

BROKERS = ("sim", "alpaca")


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
