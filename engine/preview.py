"""A priced preview of a plan: what `execute_plan` would send and at what prices, every risk
limit's verdict, and the plan's totals, from broker reads alone.

Nothing is journaled and nothing is sent: the preview reads the market clock, the account,
the positions, each asset and one quote per symbol (streamed first, REST as the walk takes
them) and writes nowhere. It follows the engine's own rules, through the engine's own
functions where they are pure: preflight's sizing of a dollar order, rounding and trimming
(engine/preflight.py `check_intent`), a target plan's derivation (engine/targets.py
`derive_targets`), the pre-trade limits (engine/risk.py) and buy sizing (engine/sizing.py).
What it must estimate, docs/embedding.md ("Preview") states: the sells' proceeds at the
arrival bid, every step priced at that one arrival quote, and the expected cost as a fill
at the first step's limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC
from decimal import Decimal
from enum import Enum, StrEnum
from functools import partial
from typing import Any, TypeVar

import structlog

from journal import Journal

from .broker import Account, Asset, Broker, MarketClock
from .clock import Clock
from .concurrency import each_at_most
from .config import EngineConfig
from .errors import BrokerRejected, InvalidIntent, UnknownSymbol
from .fsm import FailReason
from .gateway import MARKET_STEP
from .intents import CloseType, OrderIntent, OrderSide, RebalancePlan, Urgency
from .numbers import BPS, ZERO, cents, decimal_text, floor_to, money
from .preflight import ROUNDED_DOWN, CheckedIntent, check_intent, described, tradable
from .pricing import limit_price
from .quotes import QuoteService, UsableQuote
from .results import is_skip
from .retry import read_with_retry
from .risk import WEIGHT_PLACES, traded_on
from .sizing import shrink_unit, spendable_funds
from .targets import (
    DerivedOrder,
    Hold,
    NotionalSizing,
    derive_targets,
    involved_symbols,
    target_equity,
    target_refused,
)

__all__ = [
    "ArrivalQuote",
    "FundsPreview",
    "OrderPreview",
    "Outcome",
    "PlanPreview",
    "StepPrice",
    "Verdict",
    "VerdictStatus",
    "preview_plan",
]

T = TypeVar("T")
DEFAULT_READ_CONCURRENCY = 8
# the limits each order is checked against on its own, in the order engine/risk.py applies them
ORDER_LIMITS = ("min_order_notional", "max_order_notional", "max_position_weight")
log = structlog.get_logger("walkbook")


class VerdictStatus(StrEnum):
    OK = "ok"
    BREACHED = "breached"
    NOT_CHECKED = "not_checked"


class Outcome(StrEnum):
    """What `execute_plan` would do with an order: send it as checked, send it smaller to
    fit the funds, skip it unsent under the `min_order_notional` set (`OrderResult.skipped`),
    or refuse it unsent (`reason`: the FAILED reason it would journal either way)."""

    SENT = "sent"
    SHRUNK = "shrunk"
    SKIPPED = "skipped"
    REFUSED = "refused"


@dataclass(frozen=True)
class Verdict:
    """One check of an order or of the plan: a limit by its EngineConfig name, or `intent`,
    `position`, `quote`, `funds`, `market`, `validation`; with its setting and the figure."""

    check: str
    status: VerdictStatus
    message: str
    limit_value: Decimal | None = None
    figure: Decimal | None = None

    @property
    def breached(self) -> bool:
        return self.status is VerdictStatus.BREACHED


@dataclass(frozen=True)
class ArrivalQuote:
    bid: Decimal
    ask: Decimal
    mid: Decimal
    source: str
    # a side the quote service filled in (a zero bid or ask), else None
    estimated: str | None = None


@dataclass(frozen=True)
class StepPrice:
    """One step of the walk: `L1`... at its ladder ratio and limit price, or `M`, the market
    order (no ratio, no price)."""

    step: str
    ratio: Decimal | None
    limit_price: Decimal | None


@dataclass(frozen=True)
class OrderPreview:
    index: int
    symbol: str
    side: OrderSide
    urgency: Urgency
    # the quantity asked for: for a dollar order, the shares its notional came to at the
    # arrival quote (as OrderResult.requested_qty)
    requested_qty: Decimal
    # after preflight: rounded down to whole shares or trimmed to the position, a FULL close
    # at the position; None for an order preflight refuses
    checked_qty: Decimal | None
    # what would be sent, after buy sizing (0 when refused)
    qty: Decimal
    outcome: Outcome
    reason: FailReason | None
    quote: ArrivalQuote | None
    steps: tuple[StepPrice, ...]
    # a fill of `qty` at the first step's limit (at the far touch when it goes to market at once)
    expected_price: Decimal | None
    expected_cost: Decimal | None
    expected_cost_bps: Decimal | None
    verdicts: tuple[Verdict, ...]
    # the dollars a dollar order asked for (None for one given in shares)
    notional_requested: Decimal | None = None
    # `qty` at the expected price, to the cent (None when it is not priced)
    expected_value: Decimal | None = None

    @property
    def worth(self) -> Decimal:
        """`qty` at the expected price, unrounded: what the totals add up."""
        return ZERO if self.expected_price is None else self.qty * self.expected_price


@dataclass(frozen=True)
class FundsPreview:
    """The money the buys are sized against: the account's figures as read, the sells'
    expected proceeds added to each, and what the buys leave."""

    use_margin: bool
    figures: dict[str, Decimal]
    sell_proceeds: Decimal
    funds_from: str
    after_sells: Decimal
    after_buys: Decimal


@dataclass(frozen=True)
class PlanPreview:
    plan_id: str
    market_open: bool
    orders: tuple[OrderPreview, ...]
    verdicts: tuple[Verdict, ...]
    funds: FundsPreview
    gross_buy_notional: Decimal
    gross_sell_notional: Decimal
    net_cash: Decimal
    expected_cost: Decimal
    # a target plan's symbols that would trade nothing (engine/targets.py `Hold`)
    holds: tuple[Hold, ...] = ()

    @property
    def accepted(self) -> bool:
        """Every order would be sent (maybe shrunk to fit) or skipped as the configuration
        asks, and no plan-level check objects."""
        return not any(v.breached for v in self.verdicts) and all(
            o.outcome is not Outcome.REFUSED for o in self.orders
        )

    def as_json(self) -> dict[str, Any]:
        """The preview as JSON-ready data: decimals as plain text, enums as their values."""
        return {**_jsonable(self), "accepted": self.accepted}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Hold):
        return value.as_data()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    return value


async def preview_plan(
    broker: Broker,
    plan: RebalancePlan,
    config: EngineConfig,
    clock: Clock,
    *,
    journal: Journal | None = None,
    concurrency: int = DEFAULT_READ_CONCURRENCY,
) -> PlanPreview:
    """Price `plan` as `execute_plan` would walk it, from broker reads only.

    A dollar order is sized at its arrival quote and a target plan derived from one read
    of equity, positions, assets and quotes, by the engine's own functions. Input
    preflight refuses (an unknown symbol, a sell beyond the position) raises
    `InvalidIntent` as preflight does under `validation="all_or_nothing"`; under
    `skip_invalid` those orders are shown refused. A target plan the engine would refuse
    (no positive equity, a short position, a symbol unknown, untradable or unquoted)
    raises `InvalidPlan` as `execute_plan` does. Risk-limit breaches never raise: they are
    verdicts. `daily_traded_notional` counts the fills of `journal`, read only; without
    one it is not checked.
    """

    async def read(call: Callable[[], Awaitable[T]]) -> T:
        return await read_with_retry(call, config, clock, lambda: log)

    quotes = QuoteService(broker, config.quote_freshness_seconds, config.stream_quote_wait_seconds)
    reads = _Reads(broker, read, quotes, clock, concurrency)
    market_clock = await read(broker.get_clock)
    account = await read(broker.get_account)
    positions = await read(broker.get_positions)
    holds: tuple[Hold, ...] = ()
    if plan.targets is not None:
        lines, holds = await _derived_lines(
            plan.plan_id, plan.targets, account, positions, reads, config.min_order_notional
        )
    else:
        lines = await _plan_lines(plan.orders, positions, reads)
    _preflight(plan.plan_id, lines, config)
    limits = _Limits(config, account)
    for line in lines:
        limits.check_order(line)
    verdicts = [_market_verdict(market_clock, config)]
    verdicts += limits.check_plan(plan.plan_id, lines, journal, clock)
    funds = _size_buys(lines, account, config)
    orders = tuple(line.preview(config) for line in lines)
    sent = [o for o in orders if o.outcome in (Outcome.SENT, Outcome.SHRUNK)]
    bought = sum((o.worth for o in sent if o.side is OrderSide.BUY), ZERO)
    sold = sum((o.worth for o in sent if o.side is OrderSide.SELL), ZERO)
    return PlanPreview(
        plan_id=plan.plan_id,
        market_open=market_clock.is_open,
        orders=orders,
        verdicts=tuple(verdicts),
        funds=funds,
        gross_buy_notional=cents(bought),
        gross_sell_notional=cents(sold),
        net_cash=cents(sold - bought),
        expected_cost=sum((o.expected_cost or ZERO for o in sent), ZERO),
        holds=holds,
    )


@dataclass(frozen=True)
class _Reads:
    """The preview's broker reads of assets and quotes, retried as the engine retries."""

    broker: Broker
    read: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
    quotes: QuoteService
    clock: Clock
    concurrency: int

    async def assets(self, symbols: Sequence[str]) -> list[Asset | str]:
        return await each_at_most(self.concurrency, symbols, self._asset)

    async def _asset(self, symbol: str) -> Asset | str:
        """The tradable asset, or the problem preflight would name (Engine._tradable_asset)."""
        try:
            return tradable(await self.read(partial(self.broker.get_asset, symbol)))
        except UnknownSymbol:
            return "unknown symbol"
        except InvalidIntent as exc:
            return exc.message
        except BrokerRejected as exc:
            return f"cannot check the asset: {exc.message}"

    async def quotes_of(self, assets: Sequence[Asset]) -> list[UsableQuote | None]:
        """One arrival quote per asset, at the asset's price increment."""
        return await each_at_most(self.concurrency, assets, self._quote)

    async def _quote(self, asset: Asset) -> UsableQuote | None:
        get = partial(self.quotes.get, asset.symbol, self.clock.now(), asset.price_increment)
        found: UsableQuote | None = await self.read(get)
        return found


