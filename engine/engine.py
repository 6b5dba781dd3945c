"""The Engine: validates intents, journals each new order, walks them, and resumes after a crash."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from journal import Event, Journal, JournalCorrupt, NewEvent, canonical_json, stamp
from journal.trust import check_before_acting, in_flight_rows

from .broker import Asset, Broker, BrokerOrder
from .clock import Clock, RealClock
from .config import EngineConfig, journaled_config
from .context import WalkContext
from .crash import CrashingBroker, CrashPoints
from .errors import (
    BrokerError,
    BrokerRejected,
    EngineHalting,
    InvalidIntent,
    InvalidPlan,
    PlanAtBroker,
    PlanHalted,
    PlansInFlight,
    UnknownBrokerOrders,
    UnknownSymbol,
)
from .events import Created, EventKind, Fill, Payload, ReplaceIntent, SubmitIntent
from .fsm import TERMINAL_STATES, FailReason, OrderState
from .gateway import MARKET_STEP
from .hooks import Hooks, NoticeT, PlanCompleted
from .intents import OrderIntent, OrderSide, RebalancePlan, Urgency
from .numbers import ZERO, decimal_text
from .order import (
    OrderRecord,
    client_order_id,
    engine_order_of,
    fold_history,
    fold_orders,
    make_order_id,
)
from .ownership import refuse_foreign_journal
from .preflight import check_intent, described, sells_part, tradable
from .preview import PlanPreview, preview_plan
from .quotes import QuoteCounters, QuoteService, UsableQuote
from .results import OrderResult, PlanResult
from .retry import read_with_retry
from .risk import PreTradeRisk, Refusal, SellGate
from .sizing import BuySizer
from .stopping import StopRequested, StopRequests, take_halt_requests
from .targets import (
    Derivation,
    Hold,
    NotionalSizing,
    derive_targets,
    involved_symbols,
    target_equity,
    target_refused,
)
from .walk import OrderWalk, PositionSnapshot

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .metrics import WalkbookMetrics

__all__ = ["CheckedPlan", "Engine", "ResumeReport", "ResumedOrder", "plan_digest"]

# a plan of at most this many orders has each looked up at the broker before it starts;
# a larger one is matched against one listing of the account's orders of this horizon
EXACT_PLAN_LOOKUPS = 50
PLAN_LOOKUP_HORIZON = timedelta(days=1)

DEFAULT_CONCURRENCY = 8
DEFAULT_RECONCILE_CONCURRENCY = 64
# how often an engine with orders walking looks for a `walkbook halt` request, and how
# often a halt looks whether the work it asked to stop has stopped (engine clock seconds)
HALT_POLL_SECONDS = 0.25
# failures that sent the broker nothing and may pass: a redelivered plan tries them again
RETRYABLE_UNSENT = frozenset(
    {FailReason.MARKET_CLOSED, FailReason.BROKER_UNAVAILABLE, FailReason.NO_QUOTE}
)
T = TypeVar("T")


@dataclass(frozen=True)
class ResumedOrder:
    """What resume found for one order and what it did about it."""

    order_id: str
    symbol: str
    found_state: str
    found: str
    actions: str
    result: OrderResult


@dataclass(frozen=True)
class ResumeReport:
    orders: tuple[ResumedOrder, ...]

    @property
    def nothing_in_flight(self) -> bool:
        return not self.orders

    def lines(self) -> list[str]:
        """One line per order, for people."""
        if self.nothing_in_flight:
            return ["nothing in flight: every order in the journal is already terminal"]
        return [
            f"{o.symbol} {o.order_id}: found {o.found_state} ({o.found}); "
            f"did {o.actions}; now {o.result.state}"
            + (f" ({o.result.reason})" if o.result.reason else "")
            + f", filled {o.result.filled_qty}/{o.result.quantity}"
            for o in self.orders
        ]


class Engine:
    """Executes intents and plans against one broker, journaling into one journal file.

    The engine owns the journal lock while it is open; close it (or use it as a
    context manager) so another process can resume or run.
    """

    def __init__(
        self,
        broker: Broker,
        journal: Journal | str | Path,
        config: EngineConfig | None = None,
        clock: Clock | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        crash_points: CrashPoints | None = None,
        reconcile_concurrency: int = DEFAULT_RECONCILE_CONCURRENCY,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        if concurrency < 1 or reconcile_concurrency < 1:
            raise ValueError("concurrency and reconcile_concurrency must be at least 1")
        # Prometheus metrics of this engine's work in the caller's registry (docs/metrics.md),
        # registered before the journal opens: a registry that refuses them leaves none open
        self.metrics: WalkbookMetrics | None = None
        if metrics_registry is not None:
            from .metrics import WalkbookMetrics  # here: prometheus_client only when asked for

            self.metrics = WalkbookMetrics(metrics_registry)
        self.crash_points = crash_points or CrashPoints.from_env()
        self.broker: Broker = CrashingBroker(broker, self.crash_points)
        self.journal = journal if isinstance(journal, Journal) else Journal.open(journal)
        self.config = config or EngineConfig()
        self.clock = clock or RealClock()
        self.concurrency = concurrency
        self.reconcile_concurrency = reconcile_concurrency
        self.log = structlog.get_logger("walkbook")
        self.quotes = QuoteService(
            self.broker,
            freshness_seconds=self.config.quote_freshness_seconds,
            stream_wait_seconds=self.config.stream_quote_wait_seconds,
        )
        self.hooks = Hooks()
        self.stops = StopRequests()
        # orders an execute, resume or stop of this engine is walking (no one else may)
        self._owned: set[str] = set()
        # execute/resume calls under way; a halt waits for them, the halt watcher runs with them
        self._busy = 0
        self._watcher: asyncio.Task[None] | None = None
        self._requested_stops: list[asyncio.Future[tuple[OrderResult, ...]]] = []
        # the open orders the unknown-orders check listed, for the first reconcile to use
        # instead of listing again (dropped once a walk moves orders on)
        self._open_listing: dict[str, BrokerOrder] | None = None
        # each plan's preflight read of every position, and the last seq at which a symbol
        # was traded: walks start from the snapshot while it vouches (PositionSnapshot)
        self._snapshots: dict[str | None, PositionSnapshot] = {}
        # a plan's snapshot being read anew, once for all its walks (`_renewed_snapshot`)
        self._renewals: dict[str | None, asyncio.Future[Mapping[str, Decimal]]] = {}
        self._last_traded: dict[str, int] = {}
        self.context = WalkContext(
            self.journal,
            self.broker,
            self.quotes,
            self.clock,
            self.config,
            self.crash_points,
            listeners=[self.hooks.after_commit, self._note_trading],
            stops=self.stops,
        )
        if self.metrics is not None:
            self.metrics.attach(self)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.journal.close()

    def subscribe(self, notice_type: type[NoticeT], callback: Callable[[NoticeT], None]) -> None:
        """Call `callback(notice)` for each OrderTransitioned, OrderFilled or PlanCompleted.

        Notices are delivered after the journal commit of the fact they report; a callback
        that raises is logged and ignored.
        """
        self.hooks.subscribe(notice_type, callback)

    # -- public API -----------------------------------------------------------------

    async def execute(self, intent: OrderIntent, *, plan_id: str | None = None) -> OrderResult:
        """Execute one intent as a one-order plan."""
        plan = RebalancePlan(
            plan_id=plan_id or intent.correlation_id or f"adhoc-{uuid.uuid4().hex[:12]}",
            orders=(intent,),
        )
        return (await self.execute_plan(plan)).orders[0]

    async def execute_plan(self, plan: RebalancePlan) -> PlanResult:
        """Execute a plan exactly once per plan_id, and return its one truthful result.

        A new plan is validated first (by default nothing is journaled if one order is
        bad), journaled, then walked: sells, then buys sized to the buying power. A
        plan_id already in the journal is not executed again: with the same contents, a
        completed plan returns its journaled result and a half-done one is continued;
        with other contents it is refused.
        """
        log = self.log.bind(plan_id=plan.plan_id)
        holds: tuple[Hold, ...] | None = None
        async with self._work():
            digest = plan_digest(plan)
            known = self._journaled_plan_digest(plan.plan_id)
            if known is not None and known != digest:
                raise InvalidPlan(
                    f"plan {plan.plan_id} was already delivered with different contents; "
                    "use a new plan_id",
                    plan_id=plan.plan_id,
                )
            await self._check_open_orders_against_journal()
            await self._settle_other_plans(plan.plan_id)
            if known is None:
                records, holds = await self._start(plan, digest)
                log.info("plan.started", orders=len(records), holds=len(holds))
            else:
                records = self._redelivered(plan.plan_id, self._plan_lines(plan), digest)
                log.info("plan.redelivered", in_flight=sum(not r.is_terminal for r in records))
            done = {r.order_id: r for r in await self._walk_owned(records)}
        result = self._plan_result(plan.plan_id, [done.get(r.order_id, r) for r in records], holds)
        if all(r.state in TERMINAL_STATES for r in result.orders):
            self.hooks.deliver(PlanCompleted(result))
        log.info("plan.finished", status=result.status.value)
        return result

    def execute_plan_sync(self, plan: RebalancePlan) -> PlanResult:
        """For callers without an event loop: run the plan on the engine's clock."""
        return self.clock.run(self.execute_plan(plan))

    def execute_sync(self, intent: OrderIntent, *, plan_id: str | None = None) -> OrderResult:
        return self.clock.run(self.execute(intent, plan_id=plan_id))

    async def resume(self, *, max_age_seconds: float | None = None) -> ResumeReport:
        """Drive every non-terminal order in the journal to VALIDATED or FAILED.

        Each order is rebuilt from its events and reconciled with the broker first
        (unanswered intents looked up by client_order_id, live orders re-read, fills
        counted once); then it continues from its state with the time its step had left.
        An order created more than `max_age_seconds` ago is abandoned instead: its live
        broker orders cancelled, FAILED `abandoned`, nothing new placed for it.
        """
        async with self._work():
            # the events come in seq order, so the records in the order the orders were created
            await self._check_open_orders_against_journal()
            folded = fold_history(self.journal.order_history(unless_state=TERMINAL_STATES))
            self._check_projection(folded, in_flight_rows(self.journal, TERMINAL_STATES))
            records = list(folded.values())
            if max_age_seconds is not None:
                cutoff = self.clock.now() - timedelta(seconds=max_age_seconds)
                for record in records:
                    if datetime.fromisoformat(record.created_at) < cutoff:
                        self.stops.stop_order(record.order_id, FailReason.ABANDONED)
            seq_before = self.journal.last_seq
            done = {r.order_id: r for r in await self._walk_owned(records)}
        self._announce_completed_plans({r.plan_id for r in records if r.plan_id is not None})
        actions: dict[str, Counter[str]] = {r.order_id: Counter() for r in records}
        for event in self.journal.events(after_seq=seq_before):
            if event.order_id in actions:
                actions[event.order_id][event.kind] += 1
        return ResumeReport(
            tuple(
                ResumedOrder(
                    order_id=r.order_id,
                    symbol=r.intent.symbol,
                    found_state=r.state,
                    found=_describe_found(r),
                    actions=", ".join(f"{k} x{n}" for k, n in actions[r.order_id].items())
                    or "nothing",
                    result=OrderResult.from_record(done[r.order_id]),
                )
                for r in records
            )
        )

    def resume_sync(self, *, max_age_seconds: float | None = None) -> ResumeReport:
        return self.clock.run(self.resume(max_age_seconds=max_age_seconds))

    # -- stopping -------------------------------------------------------------------

    async def halt(self) -> tuple[OrderResult, ...]:
        """Stop everything: no new placement, every live broker order cancelled (journaled
        first), the fills that came first counted, each order FAILED `cancelled`.

        Orders this engine is walking stop where they are; in-flight orders an earlier
        process left in the journal are stopped too. New work is refused until the halt
        has finished. Returns the result of every order that was in flight.
        """
        return await self._stop_where(FailReason.CANCELLED)

    async def cancel(self, order_id: str) -> OrderResult:
        """Halt one engine order (see `halt`); an order already terminal is left as it is."""
        stopped = await self._stop_where(FailReason.CANCELLED, order_id=order_id)
        if stopped:
            return stopped[0]
        row = self.journal.order(order_id)
        if row is None:
            raise InvalidIntent(f"no order {order_id} in this journal", order_id=order_id)
        return OrderResult.from_record(self._records_of([order_id])[order_id])

    async def cancel_plan(self, plan_id: str) -> tuple[OrderResult, ...]:
        """Halt every in-flight order of one plan (see `halt`)."""
        return await self._stop_where(FailReason.CANCELLED, plan_id=plan_id)

    async def abandon(self, plan_id: str) -> tuple[OrderResult, ...]:
        """Give up a plan's in-flight orders without trading them further: their live broker
        orders cancelled, each FAILED `abandoned` (a stale plan a new one replaces)."""
        return await self._stop_where(FailReason.ABANDONED, plan_id=plan_id)

    async def preflight(
        self, plan: RebalancePlan, positions: Mapping[str, Decimal] | None = None
    ) -> CheckedPlan:
        """Check every intent against the broker before anything is journaled or sent.

        Problems name the order. With `validation="all_or_nothing"` (the default) any
        problem refuses the whole plan; with `"skip_invalid"` the bad orders are journaled
        and failed `invalid_intent` without reaching the broker. A fractional qty of a
        whole-share asset is refused, or rounded down with a warning by configuration; a
        sell a little above the position is trimmed to it (`oversell_tolerance`). Then the
        pre-trade risk limits (engine/risk.py): a plan-level breach raises
        `RiskLimitBreached`; an order-level one as a problem does, its reason `risk_limit`;
        an order under `min_order_notional` is skipped (`below_min_notional`). A dollar
        order is first sized at its arrival quote (engine/targets.py); one that comes to no
        shares is skipped too (`below_min_notional`). `positions`: every position, when a
        read for this plan already has them (a target plan's derivation).
        """
        intents, problems, sizings = list(plan.orders), {}, {}
        if positions is None:
            positions = await self._positions_if_selling(plan)
        for index, intent in enumerate(plan.orders):
            try:
                intents[index], sizing = await self._check_intent(intent, plan.plan_id, positions)
            except InvalidIntent as exc:
                problems[index] = f"order {index} ({described(intent)}): {exc.message}"
                continue
            if sizing is not None:
                sizings[index] = sizing
        if problems and self.config.validation == "all_or_nothing":
            raise InvalidIntent(
                "; ".join(problems.values()),
                plan_id=plan.plan_id,
                orders=sorted(problems),
            )
        requested = {
            index: intent.quantity
            for index, intent in enumerate(plan.orders)
            if intent.quantity is not None and intents[index].quantity != intent.quantity
        }
        unsized = {i: s.refusal() for i, s in sizings.items() if s.quantity == 0}
        valid = {
            i: intent for i, intent in enumerate(intents) if i not in problems and i not in unsized
        }
        risk = PreTradeRisk(self.context, self._read, self.reconcile_concurrency)
        refusals = await risk.check(plan.plan_id, valid) | unsized
        checked = plan.model_copy(update={"orders": tuple(intents)})
        return CheckedPlan(checked, problems, requested, refusals, sizings)

    async def preview(self, plan: RebalancePlan) -> PlanPreview:
        """A priced dry run of `plan` (engine/preview.py): broker reads only, nothing
        journaled; `daily_traded_notional` counts this journal's fills."""
        return await preview_plan(
            self.broker,
            plan,
            self.config,
            self.clock,
            journal=self.journal,
            concurrency=self.reconcile_concurrency,
        )

    async def _positions_if_selling(self, plan: RebalancePlan) -> Mapping[str, Decimal]:
        """Every position, in one read, when a sell of the plan is checked against its
        position (a partial sell); else nothing is read."""
        if not any(sells_part(intent) for intent in plan.orders):
            return {}
        return await self._read_positions_snapshot(plan.plan_id)

    async def _read_positions_snapshot(self, plan_id: str | None) -> Mapping[str, Decimal]:
        """Every position in one read, kept for the plan's walks to start from
        (`PositionSnapshot`) instead of a read each. An unfinished order still PENDING has
        sent nothing, so it cannot move a position behind the read."""
        after_seq, taken_at = self.journal.last_seq, self.clock.monotonic()
        positions = await self._read(self.broker.get_positions)
        unfinished = self.journal.orders(unless_state=(*TERMINAL_STATES, OrderState.PENDING))
        self._snapshots[plan_id] = PositionSnapshot(
            positions, after_seq, frozenset(str(row["symbol"]) for row in unfinished), taken_at
        )
        return positions

    async def _position_from_snapshot(self, plan_id: str | None, symbol: str) -> Decimal | None:
        """A walk's "before" position from its plan's snapshot while that still vouches; a
        snapshot past its age is read anew first, once for every walk starting meanwhile."""
        snapshot = self._snapshots.get(plan_id)
        if snapshot is None:
            return None
        if snapshot.aged(self.clock.monotonic()):
            try:
                await self._renewed_snapshot(plan_id)
            except BrokerError:
                return None  # the walk reads its own position, and meets the error itself
            snapshot = self._snapshots[plan_id]
        return snapshot.position(symbol, self._last_traded.get(symbol, -1), self.clock.monotonic())

    async def _renewed_snapshot(self, plan_id: str | None) -> None:
        """One read anew of the plan's snapshot, shared by the walks that ask while it runs."""
        renewal = self._renewals.get(plan_id)
        if (
            renewal is None
            or renewal.done()
            or renewal.get_loop() is not asyncio.get_running_loop()
        ):
            renewal = asyncio.ensure_future(self._read_positions_snapshot(plan_id))
            self._renewals[plan_id] = renewal
        await asyncio.shield(renewal)

    def _note_trading(self, record: OrderRecord, event: Event, payload: Payload) -> None:
        """The last seq at which this engine journaled an order sent, or a fill, in a symbol:
        a position snapshot read before it no longer vouches for the symbol."""
        if isinstance(payload, SubmitIntent | ReplaceIntent | Fill):
            self._last_traded[record.intent.symbol] = event.seq

    async def _check_intent(
        self, intent: OrderIntent, plan_id: str, positions: Mapping[str, Decimal]
    ) -> tuple[OrderIntent, NotionalSizing | None]:
        """The intent as it will be sent, and how a dollar order was sized: preflight's
        rules (engine/preflight.py) on the asset, the position and, for a dollar order
        only, a quote; each change to the quantity logged as a warning."""
        symbol = intent.symbol
        asset = await self._tradable_asset(symbol)
        quote = None
        if intent.notional is not None:
            tally = self.context.plan_quotes[plan_id]
            get = partial(self.quotes.get, symbol, self.clock.now(), asset.price_increment, tally)
            quote = await self._read(get)
        position = positions.get(symbol, ZERO)
        checked = check_intent(intent, asset, position, quote, self.config)
        # a dollar order's quantity asked for is the one its notional came to
        asked = intent.quantity if checked.sizing is None else checked.sizing.quantity
        for change in checked.changes:
            self.log.warning(
                f"intent.{change}",
                symbol=symbol,
                requested=str(asked),
                qty=str(checked.intent.quantity),
                oversell_tolerance=str(self.config.oversell_tolerance),
            )
        return checked.intent, checked.sizing

    async def _tradable_asset(self, symbol: str) -> Asset:
        try:
            asset = await self._read(partial(self.broker.get_asset, symbol))
        except UnknownSymbol:
            raise InvalidIntent("unknown symbol", symbol=symbol) from None
        except BrokerRejected as exc:
            raise InvalidIntent(f"cannot check the asset: {exc.message}") from None
        return tradable(asset)

    # -- internals ------------------------------------------------------------------

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        return await read_with_retry(call, self.config, self.clock, lambda: self.log)

    def _journaled_plan_digest(self, plan_id: str) -> str | None:
        """The digest the plan was first delivered with, or None for a plan never seen."""
        first = self.journal.first_event_of_plan(plan_id)
        return None if first is None else Created.from_data(first.data).plan_digest

    @asynccontextmanager
    async def _work(self) -> AsyncIterator[None]:
        """One execute or resume under way: refused while a halt runs; while any is under
        way, `walkbook halt` requests are watched for; a halt waits for all to end."""
        if self.stops.everything is not None:
            raise EngineHalting("the engine is halting; no new work until the halt has finished")
        check_before_acting(self.journal)
        self._busy += 1
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch_halt_requests())
        try:
            yield
        finally:
            self._busy -= 1
            self._open_listing = None
            if self._busy == 0:
                self._snapshots.clear()
                self._renewals.clear()
            if self._busy == 0 and self._watcher is not None:
                self._watcher.cancel()
                self._watcher = None
                # the stops requested from outside end with the work they stopped
                requested, self._requested_stops = self._requested_stops, []
                await asyncio.gather(*requested)

    async def _watch_halt_requests(self) -> None:
        """Take a `walkbook halt`/`abandon` request addressed to this process: the walks it
        names stop where they are (the requester waits for their orders to end). A request
        is a file beside a journal file, a meta row of a journal in a database."""
        while True:
            for request in take_halt_requests(self.journal):
                if request.target_pid != os.getpid():
                    continue
                self.log.warning(
                    "halt.requested", plan_id=request.plan_id, reason=request.reason.value
                )
                stop = self._stop_where(request.reason, plan_id=request.plan_id)
                self._requested_stops.append(asyncio.ensure_future(stop))
            await self.clock.sleep(HALT_POLL_SECONDS)

    async def _stop_where(
        self, reason: FailReason, *, plan_id: str | None = None, order_id: str | None = None
    ) -> tuple[OrderResult, ...]:
        """Stop the in-flight orders chosen (one order, one plan, or all) and wait for them."""
        everything = plan_id is None and order_id is None
        rows = self.journal.orders(plan_id=plan_id, unless_state=TERMINAL_STATES)
        ids = [r["order_id"] for r in rows if order_id is None or r["order_id"] == order_id]
        if order_id is not None:
            self.stops.stop_order(order_id, reason)
        elif plan_id is not None:
            self.stops.stop_plan(plan_id, reason)
        else:
            self.stops.stop_all(reason)
        try:
            await refuse_foreign_journal(self.journal, self.broker)
            unowned = set(ids) - self._owned
            if unowned:
                folded = fold_history(
                    self.journal.order_history(plan_id=plan_id, unless_state=TERMINAL_STATES)
                )
                await self._walk_owned([r for i, r in folded.items() if i in unowned])
            while self._busy if everything else self._owned.intersection(ids):
                await self.clock.sleep(HALT_POLL_SECONDS)
        finally:
            if order_id is not None:
                self.stops.orders.pop(order_id, None)
            elif plan_id is not None:
                self.stops.plans.pop(plan_id, None)
            else:
                self.stops.everything = None
        records = self._records_of(ids)
        return tuple(OrderResult.from_record(records[i]) for i in ids)

    async def _walk_owned(self, records: Sequence[OrderRecord]) -> list[OrderRecord]:
        """Walk `records` as this engine's own until they end; orders another call of this
        engine is walking are waited for instead. A cancelled caller stops these orders
        (their live broker orders cancelled) before the cancellation goes on. Every order's
        journaled configuration is read first: one this walkbook cannot read stops them all
        before anything is sent (JournalSchemaTooNew)."""
        for record in records:
            journaled_config(record.config)
        taken = {r.order_id for r in records} & self._owned
        mine = [r for r in records if r.order_id not in taken]
        ids = {r.order_id for r in mine}
        self._owned |= ids
        try:
            work = asyncio.ensure_future(self._walk_sells_then_buys(mine))
            try:
                walked = await asyncio.shield(work)
            except asyncio.CancelledError:
                for order_id in ids:
                    self.stops.stop_order(order_id, FailReason.CANCELLED)
                await asyncio.shield(work)
                raise
        finally:
            self._owned -= ids
            for order_id in ids:
                self.stops.orders.pop(order_id, None)
        while self._owned & taken:
            await self.clock.sleep(HALT_POLL_SECONDS)
        if not taken:
            return walked
        done = {r.order_id: r for r in walked}
        others = self._records_of(taken)
        return [done.get(r.order_id) or others[r.order_id] for r in records]

    def _records_of(self, order_ids: Collection[str]) -> dict[str, OrderRecord]:
        """Each order's record as its journaled events make it now."""
        events = self.journal.events
        return {i: fold_orders(events(order_id=i))[i] for i in order_ids}

    def _check_projection(
        self, records: dict[str, OrderRecord], rows: dict[str, dict[str, Any]]
    ) -> None:
        """The `orders` rows of in-flight orders must be what their events fold to: a row
        edited by hand (or events lost under it) means the journal cannot be acted on."""
        for order_id in sorted(rows.keys() | records.keys()):
            record = records.get(order_id)
            row = rows.get(order_id)
            if record is None or row is None or record.projection() != row:
                seq = (row or {}).get("last_seq") if record is None else record.last_seq
                raise JournalCorrupt(
                    f"{self.journal.location}: the orders row of {order_id} does not match its "
                    f"events (last seq {seq}): the journal was edited; refusing to act on it "
                    "(walkbook journal verify)",
                    order_id=order_id,
                    seq=seq,
                )

    async def _check_open_orders_against_journal(self) -> None:
        """Open orders at the broker with walkbook client ids this journal does not know mean
        another journal (or a lost or older copy of this one) trades the account: acting
        beside them could trade twice, so run and resume refuse (`unknown_orders`). An open
        order of an order the journal calls finished means the journal cannot be trusted.
        And a journal whose live orders the broker has none of is another account's."""
        if self.config.unknown_orders == "ignore":
            await refuse_foreign_journal(self.journal, self.broker)
            return
        try:
            orders = await self._read(self.broker.open_orders)
        except BrokerError as exc:
            self.log.warning("unknown_orders.unchecked", error=exc.message)
            await refuse_foreign_journal(self.journal, self.broker)
            return
        self._open_listing = {order.id: order for order in orders}
        await refuse_foreign_journal(self.journal, self.broker, listed=self._open_listing)
        unknown, finished = [], []
        for order in orders:
            order_id = engine_order_of(order.client_order_id)
            if order_id is None:
                continue
            row = self.journal.order(order_id)
            if row is None:
                unknown.append(order)
            elif row["state"] in TERMINAL_STATES:
                finished.append(order)
        if finished:
            raise JournalCorrupt(
                f"{self.journal.location}: the broker has open orders of orders this journal says "
                f"are finished: {_first_few(o.client_order_id for o in finished)}; the "
                "journal was edited, is an older copy, or another journal trades the same "
                "plan: refusing to act on it",
                client_order_ids=[o.client_order_id for o in finished],
            )
        if unknown:
            shown = _first_few(
                f"{o.client_order_id} ({o.symbol} {o.side.value} {o.qty})" for o in unknown
            )
            raise UnknownBrokerOrders(
                f"{len(unknown)} open order(s) at the broker carry walkbook client ids this "
                f"journal does not know: {shown}; another journal trades this account, "
                "or this one is an older copy "
                '(ignore with --ignore-unknown-orders / unknown_orders="ignore")',
                client_order_ids=[o.client_order_id for o in unknown],
            )

    async def _refuse_plan_at_broker(
        self, plan_id: str, orders: Sequence[tuple[str, OrderIntent, dict[str, Any]]]
    ) -> None:
        """A plan new to this journal whose orders the broker already has (delivered through
        another journal on the account, or to an older copy of this one) is refused before
        anything is journaled or sent. A plan of up to `EXACT_PLAN_LOOKUPS` orders has each
        order's first client order id looked up (one read each); a larger one is matched
        against one listing of the account's orders of the last `PLAN_LOOKUP_HORIZON`
        (paged): an order placed before that is still refused by the broker, at submit,
        as a duplicate client order id (FAILED placed_elsewhere)."""
        first_ids = {
            self._first_client_order_id(order_id, intent) for order_id, intent, _ in orders
        }
        found: list[BrokerOrder] = []
        if len(orders) > EXACT_PLAN_LOOKUPS:
            since = self.clock.now() - PLAN_LOOKUP_HORIZON
            listed = await self._read(partial(self.broker.recent_orders, None, since))
            found = [o for o in listed if o.client_order_id in first_ids]
        else:

            async def look_up(cid: str) -> None:
                at_broker = await self._read(partial(self.broker.get_order_by_client_id, cid))
                if at_broker is not None:
                    found.append(at_broker)

            await _bounded(self.reconcile_concurrency, sorted(first_ids), look_up)
        if found:
            shown = _first_few(
                f"{o.client_order_id} ({o.symbol} {o.side.value} {o.qty}, {o.status.value})"
                for o in found
            )
            raise PlanAtBroker(
                f"plan {plan_id} refused: the broker already has {len(found)} of its orders, "
                f"placed through another journal (or an older copy of this one): {shown}",
                plan_id=plan_id,
                client_order_ids=[o.client_order_id for o in found],
            )

    def _first_client_order_id(self, order_id: str, intent: OrderIntent) -> str:
        """The client order id an order's walk sends first (a market order's for urgency
        HIGH or an empty ladder, else step 1's)."""
        market_first = intent.urgency is Urgency.HIGH or not self.config.ladder
        return client_order_id(order_id, MARKET_STEP if market_first else "L1", 1)

    async def _settle_other_plans(self, plan_id: str) -> None:
        """Before a plan runs, what other plans left in flight in this journal (a process
        killed mid-plan) is refused, walked to the end, or abandoned (`in_flight`)."""
        in_flight = in_flight_rows(self.journal, TERMINAL_STATES)
        rows = [
            r
            for r in in_flight.values()
            if r["plan_id"] != plan_id and r["order_id"] not in self._owned
        ]
        if not rows:
            return
        policy = self.config.in_flight
        if policy == "refuse":
            plans = sorted({str(r["plan_id"]) for r in rows})
            shown = _first_few(f"{r['order_id']} ({r['symbol']} {r['state']})" for r in rows)
            raise PlansInFlight(
                f"plan {plan_id} refused: {len(rows)} order(s) of plan(s) {', '.join(plans)} "
                f"are still in flight in this journal: {shown}; resume them (walkbook "
                "resume), abandon them (walkbook abandon --plan P), "
                "or deliver with in_flight resume_first or abandon",
                plans=plans,
                orders=[r["order_id"] for r in rows],
            )
        folded = fold_history(self.journal.order_history(unless_state=TERMINAL_STATES))
        self._check_projection(folded, in_flight)
        stale = [folded[r["order_id"]] for r in rows]
        self.log.warning("plan.settling_in_flight", policy=policy, orders=len(stale))
        if policy == "abandon":
            for record in stale:
                self.stops.stop_order(record.order_id, FailReason.ABANDONED)
        await self._walk_owned(stale)

    async def _start(
        self, plan: RebalancePlan, digest: str
    ) -> tuple[list[OrderRecord], tuple[Hold, ...]]:
        """A plan new to this journal: a target plan's orders derived, then checked,
        journaled, and the refused ones failed unsent. A target plan that needs no order
        journals nothing and is all holds. Until the orders are journaled it only reads, so
        a halt meanwhile abandons the reads at once (PlanHalted)."""
        try:
            checked, first_attempts, holds = await self.stops.wait_or_stop(
                partial(self._checked_plan, plan), None, plan.plan_id
            )
        except StopRequested:
            raise PlanHalted(
                f"plan {plan.plan_id} halted while it was being checked: nothing journaled, "
                "nothing sent; deliver it again to run it",
                plan_id=plan.plan_id,
            ) from None
        if checked is None:
            return [], holds
        records = self._create_orders(plan.plan_id, first_attempts, digest)
        return await self._refuse_invalid(records, checked), holds

    async def _checked_plan(
        self, plan: RebalancePlan
    ) -> tuple[CheckedPlan | None, list[tuple[str, OrderIntent, dict[str, Any]]], tuple[Hold, ...]]:
        """Everything `_start` reads before it journals: the checked plan (None: a target plan
        that needs no order), its orders' first attempts, and a target plan's holds."""
        extras: dict[int, dict[str, Any]] = {}
        holds: tuple[Hold, ...] = ()
        positions = None
        if plan.is_target_plan:
            derivation = await self._derive_targets(plan)
            if not derivation.orders:
                return None, [], derivation.holds
            plan, holds = _derived_plan(plan.plan_id, derivation), derivation.holds
            extras = {i: {"sizing": order.sizing} for i, order in enumerate(derivation.orders)}
            # the plan's holds ride on its first order, the event its digest is read from
            if holds:
                extras[0]["sizing"] = extras[0]["sizing"] | {
                    "plan_holds": [hold.as_data() for hold in holds]
                }
            positions = self._snapshots[plan.plan_id].positions  # derived from: not read again
        checked = await self.preflight(plan, positions)
        first_attempts = self._first_attempts(checked, extras)
        await self._refuse_plan_at_broker(plan.plan_id, first_attempts)
        return checked, first_attempts, holds

    async def _derive_targets(self, plan: RebalancePlan) -> Derivation:
        """A target plan's orders from one snapshot: the account's equity, every position
        (one read), and an asset and a quote for each symbol named or held. Anything missing
        refuses the plan before anything is journaled (deliver it again later)."""
        assert plan.targets is not None
        plan_id = plan.plan_id
        account = await self._read(self.broker.get_account)
        equity = target_equity(plan_id, account.equity)
        positions = await self._read_positions_snapshot(plan_id)  # the walks start from it
        symbols = involved_symbols(plan.targets, positions)
        assets: dict[str, Asset] = {}
        quotes: dict[str, UsableQuote] = {}
        tally = self.context.plan_quotes[plan_id]

        async def read(symbol: str) -> None:
            try:
                asset = assets[symbol] = await self._tradable_asset(symbol)
            except InvalidIntent as exc:
                raise target_refused(plan_id, symbol, exc.message) from None
            get = partial(self.quotes.get, symbol, self.clock.now(), asset.price_increment, tally)
            quote = await self._read(get)
            if quote is not None:
                quotes[symbol] = quote

        await _bounded(self.reconcile_concurrency, symbols, read)
        return derive_targets(
            plan_id,
            plan.targets,
            equity,
            positions,
            assets,
            quotes,
            self.config.min_order_notional,
        )

    def _first_attempts(
        self, checked: CheckedPlan, extras: Mapping[int, dict[str, Any]] | None = None
    ) -> list[tuple[str, OrderIntent, dict[str, Any]]]:
        plan = checked.plan
        attempts = []
        for index, intent in enumerate(plan.orders):
            extra = dict((extras or {}).get(index, {}))
            if index in checked.requested:
                # what the plan asked for, before preflight rounded it down to whole shares
                extra["requested_qty"] = decimal_text(checked.requested[index])
            if index in checked.sizings:
                extra |= checked.sizings[index].created_fields()
            attempts.append((make_order_id(plan.plan_id, index, intent), intent, extra))
        return attempts

    def _plan_lines(self, plan: RebalancePlan) -> Sequence[OrderIntent]:
        """The plan's lines: its orders, or the orders a target plan was derived into when
        first delivered (journaled in one commit, line by line; later attempts follow)."""
        if not plan.is_target_plan:
            return plan.orders
        lines: list[OrderIntent] = []
        for record in fold_history(self.journal.order_history(plan_id=plan.plan_id)).values():
            if record.order_id != make_order_id(plan.plan_id, len(lines), record.intent):
                break
            lines.append(record.intent)
        return lines

    def _redelivered(
        self, plan_id: str, lines: Sequence[OrderIntent], digest: str
    ) -> list[OrderRecord]:
        """A plan delivered again: each line's latest attempt, and a new attempt for a line
        whose latest failed, for a reason that may pass, before anything was sent (a dollar
        order keeps the size its first attempt came to)."""
        folded = fold_history(self.journal.order_history(plan_id=plan_id))
        records, retries = [], []
        for index, intent in enumerate(lines):
            attempt = 1
            while make_order_id(plan_id, index, intent, attempt + 1) in folded:
                attempt += 1
            record = folded[make_order_id(plan_id, index, intent, attempt)]
            records.append(record)
            if (
                record.state == OrderState.FAILED
                and record.reason in RETRYABLE_UNSENT
                and not record.sent_anything
            ):
                new_id = make_order_id(plan_id, index, intent, attempt + 1)
                extra: dict[str, Any] = {"retry_of": record.order_id, "attempt": attempt + 1}
                if record.notional_requested is not None:
                    extra["notional"] = record.notional_requested
                retries.append((index, (new_id, record.intent, extra)))
        if retries:
            created = self._create_orders(plan_id, [item for _, item in retries], digest)
            for (index, _), record in zip(retries, created, strict=True):
                records[index] = record
            self.log.info("plan.retrying_unsent", orders=len(created))
        return records

    def _create_orders(
        self,
        plan_id: str,
        orders: Sequence[tuple[str, OrderIntent, dict[str, Any]]],
        digest: str,
    ) -> list[OrderRecord]:
        """Journal a `created` event for each (order_id, intent, extra data), in one commit."""
        config = self.config.model_dump(mode="json")
        at = self.clock.now()
        items: list[tuple[NewEvent, dict[str, Any] | None]] = []
        records = []
        # append_many stores the events at the seqs after last_seq, in order, or none.
        seqs = range(self.journal.last_seq + 1, self.journal.last_seq + 1 + len(orders))
        for (order_id, intent, extra), seq in zip(orders, seqs, strict=True):
            created = Created(
                intent=intent.model_dump(mode="json"), config=config, plan_digest=digest, **extra
            )
            event = NewEvent(
                kind=EventKind.CREATED,
                order_id=order_id,
                plan_id=plan_id,
                to_state=OrderState.PENDING,
                data=created.to_data(),
            )
            record = OrderRecord.start(order_id, plan_id, created, stamp(at), seq)
            records.append(record)
            items.append((event, record.projection()))
        self.crash_points.hit(f"before_append.{EventKind.CREATED}")
        self.journal.append_many(items, at=at)
        self.crash_points.hit(f"after_append.{EventKind.CREATED}")
        return records

    async def _refuse_invalid(
        self, records: list[OrderRecord], checked: CheckedPlan
    ) -> list[OrderRecord]:
        """Fail, unsent, the orders preflight found bad (only with validation=skip_invalid)
        and those the risk limits stop or skip."""
        for index, problem in checked.problems.items():
            walk = OrderWalk(self.context, records[index])
            records[index] = await walk.refuse(FailReason.INVALID_INTENT, message=problem)
        for index, refusal in checked.refusals.items():
            walk = OrderWalk(self.context, records[index])
            records[index] = await walk.refuse(refusal.reason, **refusal.data())
        return records

    async def _walk_sells_then_buys(self, records: Sequence[OrderRecord]) -> list[OrderRecord]:
        """Sells first (concurrently), then buys sized to the buying power the sells left,
        unless more of the sells failed than `sell_failure_gate` allows (engine/risk.py)."""
        open_records = [r for r in records if not r.is_terminal]
        sells = [r for r in open_records if r.intent.side is OrderSide.SELL]
        buys = [r for r in open_records if r.intent.side is OrderSide.BUY]
        done = await self._walk_all(sells)
        buys = await SellGate(self.context, self._read).apply(buys)
        return done + await self._walk_all(await self._size_buys_to_funds(buys))

    async def _size_buys_to_funds(self, buys: Sequence[OrderRecord]) -> list[OrderRecord]:
        """Buys not yet started, sized to the funds the sells left (engine/sizing.py)."""
        live = [
            r
            for r in buys
            if r.state == OrderState.PENDING
            and r.stop_reason is None
            and self.stops.reason_for(r.order_id, r.plan_id) is None
        ]
        if not live:
            return list(buys)
        account = await self._read(self.broker.get_account)
        sizer = BuySizer(self.context, self._read, self.reconcile_concurrency)
        sized = {r.order_id: r for r in await sizer.size(live, account)}
        return [sized.get(r.order_id, r) for r in buys]

    async def _walk_all(self, records: Sequence[OrderRecord]) -> list[OrderRecord]:
        """Reconcile every order with the broker, then walk them; results in input order.

        Reconciling first (up to `reconcile_concurrency` at a time) means no order waits
        for other orders' walks before what a previous process left open is settled: its
        unanswered intents resolved, its live orders re-read and their fills counted. Then
        up to `concurrency` orders walk at a time. A walk exists only while it runs.
        """
        done = list(records)
        stopped: set[int] = set()

        loose = [i for i, r in enumerate(done) if r.has_broker_loose_ends]
        listed = await self._listed_open_orders([done[i] for i in loose])

        async def reconcile_one(index: int) -> None:
            order = OrderWalk(self.context, done[index])
            if not await order.reconcile(listed):
                stopped.add(index)
            done[index] = order.record

        async def walk_one(index: int) -> None:
            record = done[index]
            before = partial(self._position_from_snapshot, record.plan_id, record.intent.symbol)
            done[index] = await OrderWalk(self.context, record, before).walk()

        await _bounded(self.reconcile_concurrency, loose, reconcile_one)
        ready = [i for i, r in enumerate(done) if i not in stopped and not r.is_terminal]
        if ready:
            self._open_listing = None  # walks move orders on: a later reconcile lists anew
        await _bounded(self.concurrency, ready, walk_one)
        return done

    async def _listed_open_orders(self, records: Sequence[OrderRecord]) -> dict[str, BrokerOrder]:
        """The broker's open orders in one listing, by id, when reconciling `records` would
        otherwise re-read two or more live orders one call each (against Alpaca, one call
        of a 200-a-minute budget each; the listing costs one per 500). Orders the listing
        leaves out (closed since, or beyond what it lists) are read one by one; a listing
        that fails is not an error, every order is then read on its own."""
        to_reread = sum(
            len(r.unfinished_broker_orders) for r in records if not r.awaits_broker_answer
        )
        if to_reread < 2:
            return {}
        if self._open_listing is not None:
            return self._open_listing
        try:
            orders = await self._read(self.broker.open_orders)
        except BrokerError as exc:
            self.log.warning("resume.open_orders_unread", error=exc.message)
            return {}
        return {order.id: order for order in orders}

    def _announce_completed_plans(self, plan_ids: set[str]) -> None:
        for plan_id in sorted(plan_ids):
            records = fold_history(self.journal.order_history(plan_id=plan_id)).values()
            if all(r.is_terminal for r in records):
                self.hooks.deliver(PlanCompleted(self._plan_result(plan_id, list(records))))

    def _plan_result(
        self,
        plan_id: str,
        records: Sequence[OrderRecord],
        holds: Sequence[Hold] | None = None,
    ) -> PlanResult:
        """The plan's result with its quote counts and, for a target plan, its holds (read
        from the journal unless given); a finished plan's counts are handed out and
        forgotten, so an engine embedded for months keeps none per finished plan."""
        quotes = self.context.plan_quotes
        finished = all(r.is_terminal for r in records)
        counters = quotes.pop(plan_id, None) if finished else quotes.get(plan_id)
        return PlanResult.from_results(
            plan_id,
            [OrderResult.from_record(r) for r in records],
            (counters or QuoteCounters()).as_dict(),
            holds=self._journaled_holds(plan_id) if holds is None else holds,
        )

    def _journaled_holds(self, plan_id: str) -> tuple[Hold, ...]:
        """The holds a target plan was derived with, journaled on its first order."""
        first = self.journal.first_event_of_plan(plan_id)
        sizing = None if first is None else Created.from_data(first.data).sizing
        held = (sizing or {}).get("plan_holds", [])
        return tuple(Hold.model_validate(hold) for hold in held)


