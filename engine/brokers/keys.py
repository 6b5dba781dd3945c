"""Where Alpaca's API keys come from: the environment variables alpaca-py's own tools read.

The Alpaca adapter reads them, and so does `walkbook sim-server`, which accepts the same
keys; here, so the sim-server's start-up does not import the SDK for two names.
"""

from __future__ import annotations

__all__ = ["KEY_ID_ENV", "SECRET_KEY_ENV"]

KEY_ID_ENV = "APCA_API_KEY_ID"
SECRET_KEY_ENV = "APCA_API_SECRET_KEY"