async def _plan_lines(
    orders: Sequence[OrderIntent], positions: Mapping[str, Decimal], reads: _Reads
) -> list[_Line]:
    """A plan's own orders, each with its asset (or the problem reading it) and a quote."""
    lines = [
        _Line(index, intent, positions.get(intent.symbol, ZERO))
        for index, intent in enumerate(orders)
    ]
    for line, asset in zip(lines, await reads.assets([i.symbol for i in orders]), strict=True):
        if isinstance(asset, str):
            line.problem = asset
        else:
            line.asset = asset
    quoted = [line for line in lines if line.asset is not None]
    found = await reads.quotes_of([line.asset for line in quoted if line.asset is not None])
    for line, quote in zip(quoted, found, strict=True):
        line.quote = quote
    return lines


async def _derived_lines(
    plan_id: str,
    targets: Mapping[str, Decimal],
    account: Account,
    positions: Mapping[str, Decimal],
    reads: _Reads,
    min_order_notional: Decimal | None,
) -> tuple[list[_Line], tuple[Hold, ...]]:
    """A target plan's orders as Engine.execute_plan derives them (engine/targets.py), from
    the one snapshot read here, and its holds; each order priced at the snapshot's quote."""
    equity = target_equity(plan_id, account.equity)
    symbols = involved_symbols(targets, positions)
    assets: dict[str, Asset] = {}
    for symbol, asset in zip(symbols, await reads.assets(symbols), strict=True):
        if isinstance(asset, str):
            raise target_refused(plan_id, symbol, asset)
        assets[symbol] = asset
    found = await reads.quotes_of(list(assets.values()))
    quotes = {s: quote for s, quote in zip(symbols, found, strict=True) if quote is not None}
    derivation = derive_targets(
        plan_id, targets, equity, positions, assets, quotes, min_order_notional
    )
    lines = []
    for index, derived in enumerate(derivation.orders):
        symbol = derived.intent.symbol
        line = _Line(index, derived.intent, positions.get(symbol, ZERO), assets[symbol])
        line.quote = quotes[symbol]
        line.verdicts.append(_target_verdict(line, derived))
        lines.append(line)
    return lines, derivation.holds


