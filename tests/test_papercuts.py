"""Papercuts found embedding walkbook in a rebalancer, each a test that failed before:
a VirtualClock under asyncio.run, async hooks, plan statuses in the docs, secret
redaction inside words, and a bench option naming a folder that does not exist."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import START
from walk_support import kill_after, resting

import engine.engine
import engine.risk
import engine.walk
from engine import (
    BrokerOrderStatus,
    Engine,
    EngineConfig,
    InvalidPlan,
    MarketSpec,
    OrderTransitioned,
    PlanStatus,
    SimBroker,
    VirtualClock,
    parse_plan,
)
from engine.brokers.alpaca.errors import error_from_response, redact, shortened
from engine.clock import WrongEventLoop
from journal import JournalSchemaTooNew

ROOT = Path(__file__).resolve().parent.parent
PLAN = {"plan_id": "p1", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": "1"}]}


def test_a_virtual_clock_under_asyncio_run_is_refused_at_once_not_hung(make_rig: Any) -> None:
    rig = make_rig()

    async def main() -> Any:
        return await rig.engine.execute_plan(parse_plan(PLAN))

    with pytest.raises(WrongEventLoop, match=r"clock\.run"):
        asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert rig.journal.last_seq == 0  # refused before anything was journaled
    assert rig.clock.run(main()).status is PlanStatus.SUCCESS  # the documented way works


def test_an_async_hook_is_refused_at_subscribe(make_rig: Any) -> None:
    rig = make_rig()

    async def on_transition(notice: OrderTransitioned) -> None:
        raise AssertionError("never awaited")

    class AsyncCallable:
        async def __call__(self, notice: OrderTransitioned) -> None:
            raise AssertionError("never awaited")

    for callback in (on_transition, AsyncCallable()):
        with pytest.raises(TypeError, match="async"):
            rig.engine.subscribe(OrderTransitioned, callback)
    seen: list[str] = []
    rig.engine.subscribe(OrderTransitioned, lambda notice: seen.append(notice.dest))
    rig.engine.execute_plan_sync(parse_plan(PLAN))
    assert seen[-1] == "VALIDATED"


def test_every_plan_status_is_defined_in_the_embedding_doc() -> None:
    text = (ROOT / "docs" / "embedding.md").read_text()
    defined = set(re.findall(r"^\s*\| `(\w+)` \|", text, flags=re.M))
    assert {status.value for status in PlanStatus} <= defined


@pytest.mark.parametrize(
    ("text", "secret", "expected"),
    [
        ("Max retries exceeded with url: /v2/account (host 127.0.0.1)", "s", None),
        ("Caused by NewConnectionError", "s", None),
        ("APCA-API-SECRET-KEY: s3cr3t sent", "s3cr3t", "APCA-API-SECRET-KEY: *** sent"),
        ("https://h/?key=s3cr3t&x=1", "s3cr3t", "https://h/?key=***&x=1"),
        ('{"secret":"s3cr3t"}', "s3cr3t", '{"secret":"***"}'),
    ],
)
def test_a_secret_is_redacted_as_a_token_never_inside_words(
    text: str, secret: str, expected: str | None
) -> None:
    assert redact(text, [secret]) == (text if expected is None else expected)


def test_a_long_broker_message_is_cut_at_a_word_and_says_so() -> None:
    words = " ".join(f"word{i}" for i in range(200))
    cut = shortened(words)
    assert cut.endswith(" ...")
    assert words.startswith(cut.removesuffix(" ..."))
    assert cut.removesuffix(" ...").split(" ")[-1] in words.split(" ")
    error = error_from_response(500, f'{{"message": "{words}"}}', write=False)
    assert error.message.endswith(" ...")


def test_a_bench_workdir_that_does_not_exist_is_one_line_exit_2(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.resume", "--workdir", str(tmp_path / "missing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"resume.py: error: argument --workdir: {tmp_path / 'missing'} is not an existing directory"
    ]


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ({"qty": "5"}, "orders.0: unknown field 'qty'; did you mean 'quantity'?"),
        ({"quantity": "5", "sidee": "buy"}, "orders.0: unknown field 'sidee'"),
    ],
)
def test_a_typo_d_field_is_named_before_the_field_it_leaves_missing(
    order: dict[str, str], message: str
) -> None:
    line = {"symbol": "AAPL", "side": "buy"} | order
    if "sidee" in order:
        del line["side"]
    with pytest.raises(InvalidPlan) as refused:
        parse_plan({"plan_id": "p", "orders": [line]})
    assert refused.value.message.startswith(f"invalid plan: {message}")


class NewerConfig(EngineConfig):
    """What a later walkbook journals with each order: a setting this one does not know."""

    settle_patience: int = 3


def test_orders_a_newer_walkbook_journaled_are_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume meets an in-flight order whose configuration carries a setting this version
    does not know: it stops with JournalSchemaTooNew naming the setting, before it journals,
    reads or cancels anything (walking without the setting would walk it otherwise)."""
    clock = VirtualClock(START)
    broker = SimBroker(MarketSpec(**resting()), clock)
    path = tmp_path / "journal.db"
    with monkeypatch.context() as newer_version:  # it reads its own configurations back
        for module in (engine.engine, engine.walk, engine.risk):
            newer_version.setattr(module, "journaled_config", NewerConfig.model_validate)
        newer = Engine(broker, path, config=NewerConfig(), clock=clock)
        order = {"symbol": "AAPL", "side": "buy", "quantity": "5"}
        kill_after(newer, clock, parse_plan({"plan_id": "p1", "orders": [order]}), 5)
    live = {o.id: o.status for o in broker.orders.values()}
    assert list(live.values()) == [BrokerOrderStatus.NEW]

    with Engine(broker, path, clock=clock) as older:
        last_seq = older.journal.last_seq
        with pytest.raises(JournalSchemaTooNew, match="'settle_patience'"):
            older.resume_sync()
        assert older.journal.last_seq == last_seq
    assert {o.id: o.status for o in broker.orders.values()} == live
