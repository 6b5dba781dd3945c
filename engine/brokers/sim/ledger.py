"""The simulated account's books: cash, and per symbol the shares held and what they cost.

Every execution moves cash and shares here, and nowhere else (`SimBroker._settle`). The
figures Alpaca's account and position objects report are computed from the books at
marks the simulator supplies, following Alpaca's definitions:
https://docs.alpaca.markets/docs/account-plans (all accounts open as margin accounts),
https://alpaca.markets/docs/api-references/trading-api/account/ (the account's fields),
https://docs.alpaca.markets/v1.1/docs/margin-and-short-selling (margin and multipliers).

The simulation is one trading day: `last_equity` and `last_maintenance_margin` are the
account as the simulation starts, and positions a market spec starts with were entered at
their symbol's starting price (which is also their `lastday_price`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from ...broker import Account
from ...numbers import ZERO

__all__ = [
    "AccountType",
    "DayStart",
    "Holding",
    "Ledger",
    "PositionView",
    "SimAccount",
    "maintenance_requirement",
    "short_sale_value",
]

AccountType = Literal["margin", "cash"]

# Alpaca: margin and short selling from $2,000 of equity (1x below). The pattern-day-trader
# account (4x day-trading buying power from $25,000) is gone: its fields left the account on
# 2026-07-06 (https://docs.alpaca.markets/us/changelog/2026-06-03-pdt-f3c04da)
MARGIN_MIN_EQUITY = Decimal(2_000)
REG_T_MULTIPLIER = Decimal(2)
INITIAL_MARGIN = Decimal("0.5")  # Regulation T, every simulated asset marginable
# https://docs.alpaca.markets/docs/orders-at-alpaca: a short sale is costed at the larger of
# its limit price and 3% above the ask
SHORT_SALE_BUFFER = Decimal("1.03")
RATIO_STEP = Decimal("1e-16")


def maintenance_requirement(qty: Decimal, price: Decimal) -> Decimal:
    """Alpaca's overnight maintenance margin for one position (margin-and-short-selling):
    a long 100% under $2.50 a share, else 30%; a short the greater of $2.50 a share and
    100% under $5.00, else the greater of $5.00 a share and 30%."""
    value = abs(qty) * price
    if qty > 0:
        return value if price < Decimal("2.50") else value * Decimal("0.3")
    if price < 5:
        return max(abs(qty) * Decimal("2.50"), value)
    return max(abs(qty) * 5, value * Decimal("0.3"))


def short_sale_value(qty: Decimal, limit_price: Decimal | None, ask: Decimal) -> Decimal:
    """What a short sale holds of the buying power: MAX(limit price, 3% above the ask) * qty
    (a market short: 3% above the ask)."""
    buffered = ask * SHORT_SALE_BUFFER
    return qty * (buffered if limit_price is None else max(limit_price, buffered))


@dataclass
class Holding:
    """One symbol's position: `cost` is Alpaca's cost basis, negative for a short."""

    qty: Decimal
    cost: Decimal

    @property
    def avg_entry_price(self) -> Decimal:
        return self.cost / self.qty


@dataclass(frozen=True)
class DayStart:
    """The account as the simulated day opened: what Alpaca calls `last_*`."""

    equity: Decimal
    maintenance_margin: Decimal


@dataclass(frozen=True, kw_only=True)
class SimAccount(Account):
    """Every figure of Alpaca's account object, for the sim-server's `GET /v2/account`."""

    created_at: datetime
    long_market_value: Decimal
    short_market_value: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    last_equity: Decimal
    last_maintenance_margin: Decimal
    regt_buying_power: Decimal
    shorting_enabled: bool


@dataclass(frozen=True)
class PositionView:
    """One position as Alpaca's position object shows it. `current_price` is the book's mid;
    the whole simulation is today, so the intraday P/L is the unrealized P/L."""

    symbol: str
    qty: Decimal
    cost_basis: Decimal
    current_price: Decimal
    lastday_price: Decimal
    held_for_orders: Decimal  # by open orders on the closing side (sells of a long)

    @property
    def side(self) -> Literal["long", "short"]:
        return "long" if self.qty > 0 else "short"

    @property
    def avg_entry_price(self) -> Decimal:
        return self.cost_basis / self.qty

    @property
    def market_value(self) -> Decimal:
        return self.qty * self.current_price

    @property
    def unrealized_pl(self) -> Decimal:
        return self.market_value - self.cost_basis

    @property
    def unrealized_plpc(self) -> Decimal:
        return _ratio(self.unrealized_pl, abs(self.cost_basis))

    @property
    def change_today(self) -> Decimal:
        return _ratio(self.current_price - self.lastday_price, self.lastday_price)

    @property
    def qty_available(self) -> Decimal:
        free = max(abs(self.qty) - self.held_for_orders, ZERO)
        return free if self.qty > 0 else -free


def _ratio(part: Decimal, whole: Decimal) -> Decimal:
    return (part / whole).quantize(RATIO_STEP) if whole else ZERO


@dataclass
class Ledger:
    """Cash and holdings; `start` is the account as the simulation began."""

    cash: Decimal
    start: DayStart
    holdings: dict[str, Holding] = field(default_factory=dict)
    # the symbols held short, kept as executions land (a buy's check asks it every time)
    short_symbols: set[str] = field(default_factory=set)

    @classmethod
    def opening(
        cls, cash: Decimal, positions: Mapping[str, Decimal], price_of: Callable[[str], Decimal]
    ) -> Ledger:
        """A new account: `positions` entered at `price_of` each (the symbol's starting price)."""
        held = {s: q for s, q in positions.items() if q}
        prices = {s: price_of(s) for s in held}
        start = DayStart(
            equity=cash + sum((q * prices[s] for s, q in held.items()), ZERO),
            maintenance_margin=sum(
                (maintenance_requirement(q, prices[s]) for s, q in held.items()), ZERO
            ),
        )
        holdings = {s: Holding(q, q * prices[s]) for s, q in held.items()}
        return cls(cash, start, holdings)

    def qty(self, symbol: str) -> Decimal:
        holding = self.holdings.get(symbol)
        return ZERO if holding is None else holding.qty

    def execute(self, symbol: str, signed_qty: Decimal, price: Decimal) -> None:
        """One execution (`signed_qty` < 0 a sell), with Alpaca's average cost: adding to a
        position adds its cost, reducing one keeps the average, crossing zero starts anew
        at the execution's price."""
        self.cash -= signed_qty * price
        holding = self.holdings.get(symbol)
        old = ZERO if holding is None else holding.qty
        new = old + signed_qty
        if new < 0:
            self.short_symbols.add(symbol)
        else:
            self.short_symbols.discard(symbol)
        if not new:
            self.holdings.pop(symbol, None)
        elif holding is None or (old > 0) != (new > 0):
            self.holdings[symbol] = Holding(new, new * price)
        elif (signed_qty > 0) == (old > 0):
            holding.qty, holding.cost = new, holding.cost + signed_qty * price
        else:
            holding.qty, holding.cost = new, holding.cost * new / old

    # -- persistence ------------------------------------------------------------------

    def saved(self) -> dict[str, Any]:
        return {
            "cash": str(self.cash),
            "positions": {s: str(h.qty) for s, h in self.holdings.items()},
            "cost_basis": {s: str(h.cost) for s, h in self.holdings.items()},
        }

    def restore(self, state: Mapping[str, Any], price_of: Callable[[str], Decimal]) -> None:
        """The books as `saved` wrote them. A state file from before cost basis was kept
        has none: its positions count as entered at their symbol's starting price."""
        costs: Mapping[str, str] = state.get("cost_basis", {})
        self.cash = Decimal(state["cash"])
        self.holdings = {}
        for symbol, text in state["positions"].items():
            qty = Decimal(text)
            cost = costs.get(symbol)
            basis = qty * price_of(symbol) if cost is None else Decimal(cost)
            self.holdings[symbol] = Holding(qty, basis)
        self.short_symbols = {s for s, h in self.holdings.items() if h.qty < 0}

    # -- figures ----------------------------------------------------------------------

    def position(
        self, symbol: str, mark: Decimal, lastday_price: Decimal, held_for_orders: Decimal
    ) -> PositionView:
        holding = self.holdings[symbol]
        return PositionView(symbol, holding.qty, holding.cost, mark, lastday_price, held_for_orders)

    def account(
        self,
        marks: Mapping[str, Decimal],
        *,
        account_type: AccountType,
        reserved_buys: Decimal,
        reserved_shorts: Decimal,
        created_at: datetime,
    ) -> SimAccount:
        """The account at `marks` (a price for every symbol held). Open buys and opening
        short sells hold buying power; open buys hold cash (Alpaca: "your available buying
        power is reduced by your existing open buy long and sell short orders").

        Simplified from Alpaca: the multiplier is 1 below $2,000 of equity (and on a cash
        account), else 2 (Reg T); buying power at 2x is `max(equity - initial_margin, 0) * 2`,
        at 1x the cash. A buy to cover a short is costed like any buy (Alpaca does not
        check it against the buying power)."""
        values = {s: h.qty * marks[s] for s, h in self.holdings.items()}
        long_value = sum((v for v in values.values() if v > 0), ZERO)
        short_value = sum((v for v in values.values() if v < 0), ZERO)
        equity = self.cash + long_value + short_value
        initial = (long_value - short_value) * INITIAL_MARGIN
        maintenance = sum(
            (maintenance_requirement(h.qty, marks[s]) for s, h in self.holdings.items()), ZERO
        )
        margin = account_type == "margin" and equity >= MARGIN_MIN_EQUITY
        multiplier = REG_T_MULTIPLIER if margin else Decimal(1)
        reserved = reserved_buys + reserved_shorts
        if margin:
            regt = max((equity - initial) * REG_T_MULTIPLIER - reserved, ZERO)
        else:
            regt = max(self.cash - reserved, ZERO)
        return SimAccount(
            cash=self.cash,
            buying_power=regt,
            equity=equity,
            non_marginable_buying_power=max(self.cash - reserved_buys, ZERO),
            multiplier=multiplier,
            created_at=created_at,
            long_market_value=long_value,
            short_market_value=short_value,
            initial_margin=initial,
            maintenance_margin=maintenance,
            last_equity=self.start.equity,
            last_maintenance_margin=self.start.maintenance_margin,
            regt_buying_power=regt,
            shorting_enabled=margin,
        )
