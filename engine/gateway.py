"""The order gateway: every broker side effect of one order, write-ahead, and its fills.

Every side effect follows the same three steps: journal the intent with a deterministic
client_order_id, call the broker, journal the acknowledgement (or `outcome_unknown`, then
resolve it by looking the client_order_id up). No new quantity is placed until the
previous broker order is confirmed terminal, or replaced, and its final fills are counted.
The walk (engine/walk.py) decides what to do in each state; the gateway is how it is done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from functools import cached_property, partial
from typing import TypeVar

import structlog

from journal import stamp

from .broker import BrokerOrder, BrokerOrderStatus, OrderRequest
from .clock import MIN_WAIT_SECONDS
from .config import EngineConfig
from .context import OrderJournal, WalkContext
from .errors import (
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    NotReplaceable,
    OrderNotFound,
)
from .events import (
    Ack,
    CancelAck,
    CancelIntent,
    Errored,
    Fill,
    IntentWithdrawn,
    OrderFinal,
    OutcomeUnknown,
    Rejected,
    ReplaceAck,
    ReplaceIntent,
    SubmitAck,
    SubmitIntent,
    payload_of,
)
from .events import (
    StopRequested as StopJournaled,
)
from .fsm import FailReason
from .intents import OrderSide
from .numbers import ZERO
from .order import OrderRecord, client_order_id, engine_order_of
from .retry import read_with_retry
from .stopping import StopRequested

__all__ = [
    "CLOSE_POSITION",
    "CLOSE_STEP",
    "ENDED_UNFILLED",
    "MARKET_STEP",
    "BrokerOrderMissing",
    "EndedAtBroker",
    "OrderGateway",
]

# a submit intent's `order_type` for the close-position route; the steps of market orders
# and of the close-position route (limit steps are L1, L2, ...)
CLOSE_POSITION, CLOSE_STEP, MARKET_STEP = "close_position", "C", "M"
PRICE_STEP = Decimal("0.000001")
T = TypeVar("T")
Finder = Callable[[], Awaitable[BrokerOrder | None]]
Intent = SubmitIntent | ReplaceIntent
# what a broker order can end in without filling (walkbook asked for it, or someone else
# did), and the reason the walk fails with when walkbook did not ask
ENDED_UNFILLED = {
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


class OrderGateway:
    """One order's side effects at the broker and the fills they bring, each journaled
    before it is acted on; the walk asks, the gateway does."""

    def __init__(self, context: WalkContext, journal: OrderJournal, config: EngineConfig) -> None:
        self.ctx = context
        self.journal = journal
        self.config = config

    @property
    def record(self) -> OrderRecord:
        return self.journal.record

    @cached_property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """The order's logger, bound on first use: most reconciles log nothing, and binding
        one is a large share of reconciling an order with nothing to settle."""
        record = self.record
        logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("walkbook").bind(
            order_id=record.order_id,
            plan_id=record.plan_id,
            correlation_id=record.intent.correlation_id,
            symbol=record.intent.symbol,
        )
        return logger

    async def read(self, call: Callable[[], Awaitable[T]]) -> T:
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
        self, intent: SubmitIntent, call: Callable[[], Awaitable[BrokerOrder]]
    ) -> BrokerOrder:
        """Write-ahead: journal the intent, then perform the call and journal its outcome."""
        self.journal.write(intent)
        return await self._perform(intent, call, fresh=True, find=self._finder(intent))

    def _finder(self, intent: Intent) -> Finder:
        """How to find the broker order an intent may have made: by its client order id, or
        for a close-position (whose client id is the broker's) among the symbol's recent
        orders."""
        if isinstance(intent, SubmitIntent) and intent.order_type == CLOSE_POSITION:
            return partial(self._find_close_order, intent)
        return partial(self.ctx.broker.get_order_by_client_id, intent.client_order_id)

    async def _find_close_order(self, intent: SubmitIntent) -> BrokerOrder | None:
        """The sell of exactly the intent's qty of the symbol submitted since the intent, with
        a client id that is not walkbook's and no acknowledgement in this order's journal."""
        assert intent.sent_after is not None, "a close-position intent records when it was sent"
        since = datetime.fromisoformat(intent.sent_after)
        recent = await self.ctx.broker.recent_orders(self.record.intent.symbol, since)
        for order in recent:
            if (
                order.side is OrderSide.SELL
                and order.qty == intent.qty
                and engine_order_of(order.client_order_id) is None
                and order.id not in self.record.broker_order_ids
            ):
                return order
        return None

    async def _perform(
        self,
        intent: Intent,
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
        cid, adopted = intent.client_order_id, False
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
                found = await self.read(lambda: self.ctx.broker.get_order_by_client_id(cid))
                if found is None:
                    raise
                order, adopted = found, True
            except BrokerUnavailable as exc:
                self.journal.write(
                    OutcomeUnknown(client_order_id=cid, operation=intent.KIND, error=exc.message)
                )
                find = find or partial(self.ctx.broker.get_order_by_client_id, cid)
                order, adopted = await self._resolve_unknown(cid, call, find), True
        except BrokerRejected as exc:
            self.journal.write(
                Rejected(client_order_id=cid, reason=exc.reason, message=exc.message)
            )
            raise
        self._acknowledge(intent, order, adopted)
        return order

    def _acknowledge(self, intent: Intent, order: BrokerOrder, adopted: bool) -> None:
        ids = {"client_order_id": order.client_order_id, "broker_order_id": order.id}
        status = order.status.value
        if isinstance(intent, SubmitIntent):
            self.journal.write(SubmitAck(**ids, status=status, adopted=adopted))
        else:
            replaced = order.replaces or None
            self.journal.write(ReplaceAck(**ids, status=status, adopted=adopted, replaces=replaced))

    def _request(self, intent: SubmitIntent) -> OrderRequest:
        """The broker request a journaled submit_intent describes."""
        return OrderRequest(
            client_order_id=intent.client_order_id,
            symbol=self.record.intent.symbol,
            side=self.record.intent.side,
            qty=intent.qty,
            order_type="market" if intent.limit_price is None else "limit",
            limit_price=intent.limit_price,
        )

    async def _submit(self, step: str, attempt: int, qty: Decimal, price: Decimal | None) -> None:
        self.check_not_stopped()
        intent = SubmitIntent(
            client_order_id=client_order_id(self.record.order_id, step, attempt),
            step=step,
            attempt=attempt,
            order_type="market" if price is None else "limit",
            qty=qty,
            limit_price=price,
        )
        request = self._request(intent)
        order = await self._side_effect(intent, lambda: self.ctx.broker.submit_order(request))
        self.absorb(order)

    def absorb(self, order: BrokerOrder) -> None:
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
            self.journal.write(
                Fill(
                    broker_order_id=order.id,
                    client_order_id=order.client_order_id,
                    qty=delta,
                    price=price,
                    cum_qty=order.filled_qty,
                    cum_avg_price=avg,
                    broker_at=None if order.filled_at is None else stamp(order.filled_at),
                    position_after=order.position_after,
                )
            )
            self.log.info("order.fill", qty=str(delta), price=str(price))
            if self.record.filled_qty > self.record.quantity:
                self.journal.write(Errored(error="overfill", filled_qty=self.record.filled_qty))
                self.log.error("order.overfill", filled=str(self.record.filled_qty))
        if order.is_terminal and order.id not in self.record.final_broker_orders:
            external = self._ended_elsewhere(order)
            self.journal.write(
                OrderFinal(
                    broker_order_id=order.id,
                    status=order.status.value,
                    filled_qty=order.filled_qty,
                    external=external,
                )
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
        if order.id in self.record.cancels_sent or order.status.value not in ENDED_UNFILLED:
            return False
        if order.status is BrokerOrderStatus.REJECTED:
            return order.replaces is None
        return order.order_type == "limit"

    async def confirm_terminal(self, order_id: str) -> BrokerOrder:
        """Wait until the broker reports the order terminal, counting fills as they land."""
        order = await self.read_order(order_id)
        deadline = self.ctx.clock.monotonic() + self.config.settle_timeout_seconds
        while not order.is_terminal:
            self.absorb(order)
            left = deadline - self.ctx.clock.monotonic()
            if left <= MIN_WAIT_SECONDS:
                raise BrokerUnavailable(f"order {order_id} did not reach a final status")
            order = await self._wait_for_update(order_id, left)
        self.absorb(order)
        return order

    async def read_order(self, broker_order_id: str) -> BrokerOrder:
        """The broker's view of one of this order's broker orders. A broker that answers
        "not found" for an order walkbook placed is asked by its client order id; when it has
        nothing under either, BrokerOrderMissing (a fact to journal, never a crash)."""
        broker = self.ctx.broker
        try:
            return await self.read(partial(broker.get_order, broker_order_id))
        except OrderNotFound:
            cid = self._client_id_of(broker_order_id)
            self.log.warning("broker.order_not_found", broker_order_id=broker_order_id)
            found = None
            if cid is not None:
                found = await self.read(partial(broker.get_order_by_client_id, cid))
            if found is None:
                raise BrokerOrderMissing(broker_order_id) from None
            return found if found.id == broker_order_id else replace(found, id=broker_order_id)

    async def _wait_for_update(self, broker_order_id: str, timeout_seconds: float) -> BrokerOrder:
        broker = self.ctx.broker
        try:
            return await self.read(
                partial(broker.wait_for_update, broker_order_id, timeout_seconds)
            )
        except OrderNotFound:
            # a wait the broker cannot serve becomes a poll: pause, then read by client id
            await self.ctx.clock.sleep(
                min(timeout_seconds, self.config.broker_retry_backoff_seconds)
            )
            return await self.read_order(broker_order_id)

    def _client_id_of(self, broker_order_id: str) -> str | None:
        """The client order id an acknowledgement journaled for a broker order (a rare read:
        only a broker that lost an order's id needs it)."""
        for event in self.ctx.journal.events(order_id=self.record.order_id):
            payload = payload_of(event.kind, event.data)
            if isinstance(payload, Ack) and payload.broker_order_id == broker_order_id:
                return payload.client_order_id
        return None

    async def cancel_live(self) -> None:
        """Cancel the live broker order (if any), confirm it is final and count its fills."""
        live = self.record.live_broker_order_id
        if live is None:
            return
        self.journal.write(CancelIntent(broker_order_id=live))
        await self.send_cancel(live)
        await self.confirm_terminal(live)

    def journal_stop(self, reason: FailReason) -> None:
        if self.record.stop_reason is None:
            self.journal.write(StopJournaled(reason=reason.value))

    async def pull_live_order(self) -> None:
        """Giving up for now: ask the broker to cancel the live order so nothing trades unwatched.

        The cancel is journaled first, so if it cannot be sent either, resume sends it.
        """
        live = self.record.live_broker_order_id
        if live is None or self.record.pending_cancel == live:
            return
        self.journal.write(CancelIntent(broker_order_id=live))
        try:
            await self.send_cancel(live)
        except BrokerUnavailable as exc:
            self.log.error("broker.cancel_unsent", broker_order_id=live, error=exc.message)

    async def send_cancel(self, broker_order_id: str) -> None:
        """Ask for a cancel (idempotent) and journal that it was answered."""
        try:
            await self.read(lambda: self.ctx.broker.cancel_order(broker_order_id))
        except (OrderNotFound, NotReplaceable, BrokerRejected) as exc:
            self.log.info(
                "broker.cancel_refused", broker_order_id=broker_order_id, error=exc.message
            )
        self.journal.write(CancelAck(broker_order_id=broker_order_id))

    def next_attempt(self, step: str) -> int:
        """Attempts are counted per step from the journal, so a resumed walk never reuses an id."""
        return 1 + self.record.attempts_at(step)

    async def replace(self, step: str, price: Decimal) -> None:
        """Replace the live order at `price` for what remains (its fills were just counted)."""
        old_id = self.record.live_broker_order_id
        assert old_id is not None
        qty = self.record.remaining_qty
        attempt = self.next_attempt(step)
        self.check_not_stopped()
        intent = ReplaceIntent(
            client_order_id=client_order_id(self.record.order_id, step, attempt),
            step=step,
            attempt=attempt,
            broker_order_id=old_id,
            qty=qty,
            limit_price=price,
        )
        self.journal.write(intent)
        await self._perform_replace(intent, fresh=True)

    async def _perform_replace(self, intent: ReplaceIntent, *, fresh: bool = False) -> None:
        """Send a journaled replace; if the broker refuses it (the old order finished, or
        filled in part so the replace's qty is stale: Alpaca's 403 "insufficient qty"),
        cancel, confirm and place anew instead: a refused replace never fails the order."""
        broker, old_id, cid = self.ctx.broker, intent.broker_order_id, intent.client_order_id
        step, price = intent.walk_step, intent.limit_price
        try:
            new = await self._perform(
                intent,
                lambda: broker.replace_order(old_id, intent.qty, price, cid),
                fresh=fresh,
            )
        except NotReplaceable as exc:
            self.journal.write(
                Rejected(client_order_id=cid, reason="not_replaceable", message=exc.message)
            )
            return await self._place_anew(old_id, step, price)
        except BrokerRejected as exc:  # journaled by _perform
            if exc.reason == FailReason.PLACED_ELSEWHERE.value:
                raise
            return await self._place_anew(old_id, step, price)
        except OrderNotFound as exc:
            # the order to replace is unknown to the broker: nothing was made; its fate is
            # settled like any order the broker lost
            self.journal.write(
                Rejected(client_order_id=cid, reason="order_not_found", message=exc.message)
            )
            raise BrokerOrderMissing(old_id) from None
        # the old order stays `pending_replace` (and may still fill) until the broker
        # replaces it; its fills are counted before the walk goes on
        await self.confirm_terminal(old_id)
        self.absorb(new)
        if new.qty > self.record.remaining_qty and not new.is_terminal:
            self.log.warning("order.replace_oversized", new_qty=str(new.qty))
            await self.cancel_live()
            await self.submit_remaining(step, price)

    async def _place_anew(self, old_id: str, step: str, price: Decimal) -> None:
        """After a refused replace: the old order's fills counted first (filled meanwhile:
        nothing to cancel), then cancel, confirm, and a new order for what remains."""
        self.absorb(await self.read_order(old_id))
        await self.cancel_live()
        await self.submit_remaining(step, price)

    async def submit_remaining(self, step: str, price: Decimal | None) -> None:
        if self.record.remaining_qty > 0:
            await self._submit(step, self.next_attempt(step), self.record.remaining_qty, price)

    async def await_fills(self, deadline: float) -> None:
        """Count fills on the live order until it is final, fully filled, or the deadline;
        a stop request ends the wait at once (StopRequested)."""
        while (live := self.record.live_broker_order_id) is not None:
            left = deadline - self.ctx.clock.monotonic()
            if left <= MIN_WAIT_SECONDS:
                return
            self.absorb(await self.unless_stopped(partial(self._wait_for_update, live, left)))

    async def unless_stopped(self, call: Callable[[], Awaitable[T]]) -> T:
        self.check_not_stopped()
        record = self.record
        return await self.ctx.stops.wait_or_stop(call, record.order_id, record.plan_id)

    def stop_reason(self) -> FailReason | None:
        """Why this order must stop: a stop journaled for it (by this process or one before
        it), else a request made to this engine; None while it may walk on."""
        record = self.record
        if record.stop_reason is not None:
            return FailReason(record.stop_reason)
        return self.ctx.stops.reason_for(record.order_id, record.plan_id)

    def check_not_stopped(self) -> None:
        """Before anything new is placed: a stop request wins over the walk's next step."""
        reason = self.stop_reason()
        if reason is not None:
            raise StopRequested(reason)

    async def resolve_pending(self, intent: Intent) -> None:
        """An intent without an answer: adopt the broker's order if it exists, else send again."""
        cid, broker = intent.client_order_id, self.ctx.broker
        find = self._finder(intent)
        found = await self.read(find)
        self.log.info("resume.pending_intent", client_order_id=cid, found=found is not None)
        if found is not None:
            self._acknowledge(intent, found, adopted=True)
            self.absorb(found)
            if isinstance(intent, ReplaceIntent):  # the old order may fill until replaced
                await self.confirm_terminal(intent.broker_order_id)
            return
        if self.stop_reason() is not None:
            # stopping: what the broker never had is not sent now, and never will be
            self.journal.write(IntentWithdrawn(client_order_id=cid))
            return
        if isinstance(intent, ReplaceIntent):
            await self._perform_replace(intent)
        elif intent.order_type == CLOSE_POSITION:
            symbol, qty = self.record.intent.symbol, intent.qty
            await self.close_sent(
                await self._perform(intent, lambda: broker.close_position(symbol, qty), find=find)
            )
        else:
            request = self._request(intent)
            self.absorb(await self._perform(intent, lambda: broker.submit_order(request)))

    async def close_fraction(self, qty: Decimal) -> None:
        """Sell `qty` through the broker's close-position route, write-ahead like any side
        effect (found again after a crash among the symbol's recent orders)."""
        symbol = self.record.intent.symbol
        intent = SubmitIntent(
            client_order_id=client_order_id(self.record.order_id, CLOSE_STEP, 1),
            step=CLOSE_STEP,
            attempt=1,
            order_type=CLOSE_POSITION,
            qty=qty,
            limit_price=None,
            sent_after=stamp(self.ctx.clock.now()),
        )
        order = await self._side_effect(intent, lambda: self.ctx.broker.close_position(symbol, qty))
        await self.close_sent(order)

    async def close_sent(self, order: BrokerOrder) -> None:
        """The close-position order's fills, counted once it is final."""
        self.absorb(order)
        if not order.is_terminal:
            await self.confirm_terminal(order.id)
