"""Walking one order through the book, journaling every fact before acting on it.

Every broker side effect follows the same three steps: journal the intent with a
deterministic client_order_id, call the broker, journal the acknowledgement (or
`outcome_unknown`, then resolve it by looking the client_order_id up). No new
quantity is placed until the previous broker order is confirmed terminal, or
replaced, and its final fills are counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from functools import cached_property, partial
from typing import Any, TypeVar

import structlog

from journal import Event, Journal, NewEvent, stamp

from .broker import Asset, Broker, BrokerOrder, BrokerOrderStatus, OrderRequest
from .clock import MIN_WAIT_SECONDS, Clock
from .config import EngineConfig, journaled_config
from .crash import CrashPoints
from .errors import (
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    NotReplaceable,
    OrderNotFound,
)
from .fsm import FailReason, OrderMachine, OrderState, Trigger, is_limit_step, step_number
from .intents import CloseType, OrderSide, Urgency
from .numbers import ZERO, decimal_text
from .order import EventKind, OrderRecord, client_order_id, engine_order_of
from .pricing import limit_price
from .quotes import QuoteCounters, QuoteService, UsableQuote
from .retry import read_with_retry
from .stopping import StopRequested, StopRequests

__all__ = ["EndedAtBroker", "OrderJournal", "OrderWalk", "WalkContext"]

# a submit intent's `order_type` for the close-position route, and its step in client ids
CLOSE_POSITION, CLOSE_STEP = "close_position", "C"

T = TypeVar("T")
PRICE_STEP = Decimal("0.000001")
QTY_WHOLE, QTY_FRACTION = Decimal(1), Decimal("0.0001")
Listener = Callable[[OrderRecord, Event], None]
Finder = Callable[[], Awaitable[BrokerOrder | None]]
# what a broker order can end in without filling (walkbook asked for it, or someone else
# did), and the reason the walk fails with when walkbook did not ask
_ENDED_UNFILLED = {
    BrokerOrderStatus.CANCELED.value: FailReason.CANCELLED_EXTERNALLY,
    BrokerOrderStatus.EXPIRED.value: FailReason.EXPIRED,
    BrokerOrderStatus.REJECTED.value: FailReason.REJECTED_AT_BROKER,
}


class BrokerOrderMissing(Exception):
    """The broker has nothing under a broker order id (nor its client order id) that
    walkbook placed and the broker acknowledged."""

    def __init__(self, broker_order_id: str) -> None:
        super().__init__(broker_order_id)
        self.broker_order_id = broker_order_id


class EndedAtBroker(Exception):
    """A broker order ended (cancelled, expired, rejected) without walkbook asking: a
    person or the broker decided, and walkbook places nothing more for it."""


@dataclass
class WalkContext:
    """What every walk shares: the journal, the broker, quotes, time, config and listeners."""

    journal: Journal
    broker: Broker
    quotes: QuoteService
    clock: Clock
    config: EngineConfig
    crash_points: CrashPoints = field(default_factory=CrashPoints)
    listeners: list[Listener] = field(default_factory=list)
    # each plan's share of `quotes.counters` (what its orders' quotes were, in this process)
    plan_quotes: defaultdict[str | None, QuoteCounters] = field(
        default_factory=lambda: defaultdict(QuoteCounters)
    )
    stops: StopRequests = field(default_factory=StopRequests)


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
        record, journal = self.record, self.context.journal
        at = self.context.clock.now()
        # Journal.append stores the event at last_seq + 1 or raises, so the record knows
        # its seq before the append and the projection is written with it.
        updated = record.apply(kind, to_state, data, stamp(at), journal.last_seq + 1)
        event = NewEvent(
            kind=kind,
            order_id=record.order_id,
            plan_id=record.plan_id,
            from_state=from_state or record.state,
            to_state=to_state or updated.state,
            data=data,
        )
        crash_points = self.context.crash_points
        crash_points.hit(f"before_append.{kind}")
        stored = journal.append(event, at=at, projection=updated.projection())
        crash_points.hit(f"after_append.{kind}")
        self.record = updated
        for listener in self.context.listeners:
            listener(self.record, stored)
        return self.record


class OrderWalk:
    """Drives one order from PENDING (or wherever its journal left it) to a terminal state."""

    def __init__(self, context: WalkContext, record: OrderRecord) -> None:
        self.ctx = context
        self.book = OrderJournal(context, record)
        self.config = journaled_config(record.config)
        self.machine = OrderMachine(
            len(self.config.ladder), self._persist_transition, initial=record.state
        )
        self.asset: Asset | None = None
        self._arrival_quote: UsableQuote | None = None

    @property
    def record(self) -> OrderRecord:
        return self.book.record

    @cached_property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """The walk's logger, bound on first use: most reconciles log nothing, and binding
        costs about as much as reconciling an order with nothing to settle."""
        record = self.record
        logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("walkbook").bind(
            order_id=record.order_id,
            plan_id=record.plan_id,
            correlation_id=record.intent.correlation_id,
            symbol=record.intent.symbol,
        )
        return logger

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
        return await read_with_retry(call, self.config, self.ctx.clock, lambda: self.log)

    async def _resolve_unknown(
        self, cid: str, resend: Callable[[], Awaitable[BrokerOrder]], find: Finder
    ) -> BrokerOrder:
        """After an unknown outcome: adopt the order if the broker has it, else resend, same id."""
        config = self.config
        for attempt in range(config.broker_retry_attempts):
            await self.ctx.clock.sleep(config.broker_retry_backoff_seconds * 2**attempt)
            try:
                found = await find()
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
        """Write-ahead: journal the intent, then perform the call and journal its outcome."""
        self.book.write(intent_kind, data)
        cid = data["client_order_id"]
        find = self._finder({"kind": intent_kind, **data})
        return await self._perform(intent_kind, ack_kind, cid, call, fresh=True, find=find)

    def _finder(self, intent: dict[str, Any]) -> Finder:
        """How to find the broker order an intent may have made: by its client order id, or
        for a close-position (whose client id is the broker's) among the symbol's recent
        orders."""
        if intent.get("order_type") == CLOSE_POSITION:
            return partial(self._find_close_order, intent)
        broker, cid = self.ctx.broker, intent["client_order_id"]
        return partial(broker.get_order_by_client_id, cid)

    async def _find_close_order(self, intent: dict[str, Any]) -> BrokerOrder | None:
        """The sell of exactly the intent's qty of the symbol submitted since the intent, with
        a client id that is not walkbook's and no acknowledgement in this order's journal."""
        since = datetime.fromisoformat(intent["sent_after"])
        symbol, qty = self.record.intent.symbol, Decimal(intent["qty"])
        recent = await self.ctx.broker.recent_orders(symbol, since)
        for order in recent:
            if (
                order.side is OrderSide.SELL
                and order.qty == qty
                and engine_order_of(order.client_order_id) is None
                and order.id not in self.record.broker_order_ids
            ):
                return order
        return None

    async def _perform(
        self,
        intent_kind: str,
        ack_kind: str,
        cid: str,
        call: Callable[[], Awaitable[BrokerOrder]],
        *,
        fresh: bool = False,
        find: Finder | None = None,
    ) -> BrokerOrder:
        """Call the broker for a journaled intent; journal the ack, the unknown, or the refusal.

        `fresh`: the first sending of an intent just journaled. The broker already holding
        its client order id then means another journal placed it (the same plan delivered
        twice on one account): never adopted, so nothing is counted or traded twice.
        """
        adopted = False
        try:
            try:
                order = await call()
            except DuplicateClientOrderId:
                if fresh:
                    raise BrokerRejected(
                        f"client order id {cid} is already at the broker, placed through "
                        "another journal",
                        reason=FailReason.PLACED_ELSEWHERE.value,
                    ) from None
                found = await self._read(lambda: self.ctx.broker.get_order_by_client_id(cid))
                if found is None:
                    raise
                order, adopted = found, True
            except BrokerUnavailable as exc:
                self.book.write(
                    EventKind.OUTCOME_UNKNOWN,
                    {"client_order_id": cid, "operation": intent_kind, "error": exc.message},
                )
                find = find or partial(self.ctx.broker.get_order_by_client_id, cid)
                order, adopted = await self._resolve_unknown(cid, call, find), True
        except BrokerRejected as exc:
            self.book.write(
                EventKind.REJECTED,
                {"client_order_id": cid, "reason": exc.reason, "message": exc.message},
            )
            raise
        self._acknowledge(ack_kind, order, adopted)
        return order

    def _acknowledge(self, ack_kind: str, order: BrokerOrder, adopted: bool) -> None:
        self.book.write(
            ack_kind,
            {
                "client_order_id": order.client_order_id,
                "broker_order_id": order.id,
                "status": order.status.value,
                "adopted": adopted,
                **({"replaces": order.replaces} if order.replaces else {}),
            },
        )

    def _request(self, data: dict[str, Any]) -> OrderRequest:
        """The broker request a journaled submit_intent describes."""
        limit = data["limit_price"]
        return OrderRequest(
            client_order_id=data["client_order_id"],
            symbol=self.record.intent.symbol,
            side=self.record.intent.side,
            qty=Decimal(data["qty"]),
            order_type=data["order_type"],
            limit_price=None if limit is None else Decimal(limit),
        )

    async def _submit(self, step: str, attempt: int, qty: Decimal, price: Decimal | None) -> None:
        self._check_not_stopped()
        data = {
            "client_order_id": client_order_id(self.record.order_id, step, attempt),
            "order_type": "market" if price is None else "limit",
            "qty": decimal_text(qty),
            "limit_price": None if price is None else decimal_text(price),
        }
        request = self._request(data)
        order = await self._side_effect(
            EventKind.SUBMIT_INTENT,
            EventKind.SUBMIT_ACK,
            data,
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
            external = self._ended_elsewhere(order)
            self.book.write(
                EventKind.ORDER_FINAL,
                {
                    "broker_order_id": order.id,
                    "status": order.status.value,
                    "filled_qty": decimal_text(order.filled_qty),
                    **({"external": True} if external else {}),
                },
            )
            if external:
                self.log.warning("order.ended_at_broker", status=order.status.value)
                raise EndedAtBroker(order.id)

    def _ended_elsewhere(self, order: BrokerOrder) -> bool:
        """An order that ended unfilled-in-part although walkbook never asked it to: a limit
        order cancelled, expired or rejected, or any order rejected.

        A market order's cancelled or expired rest is left out (a broker may end the
        unfillable rest on its own; the walk's next market attempt, at most
        `market_attempts`, is the answer), and so is a replacement rejected because the
        order it replaced filled first (Alpaca's "replace rejected"): the walk goes on with
        whatever is left.
        """
        if order.id in self.record.cancels_sent or order.status.value not in _ENDED_UNFILLED:
            return False
        if order.status is BrokerOrderStatus.REJECTED:
            return order.replaces is None
        return order.order_type == "limit"

    async def _confirm_terminal(self, order_id: str) -> BrokerOrder:
        """Wait until the broker reports the order terminal, counting fills as they land."""
        order = await self._read_order(order_id)
        deadline = self.ctx.clock.monotonic() + self.config.settle_timeout_seconds
        while not order.is_terminal:
            self._absorb(order)
            left = deadline - self.ctx.clock.monotonic()
            if left <= MIN_WAIT_SECONDS:
                raise BrokerUnavailable(f"order {order_id} did not reach a final status")
            order = await self._wait_for_update(order_id, left)
        self._absorb(order)
        return order

    async def _read_order(self, broker_order_id: str) -> BrokerOrder:
        """The broker's view of one of this order's broker orders. A broker that answers
        "not found" for an order walkbook placed is asked by its client order id; when it has
        nothing under either, BrokerOrderMissing (a fact to journal, never a crash)."""
        broker = self.ctx.broker
        try:
            return await self._read(partial(broker.get_order, broker_order_id))
        except OrderNotFound:
            cid = self._client_id_of(broker_order_id)
            self.log.warning("broker.order_not_found", broker_order_id=broker_order_id)
            found = None
            if cid is not None:
                found = await self._read(partial(broker.get_order_by_client_id, cid))
            if found is None:
                raise BrokerOrderMissing(broker_order_id) from None
            return found if found.id == broker_order_id else replace(found, id=broker_order_id)

    async def _wait_for_update(self, broker_order_id: str, timeout_seconds: float) -> BrokerOrder:
        broker = self.ctx.broker
        try:
            return await self._read(
                partial(broker.wait_for_update, broker_order_id, timeout_seconds)
            )
        except OrderNotFound:
            # a wait the broker cannot serve becomes a poll: pause, then read by client id
            await self.ctx.clock.sleep(
                min(timeout_seconds, self.config.broker_retry_backoff_seconds)
            )
            return await self._read_order(broker_order_id)

    def _client_id_of(self, broker_order_id: str) -> str | None:
        """The client order id an acknowledgement journaled for a broker order (a rare read:
        only a broker that lost an order's id needs it)."""
        for event in self.ctx.journal.events(order_id=self.record.order_id):
            acked = event.kind in (EventKind.SUBMIT_ACK, EventKind.REPLACE_ACK)
            if acked and event.data["broker_order_id"] == broker_order_id:
                return str(event.data["client_order_id"])
        return None

    async def _lost_at_broker(self, broker_order_id: str) -> None:
        """A broker order the broker has nothing of: journaled final (`not_found`, its counted
        fills kept), then the order fails once whatever else it has live is gone."""
        while True:
            counted = self.record.broker_filled.get(broker_order_id, ZERO)
            self.book.write(
                EventKind.ORDER_FINAL,
                {
                    "broker_order_id": broker_order_id,
                    "status": "not_found",
                    "filled_qty": decimal_text(counted),
                },
            )
            try:
                return await self._fail(FailReason.ORDER_NOT_FOUND, broker_order_id=broker_order_id)
            except BrokerOrderMissing as missing:
                broker_order_id = missing.broker_order_id

    async def _cancel_live(self) -> None:
        """Cancel the live broker order (if any), confirm it is final and count its fills."""
        live = self.record.live_broker_order_id
        if live is None:
            return
        self.book.write(EventKind.CANCEL_INTENT, {"broker_order_id": live})
        await self._send_cancel(live)
        await self._confirm_terminal(live)

    async def _stop(self, reason: FailReason) -> None:
        """Stop on purpose (halt, cancel, abandon): settle what the broker may have without
        placing anything new, cancel every unfinished broker order (each cancel journaled
        before it is sent), count the fills that landed first, then end FAILED `reason`.

        The stop is journaled first, so a process killed halfway is resumed into the stop,
        never back into the walk."""
        self._journal_stop(reason)
        # an order found ended at the broker is journaled and final: nothing to cancel
        with suppress(EndedAtBroker):
            await self._reconcile({})
        for broker_order_id in self.record.unfinished_broker_orders:
            self.book.write(EventKind.CANCEL_INTENT, {"broker_order_id": broker_order_id})
            await self._send_cancel(broker_order_id)
            await self._confirm_terminal(broker_order_id)
        self.log.warning("order.stopped", reason=reason.value)
        self._fire(
            Trigger.FAIL, reason=reason.value, filled_qty=decimal_text(self.record.filled_qty)
        )

    def _journal_stop(self, reason: FailReason) -> None:
        if self.record.stop_reason is None:
            self.book.write(EventKind.STOP_REQUESTED, {"reason": reason.value})

    async def _pull_live_order(self) -> None:
        """Giving up for now: ask the broker to cancel the live order so nothing trades unwatched.

        The cancel is journaled first, so if it cannot be sent either, resume sends it.
        """
        live = self.record.live_broker_order_id
        if live is None or self.record.pending_cancel == live:
            return
        self.book.write(EventKind.CANCEL_INTENT, {"broker_order_id": live})
        try:
            await self._send_cancel(live)
        except BrokerUnavailable as exc:
            self.log.error("broker.cancel_unsent", broker_order_id=live, error=exc.message)

    async def _send_cancel(self, broker_order_id: str) -> None:
        """Ask for a cancel (idempotent) and journal that it was answered."""
        try:
            await self._read(lambda: self.ctx.broker.cancel_order(broker_order_id))
        except (OrderNotFound, NotReplaceable, BrokerRejected) as exc:
            self.log.info(
                "broker.cancel_refused", broker_order_id=broker_order_id, error=exc.message
            )
        self.book.write(EventKind.CANCEL_ACK, {"broker_order_id": broker_order_id})

    def _next_attempt(self, step: str) -> int:
        """Attempts are counted per step from the journal, so a resumed walk never reuses an id."""
        prefix = f"wb-{self.record.order_id}-{step}-"
        return 1 + sum(1 for cid in self.record.client_order_ids if cid.startswith(prefix))

    async def _replace(self, step: str, price: Decimal) -> None:
        """Replace the live order at `price` for what remains (its fills were just counted)."""
        old_id = self.record.live_broker_order_id
        assert old_id is not None
        qty = self.record.remaining_qty
        cid = client_order_id(self.record.order_id, step, self._next_attempt(step))
        self._check_not_stopped()
        data = {
            "client_order_id": cid,
            "broker_order_id": old_id,
            "qty": decimal_text(qty),
            "limit_price": decimal_text(price),
        }
        self.book.write(EventKind.REPLACE_INTENT, data)
        await self._perform_replace(data, step, price, fresh=True)

    async def _perform_replace(
        self, data: dict[str, Any], step: str, price: Decimal, *, fresh: bool = False
    ) -> None:
        """Send a journaled replace; if the old order already finished, place anew instead."""
        broker, old_id, cid = self.ctx.broker, data["broker_order_id"], data["client_order_id"]
        qty = Decimal(data["qty"])
        try:
            new = await self._perform(
                EventKind.REPLACE_INTENT,
                EventKind.REPLACE_ACK,
                cid,
                lambda: broker.replace_order(old_id, qty, price, cid),
                fresh=fresh,
            )
        except NotReplaceable as exc:
            self.book.write(
                EventKind.REJECTED,
                {"client_order_id": cid, "reason": "not_replaceable", "message": exc.message},
            )
            await self._cancel_live()
            return await self._submit_remaining(step, price)
        except OrderNotFound as exc:
            # the order to replace is unknown to the broker: nothing was made; its fate is
            # settled like any order the broker lost
            self.book.write(
                EventKind.REJECTED,
                {"client_order_id": cid, "reason": "order_not_found", "message": exc.message},
            )
            raise BrokerOrderMissing(old_id) from None
        # the old order stays `pending_replace` (and may still fill) until the broker
        # replaces it; its fills are counted before the walk goes on
        await self._confirm_terminal(old_id)
        self._absorb(new)
        if new.qty > self.record.remaining_qty and not new.is_terminal:
            self.log.warning("order.replace_oversized", new_qty=str(new.qty))
            await self._cancel_live()
            await self._submit_remaining(step, price)

    async def _submit_remaining(self, step: str, price: Decimal | None) -> None:
        if self.record.remaining_qty > 0:
            await self._submit(step, self._next_attempt(step), self.record.remaining_qty, price)

    async def _await_fills(self, deadline: float) -> None:
        """Count fills on the live order until it is final, fully filled, or the deadline;
        a stop request ends the wait at once (StopRequested)."""
        while (live := self.record.live_broker_order_id) is not None:
            left = deadline - self.ctx.clock.monotonic()
            if left <= MIN_WAIT_SECONDS:
                return
            self._absorb(await self._unless_stopped(partial(self._wait_for_update, live, left)))

    async def _unless_stopped(self, call: Callable[[], Awaitable[T]]) -> T:
        self._check_not_stopped()
        record = self.record
        return await self.ctx.stops.wait_or_stop(call, record.order_id, record.plan_id)

    def _stop_reason(self) -> FailReason | None:
        """Why this order must stop: a stop journaled for it (by this process or one before
        it), else a request made to this engine; None while it may walk on."""
        record = self.record
        if record.stop_reason is not None:
            return FailReason(record.stop_reason)
        return self.ctx.stops.reason_for(record.order_id, record.plan_id)

    def _check_not_stopped(self) -> None:
        """Before anything new is placed: a stop request wins over the walk's next step."""
        reason = self._stop_reason()
        if reason is not None:
            raise StopRequested(reason)

    async def _quote(self) -> UsableQuote | None:
        quote = await self._read(
            lambda: self.ctx.quotes.get(
                self.record.intent.symbol,
                self.ctx.clock.now(),
                self.asset.price_increment if self.asset else None,
                self.ctx.plan_quotes[self.record.plan_id],
            )
        )
        if quote is None:
            self.log.warning("quote.unusable", counters=self.ctx.quotes.counters.as_dict())
        return quote

    async def _fresh_quote(self) -> UsableQuote | None:
        """The quote taken at this very instant if there is one, else a new one."""
        quote, self._arrival_quote = self._arrival_quote, None
        return quote if quote is not None else await self._quote()

    def _deadline(self, wait_seconds: float) -> float:
        """Monotonic deadline of a wait that began when the current state was entered."""
        entered = self.record.state_entered_at
        elapsed = 0.0
        if entered is not None:
            elapsed = (self.ctx.clock.now() - datetime.fromisoformat(entered)).total_seconds()
        return self.ctx.clock.monotonic() + max(0.0, wait_seconds - elapsed)

    # -- decisions taken for the order before its walk begins ---------------------------

    async def refuse(self, reason: FailReason, **data: Any) -> OrderRecord:
        """Fail a PENDING order before anything is sent for it."""
        self._fire(Trigger.FAIL, reason=reason.value, **data)
        return self.record

    async def resize(self, qty: Decimal, details: dict[str, Any]) -> None:
        """Shrink a PENDING buy to `qty` (journaled, so a resume walks the same size)."""
        self.book.write(
            EventKind.RESIZED,
            {"qty": decimal_text(qty), "reason": FailReason.INSUFFICIENT_FUNDS.value, **details},
        )
        self.log.warning("order.resized", qty=str(qty), **details)

    async def quote_for_sizing(self) -> UsableQuote | None:
        """A quote to cost the order with; the walk's first step takes a fresh one."""
        return await self._quote()

    def whole_shares_step(self) -> Decimal:
        """The unit a resize keeps: whole shares, unless the order itself is fractional."""
        return QTY_WHOLE if not self.record.intent.is_fractional else QTY_FRACTION

    # -- the walk: one handler per state, so a resumed order re-enters where it stood ----

    async def reconcile(self, listed: Mapping[str, BrokerOrder] | None = None) -> bool:
        """Settle with the broker what a previous process left open, and nothing more.

        `listed`: broker orders by id as one listing of open orders read them after the
        journal was folded; an order in it is taken from it instead of read again, unless
        this reconcile first answers an unanswered intent or cancel.
        True when the order can be walked on; False when it ended (a refusal failed it)
        or the broker stayed unreachable (the order is left non-terminal, for resume).
        """
        return await self._guarded(partial(self._reconcile, listed or {}))

    async def walk(self) -> OrderRecord:
        """Walk on to a terminal state from wherever the journal left the order, once
        nothing is left open with the broker (a new order, or one `reconcile` settled).

        A broker that stays unreachable leaves the order non-terminal, for resume.
        """
        await self._guarded(self._drive)
        return self.record

    async def _guarded(self, phase: Callable[[], Awaitable[None]]) -> bool:
        """Run a phase of the walk: a broker refusal fails the order; a broker still
        unreachable after the retries journals `error` and pulls the live order. True when
        the phase completed."""
        try:
            try:
                await phase()
                return True
            except BrokerRejected as exc:
                answered = {k: v for k, v in exc.fields.items() if k != "reason"}
                await self._ending(self._fail(_reason(exc.reason), message=exc.message, **answered))
            except EndedAtBroker:
                ended = self.record.ended_at_broker or {}
                reason = _ENDED_UNFILLED.get(ended.get("status", ""))
                await self._ending(self._fail(reason or FailReason.CANCELLED_EXTERNALLY, **ended))
            except StopRequested as stop:
                await self._ending(self._stop(stop.reason))
            except BrokerOrderMissing as missing:
                await self._lost_at_broker(missing.broker_order_id)
        except BrokerUnavailable as exc:
            self.book.write(
                EventKind.ERROR, {"error": "broker_unavailable", "message": exc.message}
            )
            self.log.error("order.interrupted", error=exc.message)
            await self._pull_live_order()
        return False

    async def _ending(self, end: Awaitable[None]) -> None:
        """End the order (fail or stop); a broker order found missing on the way is
        journaled and the order fails `order_not_found` instead."""
        try:
            await end
        except BrokerOrderMissing as missing:
            await self._lost_at_broker(missing.broker_order_id)

    async def _drive(self) -> None:
        while not self.machine.is_terminal:
            if self.record.ended_at_broker is not None:
                raise EndedAtBroker(self.record.ended_at_broker["broker_order_id"])
            self._check_not_stopped()
            state = self.record.state
            if state == OrderState.PENDING:
                await self._start()
            elif state == OrderState.QUOTED:
                await self._leave_quoted()
            elif is_limit_step(state):
                await self._limit_step(step_number(state))
            elif state == OrderState.MARKET:
                await self._market()
            else:
                await self._settle()

    async def _reconcile(self, listed: Mapping[str, BrokerOrder]) -> None:
        """Settle what a previous process left open: an unanswered intent, a cancel, fills."""
        record = self.record
        if record.is_terminal:
            return
        stopping = self._stop_reason()
        if stopping is not None:
            self._journal_stop(stopping)  # before anything unanswered is withdrawn
        if record.awaits_broker_answer:
            listed = {}  # the listing predates what answering them does at the broker
        if record.pending_intent is not None:
            await self._resolve_pending(record.pending_intent)
        if self.record.pending_cancel is not None:
            await self._send_cancel(self.record.pending_cancel)
        for broker_order_id in self.record.unfinished_broker_orders:
            order = listed.get(broker_order_id)
            if order is None:
                order = await self._read_order(broker_order_id)
            self._absorb(order)

    async def _resolve_pending(self, intent: dict[str, Any]) -> None:
        """An intent without an answer: adopt the broker's order if it exists, else send again."""
        cid, kind = intent["client_order_id"], intent["kind"]
        broker = self.ctx.broker
        find = self._finder(intent)
        found = await self._read(find)
        self.log.info("resume.pending_intent", client_order_id=cid, found=found is not None)
        ack_kind = (
            EventKind.SUBMIT_ACK if kind == EventKind.SUBMIT_INTENT else EventKind.REPLACE_ACK
        )
        if found is not None:
            self._acknowledge(ack_kind, found, adopted=True)
            self._absorb(found)
            return
        if self._stop_reason() is not None:
            # stopping: what the broker never had is not sent now, and never will be
            self.book.write(EventKind.INTENT_WITHDRAWN, {"client_order_id": cid})
            return
        data = {k: v for k, v in intent.items() if k != "kind"}
        if data.get("order_type") == CLOSE_POSITION:
            symbol, qty = self.record.intent.symbol, Decimal(data["qty"])
            await self._close_sent(
                await self._perform(
                    kind, ack_kind, cid, lambda: broker.close_position(symbol, qty), find=find
                )
            )
        elif kind == EventKind.SUBMIT_INTENT:
            request = self._request(data)
            self._absorb(
                await self._perform(kind, ack_kind, cid, lambda: broker.submit_order(request))
            )
        else:
            step = cid.split("-")[-2]
            await self._perform_replace(data, step, Decimal(data["limit_price"]))

    async def _start(self) -> None:
        """PENDING: market open, asset tradable, position read, a usable quote -> QUOTED."""
        broker, intent = self.ctx.broker, self.record.intent
        if not await self._market_open():
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
        self._arrival_quote = quote

    async def _market_open(self) -> bool:
        """Open now; or, with `wait_for_open`, open after waiting for the broker's next open."""
        clock = await self._read(self.ctx.broker.get_clock)
        if clock.is_open or not self.config.wait_for_open or clock.next_open is None:
            return clock.is_open
        wait = (clock.next_open - clock.at).total_seconds()
        if wait > self.config.max_wait_for_open_seconds:
            return False
        self.log.info("order.waiting_for_open", next_open=clock.next_open.isoformat())
        await self._unless_stopped(partial(self.ctx.clock.sleep, max(wait, 0.0)))
        return (await self._read(self.ctx.broker.get_clock)).is_open

    async def _leave_quoted(self) -> None:
        """QUOTED: the fraction a whole-share asset cannot trade is closed first; then urgency
        HIGH (or an empty ladder, or nothing left) goes to market, the rest to step 1."""
        live = self.record.live_broker_order_id
        if live is not None:  # a close-position order a resume found: its fills first
            await self._confirm_terminal(live)
        fraction = await self._fraction_to_close()
        if fraction > 0:
            await self._close_fraction(fraction)
        if (
            self.record.intent.urgency is Urgency.HIGH
            or not self.config.ladder
            or self.record.remaining_qty <= 0
        ):
            quote = await self._fresh_quote()
            self._fire(Trigger.ESCALATE, quote=None if quote is None else quote.as_data())
            return
        await self._enter_step(1)

    async def _fraction_to_close(self) -> Decimal:
        """What a FULL close of a non-fractionable asset holds beyond whole shares (a corporate
        action's or a fractional era's remainder): no plain order may trade it, so it goes
        through the close-position route, once."""
        record, intent = self.record, self.record.intent
        if intent.close_type is not CloseType.FULL or intent.side is not OrderSide.SELL:
            return ZERO
        if any(f"-{CLOSE_STEP}-" in cid for cid in record.client_order_ids):
            return ZERO
        if self.asset is None:
            self.asset = await self._read(partial(self.ctx.broker.get_asset, intent.symbol))
        if self.asset.fractionable:
            return ZERO
        remaining = record.remaining_qty
        return remaining - remaining.to_integral_value(rounding=ROUND_FLOOR)

    async def _close_fraction(self, qty: Decimal) -> None:
        """Sell `qty` through the broker's close-position route, write-ahead like any side
        effect (found again after a crash among the symbol's recent orders)."""
        symbol = self.record.intent.symbol
        data = {
            "client_order_id": client_order_id(self.record.order_id, CLOSE_STEP, 1),
            "order_type": CLOSE_POSITION,
            "qty": decimal_text(qty),
            "limit_price": None,
            "sent_after": stamp(self.ctx.clock.now()),
        }
        order = await self._side_effect(
            EventKind.SUBMIT_INTENT,
            EventKind.SUBMIT_ACK,
            data,
            lambda: self.ctx.broker.close_position(symbol, qty),
        )
        await self._close_sent(order)

    async def _close_sent(self, order: BrokerOrder) -> None:
        """The close-position order's fills, counted once it is final."""
        self._absorb(order)
        if not order.is_terminal:
            await self._confirm_terminal(order.id)

    async def _enter_step(self, k: int) -> None:
        """Price step k from a fresh quote and journal the move into LIMIT_STEP_k."""
        quote = await self._fresh_quote()
        if quote is None:
            return await self._fail(FailReason.NO_QUOTE)
        if self.asset is None:
            self.asset = await self._read(
                lambda: self.ctx.broker.get_asset(self.record.intent.symbol)
            )
        ratio = self.config.ladder[k - 1]
        price = limit_price(
            self.record.intent.side, quote.bid, quote.ask, ratio, self.asset.price_increment
        )
        self._fire(
            Trigger.START_WALK if k == 1 else Trigger.NEXT_STEP,
            ratio=decimal_text(ratio),
            limit_price=decimal_text(price),
            quote=quote.as_data(),
            wait_seconds=self.config.step_wait_seconds(self.record.intent.urgency),
        )

    async def _limit_step(self, k: int) -> None:
        """LIMIT_STEP_k: the step's order rests for the step's wait (what is left of it)."""
        step, price = f"L{k}", self.record.step_limit_price
        assert price is not None, "a limit step is always entered with its price"
        live = self.record.live_client_order_id
        if self.record.remaining_qty > 0 and (live is None or f"-{step}-" not in live):
            await self._place_limit(step, price)
        await self._await_fills(
            self._deadline(self.config.step_wait_seconds(self.record.intent.urgency))
        )
        if self.record.remaining_qty <= 0:
            self._fire(Trigger.SETTLE)
        elif k < len(self.config.ladder):
            await self._enter_step(k + 1)
        else:
            quote = await self._quote()
            self._fire(Trigger.ESCALATE, quote=None if quote is None else quote.as_data())

    async def _place_limit(self, step: str, price: Decimal) -> None:
        """The step's order at `price`: the live order kept when it already rests there (a
        replace that changes nothing is refused by Alpaca), else replaced or placed anew."""
        live = self.record.live_broker_order_id
        if live is not None:
            order = await self._read_order(live)
            self._absorb(order)
            if not order.is_terminal and order.limit_price == price:
                self.log.info("order.step_keeps_resting_order", limit_price=str(price))
                return
        if self.record.live_broker_order_id is None or self.record.remaining_qty <= 0:
            return await self._submit_remaining(step, price)
        if self._may_replace(price):
            return await self._replace(step, price)
        await self._cancel_live()
        await self._submit_remaining(step, price)

    def _may_replace(self, price: Decimal) -> bool:
        """Replace only a whole-share order with no fills, at a price that will rest.

        A replace is not atomic with fills: a fill landing on the old order just before
        the broker applies it leaves the new order sized to a stale remainder (and Alpaca
        may even reuse the original qty once an order has filled partly). A resting new
        order can be shrunk before it trades; a marketable one trades at once, so those
        cases go through cancel, confirm, new.
        """
        record = self.record
        live = record.live_broker_order_id
        if live is None or record.quantity != record.quantity.to_integral_value():
            return False
        if record.broker_filled.get(live, ZERO) > 0 or record.step_quote is None:
            return False
        if record.intent.side is OrderSide.BUY:
            return price < Decimal(record.step_quote["ask"])
        return price > Decimal(record.step_quote["bid"])

    async def _market(self) -> None:
        """MARKET: cancel any resting limit order, then market orders for what remains."""
        live = self.record.live_client_order_id
        if live is not None and "-M-" not in live:
            await self._cancel_live()
        wait = self.config.market_wait_seconds
        if self.record.live_broker_order_id is not None:
            await self._await_fills(self.ctx.clock.monotonic() + wait)
            await self._cancel_live()
        while (
            self.record.remaining_qty > 0 and self._next_attempt("M") <= self.config.market_attempts
        ):
            await self._submit_remaining("M", None)
            await self._await_fills(self.ctx.clock.monotonic() + wait)
            await self._cancel_live()
        self._fire(Trigger.SETTLE)

    async def _settle(self) -> None:
        """SETTLING: nothing live, then the position must have moved by exactly what filled."""
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
            await self._unless_stopped(partial(self.ctx.clock.sleep, 1.0))
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
