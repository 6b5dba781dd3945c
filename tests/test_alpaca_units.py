"""The adapter's pure parts: Alpaca's real error bodies mapped to typed errors, the rate
limiter, the settings' guards, the SDK take-over, and merging REST and stream views."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from alpaca.data.models import Quote as SdkQuote
from alpaca_support import KEYS

from engine import BrokerOrderStatus, BrokerRejected, BrokerUnavailable, OrderSide
from engine.broker import BrokerOrder
from engine.brokers.alpaca import (
    AlpacaConfigError,
    AlpacaCounters,
    AlpacaSettings,
    Forbidden,
    InsufficientBuyingPower,
    RateLimited,
    RateLimiter,
    SubPennyPrice,
    error_from_response,
)
from engine.brokers.alpaca.convert import order_from_update, quote_from_sdk
from engine.brokers.alpaca.rest import RestGateway
from engine.brokers.alpaca.streams import StreamThread
from engine.brokers.alpaca.tracking import CANCEL_TAKEN, OrderTracker, Waiters
from engine.brokers.simserver.wire import IdMap, order_json
from engine.errors import DuplicateClientOrderId, NotReplaceable, OrderNotFound, OutcomeUnknown

BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
CASES = [
    # (status, body exactly as Alpaca or its gateway sends it, write?, error, reason)
    (403, '{"code":40310000,"message":"insufficient qty available for order (requested: 10, '
     'available: 4)"}', True, BrokerRejected, "insufficient_position"),
    (403, '{"code":40310000,"message":"insufficient buying power"}', True,
     InsufficientBuyingPower, "insufficient_funds"),
    (422, '{"code":42210000,"message":"invalid limit_price 187.123. sub-penny increment does not '
     'fulfill minimum pricing criteria"}', True, SubPennyPrice, "sub_penny"),
    (422, '{"code":40010001,"message":"client_order_id must be unique"}', True,
     DuplicateClientOrderId, "duplicate_client_order_id"),
    (404, '{"code":40410000,"message":"order not found"}', False, OrderNotFound, None),
    (404, '{"code":40410000,"message":"position does not exist"}', False, OrderNotFound, None),
    (422, '{"code":42210000,"message":"order is not replaceable"}', True, NotReplaceable, None),
    (422, '{"code":42210000,"message":"unable to replace order, order isn\'t sufficiently open"}',
     True, NotReplaceable, None),
    (422, '{"code":42210000,"message":"unable to replace order, order isn\'t sent to exchange '
     'yet"}', True, NotReplaceable, None),
    (403, '{"code":40310000,"message":"order parameters are not changed"}', True,
     NotReplaceable, None),
    (401, '{"code":40110000,"message":"request is not authorized"}', False, Forbidden,
     "forbidden"),
    (403, '{"message": "forbidden."}', False, Forbidden, "forbidden"),
    (429, '{"code":42910000,"message":"rate limit exceeded"}', True, RateLimited, None),
    (502, BAD_GATEWAY, False, BrokerUnavailable, None),
    (504, BAD_GATEWAY.replace("502 Bad", "504 Gateway"), True, OutcomeUnknown, None),
    (500, "", True, OutcomeUnknown, None),
    (400, "not json at all {", True, BrokerRejected, "rejected"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "body", "write", "kind", "reason"), CASES)
def test_alpaca_error_bodies_map_to_typed_errors(
    status: int, body: str, write: bool, kind: type[Exception], reason: str | None
) -> None:
    error = error_from_response(status, body, write=write)
    assert type(error) is kind
    assert error.fields["status"] == status
    assert str(status) in error.message
    if reason is not None:
        assert getattr(error, "reason", None) == reason


def test_an_html_body_becomes_one_plain_line() -> None:
    error = error_from_response(502, BAD_GATEWAY, write=False)
    assert error.message == "alpaca: HTTP 502: 502 Bad Gateway nginx"
    assert error.fields["code"] is None


def test_a_5xx_on_a_read_is_retryable_and_on_a_write_is_unknown() -> None:
    assert type(error_from_response(503, "{}", write=False)) is BrokerUnavailable
    assert type(error_from_response(503, "{}", write=True)) is OutcomeUnknown


def test_keys_never_survive_into_an_error() -> None:
    body = f'{{"code":40110000,"message":"bad key {KEYS[0]} / {KEYS[1]}"}}'
    error = error_from_response(401, body, write=False, secrets=KEYS)
    assert KEYS[0] not in error.message
    assert KEYS[1] not in error.message
    assert "***" in error.message


def test_limiter_never_lets_more_than_the_limit_into_any_window() -> None:
    limiter = RateLimiter(limit=5, window_seconds=0.3)
    sent: list[float] = []

    async def burst() -> None:
        async def one() -> None:
            await limiter.acquire()
            sent.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(12)))

    started = time.monotonic()
    asyncio.run(burst())
    assert time.monotonic() - started >= 0.6  # 12 calls at 5 per 0.3 s: two full waits
    assert all(b - a >= 0.3 - 1e-3 for a, b in zip(sent, sent[5:], strict=False))
    assert limiter.throttled == 7


def settings(**fields: object) -> AlpacaSettings:
    return AlpacaSettings(key_id=KEYS[0], secret_key=KEYS[1], **fields)  # type: ignore[arg-type]


def test_paper_by_default_and_the_live_endpoint_needs_live() -> None:
    assert settings().paper
    assert settings().trading_url is None  # the SDK's own paper endpoint
    with pytest.raises(AlpacaConfigError, match="--live"):
        settings(trading_url="https://api.alpaca.markets")
    assert not settings(trading_url="https://api.alpaca.markets", live=True).paper


@pytest.mark.parametrize(
    "url",
    [
        "https://api.alpaca.markets",
        "https://API.ALPACA.MARKETS/",
        "https://api.alpaca.markets:443",
        "https://api.alpaca.markets./v2",
        "HTTPS://Api.Alpaca.Markets",
        "https://user@api.alpaca.markets",
        " https://api.alpaca.markets ",
        "http://paper-api.alpaca.markets",
        "https://paper-api.alpaca.markets:8443",
        "https://paper-api.alpaca.markets.evil.example",
        "https://broker.example",
        "https://10.0.0.1:8123",
        "https://paper-api.alpaca.markets:99999",
    ],
)
def test_without_live_only_paper_or_loopback_is_accepted(url: str) -> None:
    with pytest.raises(AlpacaConfigError, match="--live"):
        settings(trading_url=url)
    with pytest.raises(AlpacaConfigError, match="--live"):
        settings(trading_url="http://127.0.0.1:8123", data_url=url)
    assert not settings(trading_url=url, live=True).paper


@pytest.mark.parametrize(
    "url",
    [
        "https://paper-api.alpaca.markets",
        "https://PAPER-API.alpaca.markets./",
        "https://paper-api.alpaca.markets:443/v2",
        "http://127.0.0.1:8123",
        "http://localhost:8123",
        "http://[::1]:8123",
        "https://127.0.0.2",
    ],
)
def test_paper_and_loopback_urls_need_no_live(url: str) -> None:
    assert settings(trading_url=url).paper


def test_an_overridden_url_carries_data_and_both_streams_with_it() -> None:
    local = settings(trading_url="http://127.0.0.1:8123")
    assert local.data_url == "http://127.0.0.1:8123"
    assert local.trading_stream_url == "ws://127.0.0.1:8123/stream"
    assert local.data_stream_url == "ws://127.0.0.1:8123/v2/iex"
    proxied = settings(
        trading_url="https://broker.example", data_url="https://data.example", live=True
    )
    assert proxied.trading_stream_url == "wss://broker.example/stream"
    assert proxied.data_stream_url == "wss://data.example/v2/iex"


def test_missing_keys_are_refused_and_keys_never_print() -> None:
    with pytest.raises(AlpacaConfigError, match="APCA_API_KEY_ID"):
        AlpacaSettings.from_env({})
    assert KEYS[1] not in repr(settings())
    assert KEYS[0] not in repr(settings())


def test_the_sdk_retries_are_off_and_every_request_has_a_timeout() -> None:
    gateway = RestGateway(settings(trading_url="http://127.0.0.1:9"), AlpacaCounters())
    for client in (gateway.trading, gateway.data):
        assert client._retry == 0
        adapter = client._session.get_adapter("http://127.0.0.1:9/v2/orders")
        assert getattr(adapter, "default_timeout", None) == (5.0, 10.0)


def order(status: BrokerOrderStatus, filled: str) -> BrokerOrder:
    return BrokerOrder(
        id="9e6f1b6c-1111-4111-8111-000000000001",
        client_order_id="wb-o1-L1-1",
        symbol="AAPL",
        side=OrderSide.BUY,
        order_type="limit",
        qty=Decimal(10),
        limit_price=Decimal("190.05"),
        status=status,
        filled_qty=Decimal(filled),
        filled_avg_price=Decimal("190.05") if Decimal(filled) else None,
    )


def test_a_late_rest_answer_never_undoes_a_streamed_fill() -> None:
    tracker = OrderTracker()
    filled = order(BrokerOrderStatus.FILLED, "10")
    tracker.observe(filled)  # trade_updates: fill
    merged = tracker.show(order(BrokerOrderStatus.NEW, "0"))  # the submit's answer, later
    assert merged == filled
    replaced = replace(order(BrokerOrderStatus.REPLACED, "0"), replaced_by="next")
    tracker.observe(replaced)
    assert tracker.latest(filled.id) == replace(filled, replaced_by="next")


def update(event: str, view: BrokerOrder, position_qty: str | None = None) -> dict[str, Any]:
    """A trade_updates message's data as Alpaca sends it (the sim-server's wire shape)."""
    at = datetime(2026, 11, 23, 15, 30, 1, tzinfo=UTC)
    data = {"event": event, "order": order_json(view, IdMap(), at), "timestamp": at.isoformat()}
    if position_qty is not None:
        data |= {"qty": "3", "price": "190.05", "position_qty": position_qty}
    return data


def test_an_execution_brings_its_time_and_the_exact_position_after_it() -> None:
    """position_qty is taken from Alpaca's text (the SDK's model would make it a float and
    lose digits); an event that is not an execution carries no position."""
    partial = order(BrokerOrderStatus.PARTIALLY_FILLED, "3")
    executed = order_from_update(update("partial_fill", partial, "1234567.123456789"))
    assert executed.position_after == Decimal("1234567.123456789")
    assert executed.filled_at == datetime(2026, 11, 23, 15, 30, 1, tzinfo=UTC)
    pending = order_from_update(update("pending_cancel", partial))
    assert (pending.position_after, pending.filled_at) == (None, None)
    for garbled in ("NaN", "Infinity", "seven", ""):
        assert order_from_update(update("fill", partial, garbled)).position_after is None


def test_the_reported_position_stays_with_the_fills_it_came_with() -> None:
    """A later view showing the same fills without a position (the final status, a REST
    read) keeps the execution's; one showing more fills drops it: it was not after them."""
    tracker = OrderTracker()
    partial = replace(order(BrokerOrderStatus.PARTIALLY_FILLED, "3"), position_after=Decimal(7))
    tracker.observe(partial)
    cancelled = tracker.show(order(BrokerOrderStatus.CANCELED, "3"))
    assert (cancelled.status, cancelled.position_after) == (BrokerOrderStatus.CANCELED, 7)
    more = tracker.show(order(BrokerOrderStatus.FILLED, "10"))
    assert more.position_after is None


