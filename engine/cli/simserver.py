"""`walkbook sim-server`: Alpaca's API on 127.0.0.1 over the simulator, for tests and demos.

The server is imported only when this command runs: other commands stay quick to start.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..brokers.keys import KEY_ID_ENV, SECRET_KEY_ENV
from ..brokers.sim import MarketSpec, load_market_spec
from ..errors import InputError
from .exits import bad_input_exits

__all__ = ["sim_server"]

MAX_PORT = 65_535


def _server_keys() -> tuple[str, str]:
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
    from ..brokers.simserver import (  # here: the server when serving
        SimServer,
        load_fault_spec,
        serve,
    )

    with bad_input_exits():
        spec = (load_market_spec(market) if market else MarketSpec()).with_seed(seed)
        server = SimServer(state, spec, load_fault_spec(faults), _server_keys(), port)
        try:
            serve(server)
        except OSError as exc:  # the port is taken, say
            raise InputError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}") from None
