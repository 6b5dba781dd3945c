"""Pre-trade risk limits: what a plan may trade, checked before any of it is journaled or sent.

The limits live in `EngineConfig` (docs/embedding.md, "Risk limits"). Orders are costed
as buy sizing costs a buy (engine/sizing.py): at a quote read before the plan starts,
buys at the ask and sells at the bid, a FULL close at the position it will sell. A
plan-level breach (`max_plan_notional`, `daily_traded_notional`) refuses the whole plan;
an order-level one (`max_order_notional`, `max_position_weight`) refuses the plan or, with
`validation="skip_invalid"`, fails just that order unsent (`risk_limit`); an order under
`min_order_notional` is skipped (`below_min_notional`). Once a plan's sells are final,
`sell_failure_gate` keeps every buy from starting (`blocked_by_sells`) when more dollars of
those sells failed or went unfilled than it allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TypeVar

from journal import Journal

from .concurrency import each_at_most
from .config import PRICED_LIMITS, EngineConfig, journaled_config
from .context import WalkContext
from .errors import RiskLimitBreached
from .events import EventKind, Fill
from .fsm import FailReason, OrderState
from .intents import CloseType, OrderIntent, OrderSide
from .numbers import ZERO, cents, decimal_text, money
from .order import OrderRecord, fold_history
from .retry import Reader
from .walk import OrderWalk

__all__ = [
    "PreTradeRisk",
    "PricedOrder",
    "Reader",
    "Refusal",
    "SellGate",
    "traded_on",
]

T = TypeVar("T")
WEIGHT_PLACES = Decimal("0.0001")


@dataclass(frozen=True)
class Refusal:
    """An order a limit stops before anything is sent for it, and what its FAILED
    transition journals: the limit, its setting and the order's figure."""

    reason: FailReason
    limit: str
    limit_value: Decimal
    figure: Decimal
    message: str

    def data(self) -> dict[str, str]:
        return {
            "message": self.message,
            "limit": self.limit,
            "limit_value": decimal_text(self.limit_value),
            "figure": decimal_text(self.figure),
        }


@dataclass(frozen=True)
class PricedOrder:
    """One plan order costed for the limits: what it trades, at what price."""

    index: int
    intent: OrderIntent
    quantity: Decimal
    price: Decimal
    # the position held before it, where a limit needs it (FULL closes, and buys when
    # max_position_weight is set)
    position: Decimal | None

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.price

    @property
    def where(self) -> str:
        """The order as preflight's problems name it."""
        intent = self.intent
        return f"order {self.index} ({intent.symbol} {intent.side.value} {intent.quantity})"

    @property
    def side_of_book(self) -> str:
        return "ask" if self.intent.side is OrderSide.BUY else "bid"


