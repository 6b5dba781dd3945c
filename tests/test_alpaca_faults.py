"""Each of the sim-server's fault knobs, end to end through alpaca-py: the plan still completes,
no client_order_id is ever doubled, and the adapter's counters say what it went through."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from alpaca_support import (
    EAGER,
    KEYS,
    NEVER,
    REPLACING,
    RESTING,
    alpaca_rig,
    market,
    settings_for,
)
from structlog.testing import capture_logs

from engine import OrderState
from engine.brokers.alpaca import AlpacaBroker, AlpacaConfigError
from engine.brokers.simserver import FaultSpec, ServerThread, SimServer
from engine.events import EventKind

TWO_ORDERS = (
    {"symbol": "AAPL", "side": "buy", "quantity": "4"},
    {"symbol": "MSFT", "side": "buy", "quantity": "1.5"},
)
AT_ONCE = ({"symbol": "AAPL", "side": "buy", "quantity": "3", "urgency": "high"},)


def assert_one_order_per_client_order_id(book: SimpleNamespace) -> None:
    cids = Counter(o.client_order_id for o in book.orders.values())
    assert cids
    assert max(cids.values()) == 1, cids


@pytest.mark.parametrize(
    ("knob", "faults"),
    [
        ("http_429", FaultSpec(seed=3, http_429_probability=0.3)),
        ("http_5xx", FaultSpec(seed=3, http_5xx_probability=0.25)),
    ],
)
def test_429_and_5xx_are_retried_with_jittered_backoff(
    tmp_path: Path, knob: str, faults: FaultSpec
) -> None:
    """Reads are retried by the engine's one retry layer (the adapter sends each once); a
    write that met a 5xx is an unknown outcome the engine resolves by client_order_id; a
    429 write was never read, so the adapter sends it again."""
    with alpaca_rig(tmp_path, market(EAGER), faults, config=RESTING) as rig, capture_logs() as logs:
        result = rig.run(*TWO_ORDERS)
        rig.check(result)
        assert all(o.state == OrderState.VALIDATED for o in result.orders)
        assert rig.server.app.faults.injected[knob] >= 2
        assert [e for e in logs if e["event"] == "broker.read_retry"]
        if knob == "http_429":
            assert rig.broker.counters.rate_limited >= 2


def test_latency_on_every_request_is_tolerated(tmp_path: Path) -> None:
    with alpaca_rig(tmp_path, market(EAGER), FaultSpec(latency_seconds=0.15)) as rig:
        result = rig.run(*AT_ONCE)
        rig.check(result)
        assert result.orders[0].state == OrderState.VALIDATED


def test_submit_timeout_is_an_unknown_outcome_resolved_without_a_duplicate(
    tmp_path: Path,
) -> None:
    """The SDK sets no timeout; ours (0.5 s) cuts a submit the server answers after 1 s. The
    engine journals outcome_unknown, looks the client_order_id up, and adopts the order the
    server did accept: the second send with the same id is refused as a duplicate."""
    faults = FaultSpec(latency_seconds=1.0, only=["POST /v2/orders"])
    with alpaca_rig(tmp_path, market(EAGER), faults, http_timeout_seconds=0.5) as rig:
        result = rig.run(*AT_ONCE)
        rig.check(result)
        assert result.orders[0].state == OrderState.VALIDATED
        assert rig.events(EventKind.OUTCOME_UNKNOWN)
        assert [e.data["adopted"] for e in rig.events(EventKind.SUBMIT_ACK)] == [True]
        book = rig.book()
        assert len(book.orders) == 1
        assert_one_order_per_client_order_id(book)


def test_dropped_connections_on_submit_never_double_an_order(tmp_path: Path) -> None:
    faults = FaultSpec(seed=1, drop_probability=0.5, only=["POST /v2/orders"])
    with alpaca_rig(tmp_path, market(EAGER), faults) as rig:
        result = rig.run(
            *AT_ONCE, {"symbol": "MSFT", "side": "buy", "quantity": "2", "urgency": "high"}
        )
        rig.check(result)
        assert all(o.state == OrderState.VALIDATED for o in result.orders)
        assert rig.server.app.faults.injected["drop"] >= 1
        assert rig.events(EventKind.OUTCOME_UNKNOWN)
        assert_one_order_per_client_order_id(rig.book())


def test_504_after_the_order_was_accepted_is_adopted_not_resent(tmp_path: Path) -> None:
    """The SDK would retry a POST on 504 by itself (three times, 3 s apart) and could double
    the order without our client_order_id; with its retries off, the engine adopts it."""
    faults = FaultSpec(submit_504_probability=1.0)
    with alpaca_rig(tmp_path, market(EAGER), faults) as rig:
        result = rig.run(
            *AT_ONCE, {"symbol": "MSFT", "side": "buy", "quantity": "2", "urgency": "high"}
        )
        rig.check(result)
        assert all(o.state == OrderState.VALIDATED for o in result.orders)
        assert len(rig.events(EventKind.OUTCOME_UNKNOWN)) == 2
        assert all(e.data["adopted"] for e in rig.events(EventKind.SUBMIT_ACK))
        assert rig.broker.counters.by_endpoint["submit_order"] == 2
        assert rig.server.app.stats["POST /v2/orders"] == 2  # the SDK did not retry the 504s
        assert len(rig.book().orders) == 2


def test_replace_refused_because_the_order_filled(tmp_path: Path) -> None:
    """The server fills the resting order just before the PATCH and answers 422: the adapter
    checks the replacement's client_order_id (not there), the engine counts the fill, cancels
    nothing live and validates."""
    faults = FaultSpec(replace_filled_probability=1.0)
    with alpaca_rig(tmp_path, market(NEVER), faults, config=REPLACING) as rig:
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "6"})
        rig.check(result)
        order = result.orders[0]
        assert order.state == OrderState.VALIDATED
        assert order.filled_qty == 6
        refused = [e.data["reason"] for e in rig.events(EventKind.REJECTED)]
        assert refused == ["not_replaceable"]
        # the plan's first client order id, looked up before the plan is journaled (a plan
        # is exactly-once per account), then the replacement's after the 422
        assert rig.broker.counters.by_endpoint["get_order_by_client_id"] == 2
        assert len(rig.book().orders) == 1


def test_rate_budget_keeps_every_call_under_the_server_limit(tmp_path: Path) -> None:
    """The server allows 6 requests per 2 s; the adapter's sliding window allows 5 (a call
    is counted when sent, the server counts it on arrival), so calls wait instead of meeting
    a 429 (a plan's start alone, from its listing to its first order, makes 7)."""
    faults = FaultSpec(rate_limit_per_minute=6, rate_limit_window_seconds=2.0)
    with alpaca_rig(tmp_path, market(NEVER), faults, rate_limit=5, rate_window_seconds=2.0) as rig:
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "5"})
        rig.check(result)
        assert result.orders[0].state == OrderState.VALIDATED
        assert rig.broker.counters.rest_calls > 6
        assert rig.broker.counters.throttled >= 1
        assert rig.server.app.stats["rate_limited"] == 0
        assert rig.broker.counters.rate_limited == 0


def test_bad_keys_give_one_clear_error_and_send_no_order(tmp_path: Path) -> None:
    server = SimServer(tmp_path / "sim.db", market(), FaultSpec(), KEYS)
    with ServerThread(server) as thread:
        wrong = (KEYS[0], "not-the-secret")
        with (
            AlpacaBroker(settings_for(thread.url, keys=wrong)) as broker,
            pytest.raises(AlpacaConfigError) as refused,
        ):
            asyncio.run(broker.check_keys())
        assert "refused the API keys" in refused.value.message
        assert "403" in refused.value.message
        assert wrong[1] not in str(refused.value)
        assert KEYS[1] not in str(refused.value)
        stats = thread.app.stats
        assert stats["forbidden"] == 1
        assert stats["requests"] == 0
        assert not thread.app.broker.orders
