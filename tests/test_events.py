"""The typed event payloads (engine/events.py): one per kind, read back exactly as written,
and documented field for field in docs/journal-format.md."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.events import (
    EVENT_KINDS,
    Created,
    EventKind,
    Failed,
    Fill,
    Payload,
    PositionRead,
    Resized,
    SubmitIntent,
    Transition,
    payload_of,
)
from engine.fsm import Trigger

ROOT = Path(__file__).resolve().parent.parent


def _payload_types() -> set[type[Payload]]:
    """Every concrete payload type, found by walking the class tree from `Payload`."""
    found: set[type[Payload]] = set()
    pending: list[type[Payload]] = [Payload]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            pending.append(sub)
            if "KIND" in vars(sub) or issubclass(sub, Transition):
                found.add(sub)
    return found


def _documented_rows() -> dict[str, str]:
    """docs/journal-format.md's event table: kind -> the row's text."""
    text = (ROOT / "docs" / "journal-format.md").read_text()
    section = text.split("## Event kinds and their `data`")[1].split("\n## ")[0]
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", section, re.M)}


def test_every_kind_and_every_trigger_has_a_payload_type() -> None:
    for kind in EVENT_KINDS:
        if kind == EventKind.TRANSITION:
            continue
        assert kind == payload_of(kind, _minimal(kind)).KIND
    for trigger in Trigger:
        data = {"trigger": trigger.value, "reason": "x", "quote": {}, "position": "1"}
        data |= {"ratio": "0.5", "limit_price": "1", "wait_seconds": 1}
        assert isinstance(payload_of(EventKind.TRANSITION, data), Transition)


def _minimal(kind: str) -> dict[str, Any]:
    """Data with every field a kind requires, at a plausible value."""
    cls = next(c for c in _payload_types() if vars(c).get("KIND") == kind)
    values = {"qty": "1", "price": "1", "cum_qty": "1", "cum_avg_price": "1", "adopted": False}
    values |= {"filled_qty": "1", "limit_price": "1", "intent": {}, "quote": {}}
    values |= {"spread_bps": "1", "max_spread_bps": "1"}
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.encode_name: values.get(f.encode_name, "x") for f in info.fields if f.required}


def test_unknown_kinds_and_triggers_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        payload_of("teleported", {})
    with pytest.raises(ValueError, match="unknown trigger"):
        payload_of(EventKind.TRANSITION, {"trigger": "warp"})


def test_a_missing_required_field_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="qty"):
        payload_of(EventKind.FILL, {"broker_order_id": "b", "client_order_id": "c"})


def test_decimals_are_written_as_their_shortest_exact_text_and_read_back_as_decimals() -> None:
    fill = Fill(
        broker_order_id="b",
        client_order_id="wb-o1-L1-1",
        qty=Decimal("2.500"),
        price=Decimal("100.120000"),
        cum_qty=Decimal("2.5"),
        cum_avg_price=Decimal("100.12"),
    )
    data = fill.to_data()
    assert (data["qty"], data["price"]) == ("2.5", "100.12")
    assert payload_of(EventKind.FILL, data) == fill


def test_open_figures_are_stored_beside_the_named_fields_and_gathered_back() -> None:
    """A failure's and a resize's figures are an open set (a broker names its own)."""
    failed = Failed(
        trigger="fail", reason="rejected", message="no", figures={"buying_power": "12.5"}
    )
    assert failed.to_data() == {
        "trigger": "fail",
        "reason": "rejected",
        "message": "no",
        "buying_power": "12.5",
    }
    assert payload_of(EventKind.TRANSITION, failed.to_data()) == failed
    resized = Resized(qty=Decimal(3), reason="insufficient_funds", figures={"cash": "9"})
    assert resized.to_data() == {"qty": "3", "reason": "insufficient_funds", "cash": "9"}
    assert payload_of(EventKind.RESIZED, resized.to_data()) == resized


def test_older_journals_still_read() -> None:
    """An intent journaled before intents carried `step` names it in its client order id;
    a field a later walkbook adds is ignored, not refused."""
    old = {"client_order_id": "wb-o1-L2-1", "order_type": "limit", "qty": "1", "limit_price": "2"}
    intent = payload_of(EventKind.SUBMIT_INTENT, {**old, "venue": "later"})
    assert isinstance(intent, SubmitIntent)
    assert (intent.step, intent.walk_step) == (None, "L2")


def test_a_created_event_keeps_the_stored_intent_and_configuration() -> None:
    data = {"intent": {"symbol": "AAPL"}, "config": {"ladder": ["0.75"]}, "plan_digest": "d"}
    created = payload_of(EventKind.CREATED, data)
    assert isinstance(created, Created)
    assert created.intent is data["intent"]
    assert created.config is data["config"]
    with pytest.raises(KeyError):
        payload_of(EventKind.CREATED, {"config": {}})


def test_optional_fields_at_their_default_are_not_written() -> None:
    before = PositionRead(phase="before", qty=Decimal(5))
    assert before.to_data() == {"phase": "before", "qty": "5"}


def test_every_payload_field_is_in_the_journal_format_doc() -> None:
    rows = _documented_rows()
    assert set(EVENT_KINDS) <= set(rows), set(EVENT_KINDS) - set(rows)
    for cls in _payload_types():
        row = rows[str(vars(cls).get("KIND", EventKind.TRANSITION))]
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        for field in info.fields:
            if field.name != "figures":
                assert f"`{field.encode_name}`" in row, (cls.__name__, field.name)