class PreTradeRisk:
    """Checks a new plan's orders against the configured limits, before anything is journaled."""

    def __init__(self, context: WalkContext, read: Reader, concurrency: int) -> None:
        self.ctx = context
        self.config: EngineConfig = context.config
        self._read = read
        self._concurrency = concurrency

    async def check(self, plan_id: str, intents: Mapping[int, OrderIntent]) -> dict[int, Refusal]:
        """The orders (by plan index) the limits stop, each failed unsent when the plan is
        journaled; raises RiskLimitBreached when the plan itself must be refused."""
        if not self.config.prices_orders or not intents:
            return {}
        priced = await self._priced(plan_id, intents)
        equity = await self._equity(plan_id)
        refusals = {}
        for order in priced:
            refusal = self._order_refusal(order, equity)
            if refusal is not None:
                refusals[order.index] = refusal
        breached = [r for r in refusals.values() if r.reason is FailReason.RISK_LIMIT]
        if breached and self.config.validation == "all_or_nothing":
            first = breached[0]
            raise RiskLimitBreached(
                f"plan {plan_id} refused: " + "; ".join(r.message for r in breached),
                limit=first.limit,
                limit_value=first.limit_value,
                figure=first.figure,
                plan_id=plan_id,
                orders=sorted(i for i, r in refusals.items() if r.reason is FailReason.RISK_LIMIT),
            )
        self._check_plan(plan_id, [o for o in priced if o.index not in refusals])
        return refusals

    # -- pricing --------------------------------------------------------------------

    async def _priced(self, plan_id: str, intents: Mapping[int, OrderIntent]) -> list[PricedOrder]:
        """Every order priced at a fresh quote; a plan with an order no quote prices cannot
        be checked, and is refused whole (nothing journaled: deliver it again later)."""
        found = await each_at_most(self._concurrency, sorted(intents.items()), self._price)
        unpriced = [intents[index].symbol for index, order in found if order is None]
        if unpriced:
            limit = next(name for name in PRICED_LIMITS if getattr(self.config, name) is not None)
            raise RiskLimitBreached(
                f"plan {plan_id} refused: no usable quote for {', '.join(unpriced)} to check "
                f"{limit} against; nothing sent",
                limit=limit,
                limit_value=getattr(self.config, limit),
                figure=None,
                plan_id=plan_id,
                symbols=unpriced,
            )
        return [order for _, order in found if order is not None]

    async def _price(self, item: tuple[int, OrderIntent]) -> tuple[int, PricedOrder | None]:
        index, intent = item
        symbol, broker, quotes = intent.symbol, self.ctx.broker, self.ctx.quotes
        quote = await self._read(lambda: quotes.get(symbol, self.ctx.clock.now()))
        if quote is None:
            return index, None
        position = None
        if intent.close_type is CloseType.FULL or (
            intent.side is OrderSide.BUY and self.config.max_position_weight is not None
        ):
            position = await self._read(lambda: broker.get_position(symbol))
        quantity = intent.shares
        if intent.close_type is CloseType.FULL:
            quantity = max(position or ZERO, ZERO)
        price = quote.ask if intent.side is OrderSide.BUY else quote.bid
        return index, PricedOrder(index, intent, quantity, price, position)

    async def _equity(self, plan_id: str) -> Decimal | None:
        """The account's equity, when `max_position_weight` weighs buys against it."""
        limit = self.config.max_position_weight
        if limit is None:
            return None
        account = await self._read(self.ctx.broker.get_account)
        if account.equity is None or account.equity <= 0:
            raise RiskLimitBreached(
                f"plan {plan_id} refused: the broker reports no positive equity to check "
                "max_position_weight against; nothing sent",
                limit="max_position_weight",
                limit_value=limit,
                figure=None,
                plan_id=plan_id,
            )
        return account.equity

    # -- the limits -----------------------------------------------------------------

    def _order_refusal(self, order: PricedOrder, equity: Decimal | None) -> Refusal | None:
        """The first limit this order alone breaks: too small (skipped), too large, or a
        buy that would weigh too much in the account."""
        config, value = self.config, order.notional
        at = f"at the {order.side_of_book} {decimal_text(order.price)}"
        smallest = config.min_order_notional
        if smallest is not None and value < smallest:
            return Refusal(
                FailReason.BELOW_MIN_NOTIONAL,
                "min_order_notional",
                smallest,
                cents(value),
                f"{order.where}: worth {money(value)} {at}, under min_order_notional "
                f"{decimal_text(smallest)}: skipped",
            )
        largest = config.max_order_notional
        if largest is not None and value > largest:
            return Refusal(
                FailReason.RISK_LIMIT,
                "max_order_notional",
                largest,
                cents(value),
                f"{order.where}: worth {money(value)} {at}, over max_order_notional "
                f"{decimal_text(largest)}",
            )
        weight = config.max_position_weight
        if weight is None or equity is None or order.intent.side is not OrderSide.BUY:
            return None
        held = (order.position or ZERO) + order.quantity
        share = held * order.price / equity
        if share <= weight:
            return None
        return Refusal(
            FailReason.RISK_LIMIT,
            "max_position_weight",
            weight,
            share.quantize(WEIGHT_PLACES),
            f"{order.where}: {decimal_text(held)} held would be {share:.4f} of equity "
            f"({money(held * order.price)} of {money(equity)}), over max_position_weight "
            f"{decimal_text(weight)}",
        )

    def _check_plan(self, plan_id: str, orders: Sequence[PricedOrder]) -> None:
        """The limits on the plan as a whole, over the orders that would be sent."""
        total = sum((o.notional for o in orders), ZERO)
        largest = self.config.max_plan_notional
        if largest is not None and total > largest:
            raise RiskLimitBreached(
                f"plan {plan_id} refused: its orders are worth {money(total)} (buys at the "
                f"ask, sells at the bid), over max_plan_notional {decimal_text(largest)}; "
                "nothing sent",
                limit="max_plan_notional",
                limit_value=largest,
                figure=cents(total),
                plan_id=plan_id,
            )
        daily = self.config.daily_traded_notional
        if daily is None:
            return
        day = self.ctx.clock.now().astimezone(UTC).date()
        before = traded_on(self.ctx.journal, day)
        if before + total > daily:
            raise RiskLimitBreached(
                f"plan {plan_id} refused: {money(before)} traded on {day} (UTC) and "
                f"{money(total)} in this plan make {money(before + total)}, over "
                f"daily_traded_notional {decimal_text(daily)}; nothing sent",
                limit="daily_traded_notional",
                limit_value=daily,
                figure=cents(before + total),
                plan_id=plan_id,
                traded_before=cents(before),
            )


