"""Alpaca's error answers mapped onto the engine's typed errors.

Alpaca answers `{"code": int, "message": str}` (sometimes only `{"message": ...}`, and a
gateway in front of it may answer HTML). The mapping reads the status, the code and the
message together, never trusts the body to be JSON, and strips the account's keys from
anything it keeps. A code alone decides little: 40010001 is Alpaca's code for a duplicate
client order id and for other refusals alike (docs/alpaca.md, "Alpaca's error answers and
what walkbook does", cites the Alpaca pages each mapping follows).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from ...errors import (
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
FIGURE_LIMIT = 40
RELATED_ORDERS_SHOWN = 3
# https://docs.alpaca.markets/docs/trading/user-protections/ : a day trade refused by the
# pattern day trader protection carries this code whatever its message says (Alpaca retired
# the protection on 2026-07-06; an answer from before then, or a region that keeps it, still
# gets its own reason rather than a generic refusal)
PATTERN_DAY_TRADER_CODE = 40310100
# figures Alpaca puts beside code and message (insufficient funds, insufficient qty)
FIGURES = ("buying_power", "cost_basis", "available", "existing_qty", "held_for_orders", "symbol")
# "could not find us_equity asset ...", 'asset "FOO" not found', "asset not found for FOO"
_UNKNOWN_ASSET = re.compile(r"\bcould not find\b.*\basset\b|\basset\b.*\bnot found\b")


class AlpacaConfigError(InputError):
    """Missing or refused keys, or a live URL without --live: nothing is sent, nothing journaled."""


class Forbidden(BrokerRejected):
    """HTTP 401/403 that is not about funds or quantity: the keys or the account are refused."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, reason="forbidden", **fields)


class InsufficientBuyingPower(BrokerRejected):
    """The account cannot pay for the order; `day_trading` when it is the day-trading buying
    power (a margin account's intraday limit) that ran out, not the overnight one."""

    def __init__(self, message: str, *, day_trading: bool = False, **fields: Any) -> None:
        super().__init__(message, reason="insufficient_funds", day_trading=day_trading, **fields)
        self.day_trading = day_trading


class SubPennyPrice(BrokerRejected):
    """A limit price off the symbol's tick (HTTP 422): a pricing bug, never retried."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, reason="sub_penny", **fields)


class RateLimited(BrokerUnavailable):
    """HTTP 429: the request was not processed; safe to send again after a pause."""


# (pattern in the lower-cased message, error class, extra keyword arguments); the first
# pattern found decides. Only this message makes a duplicate: adopting an order by client
# order id after any other refusal would adopt nothing, or something else.
_BY_MESSAGE: tuple[tuple[str, type[BrokerError], dict[str, Any]], ...] = (
    ("client_order_id must be unique", DuplicateClientOrderId, {}),
    ("sub-penny", SubPennyPrice, {}),
    ("minimum pricing criteria", SubPennyPrice, {}),
    ("insufficient day trading buying power", InsufficientBuyingPower, {"day_trading": True}),
    ("insufficient buying power", InsufficientBuyingPower, {}),
    ("insufficient qty", BrokerRejected, {"reason": "insufficient_position"}),
    ("minimal amount of order", BrokerRejected, {"reason": "below_minimum"}),
    ("pattern day trading", BrokerRejected, {"reason": "pattern_day_trader"}),
    ("not allowed for account", BrokerRejected, {"reason": "not_permitted"}),
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


def _parse_body(body: str) -> tuple[int | None, str, dict[str, Any]]:
    """(code, message, the whole JSON object) from an error body; HTML or garbage gives
    (None, a short plain text, {})."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        code = payload.get("code")
        message = payload.get("message")
        return (code if isinstance(code, int) else None, str(message or "").strip(), payload)
    text = re.sub(r"<[^>]*>", " ", body)
    return None, " ".join(text.split()), {}


def _figures(payload: dict[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """The figures an error body carries beside its message, as short texts, so the FAILED
    transition shows what the broker counted: buying power against cost basis, shares
    available against shares held for other orders (and how many orders, which first)."""
    figures: dict[str, Any] = {}
    for name in FIGURES:
        value = payload.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            figures[name] = shortened(redact(str(value), secrets), FIGURE_LIMIT)
    related = payload.get("related_orders")
    if isinstance(related, list):
        shown = related[:RELATED_ORDERS_SHOWN]
        figures["related_orders"] = len(related)
        figures["related_order_ids"] = [
            shortened(redact(str(i), secrets), FIGURE_LIMIT) for i in shown
        ]
    return figures


def error_from_response(
    status: int | None, body: str, *, write: bool, secrets: Iterable[str] = ()
) -> BrokerError:
    """The typed error for one HTTP error answer.

    `write` marks a request that may have changed the account (POST, PATCH): a 5xx or an
    unreadable answer then means the outcome is unknown, to be resolved by client_order_id.
    """
    code, message, payload = _parse_body(body)
    message = shortened(redact(message, secrets)) or "no message"
    fields: dict[str, Any] = {"status": status, "code": code, **_figures(payload, secrets)}
    text = f"alpaca: HTTP {status}: {message}"
    lowered = message.lower()
    if status == 429:
        return RateLimited(text, **fields)
    if status is None or status >= 500:
        return (OutcomeUnknown if write else BrokerUnavailable)(text, **fields)
    if code == PATTERN_DAY_TRADER_CODE:
        return BrokerRejected(text, reason="pattern_day_trader", **fields)
    # an order for an asset Alpaca does not know; a 404 read of the asset itself stays a
    # "not found" (the adapter answers it with UnknownSymbol)
    if _UNKNOWN_ASSET.search(lowered) and (write or status != 404):
        return BrokerRejected(text, reason="unknown_symbol", **fields)
    for pattern, error, extra in _BY_MESSAGE:
        if pattern in lowered:
            return error(text, **extra, **fields)
    if status == 404:
        return OrderNotFound(text, **fields)
    if status in (401, 403):
        return Forbidden(text, **fields)
    return BrokerRejected(text, **fields)
