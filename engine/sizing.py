"""Sizing a plan's buys to the money the account has, before any of them is sent.

Plan-level, not part of one order's walk: the buys of a plan share one figure of funds,
read once after every sell is final, so it counts the cash their fills released. Buys are
costed at the ask plus `funds_buffer_bps`, in plan order; one that does not fit is shrunk
to what fits (`insufficient_funds="shrink"`, journaled `resized`) or failed
`insufficient_funds`, unsent; one that would shrink below `min_order_notional` is skipped
(`below_min_notional`), unsent. A margin account's buying power includes what the broker
would lend: unless `use_margin`, buys spend only what cash buys (its non-marginable buying
power, else its cash).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import structlog

from .broker import Account
from .concurrency import each_at_most
from .context import OrderJournal, WalkContext
from .events import Resized
from .fsm import FailReason
from .intents import OrderIntent
from .numbers import BPS, CENT, decimal_text, floor_to
from .order import OrderRecord
from .quotes import UsableQuote
from .retry import Reader
from .stopping import StopRequested
from .walk import OrderWalk

__all__ = ["BuySizer", "shrink_unit", "spendable_funds"]

# how the engine reads the broker (with its retries), here for quotes
QTY_WHOLE, QTY_FRACTION = Decimal(1), Decimal("0.0001")
# from this many buys, sizing reads their quotes in bulk over REST (a 100-symbol read per
# call) rather than one at a time from a stream that may carry only 30 symbols (IEX)
BULK_QUOTES_FROM = 30
log = structlog.get_logger("walkbook")


def spendable_funds(account: Account, use_margin: bool) -> dict[str, Decimal]:
    """The account's figures a buy may spend from, by name: the broker's buying power, and
    without `use_margin` what cash alone buys (non-marginable buying power, else cash)."""
    funds: dict[str, Decimal] = {}
    if not use_margin:  # what cash buys, never what the broker would lend
        if account.non_marginable_buying_power is not None:
            funds["non_marginable_buying_power"] = account.non_marginable_buying_power
        else:
            funds["cash"] = account.cash
    funds["buying_power"] = account.buying_power
    return funds


class BuySizer:
    """Sizes the PENDING buys of one plan to the funds of one account read."""

    def __init__(self, context: WalkContext, read: Reader, concurrency: int) -> None:
        self.ctx = context
        self.config = context.config
        self._read = read
        self.concurrency = concurrency

    async def size(self, buys: Sequence[OrderRecord], account: Account) -> list[OrderRecord]:
        """Each buy as it is after sizing (unchanged, resized, or failed unsent)."""
        funds = spendable_funds(account, self.config.use_margin)
        funds_from = min(funds, key=funds.__getitem__)  # on a tie, the cash figure
        available = funds[funds_from]
        buffer = 1 + self.config.funds_buffer_bps / BPS
        quotes = await self._quotes(buys)
        sized = []
        for record, quote in zip(buys, quotes, strict=True):
            # no quote, not costed: its walk fails no_quote, or with market_without_quote
            # goes to market unsized and the broker's own funds check is the guard
            if quote is None:
                sized.append(record)
                continue
            price, qty = quote.ask * buffer, record.quantity
            if qty * price <= available:
                available -= qty * price
                sized.append(record)
                continue
            fits = floor_to(available / price, shrink_unit(record.intent))
            details = {
                "requested": decimal_text(qty),
                **{figure: decimal_text(value) for figure, value in funds.items()},
                "funds_from": funds_from,
                "available": decimal_text(available.quantize(CENT)),
                "price_estimate": decimal_text(price.quantize(CENT)),
            }
            smallest = self.config.min_order_notional
            if self.config.insufficient_funds == "shrink" and fits > 0:
                if smallest is not None and fits * quote.ask < smallest:
                    sized.append(await self._skip(record, fits, quote.ask, smallest, details))
                    continue
                sized.append(self._resize(record, fits, details))
                available -= fits * price
            else:
                walk = OrderWalk(self.ctx, record)
                sized.append(await walk.refuse(FailReason.INSUFFICIENT_FUNDS, **details))
        return sized

    async def _quotes(self, buys: Sequence[OrderRecord]) -> list[UsableQuote | None]:
        """Every buy's quote before any is costed, `concurrency` at a time (streamed first,
        free); for more buys than `BULK_QUOTES_FROM`, first one bulk REST read for them
        all, each buy it lacks then asked alone; none once a stop reaches them."""
        if len(buys) < BULK_QUOTES_FROM:
            return await each_at_most(self.concurrency, buys, self._quote)
        first, service, now = buys[0], self.ctx.quotes, self.ctx.clock.now()
        symbols = [r.intent.symbol for r in buys]

        async def bulk() -> dict[str, UsableQuote]:
            tally = self.ctx.plan_quotes[first.plan_id]
            return await self._read(lambda: service.get_many(symbols, now, tally))

        try:
            found = await self.ctx.stops.wait_or_stop(bulk, first.order_id, first.plan_id)
        except StopRequested:
            return [None] * len(buys)
        missing = [r for r in buys if r.intent.symbol not in found]
        asked = await each_at_most(self.concurrency, missing, self._quote)
        by_order = dict(zip((r.order_id for r in missing), asked, strict=True))
        return [found.get(r.intent.symbol, by_order.get(r.order_id)) for r in buys]

    async def _quote(self, record: OrderRecord) -> UsableQuote | None:
        """A quote to cost the buy with (its walk's first step takes a fresh one); none for
        a buy a stop has reached, which will end unsent without being sized."""
        quotes, plan_quotes = self.ctx.quotes, self.ctx.plan_quotes[record.plan_id]
        symbol, now = record.intent.symbol, self.ctx.clock.now()

        async def read() -> UsableQuote | None:
            return await self._read(lambda: quotes.get(symbol, now, None, plan_quotes))

        try:
            return await self.ctx.stops.wait_or_stop(read, record.order_id, record.plan_id)
        except StopRequested:
            return None

    async def _skip(
        self,
        record: OrderRecord,
        fits: Decimal,
        ask: Decimal,
        smallest: Decimal,
        details: dict[str, Any],
    ) -> OrderRecord:
        """A buy that would shrink below `min_order_notional` is skipped, unsent, rather than
        sent for dust (a $0.00085 buy reached the broker)."""
        worth = fits * ask
        message = (
            f"to fit the funds it would shrink to {decimal_text(fits)}, worth {worth:.2f} at the "
            f"ask {decimal_text(ask)}, under min_order_notional {decimal_text(smallest)}: skipped"
        )
        walk = OrderWalk(self.ctx, record)
        return await walk.refuse(
            FailReason.BELOW_MIN_NOTIONAL,
            message=message,
            limit="min_order_notional",
            limit_value=decimal_text(smallest),
            figure=decimal_text(worth.quantize(CENT)),
            **details,
        )

    def _resize(self, record: OrderRecord, qty: Decimal, details: dict[str, Any]) -> OrderRecord:
        """Shrink a PENDING buy to `qty` (journaled, so a resume walks the same size)."""
        journal = OrderJournal(self.ctx, record)
        journal.write(Resized(qty=qty, reason=FailReason.INSUFFICIENT_FUNDS.value, figures=details))
        log.warning(
            "order.resized",
            order_id=record.order_id,
            plan_id=record.plan_id,
            qty=str(qty),
            **details,
        )
        return journal.record


def shrink_unit(intent: OrderIntent) -> Decimal:
    """The unit a resize keeps: whole shares, unless the order itself is fractional."""
    return QTY_WHOLE if not intent.is_fractional else QTY_FRACTION
