"""A resting step that watches the quote (issue 17, item 5 and the price band of item 3):
re-pricing when the market moves (`repeg_threshold_bps`, `max_repegs`), holding a placement
back while the spread is too wide (`max_spread_bps`), and the price band (`price_band_bps`).

The simulator's own book stays at 99.90/100.10 (resting orders never fill, market orders
fill whole at its touch); the quotes the walk sees follow a script in virtual time, so
every price below is worked by hand from the script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import SCENARIO_CONFIG, START
from pydantic import ValidationError
from walk_support import (
    broker_orders_by_cid,
    check_invariants,
    expected_limit,
    of_kind,
    resting,
    run_one,
    transitions,
)

from engine import EngineConfig, OrderSide, Quote, SimBroker
from engine.config import journaled_config
from engine.events import EventKind

ARRIVAL = (Decimal("99.90"), Decimal("100.10"))


@dataclass
class ScriptedQuotes(SimBroker):
    """The simulator, quoting from `script`: (seconds after START, bid, ask), the latest
    entry at or before the clock's time."""

    script: list[tuple[float, Decimal, Decimal]] = field(default_factory=list)

    def _scripted(self, symbol: str) -> Quote:
        now = self.clock.now()
        bid, ask = ARRIVAL
        for seconds, b, a in self.script:
            if now >= START + timedelta(seconds=seconds):
                bid, ask = b, a
        return Quote(symbol=symbol, bid=bid, ask=ask, at=now, source="stream")

    async def stream_quote(self, symbol: str, wait_seconds: float) -> Quote | None:
        await super().stream_quote(symbol, wait_seconds)
        return self._scripted(symbol)

    async def latest_quote(self, symbol: str) -> Quote | None:
        await super().latest_quote(symbol)
        return self._scripted(symbol)


def watching(**fields: Any) -> EngineConfig:
    """The seeded scenarios' walk (the original ladder, 10 s steps, no re-pricing) with
    `fields` changed: each test turns on the watch it is about."""
    return EngineConfig.model_validate(SCENARIO_CONFIG.model_dump() | fields)


def scripted_rig(
    make_rig: Any, config: EngineConfig, *script: tuple[float, str, str], **market: Any
) -> Any:
    rig = make_rig(config=config, broker_cls=ScriptedQuotes, **resting(**market))
    rig.broker.script = [(t, Decimal(b), Decimal(a)) for t, b, a in script]
    return rig


def buy_limit(bid: str, ask: str, ratio: str = "0.75") -> Decimal:
    return expected_limit(OrderSide.BUY, Decimal(bid), Decimal(ask), Decimal(ratio))


def sell_limit(bid: str, ask: str, ratio: str = "0.75") -> Decimal:
    return expected_limit(OrderSide.SELL, Decimal(bid), Decimal(ask), Decimal(ratio))


def moves(rig: Any, order_id: str) -> list[tuple[str, str, Decimal | None]]:
    """(trigger, to_state, limit_price) of each transition."""
    return [
        (
            e.data["trigger"],
            str(e.to_state),
            None if "limit_price" not in e.data else Decimal(e.data["limit_price"]),
        )
        for e in transitions(rig, order_id)
    ]


def seconds_of(event: Any) -> float:
    return (datetime.fromisoformat(event.at) - START).total_seconds()


# -- re-pegging --------------------------------------------------------------------------


def test_a_move_beyond_the_threshold_reprices_the_resting_step_in_place(make_rig):
    """The mid falls 20 bps 3 s into step 1: with a 10 bps threshold the step is re-priced
    at once at its own fraction of the new quote, the old order cancelled and confirmed
    before the new one goes, and step 2 still comes 10 s after step 1 began."""
    config = watching(repeg_threshold_bps=Decimal(10))
    rig = scripted_rig(make_rig, config, (3, "99.70", "99.90"))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert result.state == "VALIDATED"
    assert moves(rig, result.order_id)[:4] == [
        ("quote", "QUOTED", None),
        ("start_walk", "LIMIT_STEP_1", buy_limit("99.90", "100.10")),
        ("repeg", "LIMIT_STEP_1", buy_limit("99.70", "99.90")),
        ("next_step", "LIMIT_STEP_2", buy_limit("99.70", "99.90", "0.85")),
    ]
    start, repeg, step2 = transitions(rig, result.order_id)[1:4]
    assert 3 <= seconds_of(repeg) - seconds_of(start) < 5
    # the repeg kept the step's time: step 2 comes 10 s (and the reads of a move) after step 1
    assert 10 <= seconds_of(step2) - seconds_of(start) < 10.5
    assert result.steps_used == 4  # L1 (once, for all its prices), L2, L3, M
    by_cid = broker_orders_by_cid(rig)
    first, second = (by_cid[f"wb-{result.order_id}-L1-{n}"] for n in (1, 2))
    assert (first.limit_price, second.limit_price) == (
        buy_limit("99.90", "100.10"),
        buy_limit("99.70", "99.90"),
    )
    (cancel, *_) = of_kind(rig, result.order_id, EventKind.CANCEL_INTENT)
    (_, resubmit, *_) = of_kind(rig, result.order_id, EventKind.SUBMIT_INTENT)
    assert cancel.data["broker_order_id"] == first.id
    assert cancel.seq < resubmit.seq
    check_invariants(rig, result)


