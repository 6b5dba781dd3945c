"""The engine a command drives: on the simulator in virtual time, or on Alpaca in real time.

On Alpaca the keys are checked (one GET /v2/account) before the journal is opened, so
refused keys cost nothing and journal nothing. The SDK is imported only when used:
`walkbook run` on the simulator stays quick to start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from journal import Journal
from journal.location import is_database_url

from ..brokers.sim import MarketSpec, SimBroker
from ..clock import RealClock, VirtualClock
from ..config import EngineConfig
from ..engine import Engine
from ..errors import InputError
from .brokers import BrokerChoice

if TYPE_CHECKING:
    from ..brokers.alpaca import AlpacaBroker

__all__ = ["JournalOpener", "alpaca_broker", "alpaca_engine", "journal_opener", "simulated_engine"]

# How a command opens its journal for writing: Journal.open with its lease options.
JournalOpener = Callable[[str | Path], Journal]


def journal_opener(
    journal_path: str | Path, lease_seconds: float | None, **lease: float | bool
) -> JournalOpener:
    """Journal.open with --lease-seconds (and a standby's waiting); the option on a journal
    file is refused: a file's owner is its lock, which has no length."""
    if not is_database_url(journal_path):
        if lease_seconds is not None:
            raise InputError("--lease-seconds needs a PostgreSQL journal (postgresql://...)")
        return Journal.open
    if lease_seconds is not None:
        lease["lease_seconds"] = lease_seconds
    return partial(Journal.open, **lease)  # type: ignore[arg-type]


@contextmanager
def simulated_engine(
    journal_path: str | Path,
    market: MarketSpec,
    sim_state: Path | None,
    offline_seconds: float = 0.0,
    config: EngineConfig | None = None,
    open_journal: JournalOpener = Journal.open,
) -> Iterator[Engine]:
    """An engine on the simulator in virtual time; the journal lock is taken first.

    With `sim_state` the simulator lives in that file, and virtual time continues
    from the later of its last save and the journal's last event, plus `offline_seconds`
    during which the market moves on without the engine.
    """
    journal = open_journal(journal_path)
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
def alpaca_broker(choice: BrokerChoice) -> Iterator[AlpacaBroker]:
    """The Alpaca adapter the options describe, its keys checked (one GET /v2/account,
    retried as --engine-config retries reads); its REST counts are printed on stderr when it
    closes."""
    from ..brokers.alpaca import (  # here: the SDK only when trading on it
        AlpacaBroker,
        AlpacaSettings,
    )

    _quiet_sdk_logging()
    settings = AlpacaSettings.from_env(
        trading_url=choice.alpaca_url,
        data_url=choice.alpaca_data_url,
        feed=choice.alpaca_feed,
        live=choice.live,
        **choice.alpaca_policies(),
    )
    with AlpacaBroker(settings) as broker:
        asyncio.run(broker.check_keys(choice.engine_config()))
        try:
            yield broker
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


@contextmanager
def alpaca_engine(
    journal_path: str | Path, choice: BrokerChoice, open_journal: JournalOpener = Journal.open
) -> Iterator[Engine]:
    """An engine on Alpaca in real time; the keys are checked before the journal is opened
    (a standby checks them before it stands by)."""
    config = choice.engine_config()
    with alpaca_broker(choice) as broker:
        journal = open_journal(journal_path)
        try:
            engine = Engine(broker, journal, config=config, clock=RealClock())
        except BaseException:
            journal.close()
            raise
        with engine:
            yield engine