@dataclass
class _Line:
    """One plan order while the preview works it out."""

    index: int
    intent: OrderIntent
    position: Decimal
    asset: Asset | None = None
    # what reading the asset found wrong (unknown, untradable), as preflight names it
    problem: str | None = None
    checked: OrderIntent | None = None
    sizing: NotionalSizing | None = None
    quote: UsableQuote | None = None
    qty: Decimal = ZERO
    reason: FailReason | None = None
    shrunk: bool = False
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def where(self) -> str:
        """The order as the engine names it: as asked in preflight's problems, as checked
        (a dollar order sized) in the limits'."""
        return f"order {self.index} ({described(self.checked or self.intent)})"

    @property
    def asked_qty(self) -> Decimal:
        """The quantity asked for: a dollar order's, what its notional came to."""
        return self.intent.shares if self.sizing is None else self.sizing.quantity

    def take(self, checked: CheckedIntent, config: EngineConfig) -> None:
        """What preflight made of the order: sized, rounded or trimmed, or a dollar order
        that comes to no share, skipped `below_min_notional` as the engine skips it."""
        sizing = self.sizing = checked.sizing
        if sizing is not None and checked.unsized:
            refusal = sizing.refusal()
            message = f"{self.where}: {refusal.message}"
            verdict = Verdict(
                "notional", VerdictStatus.BREACHED, message, refusal.limit_value, refusal.figure
            )
            self.refuse(FailReason.BELOW_MIN_NOTIONAL, verdict)
            return
        if sizing is not None:
            self.verdicts.append(_sized(self, sizing))
        self.checked = checked.intent
        self.qty = self.checked_qty
        self.verdicts += [_adjusted(self, change, config) for change in checked.changes]

    @property
    def is_buy(self) -> bool:
        return self.intent.side is OrderSide.BUY

    @property
    def touch_or_zero(self) -> Decimal:
        return self.touch or ZERO

    @property
    def touch(self) -> Decimal | None:
        """The price the limits and sizing cost it at: buys at the ask, sells at the bid."""
        if self.quote is None:
            return None
        return self.quote.ask if self.is_buy else self.quote.bid

    def refuse(self, reason: FailReason, verdict: Verdict) -> None:
        """The first refusal is the one the engine would journal; every verdict is shown."""
        self.verdicts.append(verdict)
        if self.reason is None:
            self.reason = reason
            self.qty = ZERO

    def preview(self, config: EngineConfig) -> OrderPreview:
        steps = self._steps(config)
        price = None
        if steps and self.quote is not None:
            price = steps[0].limit_price
            if price is None:  # straight to market: the far touch
                price = self.quote.ask if self.is_buy else self.quote.bid
        cost = cost_bps = None
        if price is not None and self.quote is not None and self.reason is None:
            mid = self.quote.mid
            worse = price - mid if self.is_buy else mid - price
            cost, cost_bps = cents(worse * self.qty), cents(worse / mid * BPS)
        if self.reason is None:
            outcome = Outcome.SHRUNK if self.shrunk else Outcome.SENT
        elif is_skip(self.reason, config.min_order_notional):
            outcome = Outcome.SKIPPED
        else:
            outcome = Outcome.REFUSED
        quote = self.quote
        return OrderPreview(
            index=self.index,
            symbol=self.intent.symbol,
            side=self.intent.side,
            urgency=self.intent.urgency,
            requested_qty=self.asked_qty,
            checked_qty=None if self.checked is None else self.checked_qty,
            qty=self.qty,
            outcome=outcome,
            reason=self.reason,
            quote=None
            if quote is None
            else ArrivalQuote(quote.bid, quote.ask, quote.mid, quote.quote.source, quote.estimated),
            steps=steps,
            expected_price=price,
            expected_cost=cost,
            expected_cost_bps=cost_bps,
            verdicts=tuple(self.verdicts),
            notional_requested=self.intent.notional,
            expected_value=None if price is None else cents(self.qty * price),
        )

    @property
    def checked_qty(self) -> Decimal:
        """What preflight leaves it to trade (a FULL close: the position)."""
        assert self.checked is not None
        if self.checked.close_type is CloseType.FULL:
            return max(self.position, ZERO)
        return self.checked.shares

    def _steps(self, config: EngineConfig) -> tuple[StepPrice, ...]:
        """The ladder at the arrival quote, then the market step; urgency HIGH (or an empty
        ladder) goes to market at once."""
        market = StepPrice(MARKET_STEP, None, None)
        if self.quote is None or self.checked is None:
            return ()
        if self.intent.urgency is Urgency.HIGH or not config.ladder:
            return (market,)
        increment = None if self.asset is None else self.asset.price_increment
        side, bid, ask = self.intent.side, self.quote.bid, self.quote.ask
        return (
            *(
                StepPrice(f"L{k}", ratio, limit_price(side, bid, ask, ratio, increment))
                for k, ratio in enumerate(config.ladder, start=1)
            ),
            market,
        )


