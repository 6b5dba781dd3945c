"""Reading a JSON spec file into a pydantic model, every failure one InputError line."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import InputError, first_validation_error

__all__ = ["load_model"]

M = TypeVar("M", bound=BaseModel)


def load_model(path: str | Path, model: type[M], what: str) -> M:
    """`model` from the JSON file at `path` (floats read as Decimal); `what` names it in errors."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc.msg}") from None
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InputError(f"invalid {what}: {first_validation_error(exc)}") from None