class SellGate:
    """After a plan's sells are final: no buy of it starts when more dollars of those sells
    failed or went unfilled than its `sell_failure_gate` (journaled with each buy)."""

    def __init__(self, context: WalkContext, read: Reader) -> None:
        self.ctx = context
        self._read = read

    async def apply(self, buys: Sequence[OrderRecord]) -> list[OrderRecord]:
        """Each buy as it is after the gate: unchanged, or FAILED `blocked_by_sells` unsent."""
        shortfalls: dict[str | None, tuple[Decimal, list[str]]] = {}
        gated = []
        for record in buys:
            gate = journaled_config(record.config).sell_failure_gate
            if gate is None or not self._not_started(record):
                gated.append(record)
                continue
            if record.plan_id not in shortfalls:
                shortfalls[record.plan_id] = await self._shortfall(record.plan_id)
            unsold, unpriced = shortfalls[record.plan_id]
            if unsold <= gate and not unpriced:
                gated.append(record)
                continue
            gated.append(await self._block(record, gate, unsold, unpriced))
        return gated

    def _not_started(self, record: OrderRecord) -> bool:
        return (
            record.state == OrderState.PENDING
            and record.stop_reason is None
            and self.ctx.stops.reason_for(record.order_id, record.plan_id) is None
        )

    async def _shortfall(self, plan_id: str | None) -> tuple[Decimal, list[str]]:
        """Dollars of the plan's sells that failed or did not fill (unfilled quantity at the
        bid it arrived at, else at a fresh quote's), and the symbols no quote prices."""
        if plan_id is None:
            return ZERO, []
        latest: dict[str, OrderRecord] = {}
        # created in journal order: a redelivery's new attempt at a line comes after the old
        for record in fold_history(self.ctx.journal.order_history(plan_id=plan_id)).values():
            if record.intent.side is OrderSide.SELL:
                latest[record.intent.symbol] = record
        unsold, unpriced = ZERO, []
        for symbol, record in latest.items():
            unfilled = record.quantity - record.filled_qty
            if unfilled <= 0 or record.reason == FailReason.BELOW_MIN_NOTIONAL:
                continue
            bid = await self._bid(record)
            if bid is None:
                unpriced.append(symbol)
            else:
                unsold += unfilled * bid
        return unsold, unpriced

    async def _bid(self, record: OrderRecord) -> Decimal | None:
        arrival = record.arrival or {}
        if arrival.get("bid") is not None:
            return Decimal(arrival["bid"])
        quotes, symbol = self.ctx.quotes, record.intent.symbol
        quote = await self._read(lambda: quotes.get(symbol, self.ctx.clock.now()))
        return None if quote is None else quote.bid

    async def _block(
        self, record: OrderRecord, gate: Decimal, unsold: Decimal, unpriced: list[str]
    ) -> OrderRecord:
        if unpriced:
            why = f"no quote prices the unsold {', '.join(unpriced)}"
        else:
            why = f"{money(unsold)} of the plan's sells failed or went unfilled"
        message = f"{why}, over sell_failure_gate {decimal_text(gate)}: no buy starts"
        data = {
            "message": message,
            "limit": "sell_failure_gate",
            "limit_value": decimal_text(gate),
            "figure": decimal_text(cents(unsold)),
        }
        if unpriced:
            data["unpriced"] = ", ".join(unpriced)
        return await OrderWalk(self.ctx, record).refuse(FailReason.BLOCKED_BY_SELLS, **data)


def traded_on(journal: Journal, day: date) -> Decimal:
    """The notional of every fill the journal recorded on `day` (UTC, the journal's time).

    The orders updated that day are the only ones that can hold such a fill; their fill
    events are read one order at a time, through the journal's index by order."""
    total = ZERO
    for row in journal.orders():
        if _utc_day(row["updated_at"]) < day or Decimal(row["filled_qty"]) == 0:
            continue
        for event in journal.events(order_id=row["order_id"]):
            if event.kind == EventKind.FILL and _utc_day(event.at) == day:
                fill = Fill.from_data(event.data)
                total += fill.qty * fill.price
    return total


def _utc_day(stamp: str) -> date:
    return datetime.fromisoformat(stamp).astimezone(UTC).date()