# -- preflight ----------------------------------------------------------------------


def _preflight(plan_id: str, lines: Sequence[_Line], config: EngineConfig) -> None:
    """Each order as preflight (engine/preflight.py `check_intent`) leaves it; its problems
    raise (all_or_nothing) or refuse it."""
    problems = {}
    for line in lines:
        checked = _checked(line, config)
        if isinstance(checked, str):
            problems[line.index] = f"{line.where}: {checked}"
            verdict = Verdict("intent", VerdictStatus.BREACHED, problems[line.index])
            line.refuse(FailReason.INVALID_INTENT, verdict)
        else:
            line.take(checked, config)
    if problems and config.validation == "all_or_nothing":
        raise InvalidIntent("; ".join(problems.values()), plan_id=plan_id, orders=sorted(problems))


def _checked(line: _Line, config: EngineConfig) -> CheckedIntent | str:
    """The engine's check of one order from what was read for it, or its problem."""
    if line.asset is None:
        assert line.problem is not None  # an order without its asset has the read's problem
        return line.problem
    try:
        return check_intent(line.intent, line.asset, line.position, line.quote, config)
    except InvalidIntent as exc:
        return exc.message


def _sized(line: _Line, sizing: NotionalSizing) -> Verdict:
    """How a dollar order was sized: its notional over the ask (a buy) or the bid."""
    unit = "shares" if sizing.fractionable else "whole shares"
    message = (
        f"order {line.index} ({described(line.intent)}): notional {decimal_text(sizing.notional)} "
        f"comes to {decimal_text(sizing.quantity)} {unit} at the {sizing.side_of_book} "
        f"{decimal_text(sizing.price)} (rounded down)"
    )
    return Verdict("notional", VerdictStatus.OK, message, sizing.notional, sizing.quantity)