def test_a_move_within_the_threshold_leaves_the_step_alone(make_rig):
    config = watching(repeg_threshold_bps=Decimal(10))
    rig = scripted_rig(make_rig, config, (3, "99.85", "100.05"))  # the mid moves 5 bps
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert [m[0] for m in moves(rig, result.order_id)] == [
        "quote", "start_walk", "next_step", "next_step", "escalate", "settle", "validate",
    ]  # fmt: skip
    check_invariants(rig, result)


def test_a_step_is_repriced_at_most_max_repegs_times(make_rig):
    """The mid falls 20 bps every 2 s: step 1 is re-priced twice, then rests where it is."""
    config = watching(repeg_threshold_bps=Decimal(10), max_repegs=2, ladder=(Decimal("0.75"),))
    rig = scripted_rig(
        make_rig,
        config,
        (2, "99.70", "99.90"),
        (4, "99.50", "99.70"),
        (6, "99.30", "99.50"),
        (8, "99.10", "99.30"),
    )
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert [m[:2] for m in moves(rig, result.order_id)[:5]] == [
        ("quote", "QUOTED"),
        ("start_walk", "LIMIT_STEP_1"),
        ("repeg", "LIMIT_STEP_1"),
        ("repeg", "LIMIT_STEP_1"),
        ("escalate", "MARKET"),
    ]
    check_invariants(rig, result)


def test_without_a_threshold_nothing_watches_the_quote(make_rig):
    rig = scripted_rig(make_rig, watching(), (3, "99.00", "99.20"))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert "repeg" not in [m[0] for m in moves(rig, result.order_id)]
    check_invariants(rig, result)


# -- re-pegging by a fraction of the spread, away from the order only ------------------------

# the arrival spread is 0.20: a quarter of it is a 0.05 move of the mid
QUARTER_SPREAD = watching(repeg_spread_fraction=Decimal("0.25"), ladder=(Decimal("0.75"),))


@pytest.mark.parametrize(
    ("side", "away", "limit"),
    [
        ("buy", ("99.96", "100.16"), buy_limit("99.96", "100.16")),
        ("sell", ("99.84", "100.04"), sell_limit("99.84", "100.04")),
    ],
)
def test_a_move_away_beyond_the_spread_fraction_reprices_the_step(make_rig, side, away, limit):
    """The mid moves 0.06 away from the order 3 s into the step (up for a buy, down for a
    sell), more than a quarter of the 0.20 spread: the step is re-priced at its fraction
    of the new quote, journaled `repeg` with that quote."""
    rig = scripted_rig(make_rig, QUARTER_SPREAD, (3, *away), positions={"AAPL": Decimal(10)})
    result = run_one(rig, symbol="AAPL", side=side, quantity="10")

    assert result.state == "VALIDATED"
    start, repeg = transitions(rig, result.order_id)[1:3]
    assert (repeg.data["trigger"], str(repeg.to_state)) == ("repeg", "LIMIT_STEP_1")
    assert Decimal(repeg.data["limit_price"]) == limit != Decimal(start.data["limit_price"])
    assert (repeg.data["quote"]["bid"], repeg.data["quote"]["ask"]) == away
    assert 3 <= seconds_of(repeg) - seconds_of(start) < 5
    check_invariants(rig, result)


@pytest.mark.parametrize(
    "quote",
    [
        ("99.94", "100.14"),  # away from a buy, 0.04: within a quarter of the spread
        ("99.70", "99.90"),  # 0.20 toward a buy: its resting limit is likelier to fill
    ],
)
def test_a_small_move_or_one_toward_the_order_leaves_the_step_alone(make_rig, quote):
    rig = scripted_rig(make_rig, QUARTER_SPREAD, (3, *quote))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert [m[0] for m in moves(rig, result.order_id)] == [
        "quote", "start_walk", "escalate", "settle", "validate",
    ]  # fmt: skip
    check_invariants(rig, result)


def test_the_defaults_follow_a_move_away_of_a_fifth_of_the_spread(make_rig):
    """The defaults re-price at 0.2 of the spread: a 0.06 rise on a 0.20 spread moves a
    resting buy to step 1's 0.75 of the new quote."""
    rig = scripted_rig(make_rig, EngineConfig(), (3, "99.96", "100.16"))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert moves(rig, result.order_id)[1:3] == [
        ("start_walk", "LIMIT_STEP_1", buy_limit("99.90", "100.10", "0.75")),
        ("repeg", "LIMIT_STEP_1", buy_limit("99.96", "100.16", "0.75")),
    ]
    check_invariants(rig, result)