def test_a_late_accepted_answer_never_undoes_a_streamed_new() -> None:
    """The submit's answer (`accepted`) can arrive after trade_updates said `new`: the order
    stays at the venue in the tracker, so a wait on it is not left waiting for news."""
    tracker = OrderTracker()
    tracker.observe(order(BrokerOrderStatus.NEW, "0"))  # trade_updates: new
    merged = tracker.show(order(BrokerOrderStatus.ACCEPTED, "0"))  # the POST's answer
    assert merged.status is BrokerOrderStatus.NEW


def test_news_is_what_the_engine_has_not_seen() -> None:
    tracker = OrderTracker()
    tracker.show(order(BrokerOrderStatus.NEW, "0"))
    assert tracker.news(order(BrokerOrderStatus.NEW, "0").id) is None
    tracker.observe(order(BrokerOrderStatus.PARTIALLY_FILLED, "4"))
    news = tracker.news(order(BrokerOrderStatus.NEW, "0").id)
    assert news is not None
    assert news.filled_qty == 4


def test_a_reconnect_makes_every_open_order_worth_one_read() -> None:
    tracker = OrderTracker()
    tracker.stream_connected()
    tracker.observe(order(BrokerOrderStatus.NEW, "0"))
    order_id = order(BrokerOrderStatus.NEW, "0").id
    assert not tracker.needs_read(order_id)
    tracker.stream_lost()
    assert tracker.needs_read(order_id)
    tracker.stream_connected()
    assert tracker.needs_read(order_id)  # updates may have been missed while it was down
    tracker.observe(order(BrokerOrderStatus.NEW, "0"))
    assert not tracker.needs_read(order_id)