def _target_verdict(line: _Line, derived: DerivedOrder) -> Verdict:
    """How a target plan's order was derived: its weight of equity at the touch."""
    sizing = derived.sizing
    weight, held = sizing["target_weight"], sizing["held"]
    if Decimal(weight) == 0:
        aim = "not named (or at 0): closed in full"
    else:
        aim = (
            f"{weight} of equity {money(Decimal(sizing['equity']))} is "
            f"{sizing['target_qty']} shares at the {sizing['side_of_book']} {sizing['price']}"
        )
    message = f"{line.where}: target {aim}; {held} held"
    return Verdict("targets", VerdictStatus.OK, message, Decimal(weight), Decimal(held))


def _adjusted(line: _Line, change: str, config: EngineConfig) -> Verdict:
    """How preflight changed the quantity: rounded down to whole shares, or trimmed to the
    position within `oversell_tolerance`."""
    asked = line.asked_qty
    if change == ROUNDED_DOWN:
        return Verdict(
            "intent",
            VerdictStatus.OK,
            f"{decimal_text(asked)} rounded down to {decimal_text(asked // 1)}: the asset "
            "trades whole shares only (fractional_on_whole_share_asset round_down)",
        )
    tolerance, now = config.oversell_tolerance, line.qty
    return Verdict(
        "oversell_tolerance",
        VerdictStatus.OK,
        f"sell of {decimal_text(asked)} trimmed to the position of {decimal_text(now)} (within "
        f"oversell_tolerance {decimal_text(tolerance)})",
        tolerance,
        now,
    )


