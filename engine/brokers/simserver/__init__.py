"""walkbook sim-server: an Alpaca-compatible REST + websocket server backed by the simulator."""

from .app import SimApp
from .faults import FaultInjector, FaultSpec, load_fault_spec
from .server import HOST, ServerThread, SimServer, serve

__all__ = [
    "HOST",
    "FaultInjector",
    "FaultSpec",
    "ServerThread",
    "SimApp",
    "SimServer",
    "load_fault_spec",
    "serve",
]
