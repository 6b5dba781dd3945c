"""Walking one order through the book, journaling every fact before acting on it.

Every broker side effect follows the same three steps: journal the intent with a
deterministic client_order_id, call the broker, journal the acknowledgement (or
`outcome_unknown`, then resolve it by looking the client_order_id up). No new
quantity is placed until the previous broker order is confirmed terminal, or
replaced, and its final fills are counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import structlog

from journal import Journal, NewEvent, stamp

from .broker import Asset, Broker, BrokerOrder, OrderRequest
from .clock import Clock
from .config import EngineConfig
from .errors import (
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    NotReplaceable,
    OrderNotFound,
)
from .fsm import FailReason, OrderMachine, Trigger
from .intents import CloseType, OrderSide, Urgency
from .numbers import ZERO, decimal_text
from .order import EventKind, OrderRecord, client_order_id
from .pricing import limit_price
from .quotes import QuoteService, UsableQuote

__all__ = ["OrderJournal", "OrderWalk", "WalkContext"]

T = TypeVar("T")
PRICE_STEP = Decimal("0.000001")
Listener = Callable[[OrderRecord, str, dict[str, Any]], None]


@dataclass
class WalkContext:
    """What every walk shares: the journal, the broker, quotes, time, config and listeners."""

    journal: Journal
    broker: Broker
    quotes: QuoteService
    clock: Clock
    config: EngineConfig
    listeners: list[Listener] = field(default_factory=list)


class OrderJournal:
    """Appends one order's events and keeps its record exactly in step with the journal."""

    def __init__(self, context: WalkContext, record: OrderRecord) -> None:
        self.context = context
        self.record = record

    def write(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        from_state: str | None = None,
        to_state: str | None = None,
    ) -> OrderRecord:
        record = self.record
        at = self.context.clock.now()
        updated = record.apply(kind, to_state, data, stamp(at))
        event = NewEvent(
            kind=kind,
            order_id=record.order_id,
            plan_id=record.plan_id,
            from_state=from_state or record.state,
            to_state=to_state or updated.state,
            data=data,
        )
        stored = self.context.journal.append(event, at=at, projection=updated.projection())
        self.record = replace(updated, last_seq=stored.seq)
        for listener in self.context.listeners:
            listener(self.record, kind, data)
        return self.record