# -- the limits ---------------------------------------------------------------------


class _Limits:
    """The pre-trade limits of engine/risk.py as verdicts: every limit of every order, the
    plan's own, and no exception for a breach."""

    def __init__(self, config: EngineConfig, account: Account) -> None:
        self.config = config
        self.equity = account.equity

    def check_order(self, line: _Line) -> None:
        """The order-level limits, in the order engine/risk.py applies them; a FULL close
        of nothing fails `no_position`, and an unquoted order `no_quote` (or goes to
        market unpriced, urgency HIGH under `market_without_quote`)."""
        if line.checked is None:
            return
        config, price = self.config, line.touch
        if price is None:
            self._unpriced(line)
            return
        value = line.qty * price
        at = f"at the {'ask' if line.is_buy else 'bid'} {decimal_text(price)}"
        worth = f"{line.where}: worth {money(value)} {at}"
        smallest = config.min_order_notional
        if smallest is not None:
            under = value < smallest
            message = f"{worth}, {'under' if under else 'at or above'} min_order_notional"
            verdict = _verdict("min_order_notional", under, message, smallest, cents(value))
            self._apply(line, verdict, FailReason.BELOW_MIN_NOTIONAL)
        largest = config.max_order_notional
        if largest is not None:
            over = value > largest
            message = f"{worth}, {'over' if over else 'within'} max_order_notional"
            verdict = _verdict("max_order_notional", over, message, largest, cents(value))
            self._apply(line, verdict, FailReason.RISK_LIMIT)
        if config.max_position_weight is not None and line.is_buy:
            self._apply(line, self._weight(line, price), FailReason.RISK_LIMIT)
        if line.checked.close_type is CloseType.FULL and line.position <= 0:
            message = f"{line.where}: a FULL close with no position held"
            line.refuse(FailReason.NO_POSITION, _verdict("position", True, message))

    def _unpriced(self, line: _Line) -> None:
        """No usable quote: the order's priced limits cannot be checked (the plan is refused,
        see check_plan), and the walk fails it `no_quote` unless it may go to market blind."""
        for name in ORDER_LIMITS:
            limit = getattr(self.config, name)
            if limit is not None and (line.is_buy or name != "max_position_weight"):
                message = f"{line.where}: no usable quote to price it"
                line.verdicts.append(Verdict(name, VerdictStatus.NOT_CHECKED, message, limit))
        if self.config.market_without_quote and line.intent.urgency is Urgency.HIGH:
            message = f"{line.where}: no usable quote: goes to market unpriced"
            line.verdicts.append(Verdict("market_without_quote", VerdictStatus.OK, message))
        else:
            message = f"{line.where}: no usable quote: fails no_quote"
            line.refuse(FailReason.NO_QUOTE, _verdict("quote", True, message))

    def _weight(self, line: _Line, ask: Decimal) -> Verdict:
        limit = self.config.max_position_weight
        assert limit is not None
        equity = self.equity
        if equity is None or equity <= 0:
            message = f"{line.where}: the broker reports no positive equity to weigh it against"
            return Verdict("max_position_weight", VerdictStatus.NOT_CHECKED, message, limit)
        held = line.position + line.qty
        share = (held * ask / equity).quantize(WEIGHT_PLACES)
        over = held * ask / equity > limit
        message = (
            f"{line.where}: {decimal_text(held)} held would be {share} of equity "
            f"({money(held * ask)} of {money(equity)}), "
            f"{'over' if over else 'within'} max_position_weight"
        )
        return _verdict("max_position_weight", over, message, limit, share)

    @staticmethod
    def _apply(line: _Line, verdict: Verdict, reason: FailReason) -> None:
        if verdict.breached:
            line.refuse(reason, verdict)
        else:
            line.verdicts.append(verdict)

    def check_plan(
        self, plan_id: str, lines: Sequence[_Line], journal: Journal | None, clock: Clock
    ) -> list[Verdict]:
        """The plan-level limits over the orders the order-level ones let through, and what
        would refuse the whole plan before anything is journaled."""
        config, verdicts = self.config, []
        checked = [line for line in lines if line.checked is not None]
        if config.prices_orders:
            unpriced = [line.intent.symbol for line in checked if line.quote is None]
            if unpriced:
                message = f"no usable quote for {', '.join(unpriced)}: the limits cannot be checked"
                verdicts.append(_verdict("quote", True, f"plan {plan_id} refused: {message}"))
            if config.max_position_weight is not None and (self.equity or ZERO) <= 0:
                message = f"plan {plan_id} refused: the broker reports no positive equity"
                verdicts.append(_verdict("max_position_weight", True, message))
        over = [line for line in checked if line.reason is FailReason.RISK_LIMIT]
        if over and config.validation == "all_or_nothing":
            shown = ", ".join(line.where for line in over)
            message = f"plan {plan_id} refused (validation all_or_nothing): {shown} over a limit"
            verdicts.append(_verdict("validation", True, message))
        sent = [
            line
            for line in checked
            if line.reason not in (FailReason.RISK_LIMIT, FailReason.BELOW_MIN_NOTIONAL)
        ]
        total = sum((line.qty * line.touch_or_zero for line in sent), ZERO)
        largest = config.max_plan_notional
        if largest is not None:
            breached = total > largest
            message = (
                f"its orders are worth {money(total)} (buys at the ask, sells at the bid), "
                f"{'over' if breached else 'within'} max_plan_notional"
            )
            verdicts.append(_verdict("max_plan_notional", breached, message, largest, cents(total)))
        if config.daily_traded_notional is not None:
            verdicts.append(self._daily(total, journal, clock))
        if config.sell_failure_gate is not None:
            message = "applies once the sells are final; the preview assumes they fill"
            verdicts.append(
                Verdict(
                    "sell_failure_gate",
                    VerdictStatus.NOT_CHECKED,
                    message,
                    config.sell_failure_gate,
                )
            )
        return verdicts

    def _daily(self, total: Decimal, journal: Journal | None, clock: Clock) -> Verdict:
        daily = self.config.daily_traded_notional
        assert daily is not None
        if journal is None:
            message = "no journal to count the fills traded today from"
            return Verdict("daily_traded_notional", VerdictStatus.NOT_CHECKED, message, daily)
        day = clock.now().astimezone(UTC).date()
        before = traded_on(journal, day)
        breached = before + total > daily
        message = (
            f"{money(before)} traded on {day} (UTC) and {money(total)} in this plan make "
            f"{money(before + total)}, {'over' if breached else 'within'} daily_traded_notional"
        )
        return _verdict("daily_traded_notional", breached, message, daily, cents(before + total))