def test_final_orders_are_forgotten_oldest_first_open_ones_never() -> None:
    """A long-lived engine keeps a bounded number of final orders: the oldest final one is
    dropped (asked for again, it costs one REST read), an open order is kept however many
    finish after it, and a final order seen again counts once."""
    tracker = OrderTracker(final_orders_kept=2)
    tracker.stream_connected()
    still_open = replace(order(BrokerOrderStatus.NEW, "0"), id="open")
    tracker.show(still_open)
    finals = [replace(order(BrokerOrderStatus.FILLED, "10"), id=f"final-{i}") for i in range(3)]
    for final in finals:
        tracker.show(final)
    tracker.observe(finals[2])
    assert tracker.latest("final-0") is None
    assert tracker.needs_read("final-0")
    assert tracker.news("final-0") is None
    assert [tracker.latest(f.id) for f in finals[1:]] == finals[1:]
    assert not tracker.needs_read("final-1")
    assert tracker.latest("open") == still_open
    tracker.observe(finals[0])  # read again: now the latest final, the oldest goes
    assert tracker.latest("final-0") == finals[0]
    assert tracker.latest("final-1") is None
    assert tracker.latest("final-2") == finals[2]


def test_a_finished_wait_leaves_nothing_behind() -> None:
    """Waiters are keyed by order id: once nobody waits on an order its key is gone (a
    long-lived engine would keep one per order ever waited on), while a waiter still
    registered on the same key is still woken."""
    waiters = Waiters()

    async def wait_twice() -> None:
        with waiters.watch("order-1") as first:
            with waiters.watch("order-1"):
                pass
            waiters.wake("order-1")
            started = time.monotonic()
            await first.wait(5)
            assert first.future.done()
            assert time.monotonic() - started < 5

    asyncio.run(wait_twice())
    assert waiters._by_key == {}


