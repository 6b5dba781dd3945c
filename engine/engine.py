"""The Engine: validates intents, journals each new order, walks them, and resumes after a crash."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog

from journal import Journal, NewEvent, canonical_json, stamp

from .broker import Broker, BrokerOrder
from .clock import Clock, RealClock
from .config import EngineConfig
from .crash import CrashingBroker, CrashPoints
from .errors import BrokerError, BrokerRejected, InvalidIntent, InvalidPlan, UnknownSymbol
from .fsm import TERMINAL_STATES, FailReason, OrderState
from .hooks import Hooks, NoticeT, PlanCompleted
from .intents import CloseType, OrderIntent, OrderSide, RebalancePlan
from .numbers import ZERO, decimal_text, floor_to
from .order import EventKind, OrderRecord, fold_history, make_order_id
from .quotes import QuoteCounters, QuoteService
from .results import OrderResult, PlanResult
from .retry import read_with_retry
from .walk import OrderWalk, WalkContext

__all__ = ["CheckedPlan", "Engine", "ResumeReport", "ResumedOrder", "plan_digest"]

DEFAULT_CONCURRENCY = 8
DEFAULT_RECONCILE_CONCURRENCY = 64
BPS = Decimal(10_000)
CENT = Decimal("0.01")
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
    ) -> None:
        if concurrency < 1 or reconcile_concurrency < 1:
            raise ValueError("concurrency and reconcile_concurrency must be at least 1")
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
        self.context = WalkContext(
            self.journal,
            self.broker,
            self.quotes,
            self.clock,
            self.config,
            self.crash_points,
            listeners=[self.hooks.after_commit],
        )

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
        digest = plan_digest(plan)
        known = self._journaled_plan_digest(plan.plan_id)
        if known is None:
            checked = await self.preflight(plan)
            records = self._create_orders(checked, digest)
            log.info("plan.started", orders=len(records))
            records = await self._refuse_invalid(records, checked.problems)
        elif known != digest:
            raise InvalidPlan(
                f"plan {plan.plan_id} was already delivered with different contents; "
                "use a new plan_id",
                plan_id=plan.plan_id,
            )
        else:
            folded = fold_history(self.journal.order_history(plan_id=plan.plan_id))
            records = [folded[order_id] for order_id in self._plan_order_ids(plan)]
            log.info("plan.redelivered", in_flight=sum(not r.is_terminal for r in records))
        done = {r.order_id: r for r in await self._walk_sells_then_buys(records)}
        result = self._plan_result(plan.plan_id, [done.get(r.order_id, r) for r in records])
        if all(r.state in TERMINAL_STATES for r in result.orders):
            self.hooks.deliver(PlanCompleted(result))
        log.info("plan.finished", status=result.status.value)
        return result

    def execute_plan_sync(self, plan: RebalancePlan) -> PlanResult:
        """For callers without an event loop: run the plan on the engine's clock."""
        return self.clock.run(self.execute_plan(plan))

    def execute_sync(self, intent: OrderIntent, *, plan_id: str | None = None) -> OrderResult:
        return self.clock.run(self.execute(intent, plan_id=plan_id))

    async def resume(self) -> ResumeReport:
        """Drive every non-terminal order in the journal to VALIDATED or FAILED.

        Each order is rebuilt from its events and reconciled with the broker first
        (unanswered intents looked up by client_order_id, live orders re-read, fills
        counted once); then it continues from its state with the time its step had left.
        """
        # the events come in seq order, so the records in the order the orders were created
        folded = fold_history(self.journal.order_history(unless_state=TERMINAL_STATES))
        records = list(folded.values())
        seq_before = self.journal.last_seq
        done = {r.order_id: r for r in await self._walk_sells_then_buys(records)}
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

    def resume_sync(self) -> ResumeReport:
        return self.clock.run(self.resume())

    async def preflight(self, plan: RebalancePlan) -> CheckedPlan:
        """Check every intent against the broker before anything is journaled or sent.

        Problems name the order. With `validation="all_or_nothing"` (the default) any
        problem refuses the whole plan; with `"skip_invalid"` the bad orders are journaled
        and failed `invalid_intent` without reaching the broker. A fractional qty of a
        whole-share asset is refused, or rounded down with a warning by configuration.
        """
        intents, problems = list(plan.orders), {}
        for index, intent in enumerate(plan.orders):
            try:
                intents[index] = await self._check_intent(intent)
            except InvalidIntent as exc:
                where = f"order {index} ({intent.symbol} {intent.side.value} {intent.quantity})"
                problems[index] = f"{where}: {exc.message}"
        if problems and self.config.validation == "all_or_nothing":
            raise InvalidIntent(
                "; ".join(problems.values()),
                plan_id=plan.plan_id,
                orders=sorted(problems),
            )
        requested = {
            index: intent.quantity
            for index, intent in enumerate(plan.orders)
            if intents[index].quantity != intent.quantity
        }
        return CheckedPlan(plan.model_copy(update={"orders": tuple(intents)}), problems, requested)

    async def _check_intent(self, intent: OrderIntent) -> OrderIntent:
        symbol = intent.symbol
        try:
            asset = await self._read(partial(self.broker.get_asset, symbol))
        except UnknownSymbol:
            raise InvalidIntent("unknown symbol", symbol=symbol) from None
        except BrokerRejected as exc:
            raise InvalidIntent(f"cannot check the asset: {exc.message}") from None
        if not asset.tradable:
            raise InvalidIntent("asset is not tradable", symbol=symbol)
        if intent.is_fractional and not asset.fractionable:
            whole = intent.quantity.to_integral_value(rounding=ROUND_FLOOR)
            if self.config.fractional_on_whole_share_asset == "refuse" or whole <= 0:
                raise InvalidIntent(
                    "asset is not fractionable; use a whole-share quantity", symbol=symbol
                )
            self.log.warning(
                "intent.rounded_down", symbol=symbol, requested=str(intent.quantity), qty=str(whole)
            )
            intent = intent.model_copy(update={"quantity": whole})
        if intent.side is OrderSide.SELL and intent.close_type is not CloseType.FULL:
            position = await self._read(partial(self.broker.get_position, symbol))
            if intent.quantity > max(position, ZERO):
                raise InvalidIntent(
                    f"sell of {intent.quantity} exceeds the position of {position}",
                    symbol=symbol,
                )
        return intent

    # -- internals ------------------------------------------------------------------

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        return await read_with_retry(call, self.config, self.clock, lambda: self.log)

    def _journaled_plan_digest(self, plan_id: str) -> str | None:
        """The digest the plan was first delivered with, or None for a plan never seen."""
        first = self.journal.first_event_of_plan(plan_id)
        return None if first is None else str(first.data.get("plan_digest"))

    def _plan_order_ids(self, plan: RebalancePlan) -> list[str]:
        return [make_order_id(plan.plan_id, i, intent) for i, intent in enumerate(plan.orders)]

    def _create_orders(self, checked: CheckedPlan, digest: str) -> list[OrderRecord]:
        plan = checked.plan
        order_ids = self._plan_order_ids(plan)
        config = self.config.model_dump(mode="json")
        at = self.clock.now()
        items: list[tuple[NewEvent, dict[str, Any] | None]] = []
        records = []
        # append_many stores the events at the seqs after last_seq, in order, or none.
        seqs = range(self.journal.last_seq + 1, self.journal.last_seq + 1 + len(order_ids))
        for index, (order_id, intent, seq) in enumerate(
            zip(order_ids, plan.orders, seqs, strict=True)
        ):
            data: dict[str, Any] = {
                "intent": intent.model_dump(mode="json"),
                "config": config,
                "plan_digest": digest,
            }
            if index in checked.requested:
                # what the plan asked for, before preflight rounded it down to whole shares
                data["requested_qty"] = decimal_text(checked.requested[index])
            event = NewEvent(
                kind=EventKind.CREATED,
                order_id=order_id,
                plan_id=plan.plan_id,
                to_state=OrderState.PENDING,
                data=data,
            )
            record = OrderRecord.created(event, stamp(at), seq)
            records.append(record)
            items.append((event, record.projection()))
        self.crash_points.hit(f"before_append.{EventKind.CREATED}")
        self.journal.append_many(items, at=at)
        self.crash_points.hit(f"after_append.{EventKind.CREATED}")
        return records

    async def _refuse_invalid(
        self, records: list[OrderRecord], problems: dict[int, str]
    ) -> list[OrderRecord]:
        """Fail, unsent, the orders preflight found bad (only with validation=skip_invalid)."""
        for index, problem in problems.items():
            walk = OrderWalk(self.context, records[index])
            records[index] = await walk.refuse(FailReason.INVALID_INTENT, message=problem)
        return records

    async def _walk_sells_then_buys(self, records: Sequence[OrderRecord]) -> list[OrderRecord]:
        """Sells first (concurrently), then buys sized to the buying power the sells left."""
        open_records = [r for r in records if not r.is_terminal]
        sells = [r for r in open_records if r.intent.side is OrderSide.SELL]
        buys = [r for r in open_records if r.intent.side is OrderSide.BUY]
        done = await self._walk_all(sells)
        return done + await self._walk_all(await self._size_buys_to_funds(buys))

    async def _size_buys_to_funds(self, buys: Sequence[OrderRecord]) -> list[OrderRecord]:
        """Check buying power before buys are sent: each buy not yet started must fit.

        Buying power is read after every sell is final, so it counts the cash their fills
        released at every step. Buys are costed at the ask plus `funds_buffer_bps`, in plan
        order; one that does not fit is shrunk to what fits, or failed `insufficient_funds`.
        Returns the buys as they are now.
        """
        sized = list(buys)
        pending = [i for i, r in enumerate(sized) if r.state == OrderState.PENDING]
        if not pending:
            return sized
        account = await self._read(self.broker.get_account)
        available = account.buying_power
        buffer = 1 + self.config.funds_buffer_bps / BPS
        for index in pending:
            walk = OrderWalk(self.context, sized[index])
            quote = await walk.quote_for_sizing()
            if quote is None:
                continue  # the walk itself will fail no_quote
            price = quote.ask * buffer
            qty = walk.record.quantity
            if qty * price <= available:
                available -= qty * price
                continue
            fits = floor_to(available / price, walk.whole_shares_step())
            details = {
                "requested": decimal_text(qty),
                "buying_power": decimal_text(account.buying_power),
                "available": decimal_text(available.quantize(CENT)),
                "price_estimate": decimal_text(price.quantize(CENT)),
            }
            if self.config.insufficient_funds == "shrink" and fits > 0:
                await walk.resize(fits, details)
                available -= fits * price
            else:
                await walk.refuse(FailReason.INSUFFICIENT_FUNDS, **details)
            sized[index] = walk.record
        return sized

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
            done[index] = await OrderWalk(self.context, done[index]).walk()

        await _bounded(self.reconcile_concurrency, loose, reconcile_one)
        ready = [i for i, r in enumerate(done) if i not in stopped and not r.is_terminal]
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

    def _plan_result(self, plan_id: str, records: Sequence[OrderRecord]) -> PlanResult:
        """The plan's result with its quote counts; a finished plan's counts are handed out
        and forgotten, so an engine embedded for months keeps none per finished plan."""
        quotes = self.context.plan_quotes
        finished = all(r.is_terminal for r in records)
        counters = quotes.pop(plan_id, None) if finished else quotes.get(plan_id)
        return PlanResult.from_results(
            plan_id,
            [OrderResult.from_record(r) for r in records],
            (counters or QuoteCounters()).as_dict(),
        )


@dataclass(frozen=True)
class CheckedPlan:
    """A plan after preflight: intents as they will be sent, problems by order index, and
    the quantity asked for by order index where preflight rounded it down."""

    plan: RebalancePlan
    problems: dict[int, str]
    requested: dict[int, Decimal] = field(default_factory=dict)


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


def plan_digest(plan: RebalancePlan) -> str:
    """What makes two deliveries the same plan: its orders, exactly as written."""
    payload = canonical_json(plan.model_dump(mode="json"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _describe_found(record: OrderRecord) -> str:
    parts = [f"filled {decimal_text(record.filled_qty)}/{decimal_text(record.quantity)}"]
    if record.live_broker_order_id:
        parts.append(f"live {record.live_client_order_id}")
    if record.pending_intent:
        parts.append(
            f"unanswered {record.pending_intent['kind']} {record.pending_intent['client_order_id']}"
        )
    if record.pending_cancel:
        parts.append(f"unanswered cancel of {record.pending_cancel}")
    return ", ".join(parts)