def _market_verdict(clock: MarketClock, config: EngineConfig) -> Verdict:
    if clock.is_open:
        return Verdict("market", VerdictStatus.OK, "the market is open")
    next_open = clock.next_open
    if config.wait_for_open and next_open is not None:
        wait = (next_open - clock.at).total_seconds()
        if wait <= config.max_wait_for_open_seconds:
            message = f"closed; the walk waits for the open at {next_open.isoformat()}"
            return Verdict("market", VerdictStatus.OK, message)
    message = "the market is closed: every order would fail market_closed, unsent"
    return _verdict("market", True, message)


def _verdict(
    check: str,
    breached: bool,
    message: str,
    limit_value: Decimal | None = None,
    figure: Decimal | None = None,
) -> Verdict:
    status = VerdictStatus.BREACHED if breached else VerdictStatus.OK
    if limit_value is not None:
        message = f"{message} {decimal_text(limit_value)}"
    return Verdict(check, status, message, limit_value, figure)


# -- buy sizing ---------------------------------------------------------------------


def _size_buys(lines: Sequence[_Line], account: Account, config: EngineConfig) -> FundsPreview:
    """Buys sized as BuySizer sizes them once the sells are final: in plan order, at the ask
    plus `funds_buffer_bps`, against the smallest spendable figure, each figure grown by
    the sells' proceeds at the arrival bid."""
    proceeds = sum((line.qty * line.touch_or_zero for line in _sent(lines, OrderSide.SELL)), ZERO)
    figures = spendable_funds(account, config.use_margin)
    after_sells = {name: value + proceeds for name, value in figures.items()}
    funds_from = min(after_sells, key=after_sells.__getitem__)  # on a tie, the cash figure
    available = after_sells[funds_from]
    buffer = 1 + config.funds_buffer_bps / BPS
    for line in _sent(lines, OrderSide.BUY):
        price = line.touch_or_zero * buffer
        if line.qty * price > available:
            _short_of_funds(line, price, available, funds_from, config)
        available -= line.qty * price
    return FundsPreview(
        use_margin=config.use_margin,
        figures=figures,
        sell_proceeds=cents(proceeds),
        funds_from=funds_from,
        after_sells=cents(after_sells[funds_from]),
        after_buys=cents(available),
    )