def test_sdk_floats_become_exact_decimals() -> None:
    """Conversions go through text: 190.05 stays 190.05, never 190.04999999999998."""
    quote = SdkQuote(
        "AAPL",
        {"t": datetime(2026, 11, 23, tzinfo=UTC), "bp": 190.05, "bs": 1, "ap": 190.15, "as": 2},
    )
    converted = quote_from_sdk(quote, "stream")
    assert (converted.bid, converted.ask) == (Decimal("190.05"), Decimal("190.15"))


def test_the_tracker_vouches_for_an_order_only_once_it_shows_the_cancel_alpaca_took() -> None:
    tracker = OrderTracker()
    order_id = order(BrokerOrderStatus.NEW, "0").id
    tracker.observe(order(BrokerOrderStatus.NEW, "0"))
    assert tracker.current(order_id) is None  # no stream up: nothing is vouched for
    tracker.stream_connected()
    tracker.observe(order(BrokerOrderStatus.NEW, "0"))
    assert tracker.current(order_id) == order(BrokerOrderStatus.NEW, "0")
    tracker.wrote(order_id, CANCEL_TAKEN)
    assert tracker.current(order_id) is None
    assert tracker.awaits_echo(order_id)
    tracker.observe(order(BrokerOrderStatus.PARTIALLY_FILLED, "4"))  # a fill, not the cancel
    assert tracker.awaits_echo(order_id)
    tracker.observe(order(BrokerOrderStatus.PENDING_CANCEL, "4"))
    assert not tracker.awaits_echo(order_id)
    assert tracker.current(order_id) == order(BrokerOrderStatus.PENDING_CANCEL, "4")
    tracker.wrote(order_id, CANCEL_TAKEN)  # already shown: nothing to wait for
    assert tracker.current(order_id) is not None
    tracker.stream_lost()
    assert tracker.current(order_id) is None
    assert not tracker.awaits_echo(order_id)


def test_a_stream_task_still_running_at_stop_is_ended_not_destroyed_pending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task the shutdown could not wait out (a closing handshake a busy server has not
    answered) is cancelled and run to its end before the loop closes: asyncio would print
    "Task was destroyed but it is pending!" (and websockets a traceback) on the way out."""
    streams = StreamThread()
    streams.submit(asyncio.sleep(3600))  # outlasts the stop's time
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        streams.stop([], timeout=0.2)
        gc.collect()
    assert streams.loop.is_closed()
    assert "destroyed but it is pending" not in caplog.text