@pytest.mark.parametrize("fraction", ["0", "-0.1", "10.5", "NaN"])
def test_a_spread_fraction_outside_0_to_10_is_refused(fraction):
    with pytest.raises(ValidationError, match="repeg_spread_fraction"):
        EngineConfig(repeg_spread_fraction=Decimal(fraction))


# -- holding a placement back while the spread is too wide -------------------------------


def test_a_wide_spread_holds_the_placement_back_until_it_narrows(make_rig):
    """A 40 bps spread against a 25 bps limit: nothing is placed (placement_held, once)
    until the spread narrows at 4 s; the step is then re-priced at the narrow quote and
    placed there."""
    config = watching(max_spread_bps=Decimal(25))
    rig = scripted_rig(make_rig, config, (0, "99.80", "100.20"), (4, "99.92", "100.08"))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    (held,) = of_kind(rig, oid, EventKind.PLACEMENT_HELD)
    assert (Decimal(held.data["spread_bps"]), Decimal(held.data["max_spread_bps"])) == (
        Decimal("40.00"),
        Decimal(25),
    )
    first_submit = of_kind(rig, oid, EventKind.SUBMIT_INTENT)[0]
    assert seconds_of(first_submit) >= 4
    assert first_submit.data["client_order_id"].endswith("-L1-1")
    assert Decimal(first_submit.data["limit_price"]) == buy_limit("99.92", "100.08")
    assert ("repeg", "LIMIT_STEP_1", buy_limit("99.92", "100.08")) in moves(rig, oid)
    check_invariants(rig, result)


def test_a_spread_that_never_narrows_places_no_limit_order(make_rig):
    """Held back for all of every step, the walk moves on step by step and ends at market."""
    config = watching(max_spread_bps=Decimal(25))
    rig = scripted_rig(make_rig, config, (0, "99.80", "100.20"))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert len(of_kind(rig, oid, EventKind.PLACEMENT_HELD)) == 3  # one per step
    cids = [e.data["client_order_id"] for e in of_kind(rig, oid, EventKind.SUBMIT_INTENT)]
    assert cids == [f"wb-{oid}-M-1"]
    check_invariants(rig, result)


# -- the price band -----------------------------------------------------------------------


def test_a_market_that_moves_past_the_band_stops_the_order(make_rig):
    """Arrival mid 100, a 30 bps band: a buy may pay at most 100.30. At 5 s the bid is
    100.35: the resting order is cancelled and the order ends FAILED price_band, with
    nothing placed after it."""
    config = watching(price_band_bps=Decimal(30))
    rig = scripted_rig(make_rig, config, (5, "100.35", "100.55"))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert (result.state, result.reason) == ("FAILED", "price_band")
    assert "100.3" in (result.detail or "")
    fail = transitions(rig, oid)[-1]
    assert fail.data["band_edge"] == "100.3"
    assert 5 <= seconds_of(fail) < 7  # seen within a quote watch, not at the step's end
    orders = list(rig.broker.orders.values())
    assert len(orders) == 1
    assert orders[0].status.is_terminal
    assert rig.broker.positions.get("AAPL", Decimal(0)) == 0
    check_invariants(rig, result)


def test_a_step_price_beyond_the_band_is_held_at_its_edge(make_rig):
    """An 8 bps band (edge 100.08): at 2.5 s the quote is 99.95/100.35; step 2 (0.85)
    would pay 100.29, so it rests at the edge, 100.08."""
    config = watching(price_band_bps=Decimal(8))
    rig = scripted_rig(make_rig, config, (2.5, "99.95", "100.35"))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    steps = [m for m in moves(rig, oid) if m[0] == "next_step"]
    assert steps[0] == ("next_step", "LIMIT_STEP_2", Decimal("100.08"))
    assert buy_limit("99.95", "100.35", "0.85") == Decimal("100.29")
    # and the market order is refused: its far touch, 100.35, is beyond the band
    assert (result.state, result.reason) == ("FAILED", "price_band")
    assert not [o for o in rig.broker.orders.values() if o.order_type == "market"]
    check_invariants(rig, result)


def test_an_order_journaled_before_spread_repegs_existed_resumes_without_them():
    """An older walkbook journaled its whole configuration without the key: such an order
    walks on as it was walking, not with the default that came later."""
    journaled = EngineConfig().model_dump(mode="json")
    assert journaled_config(journaled).repeg_spread_fraction == Decimal("0.2")
    older = {key: value for key, value in journaled.items() if key != "repeg_spread_fraction"}
    assert journaled_config(older).repeg_spread_fraction is None