def _short_of_funds(
    line: _Line, price: Decimal, available: Decimal, funds_from: str, config: EngineConfig
) -> None:
    """A buy the funds do not cover: shrunk to what fits, skipped when that is under
    `min_order_notional`, else failed `insufficient_funds` (BuySizer's rules)."""
    assert line.checked is not None
    unit = shrink_unit(line.checked)
    fits = floor_to(available / price, unit)
    ask = line.touch_or_zero
    needs = (
        f"{line.where}: needs {money(line.qty * price)} at the ask {decimal_text(ask)} + "
        f"{decimal_text(config.funds_buffer_bps)} bps, {money(available)} of {funds_from} "
        f"left: {decimal_text(fits)} fit"
    )
    verdict = Verdict(
        "funds", VerdictStatus.BREACHED, "", cents(available), cents(line.qty * price)
    )
    smallest = config.min_order_notional
    if config.insufficient_funds == "shrink" and fits > 0:
        if smallest is not None and fits * ask < smallest:
            message = f"{needs}, worth {money(fits * ask)}, under min_order_notional: skipped"
            line.refuse(FailReason.BELOW_MIN_NOTIONAL, replace(verdict, message=message))
            return
        message = f"{needs}: shrunk to {decimal_text(fits)} (insufficient_funds shrink)"
        line.verdicts.append(replace(verdict, message=message))
        line.qty, line.shrunk = fits, True
        return
    message = f"{needs}: fails insufficient_funds (insufficient_funds {config.insufficient_funds})"
    line.refuse(FailReason.INSUFFICIENT_FUNDS, replace(verdict, message=message))


def _sent(lines: Iterable[_Line], side: OrderSide) -> list[_Line]:
    """The orders of one side that would be sent priced (refused and unquoted ones are not)."""
    return [
        line
        for line in lines
        if line.intent.side is side and line.reason is None and line.quote is not None
    ]
