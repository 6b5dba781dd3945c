"""Walking one order through the book, journaling every fact before acting on it.

Every broker side effect follows the same three steps: journal the intent with a
deterministic client_order_id, call the broker, journal the acknowledgement (or
`outcome_unknown`, then resolve it by looking the client_order_id up). No new
quantity is placed until the previous broker order is confirmed terminal, or
replaced, and its final fills are counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from functools import partial
from typing import Any, TypeVar

import structlog

from .broker import Asset, BrokerOrder
from .clock import MIN_WAIT_SECONDS
from .config import journaled_config
from .context import OrderJournal, WalkContext
from .errors import (
    BrokerRejected,
    BrokerUnavailable,
)
from .events import (
    CancelIntent,
    Errored,
    Escalated,
    Failed,
    OrderFinal,
    PlacementHeld,
    PositionRead,
    Quoted,
    Settled,
    StepEntered,
    Transition,
    Validated,
)
from .fsm import FailReason, OrderMachine, OrderState, Trigger, is_limit_step, step_number
from .gateway import (
    CLOSE_STEP,
    ENDED_UNFILLED,
    MARKET_STEP,
    BrokerOrderMissing,
    EndedAtBroker,
    OrderGateway,
)
from .intents import CloseType, OrderSide, Urgency
from .numbers import BPS, ZERO, decimal_text
from .order import OrderRecord
from .pricing import band_edge, beyond_band, held_to_band, limit_price, spread_bps
from .quotes import UsableQuote
from .stopping import StopRequested

__all__ = [
    "LIMIT_STEP",
    "MARKET_WITHOUT_QUOTE",
    "SNAPSHOT_MAX_AGE_SECONDS",
    "STATE_HANDLERS",
    "OrderWalk",
    "PositionSnapshot",
]


T = TypeVar("T")
BPS_PLACES = Decimal("0.01")
# why a QUOTED transition journals no quote
MARKET_WITHOUT_QUOTE = "no usable quote: urgency HIGH goes to market (market_without_quote)"
# how long a plan's read of every position may stand in for its walks' own "before" reads
# (then one read anew stands in for the walks that start in the next span as long)
SNAPSHOT_MAX_AGE_SECONDS = 60.0


@dataclass(frozen=True)
class PositionSnapshot:
    """Every position from the one read a plan's preflight made, taken by its walks as the
    "before" position instead of a read each (at Alpaca, a call of 200 a minute each).

    It vouches for a symbol only while nothing journaled after `after_seq` (just before the
    read) traded it, no order of it that may have reached the broker was unfinished when it
    was read (`in_flight`), and for `SNAPSHOT_MAX_AGE_SECONDS` after `taken_at` (the engine
    clock's monotonic time)."""

    positions: Mapping[str, Decimal]
    after_seq: int
    in_flight: frozenset[str]
    taken_at: float

    def aged(self, now: float) -> bool:
        return now - self.taken_at > SNAPSHOT_MAX_AGE_SECONDS

    def position(self, symbol: str, last_traded_seq: int, now: float) -> Decimal | None:
        """The symbol's position before anything since traded it; None: read it anew."""
        if symbol in self.in_flight or last_traded_seq > self.after_seq or self.aged(now):
            return None
        return self.positions.get(symbol, ZERO)


class OrderWalk:
    """Drives one order from PENDING (or wherever its journal left it) to a terminal state."""

    def __init__(
        self,
        context: WalkContext,
        record: OrderRecord,
        position_before: Callable[[], Awaitable[Decimal | None]] | None = None,
    ) -> None:
        """`position_before`: the position before the order from a read the engine already
        made (None when that read cannot vouch for it any more): no read of the walk's own."""
        self.ctx = context
        self._position_before = position_before
        self.journal = OrderJournal(context, record)
        self.config = journaled_config(record.config)
        self.gateway = OrderGateway(context, self.journal, self.config)
        self.asset: Asset | None = None
        self._arrival_quote: UsableQuote | None = None

    @property
    def record(self) -> OrderRecord:
        return self.journal.record

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        return self.gateway.log

    def _fire(self, move: Transition) -> None:
        """Journal `move` if the order's machine allows it from the journaled state (the one
        source of the order's state: the machine is built on it for each move)."""
        steps = len(self.config.ladder)
        machine = OrderMachine(steps, self._persist_transition, initial=self.record.state)
        machine.fire(move.trigger, move=move)

    def _persist_transition(
        self, trigger: str, source: str, dest: str, data: dict[str, Transition]
    ) -> None:
        move = data["move"]
        record = self.journal.write(move, from_state=source, to_state=dest)
        logged = _loggable(move.to_data())
        if dest == OrderState.FAILED:
            logged["detail"] = record.failure_detail
        self.log.info("order.transition", source=source, dest=dest, **logged)

    async def _fail(self, reason: FailReason, message: str | None = None, **figures: Any) -> None:
        """End in FAILED, but only after any live broker order is confirmed gone."""
        await self.gateway.cancel_live()
        self._fire(_failed(reason, message, figures))

    async def _lost_at_broker(self, broker_order_id: str) -> None:
        """A broker order the broker has nothing of: journaled final (`not_found`, its counted
        fills kept), then the order fails once whatever else it has live is gone."""
        while True:
            counted = self.record.broker_filled.get(broker_order_id, ZERO)
            self.journal.write(
                OrderFinal(broker_order_id=broker_order_id, status="not_found", filled_qty=counted)
            )
            try:
                return await self._fail(FailReason.ORDER_NOT_FOUND, broker_order_id=broker_order_id)
            except BrokerOrderMissing as missing:
                broker_order_id = missing.broker_order_id

    async def _stop(self, reason: FailReason) -> None:
        """Stop on purpose (halt, cancel, abandon): settle what the broker may have without
        placing anything new, cancel every unfinished broker order (each cancel journaled
        before it is sent), count the fills that landed first, then end FAILED `reason`.

        The stop is journaled first, so a process killed halfway is resumed into the stop,
        never back into the walk."""
        self.gateway.journal_stop(reason)
        # an order found ended at the broker is journaled and final: nothing to cancel
        with suppress(EndedAtBroker):
            await self._reconcile({})
        for broker_order_id in self.record.unfinished_broker_orders:
            self.journal.write(CancelIntent(broker_order_id=broker_order_id))
            await self.gateway.send_cancel(broker_order_id)
            await self.gateway.confirm_terminal(broker_order_id)
        self.log.warning("order.stopped", reason=reason.value)
        self._fire(_failed(reason, None, {"filled_qty": decimal_text(self.record.filled_qty)}))

    async def _read_unless_stopped(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read the walk makes on its way (not while winding down): a stop reaching the
        order meanwhile abandons it (StopRequested), which changes nothing at the broker,
        rather than wait out a read the REST budget may hold for a minute."""
        return await self.gateway.unless_stopped(partial(self.gateway.read, call))

    async def _quote(self) -> UsableQuote | None:
        """A usable quote, or None (a stop abandons the read: `_read_unless_stopped`)."""
        quote = await self._read_unless_stopped(
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

    async def refuse(
        self, reason: FailReason, message: str | None = None, **figures: Any
    ) -> OrderRecord:
        """Fail a PENDING order before anything is sent for it."""
        self._fire(_failed(reason, message, figures))
        return self.record

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
                reason = ENDED_UNFILLED.get(ended.get("status", ""))
                await self._ending(self._fail(reason or FailReason.CANCELLED_EXTERNALLY, **ended))
            except StopRequested as stop:
                await self._ending(self._stop(stop.reason))
            except BrokerOrderMissing as missing:
                await self._lost_at_broker(missing.broker_order_id)
        except BrokerUnavailable as exc:
            self.journal.write(Errored(error="broker_unavailable", message=exc.message))
            self.log.error("order.interrupted", error=exc.message)
            await self.gateway.pull_live_order()
        return False

    async def _ending(self, end: Awaitable[None]) -> None:
        """End the order (fail or stop); a broker order found missing on the way is
        journaled and the order fails `order_not_found` instead."""
        try:
            await end
        except BrokerOrderMissing as missing:
            await self._lost_at_broker(missing.broker_order_id)

    async def _drive(self) -> None:
        while not self.record.is_terminal:
            if self.record.ended_at_broker is not None:
                raise EndedAtBroker(self.record.ended_at_broker["broker_order_id"])
            self.gateway.check_not_stopped()
            state = self.record.state
            await STATE_HANDLERS[LIMIT_STEP if is_limit_step(state) else state](self)

    async def _reconcile(self, listed: Mapping[str, BrokerOrder]) -> None:
        """Settle what a previous process left open: an unanswered intent, a cancel, fills."""
        record = self.record
        if record.is_terminal:
            return
        stopping = self.gateway.stop_reason()
        if stopping is not None:
            self.gateway.journal_stop(stopping)  # before anything unanswered is withdrawn
        if record.awaits_broker_answer:
            listed = {}  # the listing predates what answering them does at the broker
        if record.pending_intent is not None:
            await self.gateway.resolve_pending(record.pending_intent)
        if self.record.pending_cancel is not None:
            await self.gateway.send_cancel(self.record.pending_cancel)
        for broker_order_id in self.record.unfinished_broker_orders:
            order = listed.get(broker_order_id)
            if order is None:
                order = await self.gateway.read_order(broker_order_id)
            self.gateway.absorb(order)

    async def _start(self) -> None:
        """PENDING: market open, asset tradable, position read, a usable quote -> QUOTED
        (without one only for urgency HIGH under `market_without_quote`, which goes to market)."""
        broker, intent = self.ctx.broker, self.record.intent
        if not await self._market_open():
            return await self._fail(FailReason.MARKET_CLOSED)
        self.asset = await self._read_unless_stopped(lambda: broker.get_asset(intent.symbol))
        if not self.asset.tradable:
            return await self._fail(FailReason.NOT_TRADABLE)
        closes = intent.close_type is CloseType.FULL
        # a FULL close sells what the position is now: its size never comes from a snapshot
        position = None if closes or not self._position_before else await self._position_before()
        if position is None:
            position = await self._read_unless_stopped(lambda: broker.get_position(intent.symbol))
        target = position if closes else None
        self.journal.write(PositionRead(phase="before", qty=position, target_qty=target))
        if target is not None and target <= 0:
            return await self._fail(FailReason.NO_POSITION)
        if intent.side is OrderSide.SELL and self.record.quantity > position:
            return await self._fail(FailReason.INSUFFICIENT_POSITION, position=str(position))
        quote = await self._quote()
        if quote is None and not self._market_without_quote():
            return await self._fail(FailReason.NO_QUOTE)
        if quote is None:
            self._fire(
                Quoted(trigger=Trigger.QUOTE, quote=None, quote_missing=MARKET_WITHOUT_QUOTE)
            )
            return
        self._fire(Quoted(trigger=Trigger.QUOTE, quote=quote.as_data()))
        self._arrival_quote = quote

    def _market_without_quote(self) -> bool:
        """Whether an order with no usable quote goes to market anyway: urgency HIGH with
        `market_without_quote` (a market order needs no price; execution_v2 sent it)."""
        return self.config.market_without_quote and self.record.intent.urgency is Urgency.HIGH

    async def _market_open(self) -> bool:
        """Open now; or, with `wait_for_open`, open after waiting for the broker's next open."""
        clock = await self._read_unless_stopped(self.ctx.broker.get_clock)
        if clock.is_open or not self.config.wait_for_open or clock.next_open is None:
            return clock.is_open
        wait = (clock.next_open - clock.at).total_seconds()
        if wait > self.config.max_wait_for_open_seconds:
            return False
        self.log.info("order.waiting_for_open", next_open=clock.next_open.isoformat())
        await self.gateway.unless_stopped(partial(self.ctx.clock.sleep, max(wait, 0.0)))
        return (await self._read_unless_stopped(self.ctx.broker.get_clock)).is_open

    async def _leave_quoted(self) -> None:
        """QUOTED: the fraction a whole-share asset cannot trade is closed first; then urgency
        HIGH (or an empty ladder, or nothing left) goes to market, the rest to step 1."""
        live = self.record.live_broker_order_id
        if live is not None:  # a close-position order a resume found: its fills first
            await self.gateway.confirm_terminal(live)
        fraction = await self._fraction_to_close()
        if fraction > 0:
            await self.gateway.close_fraction(fraction)
        if (
            self.record.intent.urgency is Urgency.HIGH
            or not self.config.ladder
            or self.record.remaining_qty <= 0
        ):
            self._fire(_escalated(await self._fresh_quote()))
            return
        await self._enter_step(1)

    async def _fraction_to_close(self) -> Decimal:
        """What a FULL close of a non-fractionable asset holds beyond whole shares (a corporate
        action's or a fractional era's remainder): no plain order may trade it, so it goes
        through the close-position route, once."""
        record, intent = self.record, self.record.intent
        if intent.close_type is not CloseType.FULL or intent.side is not OrderSide.SELL:
            return ZERO
        if record.attempts_at(CLOSE_STEP):
            return ZERO
        if (await self._asset()).fractionable:
            return ZERO
        remaining = record.remaining_qty
        return remaining - remaining.to_integral_value(rounding=ROUND_FLOOR)

    async def _enter_step(self, k: int) -> None:
        """Price step k from a fresh quote and journal the move into LIMIT_STEP_k."""
        quote = await self._fresh_quote()
        if quote is None:
            return await self._fail(FailReason.NO_QUOTE)
        price = await self._step_price(k, quote)
        if price is None:
            return await self._fail_price_band(quote)
        self._journal_step(Trigger.START_WALK if k == 1 else Trigger.NEXT_STEP, k, quote, price)

    async def _asset(self) -> Asset:
        """The order's asset, read once per walk (a resumed walk reads it when first needed)."""
        if self.asset is None:
            symbol = self.record.intent.symbol
            self.asset = await self._read_unless_stopped(partial(self.ctx.broker.get_asset, symbol))
        return self.asset

    async def _step_price(self, k: int, quote: UsableQuote) -> Decimal | None:
        """Step k's limit at its fraction of `quote`, held inside the price band; None when
        the market moved past the band."""
        side, increment = self.record.intent.side, (await self._asset()).price_increment
        edge = self._band_edge()
        if edge is not None and beyond_band(side, quote.bid, quote.ask, edge):
            return None
        price = limit_price(side, quote.bid, quote.ask, self.config.ladder[k - 1], increment)
        return price if edge is None else held_to_band(side, price, edge, increment)

    def _journal_step(self, trigger: Trigger, k: int, quote: UsableQuote, price: Decimal) -> None:
        self._fire(
            StepEntered(
                trigger=trigger,
                ratio=self.config.ladder[k - 1],
                limit_price=price,
                quote=quote.as_data(),
                wait_seconds=self.config.step_wait_seconds(self.record.intent.urgency),
            )
        )

    def _band_edge(self) -> Decimal | None:
        """The furthest price `price_band_bps` allows around the arrival mid (None: no band,
        or no arrival quote to measure from)."""
        band, arrival = self.config.price_band_bps, self.record.arrival
        if band is None or arrival is None:
            return None
        mid = (Decimal(arrival["bid"]) + Decimal(arrival["ask"])) / 2
        return band_edge(self.record.intent.side, mid, band)

    async def _fail_price_band(self, quote: UsableQuote | None) -> None:
        """The market moved past the price band (or no quote shows where it is): stop."""
        edge = self._band_edge()
        assert edge is not None, "only a band fails an order price_band"
        where = "no usable quote" if quote is None else f"the market at {quote.bid}/{quote.ask}"
        await self._fail(
            FailReason.PRICE_BAND,
            f"{where}: a {self.record.intent.side.value} may not trade beyond "
            f"{decimal_text(edge)}, the {self.config.price_band_bps} bps price band around "
            "the arrival mid",
            band_edge=decimal_text(edge),
        )

    async def _limit_step(self) -> None:
        """LIMIT_STEP_k: the step's order rests for the step's time (what is left of it),
        placed once the spread allows (max_spread_bps) and re-priced when the quote moves
        (repeg_threshold_bps, repeg_spread_fraction)."""
        k = step_number(self.record.state)
        step = f"L{k}"
        deadline = self._deadline(self.config.step_wait_seconds(self.record.intent.urgency))
        record = self.record
        placed = record.live_step == step and record.live_limit_price == record.step_limit_price
        if record.remaining_qty > 0 and not placed and await self._spread_allows(deadline):
            price = self.record.step_limit_price
            assert price is not None, "a limit step is always entered with its price"
            placing = self.ctx.clock.monotonic()
            await self._place_limit(step, price)
            if not record.repegs_in_step:  # a re-pricing keeps the step's time
                # the step's order rests its full time: waiting for the last step's order
                # to end (a cancel Alpaca confirms at the venue's pace) is not resting time
                deadline += self.ctx.clock.monotonic() - placing
        if self.record.is_terminal or await self._rest(deadline):
            return
        if self.record.remaining_qty <= 0:
            self._fire(Settled(trigger=Trigger.SETTLE))
        elif k < len(self.config.ladder):
            await self._enter_step(k + 1)
        else:
            self._fire(_escalated(await self._quote()))

    async def _spread_allows(self, deadline: float) -> bool:
        """Whether the step places now: at once without `max_spread_bps`, else once the
        spread is at most that, the step re-priced at the quote it narrowed to. False when
        the step's time ran out held back (journaled `placement_held` as the hold began) or
        the order ended (the price band)."""
        widest = self.config.max_spread_bps
        if widest is None:
            return True
        held, clock = False, self.ctx.clock
        while True:
            quote = await self._quote()
            if quote is not None and spread_bps(quote.bid, quote.ask) <= widest:
                if held:
                    await self._repriced(quote, force=True)
                return not self.record.is_terminal
            left = deadline - clock.monotonic()
            if left <= MIN_WAIT_SECONDS:
                self.log.info("order.step_held_back", state=self.record.state)
                return False
            if not held and quote is not None:
                self.journal.write(
                    PlacementHeld(
                        spread_bps=spread_bps(quote.bid, quote.ask).quantize(BPS_PLACES),
                        max_spread_bps=widest,
                        quote=quote.as_data(),
                    )
                )
                held = True
            wait = min(left, self.config.quote_watch_seconds)
            await self.gateway.unless_stopped(partial(clock.sleep, wait))

    async def _rest(self, deadline: float) -> bool:
        """Count the live order's fills until the step's time is up. Watching quotes, look
        every `quote_watch_seconds`: True when the step was re-priced or the order ended
        (the price band), and the step must be looked at again."""
        if not self.config.watches_quotes:
            await self.gateway.await_fills(deadline)
            return False
        clock = self.ctx.clock
        while self.record.live_broker_order_id is not None:
            look = min(deadline, clock.monotonic() + self.config.quote_watch_seconds)
            await self.gateway.await_fills(look)
            done = self.record.remaining_qty <= 0 or self.record.live_broker_order_id is None
            if done or clock.monotonic() >= deadline - MIN_WAIT_SECONDS:
                return False
            quote = await self._quote()
            if quote is not None and await self._repriced(quote):
                return True
        return False

    async def _repriced(self, quote: UsableQuote, *, force: bool = False) -> bool:
        """Re-price the step at its fraction of `quote` when the mid moved enough from the
        step's quote (`_moved_enough`, at most `max_repegs` a step; `force`:
        whenever the price changes), or fail it when the market moved past the price band.
        True when either happened."""
        k = step_number(self.record.state)
        price = await self._step_price(k, quote)
        if price is None:
            await self._fail_price_band(quote)
            return True
        if price == self.record.step_limit_price or not (force or self._moved_enough(quote)):
            return False
        self._journal_step(Trigger.REPEG, k, quote, price)
        return True

    def _moved_enough(self, quote: UsableQuote) -> bool:
        """The mid moved more than `repeg_threshold_bps` from the step's own quote, or away
        from the order by more than `repeg_spread_fraction` of that quote's spread, and the
        step has re-pricings left."""
        record, config = self.record, self.config
        step_quote = record.step_quote
        if step_quote is None or record.repegs_in_step >= config.max_repegs:
            return False
        bid, ask = Decimal(step_quote["bid"]), Decimal(step_quote["ask"])
        before = (bid + ask) / 2
        if before <= 0:
            return False
        threshold, fraction = config.repeg_threshold_bps, config.repeg_spread_fraction
        if threshold is not None and abs(quote.mid - before) / before * BPS > threshold:
            return True
        away = quote.mid - before if record.intent.side is OrderSide.BUY else before - quote.mid
        return fraction is not None and away > fraction * (ask - bid)

    async def _place_limit(self, step: str, price: Decimal) -> None:
        """The step's order at `price`: the live order kept when it already rests there (a
        replace that changes nothing is refused by Alpaca), else replaced or placed anew."""
        live = self.record.live_broker_order_id
        if live is not None:
            order = await self.gateway.read_order(live)
            self.gateway.absorb(order)
            if not order.is_terminal and order.limit_price == price:
                self.log.info("order.step_keeps_resting_order", limit_price=str(price))
                return
        if self.record.live_broker_order_id is None or self.record.remaining_qty <= 0:
            return await self.gateway.submit_remaining(step, price)
        if self._may_replace(price):
            return await self.gateway.replace(step, price)
        await self.gateway.cancel_live()
        await self.gateway.submit_remaining(step, price)

    def _may_replace(self, price: Decimal) -> bool:
        """Replace only a whole-share order with no fills, at a price that will rest.

        A replace is not atomic with fills: a fill landing on the old order just before
        the broker applies it leaves the new order sized to a stale remainder (and Alpaca
        may even reuse the original qty once an order has filled partly). A resting new
        order can be shrunk before it trades; a marketable one trades at once, so those
        cases go through cancel, confirm, new; and every step does with `replace_orders` off.
        """
        record = self.record
        live = record.live_broker_order_id
        if not self.config.replace_orders or live is None:
            return False
        if record.quantity != record.quantity.to_integral_value():
            return False
        if record.broker_filled.get(live, ZERO) > 0 or record.step_quote is None:
            return False
        if record.intent.side is OrderSide.BUY:
            return price < Decimal(record.step_quote["ask"])
        return price > Decimal(record.step_quote["bid"])

    async def _market(self) -> None:
        """MARKET: cancel any resting limit order, then market orders for what remains."""
        if self.record.live_step not in (None, MARKET_STEP):
            await self.gateway.cancel_live()
        wait = self.config.market_wait_seconds
        if self.record.live_broker_order_id is not None:
            await self.gateway.await_fills(self.ctx.clock.monotonic() + wait)
            await self.gateway.cancel_live()
        while (
            self.record.remaining_qty > 0
            and self.gateway.next_attempt(MARKET_STEP) <= self.config.market_attempts
        ):
            if not await self._market_inside_band():
                return
            await self.gateway.submit_remaining(MARKET_STEP, None)
            await self.gateway.await_fills(self.ctx.clock.monotonic() + wait)
            await self.gateway.cancel_live()
        self._fire(Settled(trigger=Trigger.SETTLE))

    async def _market_inside_band(self) -> bool:
        """Whether a market order may go: no price band, or the far touch inside it (else
        the order fails price_band: a market order would trade beyond the band)."""
        edge = self._band_edge()
        if edge is None:
            return True
        quote = await self._quote()
        side = self.record.intent.side
        if quote is not None and not beyond_band(side, quote.bid, quote.ask, edge, crossing=True):
            return True
        await self._fail_price_band(quote)
        return False

    async def _settle(self) -> None:
        """SETTLING: nothing live, then the position must have moved by exactly what filled.

        The broker's figure is the one it reported with the order's latest fill when that
        shows every fill (Alpaca's `position_qty`: no read spent), else a read, repeated
        until it shows them or `settle_timeout_seconds` pass."""
        await self.gateway.cancel_live()
        record = self.record
        assert record.position_before is not None
        signed = record.filled_qty if record.intent.side is OrderSide.BUY else -record.filled_qty
        expected = record.position_before + signed
        tolerance = self.config.validation_tolerance
        reported = record.position_reported
        if reported is not None and reported.is_finite() and abs(reported - expected) <= tolerance:
            actual, from_fill = reported, True
        else:
            actual, from_fill = await self._read_position_until(expected), False
        self.journal.write(
            PositionRead(phase="after", qty=actual, expected=expected, from_fill=from_fill)
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
        self._fire(Validated(trigger=Trigger.VALIDATE, position=actual))

    async def _read_position_until(self, expected: Decimal) -> Decimal:
        """The broker's position, read again each second until it is `expected` or
        `settle_timeout_seconds` pass (a position can lag the fills that made it)."""
        broker, symbol = self.ctx.broker, self.record.intent.symbol
        tolerance = self.config.validation_tolerance
        deadline = self.ctx.clock.monotonic() + self.config.settle_timeout_seconds
        actual = await self.gateway.read(lambda: broker.get_position(symbol))
        while abs(actual - expected) > tolerance and self.ctx.clock.monotonic() < deadline:
            await self.gateway.unless_stopped(partial(self.ctx.clock.sleep, 1.0))
            actual = await self.gateway.read(lambda: broker.get_position(symbol))
        return actual


def _reason(code: str) -> FailReason:
    try:
        return FailReason(code)
    except ValueError:
        return FailReason.REJECTED


def _failed(reason: FailReason, message: str | None, figures: dict[str, Any]) -> Failed:
    return Failed(trigger=Trigger.FAIL, reason=reason.value, message=message, figures=figures)


def _escalated(quote: UsableQuote | None) -> Escalated:
    return Escalated(trigger=Trigger.ESCALATE, quote=None if quote is None else quote.as_data())


_LOGGED_FIELDS = frozenset({"trigger", "reason", "limit_price", "ratio", "quote_missing"})


def _loggable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in _LOGGED_FIELDS}


# each non-terminal state's handler; every limit step shares one (it reads its k)
LIMIT_STEP = "LIMIT_STEP"
STATE_HANDLERS: dict[str, Callable[[OrderWalk], Awaitable[None]]] = {
    OrderState.PENDING: OrderWalk._start,
    OrderState.QUOTED: OrderWalk._leave_quoted,
    LIMIT_STEP: OrderWalk._limit_step,
    OrderState.MARKET: OrderWalk._market,
    OrderState.SETTLING: OrderWalk._settle,
}
