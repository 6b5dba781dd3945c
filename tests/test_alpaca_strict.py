"""walkbook against a sim-server as strict as Alpaca: orders answered `accepted` and filled
later on trade_updates, replaces refused before an order reaches the venue, rejections
after acceptance, expiry at the close, replacements rejected because the old order filled
first. Each plan ends where Alpaca's facts say it must, with no order doubled and every
fill counted exactly once (the rig's invariants, checked against the server's own book).
"""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alpaca.trading.models import Order as SdkOrder
from alpaca_support import (
    EAGER,
    FAST,
    NEVER,
    REPLACING,
    AlpacaRig,
    acks,
    alpaca_rig,
    market,
    rest,
)

from engine import OrderState
from engine.broker import BrokerOrderStatus
from engine.brokers.simserver import FaultSpec
from engine.errors import InvalidIntent
from engine.events import EventKind

WHOLE_SHARES = {"symbol": "AAPL", "side": "buy", "quantity": "6"}
HELD_SECONDS = 5.0  # how long a POST answer is held back at most, waiting for the stream


def one_order_per_client_order_id(rig: AlpacaRig) -> None:
    """Every order at the server was acknowledged in the journal, each client id once."""
    book = rig.book()
    cids = Counter(o.client_order_id for o in book.orders.values())
    assert cids
    assert max(cids.values()) == 1, cids
    assert set(book.orders) == {e.data["broker_order_id"] for e in acks(rig)}


def journaled_fills(rig: AlpacaRig) -> Decimal:
    return sum((Decimal(e.data["qty"]) for e in rig.events(EventKind.FILL)), Decimal(0))


def test_a_replace_refused_while_pending_leaves_no_duplicate_order(tmp_path: Path) -> None:
    """Orders take 1.5 s to reach the venue and steps last 0.4 s: step 2's PATCH meets an
    order still pending_new and is refused 422 (Alpaca: "Order cannot be replaced when the
    status is accepted, pending_new ..."). The walk cancels it, sees it final, then places
    the step anew: never two orders live, each client order id once, the position exactly
    the journaled fills. https://docs.alpaca.markets/reference/replaceorderforaccount"""
    with alpaca_rig(tmp_path, market(NEVER, pending_new_seconds=1.5), config=REPLACING) as rig:
        result = rig.run(WHOLE_SHARES)
        rig.check(result)
        (order,) = result.orders
        assert (order.state, order.filled_qty) == (OrderState.VALIDATED, Decimal(6))
        refused = [e.data["reason"] for e in rig.events(EventKind.REJECTED)]
        assert refused
        assert set(refused) == {"not_replaceable"}
        patches = rig.server.app.stats["PATCH /v2/orders/{order_id}"]
        assert patches == len(refused) + len(rig.events(EventKind.REPLACE_ACK))
        one_order_per_client_order_id(rig)
        assert journaled_fills(rig) == rig.book().positions["AAPL"] == 6


@pytest.mark.parametrize("urgency", ["medium", "high"])
def test_a_late_rejection_fails_the_order_rejected_at_broker(tmp_path: Path, urgency: str) -> None:
    """The POST is answered `accepted`, then the venue rejects the order on trade_updates:
    the order ends FAILED `rejected_at_broker`, nothing filled, nothing placed after it.
    https://docs.alpaca.markets/docs/orders-at-alpaca (Order Lifecycle: rejected)"""
    with alpaca_rig(tmp_path, market(EAGER, late_reject_probability=1.0)) as rig:
        result = rig.run({**WHOLE_SHARES, "urgency": urgency})
        rig.check(result)
        (order,) = result.orders
        assert (order.state, order.reason) == (OrderState.FAILED, "rejected_at_broker")
        assert order.filled_qty == 0
        (placed,) = rig.book().orders.values()
        assert placed.status is BrokerOrderStatus.REJECTED
        one_order_per_client_order_id(rig)


def test_a_day_order_expiring_at_the_close_fails_expired_with_its_fills_kept(
    tmp_path: Path,
) -> None:
    """The close comes while step 1's DAY order rests with partial fills: it ends `expired`,
    and the order FAILED `expired`, its fills journaled and in the position.
    https://docs.alpaca.markets/docs/orders-at-alpaca (Time in Force: day; expired)"""
    spec = market(EAGER, closes_in_seconds=4.0, partial_fill_probability=1.0)
    long_step = FAST.model_copy(update={"medium_step_wait_seconds": 8.0})
    with alpaca_rig(tmp_path, spec, config=long_step) as rig:
        result = rig.run({"symbol": "AAPL", "side": "buy", "quantity": "100"})
        rig.check(result)
        (order,) = result.orders
        assert (order.state, order.reason) == (OrderState.FAILED, "expired")
        assert 0 < order.filled_qty < 100
        (placed,) = rig.book().orders.values()
        assert placed.status is BrokerOrderStatus.EXPIRED
        assert journaled_fills(rig) == order.filled_qty == rig.book().positions["AAPL"]