@dataclass(frozen=True)
class CheckedPlan:
    """A plan after preflight: intents as they will be sent, problems by order index, the
    quantity asked for by order index where preflight rounded or trimmed it, the orders
    the risk limits stop or skip (and the dollar orders that came to no share) by order
    index."""

    plan: RebalancePlan
    problems: dict[int, str]
    requested: dict[int, Decimal] = field(default_factory=dict)
    refusals: dict[int, Refusal] = field(default_factory=dict)
    # how each dollar order was sized, by order index
    sizings: dict[int, NotionalSizing] = field(default_factory=dict)


def _derived_plan(plan_id: str, derivation: Derivation) -> RebalancePlan:
    """The orders a target plan was derived into, as a plan of orders."""
    return RebalancePlan(plan_id=plan_id, orders=tuple(o.intent for o in derivation.orders))


async def _bounded(limit: int, items: Sequence[T], work: Callable[[T], Awaitable[None]]) -> None:
    """`work(item)` for every item, at most `limit` at a time, by `limit` workers.

    As with `asyncio.gather`, the first error propagates; after it no further item starts.
    """
    pending = iter(items)
    failed = False

    async def worker() -> None:
        nonlocal failed
        for item in pending:
            if failed:
                return
            try:
                await work(item)
            except BaseException:
                failed = True
                raise

    await asyncio.gather(*(worker() for _ in range(min(limit, len(items)))))


def _first_few(items: Iterable[str], shown: int = 5) -> str:
    """The first `shown` items of a list for a one-line message, "..." for the rest."""
    listed = list(items)
    return ", ".join(listed[:shown]) + (" ..." if len(listed) > shown else "")


def plan_digest(plan: RebalancePlan) -> str:
    """What makes two deliveries the same plan: its orders, exactly as written."""
    payload = canonical_json(plan.model_dump(mode="json"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _describe_found(record: OrderRecord) -> str:
    parts = [f"filled {decimal_text(record.filled_qty)}/{decimal_text(record.quantity)}"]
    if record.live_broker_order_id:
        parts.append(f"live {record.live_client_order_id}")
    pending = record.pending_intent
    if pending is not None:
        parts.append(f"unanswered {pending.KIND} {pending.client_order_id}")
    if record.pending_cancel:
        parts.append(f"unanswered cancel of {record.pending_cancel}")
    return ", ".join(parts)