class OrderWalk:
    """Drives one order from PENDING (or wherever its journal left it) to a terminal state."""

    def __init__(self, context: WalkContext, record: OrderRecord) -> None:
        self.ctx = context
        self.book = OrderJournal(context, record)
        self.config = EngineConfig.model_validate(record.config)
        self.machine = OrderMachine(
            len(self.config.ladder), self._persist_transition, initial=record.state
        )
        intent = record.intent
        self.log = structlog.get_logger("walkbook").bind(
            order_id=record.order_id,
            plan_id=record.plan_id,
            correlation_id=intent.correlation_id,
            symbol=intent.symbol,
        )
        self.asset: Asset | None = None

    @property
    def record(self) -> OrderRecord:
        return self.book.record

    # -- journal plumbing ---------------------------------------------------------

    def _persist_transition(
        self, trigger: str, source: str, dest: str, data: dict[str, Any]
    ) -> None:
        self.book.write(
            EventKind.TRANSITION, {"trigger": trigger, **data}, from_state=source, to_state=dest
        )
        self.log.info("order.transition", source=source, dest=dest, **_loggable(data))

    def _fire(self, trigger: str, **data: Any) -> None:
        self.machine.fire(trigger, **data)

    async def _fail(self, reason: FailReason, **data: Any) -> None:
        """End in FAILED, but only after any live broker order is confirmed gone."""
        await self._cancel_live()
        self._fire(Trigger.FAIL, reason=reason.value, **data)

    # -- broker plumbing ----------------------------------------------------------

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read that retries transient errors with backoff; never mistaken for a rejection."""
        attempts = self.config.broker_retry_attempts
        for attempt in range(attempts):
            try:
                return await call()
            except BrokerUnavailable as exc:
                self.log.warning("broker.read_retry", attempt=attempt + 1, error=exc.message)
                if attempt + 1 == attempts:
                    raise
                await self.ctx.clock.sleep(self.config.broker_retry_backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")

    async def _resolve_unknown(
        self, cid: str, resend: Callable[[], Awaitable[BrokerOrder]]
    ) -> BrokerOrder:
        """After an unknown outcome: adopt the order if the broker has it, else resend, same id."""
        config = self.config
        for attempt in range(config.broker_retry_attempts):
            await self.ctx.clock.sleep(config.broker_retry_backoff_seconds * 2**attempt)
            try:
                found = await self.ctx.broker.get_order_by_client_id(cid)
                if found is not None:
                    return found
                return await resend()
            except (DuplicateClientOrderId, BrokerUnavailable) as exc:
                self.log.warning("broker.resolve_retry", client_order_id=cid, error=exc.message)
        raise BrokerUnavailable(f"outcome of {cid} is still unknown", client_order_id=cid)

    async def _side_effect(
        self,
        intent_kind: str,
        ack_kind: str,
        data: dict[str, Any],
        call: Callable[[], Awaitable[BrokerOrder]],
    ) -> BrokerOrder:
        """Write-ahead: journal the intent, call, journal the ack (or the unknown, then resolve)."""
        cid = data["client_order_id"]
        self.book.write(intent_kind, data)
        adopted = False
        try:
            try:
                order = await call()
            except DuplicateClientOrderId:
                found = await self._read(lambda: self.ctx.broker.get_order_by_client_id(cid))
                if found is None:
                    raise
                order, adopted = found, True
            except BrokerUnavailable as exc:
                self.book.write(
                    EventKind.OUTCOME_UNKNOWN,
                    {"client_order_id": cid, "operation": intent_kind, "error": exc.message},
                )
                order, adopted = await self._resolve_unknown(cid, call), True
        except BrokerRejected as exc:
            self.book.write(
                EventKind.REJECTED,
                {"client_order_id": cid, "reason": exc.reason, "message": exc.message},
            )
            raise
        self.book.write(
            ack_kind,
            {
                "client_order_id": cid,
                "broker_order_id": order.id,
                "status": order.status.value,
                "adopted": adopted,
                **({"replaces": order.replaces} if order.replaces else {}),
            },
        )
        return order

    async def _submit(self, step: str, attempt: int, qty: Decimal, price: Decimal | None) -> None:
        request = OrderRequest(
            client_order_id=client_order_id(self.record.order_id, step, attempt),
            symbol=self.record.intent.symbol,
            side=self.record.intent.side,
            qty=qty,
            order_type="market" if price is None else "limit",
            limit_price=price,
        )
        order = await self._side_effect(
            EventKind.SUBMIT_INTENT,
            EventKind.SUBMIT_ACK,
            {
                "client_order_id": request.client_order_id,
                "order_type": request.order_type,
                "qty": decimal_text(qty),
                "limit_price": None if price is None else decimal_text(price),
            },
            lambda: self.ctx.broker.submit_order(request),
        )
        self._absorb(order)

    def _absorb(self, order: BrokerOrder) -> None:
        """Journal any fills not yet counted for this broker order, then its final status."""
        record = self.record
        counted = record.broker_filled.get(order.id, ZERO)
        if order.filled_qty > counted:
            delta = order.filled_qty - counted
            avg = (
                order.filled_avg_price if order.filled_avg_price is not None else order.limit_price
            )
            assert avg is not None, "a filled order without a price"
            cumulative = order.filled_qty * avg
            price = ((cumulative - record.broker_notional.get(order.id, ZERO)) / delta).quantize(
                PRICE_STEP
            )
            self.book.write(
                EventKind.FILL,
                {
                    "broker_order_id": order.id,
                    "client_order_id": order.client_order_id,
                    "qty": decimal_text(delta),
                    "price": decimal_text(price),
                    "cum_qty": decimal_text(order.filled_qty),
                    "cum_avg_price": decimal_text(avg),
                },
            )
            self.log.info("order.fill", qty=str(delta), price=str(price))
            if self.record.filled_qty > self.record.quantity:
                self.book.write(
                    EventKind.ERROR,
                    {"error": "overfill", "filled_qty": decimal_text(self.record.filled_qty)},
                )
                self.log.error("order.overfill", filled=str(self.record.filled_qty))
        if order.is_terminal and order.id not in self.record.final_broker_orders:
            self.book.write(
                EventKind.ORDER_FINAL,
                {
                    "broker_order_id": order.id,
                    "status": order.status.value,
                    "filled_qty": decimal_text(order.filled_qty),
                },
            )

    async def _confirm_terminal(self, order_id: str) -> BrokerOrder:
        """Wait until the broker reports the order terminal, counting fills as they land."""
        broker = self.ctx.broker
        order = await self._read(lambda: broker.get_order(order_id))
        deadline = self.ctx.clock.monotonic() + self.config.settle_timeout_seconds
        while not order.is_terminal:
            self._absorb(order)
            left = deadline - self.ctx.clock.monotonic()
            if left <= 0:
                raise BrokerUnavailable(f"order {order_id} did not reach a final status")
            order = await self._read(partial(broker.wait_for_update, order_id, left))
        self._absorb(order)
        return order

    async def _cancel_live(self) -> None:
        """Cancel the live broker order (if any), confirm it is final and count its fills."""
        live = self.record.live_broker_order_id
        if live is None:
            return
        self.book.write(EventKind.CANCEL_INTENT, {"broker_order_id": live})
        try:
            await self._read(lambda: self.ctx.broker.cancel_order(live))
        except (OrderNotFound, NotReplaceable, BrokerRejected) as exc:
            self.log.info("broker.cancel_refused", broker_order_id=live, error=exc.message)
        self.book.write(EventKind.CANCEL_ACK, {"broker_order_id": live})
        await self._confirm_terminal(live)

    async def _replace(self, step: str, price: Decimal) -> None:
        """Replace the live order with `qty` at `price`; fall back to cancel-confirm-new."""
        old_id = self.record.live_broker_order_id
        assert old_id is not None
        broker = self.ctx.broker
        self._absorb(await self._read(lambda: broker.get_order(old_id)))
        qty = self.record.remaining_qty
        if self.record.live_broker_order_id is None or qty <= 0:
            return await self._submit_remaining(step, price)
        cid = client_order_id(self.record.order_id, step, 1)
        try:
            new = await self._side_effect(
                EventKind.REPLACE_INTENT,
                EventKind.REPLACE_ACK,
                {
                    "client_order_id": cid,
                    "broker_order_id": old_id,
                    "qty": decimal_text(qty),
                    "limit_price": decimal_text(price),
                },
                lambda: broker.replace_order(old_id, qty, price, cid),
            )
        except NotReplaceable as exc:
            self.book.write(
                EventKind.REJECTED,
                {"client_order_id": cid, "reason": "not_replaceable", "message": exc.message},
            )
            await self._cancel_live()
            return await self._submit_remaining(step, price)
        self._absorb(await self._read(lambda: broker.get_order(old_id)))
        self._absorb(new)
        if new.qty > self.record.remaining_qty and not new.is_terminal:
            self.log.warning("order.replace_oversized", new_qty=str(new.qty))
            await self._cancel_live()
            await self._submit_remaining(step, price, attempt=2)

    async def _submit_remaining(self, step: str, price: Decimal | None, attempt: int = 1) -> None:
        if self.record.remaining_qty > 0:
            await self._submit(step, attempt, self.record.remaining_qty, price)

    async def _await_fills(self, deadline: float) -> None:
        """Count fills on the live order until it is final, fully filled, or the deadline."""
        broker = self.ctx.broker
        while (live := self.record.live_broker_order_id) is not None:
            left = deadline - self.ctx.clock.monotonic()
            if left <= 0:
                return
            self._absorb(await self._read(partial(broker.wait_for_update, live, left)))

    async def _quote(self) -> UsableQuote | None:
        quote = await self._read(
            lambda: self.ctx.quotes.get(
                self.record.intent.symbol,
                self.ctx.clock.now(),
                self.asset.price_increment if self.asset else None,
            )
        )
        if quote is None:
            self.log.warning("quote.unusable", counters=self.ctx.quotes.counters.as_dict())
        return quote

    # -- the walk -----------------------------------------------------------------

    async def run(self) -> OrderRecord:
        """Walk to a terminal state. A broker that stays unreachable leaves the order for resume."""
        try:
            try:
                if not self.machine.is_terminal:
                    await self._walk()
            except BrokerRejected as exc:
                await self._fail(_reason(exc.reason), message=exc.message)
        except BrokerUnavailable as exc:
            self.book.write(
                EventKind.ERROR, {"error": "broker_unavailable", "message": exc.message}
            )
            self.log.error("order.interrupted", error=exc.message)
        finally:
            self.machine.release()
        return self.record

    async def _walk(self) -> None:
        broker, intent = self.ctx.broker, self.record.intent
        clock = await self._read(broker.get_clock)
        if not clock.is_open:
            return await self._fail(FailReason.MARKET_CLOSED)
        self.asset = await self._read(lambda: broker.get_asset(intent.symbol))
        if not self.asset.tradable:
            return await self._fail(FailReason.NOT_TRADABLE)
        position = await self._read(lambda: broker.get_position(intent.symbol))
        target = position if intent.close_type is CloseType.FULL else None
        self.book.write(
            EventKind.POSITION_READ,
            {
                "phase": "before",
                "qty": decimal_text(position),
                "target_qty": None if target is None else decimal_text(target),
            },
        )
        if target is not None and target <= 0:
            return await self._fail(FailReason.NO_POSITION)
        if intent.side is OrderSide.SELL and self.record.quantity > position:
            return await self._fail(FailReason.INSUFFICIENT_POSITION, position=str(position))
        quote = await self._quote()
        if quote is None:
            return await self._fail(FailReason.NO_QUOTE)
        self._fire(Trigger.QUOTE, quote=quote.as_data())
        if intent.urgency is Urgency.HIGH or not self.config.ladder:
            self._fire(Trigger.ESCALATE, quote=quote.as_data())
            await self._market()
        elif not await self._ladder(quote):
            return
        self._fire(Trigger.SETTLE)
        await self._settle()

    async def _ladder(self, quote: UsableQuote) -> bool:
        """The limit steps; False when the walk ended in FAILED."""
        wait = self.config.step_wait_seconds(self.record.intent.urgency)
        for k, ratio in enumerate(self.config.ladder, start=1):
            if k > 1:
                fresh = await self._quote()
                if fresh is None:
                    await self._fail(FailReason.NO_QUOTE)
                    return False
                quote = fresh
            price = limit_price(
                self.record.intent.side,
                quote.bid,
                quote.ask,
                ratio,
                self.asset.price_increment if self.asset else None,
            )
            self._fire(
                Trigger.START_WALK if k == 1 else Trigger.NEXT_STEP,
                ratio=decimal_text(ratio),
                limit_price=decimal_text(price),
                quote=quote.as_data(),
                wait_seconds=wait,
            )
            started = self.ctx.clock.monotonic()
            await self._place_limit(f"L{k}", price)
            await self._await_fills(started + wait)
            if self.record.remaining_qty <= 0:
                return True
        quote_now = await self._quote()
        self._fire(Trigger.ESCALATE, quote=None if quote_now is None else quote_now.as_data())
        await self._market()
        return True

    async def _place_limit(self, step: str, price: Decimal) -> None:
        record = self.record
        if record.live_broker_order_id is None:
            return await self._submit_remaining(step, price)
        whole = record.quantity == record.quantity.to_integral_value()
        if whole:
            return await self._replace(step, price)
        await self._cancel_live()
        await self._submit_remaining(step, price)

    async def _market(self) -> None:
        await self._cancel_live()
        for attempt in range(1, self.config.market_attempts + 1):
            if self.record.remaining_qty <= 0:
                return
            await self._submit_remaining("M", None, attempt=attempt)
            await self._await_fills(self.ctx.clock.monotonic() + self.config.market_wait_seconds)
            await self._cancel_live()

    async def _settle(self) -> None:
        """Confirm nothing is live, then check the position moved by exactly what filled."""
        await self._cancel_live()
        record, broker = self.record, self.ctx.broker
        assert record.position_before is not None
        signed = record.filled_qty if record.intent.side is OrderSide.BUY else -record.filled_qty
        expected = record.position_before + signed
        tolerance = self.config.validation_tolerance
        deadline = self.ctx.clock.monotonic() + self.config.settle_timeout_seconds
        symbol = record.intent.symbol
        actual = await self._read(lambda: broker.get_position(symbol))
        while abs(actual - expected) > tolerance and self.ctx.clock.monotonic() < deadline:
            await self.ctx.clock.sleep(1.0)
            actual = await self._read(lambda: broker.get_position(symbol))
        self.book.write(
            EventKind.POSITION_READ,
            {"phase": "after", "qty": decimal_text(actual), "expected": decimal_text(expected)},
        )
        if abs(actual - expected) > tolerance:
            return await self._fail(
                FailReason.VALIDATION_MISMATCH,
                expected=decimal_text(expected),
                actual=decimal_text(actual),
            )
        if self.record.remaining_qty > 0:
            return await self._fail(
                FailReason.PARTIAL_FILL,
                filled_qty=decimal_text(self.record.filled_qty),
                quantity=decimal_text(self.record.quantity),
            )
        self._fire(Trigger.VALIDATE, position=decimal_text(actual))


def _reason(code: str) -> FailReason:
    try:
        return FailReason(code)
    except ValueError:
        return FailReason.REJECTED


def _loggable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in ("trigger", "reason", "limit_price", "ratio")}