def test_a_replacement_rejected_because_the_old_order_filled_validates_once(
    tmp_path: Path,
) -> None:
    """The PATCH is answered 200, but the old order fills before its replacement reaches the
    venue, and the replacement is rejected: the order is VALIDATED on the old order's fill,
    counted once, and nothing else is placed.
    https://docs.alpaca.markets/reference/replaceorderforaccount ("A success return code
    from a replaced order does NOT guarantee the existing open order has been replaced")"""
    faults = FaultSpec(replace_rejected_probability=1.0)
    with alpaca_rig(tmp_path, market(NEVER), faults, config=REPLACING) as rig:
        result = rig.run(WHOLE_SHARES)
        rig.check(result)
        (order,) = result.orders
        assert (order.state, order.filled_qty) == (OrderState.VALIDATED, Decimal(6))
        (fill,) = rig.events(EventKind.FILL)
        assert Decimal(fill.data["qty"]) == 6
        book = rig.book().orders
        statuses = sorted(o.status.value for o in book.values())
        assert statuses == ["filled", "rejected"]
        assert len(rig.events(EventKind.SUBMIT_ACK)) == 1
        assert len(rig.events(EventKind.REPLACE_ACK)) == 1
        one_order_per_client_order_id(rig)
        assert rig.book().positions["AAPL"] == 6


@pytest.mark.parametrize("urgency", ["medium", "high"])
def test_fills_streamed_before_the_post_answer_are_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, urgency: str
) -> None:
    """The answer to POST /v2/orders (`accepted`, nothing filled) reaches walkbook only after
    trade_updates has reported the order filled, as a slow network would deliver it: the
    fill is journaled once, at the broker's qty and price.
    https://docs.alpaca.markets/docs/websocket-streaming (the recommended source of order state)"""
    with alpaca_rig(tmp_path, market(EAGER)) as rig:
        trading = rig.broker.rest.trading
        send = trading.submit_order
        held: list[tuple[str, str, bool]] = []

        def answer_after_the_stream(order_data: Any) -> Any:
            answer = send(order_data)
            assert isinstance(answer, SdkOrder)
            order_id = str(answer.id)
            deadline = time.monotonic() + HELD_SECONDS
            while not (streamed := _streamed_filled(rig, order_id)):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            held.append((order_id, answer.status.value, streamed))
            return answer

        monkeypatch.setattr(trading, "submit_order", answer_after_the_stream)
        result = rig.run({**WHOLE_SHARES, "urgency": urgency})
        rig.check(result)
        (order,) = result.orders
        assert (order.state, order.filled_qty) == (OrderState.VALIDATED, Decimal(6))
        assert [(status, streamed) for _, status, streamed in held] == [("accepted", True)]
        (fill,) = rig.events(EventKind.FILL)
        assert fill.data["broker_order_id"] == held[0][0]
        assert Decimal(fill.data["qty"]) == 6
        one_order_per_client_order_id(rig)
        assert rig.book().positions["AAPL"] == 6


def _streamed_filled(rig: AlpacaRig, order_id: str) -> bool:
    """Whether trade_updates has told the adapter the order is filled (the POST answer has
    not been shown to it yet, so only the stream can have)."""
    latest = rig.broker.orders.latest(order_id)
    return latest is not None and latest.status is BrokerOrderStatus.FILLED


@pytest.mark.parametrize("validation", ["all_or_nothing", "skip_invalid"])
def test_no_sell_opens_a_short_on_a_margin_account(tmp_path: Path, validation: str) -> None:
    """On a margin account Alpaca takes a sell with no position as a short sale; walkbook
    sells at most the position it read: a sell of a symbol not held, and one beyond the
    position, are refused whole (InvalidIntent) or each fail `invalid_intent`, with
    nothing sent, and the account holds no short afterwards.
    https://docs.alpaca.markets/docs/margin-and-short-selling"""
    spec = market(EAGER, positions={"MSFT": Decimal(3)})
    config = FAST.model_copy(update={"validation": validation})
    with alpaca_rig(tmp_path, spec, config=config) as rig:
        assert rest(rig.server.url, "/v2/account")["shorting_enabled"] is True
        sells = (
            {"symbol": "AAPL", "side": "sell", "quantity": "5"},
            {"symbol": "MSFT", "side": "sell", "quantity": "4"},
        )
        if validation == "all_or_nothing":
            with pytest.raises(InvalidIntent, match="exceeds the position"):
                rig.run(*sells)
        else:
            result = rig.run(*sells)
            reasons = [(o.state, o.reason) for o in result.orders]
            assert reasons == [(OrderState.FAILED, "invalid_intent")] * 2
        assert rig.server.app.stats["POST /v2/orders"] == 0
        assert rig.book().positions == {"MSFT": Decimal(3)}
