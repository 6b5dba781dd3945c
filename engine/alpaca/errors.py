"""Alpaca's error answers mapped onto the engine's typed errors.

Alpaca answers `{"code": int, "message": str}` (sometimes only `{"message": ...}`, and a
gateway in front of it may answer HTML). The mapping reads the status and the message,
never trusts the body to be JSON, and strips the account's keys from anything it keeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from ..errors import (
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    InputError,
    NotReplaceable,
    OrderNotFound,
    OutcomeUnknown,
)

__all__ = [
    "AlpacaConfigError",
    "Forbidden",
    "InsufficientBuyingPower",
    "RateLimited",
    "SubPennyPrice",
    "error_from_response",
    "redact",
    "shortened",
]

MESSAGE_LIMIT = 200
DUPLICATE_CLIENT_ORDER_ID_CODE = 40010001


class AlpacaConfigError(InputError):
    """Missing or refused keys, or a live URL without --live: nothing is sent, nothing journaled."""


class Forbidden(BrokerRejected):
    """HTTP 401/403 that is not about funds or quantity: the keys or the account are refused."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, reason="forbidden", **fields)


class InsufficientBuyingPower(BrokerRejected):
    """The account cannot pay for the order."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, reason="insufficient_funds", **fields)


class SubPennyPrice(BrokerRejected):
    """A limit price off the symbol's tick (HTTP 422): a pricing bug, never retried."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, reason="sub_penny", **fields)


class RateLimited(BrokerUnavailable):
    """HTTP 429: the request was not processed; safe to send again after a pause."""


# (pattern in the lower-cased message, error class, extra keyword arguments)
_BY_MESSAGE: tuple[tuple[str, type[BrokerError], dict[str, str]], ...] = (
    ("client_order_id must be unique", DuplicateClientOrderId, {}),
    ("sub-penny", SubPennyPrice, {}),
    ("minimum pricing criteria", SubPennyPrice, {}),
    ("insufficient buying power", InsufficientBuyingPower, {}),
    ("insufficient qty", BrokerRejected, {"reason": "insufficient_position"}),
    ("not replaceable", NotReplaceable, {}),
    ("unable to replace order", NotReplaceable, {}),
    ("sufficiently open", NotReplaceable, {}),
    ("parameters are not changed", NotReplaceable, {}),
    ("not tradable", BrokerRejected, {"reason": "not_tradable"}),
    ("not found", OrderNotFound, {}),
    ("does not exist", OrderNotFound, {}),
)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced, so keys never reach an error, a log or the journal.

    A secret is replaced where it stands as a token (in a header, a URL, a body: between
    characters that are not letters or digits), never inside a word: a short secret must
    not turn "host" into "ho***" and make the error unreadable.
    """
    for secret in secrets:
        if secret:
            token = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
            text = re.sub(token, "***", text)
    return text


def shortened(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` cut to about `limit` characters at a word boundary, marked as cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return f"{cut} ..."


def _parse_body(body: str) -> tuple[int | None, str]:
    """(code, message) from an error body; HTML or garbage gives (None, a short plain text)."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        code = payload.get("code")
        message = payload.get("message")
        return (code if isinstance(code, int) else None, str(message or "").strip())
    text = re.sub(r"<[^>]*>", " ", body)
    return None, " ".join(text.split())


def error_from_response(
    status: int | None, body: str, *, write: bool, secrets: Iterable[str] = ()
) -> BrokerError:
    """The typed error for one HTTP error answer.

    `write` marks a request that may have changed the account (POST, PATCH): a 5xx or an
    unreadable answer then means the outcome is unknown, to be resolved by client_order_id.
    """
    code, message = _parse_body(body)
    message = shortened(redact(message, secrets)) or "no message"
    fields: dict[str, Any] = {"status": status, "code": code}
    text = f"alpaca: HTTP {status}: {message}"
    lowered = message.lower()
    if status == 429:
        return RateLimited(text, **fields)
    if status is None or status >= 500:
        return (OutcomeUnknown if write else BrokerUnavailable)(text, **fields)
    if code == DUPLICATE_CLIENT_ORDER_ID_CODE:
        return DuplicateClientOrderId(text, **fields)
    for pattern, error, extra in _BY_MESSAGE:
        if pattern in lowered:
            return error(text, **extra, **fields)
    if status == 404:
        return OrderNotFound(text, **fields)
    if status in (401, 403):
        return Forbidden(text, **fields)
    return BrokerRejected(text, **fields)
