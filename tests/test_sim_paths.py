"""Common random numbers in the simulator (engine/brokers/sim/broker.py): a symbol's price path
draws from its own generator and its fills from another, so a seed gives one mid path whatever
orders rest on it (bench.quality compares policies on that path), and both generators survive
a restart of a simulator kept in its SQLite file."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from engine import MarketSpec, SimBroker, SymbolSpec, VirtualClock
from engine.broker import OrderRequest
from engine.brokers.sim.rng import SmallRandom
from engine.intents import OrderSide

START = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
SYMBOL = "WALK"
TICKS = 120
SPEC = MarketSpec(
    seed=11,
    symbols={
        SYMBOL: SymbolSpec(
            price=Decimal(100),
            spread_bps=20,
            volatility_bps=3,
            zero_quote_probability=0.03,
        )
    },
    # a fill every few seconds, each a part of what remains: many fill draws
    fill_intensity=1.0,
    partial_fill_probability=1.0,
    stream_gap_probability=0.0,
)
RESTING_BUY = OrderRequest(
    client_order_id="rest-1",
    symbol=SYMBOL,
    side=OrderSide.BUY,
    qty=Decimal(5_000),
    order_type="limit",
    limit_price=Decimal("99.90"),  # at the bid: rests, and fills by the fill draws
)
# One tick's market and the resting order's fills so far.
Tick = tuple[Decimal, Decimal, Decimal]


def ticks(broker: SimBroker, clock: VirtualClock, count: int, order_id: str | None) -> list[Tick]:
    """Each second's quote (bid, ask) and the order's filled quantity (0 without one), from
    now on (a symbol's path starts where its book is first asked about), read early in each
    second whatever the calls' latency."""

    async def record() -> list[Tick]:
        seen: list[Tick] = []
        for _ in range(count):
            second = clock.now().replace(microsecond=0)
            quote = await broker.latest_quote(SYMBOL)
            assert quote is not None
            filled = Decimal(0)
            if order_id is not None:
                filled = (await broker.get_order(order_id)).filled_qty
            seen.append((quote.bid, quote.ask, filled))
            await clock.sleep((second + timedelta(seconds=1) - clock.now()).total_seconds())
        return seen

    return clock.run(record())


def with_resting_buy(broker: SimBroker, clock: VirtualClock) -> str:
    async def place() -> str:
        return (await broker.submit_order(RESTING_BUY)).id

    return clock.run(place())


def test_an_order_resting_and_filling_leaves_the_symbols_price_path_as_it_was() -> None:
    quiet_clock, busy_clock = VirtualClock(START), VirtualClock(START)
    quiet, busy = SimBroker(SPEC, quiet_clock), SimBroker(SPEC, busy_clock)
    order_id = with_resting_buy(busy, busy_clock)

    alone = ticks(quiet, quiet_clock, TICKS, None)
    beside_the_order = ticks(busy, busy_clock, TICKS, order_id)

    assert len({filled for _, _, filled in beside_the_order}) > 3  # it filled in parts
    assert len({bid for bid, _, _ in alone}) > 10  # the mid moved
    assert [(bid, ask) for bid, ask, _ in beside_the_order] == [(b, a) for b, a, _ in alone]


def test_a_restarted_simulator_goes_on_with_both_generators_and_an_older_file_still_loads(
    tmp_path: Path,
) -> None:
    restart = 20  # the order rests there, partly filled: the fill draws go on after it
    clock = VirtualClock(START)
    uninterrupted = SimBroker(SPEC, clock)
    order_id = with_resting_buy(uninterrupted, clock)
    expected = ticks(uninterrupted, clock, TICKS, order_id)

    path = tmp_path / "sim.db"
    clock = VirtualClock(START)
    first = SimBroker.open(path, SPEC, clock)
    assert with_resting_buy(first, clock) == order_id
    before = ticks(first, clock, restart, order_id)
    first.close()
    again = SimBroker.open(path, SPEC, clock)
    assert before + ticks(again, clock, TICKS - restart, order_id) == expected
    again.close()

    with sqlite3.connect(path) as conn:  # a state file from before the fills had a generator
        (text,) = conn.execute("SELECT value FROM sim_meta WHERE key = 'state'").fetchone()
        state = json.loads(text)
        saved = state["books"][SYMBOL]
        path_state = saved["rng"]
        del saved["fills_rng"]
        conn.execute("UPDATE sim_meta SET value = ? WHERE key = 'state'", [json.dumps(state)])
    older = SimBroker.open(path, SPEC, clock)
    book = older._books[SYMBOL]
    assert book.prices.getstate() == path_state
    assert book.fills.getstate() == SmallRandom(f"{SPEC.seed}/{SYMBOL}/fills").getstate()
    assert len(ticks(older, clock, 5, order_id)) == 5
    older.close()
