"""Reading JSON input files strictly, every failure one InputError line.

Plan, market, fault and engine-config files come from people and other programs. What a
lenient reader would take one way while the writer meant another (a key given twice, NaN,
a number of thousands of digits) is refused, and no malformed file reaches a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import InputError, first_validation_error

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_CHARS",
    "load_model",
    "read_json",
    "shown",
]

M = TypeVar("M", bound=BaseModel)

# far larger than any walkbook file (10,000 orders, all free text at its limit: about 4 MB),
# and read no further: /dev/zero, /dev/urandom or a runaway generator would fill memory
MAX_JSON_BYTES = 64 * 1024 * 1024
# far deeper than any walkbook file (a plan nests 3 levels), far below Python's recursion limit
MAX_JSON_DEPTH = 32
# longer than any number walkbook reads; Python refuses ints beyond 4,300 digits with a traceback
MAX_NUMBER_CHARS = 64
SHOWN_CHARS = 40
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def shown(text: str) -> str:
    """`text` quoted for a one-line error, cut short: hostile input can be megabytes long."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return repr(text[:SHOWN_CHARS]) + f"... ({len(text)} characters)"


def _deeper_than(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit` (checked before parsing:
    the parser recurses once per level)."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all distinct: `{"quantity": "1", "quantity": "1000000"}`
    would otherwise mean whatever the last one says."""
    payload: dict[str, Any] = {}
    for key, value in pairs:
        if key in payload:
            raise ValueError(f"key {shown(key)} appears twice in one object")
        payload[key] = value
    return payload


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` for number literals of at most MAX_NUMBER_CHARS characters."""

    def parse_bounded(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise ValueError(f"a number {len(text)} characters long (at most {MAX_NUMBER_CHARS})")
        return parse(text)

    return parse_bounded


def read_json(
    path: str | Path,
    what: str,
    *,
    error: type[InputError] = InputError,
    parse_float: Callable[[str], Any] = Decimal,
) -> Any:
    """The strict JSON in the file at `path`: at most MAX_JSON_BYTES, UTF-8, no duplicate
    keys, no NaN or Infinity, bounded nesting and number lengths; numbers with a fraction or
    exponent go through `parse_float` (Decimal: never through float). `what` names the file
    in `error`s."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist", path=str(path)) from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}", path=str(path)) from None
    if len(raw) > MAX_JSON_BYTES:
        raise error(f"{what} {path} is larger than {MAX_JSON_BYTES // 2**20} MiB", path=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start})", path=str(path)) from None
    if _deeper_than(text, MAX_JSON_DEPTH):
        raise error(f"{what} {path} nests deeper than {MAX_JSON_DEPTH} levels", path=str(path))
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_float=_bounded(parse_float),
            parse_int=_bounded(int),
            parse_constant=_no_constant,
        )
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}", path=str(path)
        ) from None
    except ValueError as exc:  # refused by one of the hooks above
        raise error(f"{what} {path} is refused: {exc}", path=str(path)) from None


def load_model(path: str | Path, model: type[M], what: str) -> M:
    """`model` from the strict JSON file at `path`; `what` names it in errors."""
    payload = read_json(path, what)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InputError(f"invalid {what}: {first_validation_error(exc)}") from None
