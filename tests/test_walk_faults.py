"""Walk-the-book under refusals and faults: rejections, closed market, bad intents, partial
market fills, position mismatches, transient errors, unknown outcomes and replace races."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from walk_support import (
    NEVER,
    REPLACING,
    broker_orders_by_cid,
    check_invariants,
    events,
    fills,
    of_kind,
    resting,
    run_one,
    run_plan,
    states,
    steady,
)

from engine import BrokerOrderStatus, Engine, EngineConfig, OrderResult, SimBroker, SymbolSpec
from engine.broker import Asset, BrokerOrder, OrderRequest
from engine.errors import BrokerUnavailable, InvalidIntent, NotReplaceable, OutcomeUnknown
from engine.events import EventKind

# -- refusals -------------------------------------------------------------------------


def test_insufficient_cash_fails_insufficient_funds_before_anything_is_sent(make_rig):
    """A buy the account cannot pay for ends FAILED insufficient_funds and is never sent."""
    rig = make_rig(symbols=steady(spread_bps=20), cash=Decimal("100"))
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert result.state == "FAILED"
    assert result.reason == "insufficient_funds"
    assert result.filled_qty == 0
    assert states(rig, result.order_id) == ["FAILED"]
    (failed,) = of_kind(rig, result.order_id, EventKind.TRANSITION)
    assert Decimal(failed.data["buying_power"]) == Decimal(100)
    assert Decimal(failed.data["requested"]) == Decimal(10)
    assert not of_kind(rig, result.order_id, EventKind.SUBMIT_INTENT)
    assert not fills(rig, result.order_id)
    assert rig.broker.orders == {}
    assert rig.broker.cash == Decimal("100")
    assert "AAPL" not in rig.broker.positions
    check_invariants(rig, result)


def test_broker_rejection_fails_rejected_and_leaves_nothing_open(make_rig):
    """reject_probability=1: the first submit is refused and the order ends FAILED rejected."""
    rig = make_rig(symbols=steady(spread_bps=20), reject_probability=1.0)
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert result.state == "FAILED"
    assert result.reason == "rejected"
    assert result.filled_qty == 0
    assert of_kind(rig, result.order_id, EventKind.REJECTED)
    assert not of_kind(rig, result.order_id, EventKind.SUBMIT_ACK)
    assert all(o.status.is_terminal for o in rig.broker.orders.values())
    assert "AAPL" not in rig.broker.positions
    check_invariants(rig, result)


def test_market_closed_fails_without_sending_an_order(make_rig):
    """A closed market: FAILED market_closed and the simulator never sees an order."""
    rig = make_rig(symbols=steady(spread_bps=20), market_open=False)
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert result.state == "FAILED"
    assert result.reason == "market_closed"
    assert rig.broker.orders == {}
    assert not of_kind(rig, result.order_id, EventKind.SUBMIT_INTENT)
    assert states(rig, result.order_id) == ["FAILED"]
    check_invariants(rig, result)


@pytest.mark.parametrize(
    ("spec_fields", "order"),
    [
        pytest.param(
            {"positions": {"AAPL": Decimal(5)}},
            {"symbol": "AAPL", "side": "sell", "quantity": "10", "close_type": "partial"},
            id="partial-sell-beyond-position",
        ),
        pytest.param(
            {"positions": {"AAPL": Decimal(5)}},
            {"symbol": "AAPL", "side": "sell", "quantity": "6"},
            id="sell-beyond-position",
        ),
        pytest.param(
            {"unknown_symbols": ["ZZZZ"]},
            {"symbol": "ZZZZ", "side": "buy", "quantity": "1"},
            id="unknown-symbol",
        ),
        pytest.param(
            {
                "symbols": {
                    "NOFR": SymbolSpec(price=Decimal("50"), volatility_bps=0, fractionable=False)
                }
            },
            {"symbol": "NOFR", "side": "buy", "quantity": "2.5"},
            id="fractional-on-non-fractionable",
        ),
    ],
)
def test_preflight_refuses_bad_intents_before_anything_is_journaled(make_rig, spec_fields, order):
    """A bad intent raises InvalidIntent in preflight: no journal event and no broker order."""
    rig = make_rig(**spec_fields)
    good = {"symbol": "MSFT", "side": "buy", "quantity": "1"}
    with pytest.raises(InvalidIntent):
        run_plan(rig, good, order)

    assert events(rig) == []
    assert rig.journal.orders() == []
    assert rig.broker.orders == {}
    assert rig.broker.positions == {k: v for k, v in rig.broker.spec.positions.items() if v}


# -- market partial fills -------------------------------------------------------------


def test_single_partial_market_fill_is_a_failure_not_a_success(make_rig):
    """One market attempt that fills partly ends FAILED partial_fill with the true filled qty."""
    rig = make_rig(
        config=EngineConfig(market_attempts=1),
        symbols=steady(spread_bps=20),
        fill_intensity=NEVER,
        market_partial_probability=1.0,
    )
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert result.state == "FAILED"
    assert result.reason == "partial_fill"
    (market,) = [o for o in rig.broker.orders.values() if o.order_type == "market"]
    assert market.client_order_id.endswith("-M-1")
    assert 0 < market.filled_qty < Decimal(10)
    assert result.filled_qty == market.filled_qty
    assert rig.broker.positions["AAPL"] == result.filled_qty
    check_invariants(rig, result)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_partial_market_fills_are_retried_or_failed_never_counted_whole(make_rig, seed):
    """Partial market fills: further -M-k attempts finish it, or it ends FAILED partial_fill."""
    rig = make_rig(
        seed=seed,
        symbols=steady(spread_bps=20),
        fill_intensity=NEVER,
        market_partial_probability=1.0,
    )
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    market = sorted(
        (o for o in rig.broker.orders.values() if o.order_type == "market"), key=lambda o: o.id
    )
    suffixes = [o.client_order_id.rsplit("-", 2)[-2:] for o in market]
    assert suffixes == [["M", str(k)] for k in range(1, len(market) + 1)]
    assert market[0].filled_qty < Decimal(10)  # the first attempt really was partial
    filled = sum(o.filled_qty for o in rig.broker.orders.values())
    assert result.filled_qty == filled
    assert rig.broker.positions.get("AAPL", Decimal(0)) == filled
    if result.state == "VALIDATED":
        assert len(market) >= 2
        assert filled == Decimal(10)
    else:
        assert (result.state, result.reason) == ("FAILED", "partial_fill")
        assert filled < Decimal(10)
        assert len(market) == rig.engine.config.market_attempts
    check_invariants(rig, result)


# -- validation -----------------------------------------------------------------------


class UnderReportingBroker(SimBroker):
    """Reports one share less than it holds once anything on the symbol has filled."""

    async def get_position(self, symbol: str) -> Decimal:
        actual = await super().get_position(symbol)
        if any(o.filled_qty for o in self.orders.values() if o.symbol == symbol):
            return actual - 1
        return actual


def buy_ten_filling_at_once(
    make_rig: Any, broker_cls: type[SimBroker], partial_fill_probability: float = 0.0
) -> tuple[Any, OrderResult]:
    """A buy of 10 AAPL on `broker_cls` whose limit orders fill at once (maybe in parts)."""
    rig = make_rig(
        broker_cls=broker_cls,
        symbols=steady(spread_bps=20),
        fill_intensity=1e9,
        partial_fill_probability=partial_fill_probability,
    )
    return rig, run_one(rig, symbol="AAPL", side="buy", quantity="10")


class FillReportingBroker(SimBroker):
    """Stamps each filled order view with the position after it, as Alpaca's trade_updates
    do (`position_qty`), off by `skew`; counts position reads."""

    skew = Decimal(0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position_reads = 0

    def _stamped(self, order: BrokerOrder) -> BrokerOrder:
        if not order.filled_qty:
            return order
        held = self.positions.get(order.symbol, Decimal(0))
        return replace(order, position_after=held + self.skew)

    async def submit_order(self, request: OrderRequest) -> BrokerOrder:
        return self._stamped(await super().submit_order(request))

    async def get_order(self, order_id: str) -> BrokerOrder:
        return self._stamped(await super().get_order(order_id))

    async def wait_for_update(self, order_id: str, timeout_seconds: float) -> BrokerOrder:
        return self._stamped(await super().wait_for_update(order_id, timeout_seconds))

    async def get_position(self, symbol: str) -> Decimal:
        self.position_reads += 1
        return await super().get_position(symbol)


class MisreportingBroker(FillReportingBroker):
    skew = Decimal(1)


@pytest.mark.parametrize(
    ("broker_cls", "from_fill", "reads"),
    [(FillReportingBroker, True, 1), (MisreportingBroker, False, 2)],
)
def test_validation_takes_the_position_reported_with_the_last_fill_only_when_it_agrees(
    make_rig, broker_cls, from_fill, reads
):
    """A position the broker reported with the order's last fill that shows every fill is
    the validation: no read after the fills. One that does not is never trusted over the
    broker's positions: the order is validated from a read (which agrees here)."""
    rig, result = buy_ten_filling_at_once(make_rig, broker_cls, partial_fill_probability=0.5)

    assert result.state == "VALIDATED"
    (after,) = [
        e
        for e in of_kind(rig, result.order_id, EventKind.POSITION_READ)
        if e.data["phase"] == "after"
    ]
    assert after.data["qty"] == "10"
    assert after.data.get("from_fill", False) is from_fill
    assert rig.broker.position_reads == reads
    check_invariants(rig, result)


def test_position_that_disagrees_with_fills_fails_validation_mismatch(make_rig):
    """After filling 10, a broker reporting 9 makes the order FAILED validation_mismatch."""
    rig, result = buy_ten_filling_at_once(make_rig, UnderReportingBroker)

    assert result.state == "FAILED"
    assert result.reason == "validation_mismatch"
    assert result.filled_qty == Decimal(10)
    failed = [e for e in events(rig, result.order_id) if e.to_state == "FAILED"][-1]
    assert failed.from_state == "SETTLING"
    assert (failed.data["expected"], failed.data["actual"]) == ("10", "9")
    check_invariants(rig, result)


# -- transient errors and unknown outcomes ----------------------------------------------


class ErrorCountingBroker(SimBroker):
    """A SimBroker that counts the transient read errors its fault knob injects."""

    read_errors: int = 0

    async def _call(self, *, read: bool = True) -> None:
        try:
            await super()._call(read=read)
        except BrokerUnavailable:
            self.read_errors += 1
            raise


@pytest.mark.parametrize(
    "seed",
    [9, 13, 19, 3],
)
def test_transient_read_errors_are_retried_not_mistaken_for_rejections(make_rig, seed):
    """20% of reads fail with a 503: the walk retries them and still validates."""
    rig = make_rig(
        broker_cls=ErrorCountingBroker,
        seed=seed,
        symbols=steady(spread_bps=20),
        fill_intensity=0.05,
        read_error_probability=0.2,
        market_partial_probability=0.0,
    )
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert rig.broker.read_errors > 0  # the faults really happened
    assert result.state == "VALIDATED"
    assert result.reason is None
    assert not of_kind(rig, result.order_id, EventKind.REJECTED)
    assert not of_kind(rig, result.order_id, EventKind.ERROR)
    assert result.filled_qty == Decimal(10)
    check_invariants(rig, result)


class FlakyAssetBroker(SimBroker):
    """The first asset lookup fails with a transient 503; later ones answer."""

    failed_once: bool = False

    async def get_asset(self, symbol: str) -> Asset:
        if not self.failed_once:
            self.failed_once = True
            raise BrokerUnavailable("simulated transient read error (HTTP 503)")
        return await super().get_asset(symbol)


def test_transient_error_in_preflight_is_not_an_invalid_intent(make_rig):
    """One transient 503 while preflight checks the asset must not refuse a valid plan."""
    rig = make_rig(broker_cls=FlakyAssetBroker, symbols=steady(spread_bps=20), fill_intensity=1e9)
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert result.state == "VALIDATED"
    check_invariants(rig, result)


def test_submit_timeout_after_acceptance_adopts_the_order_by_client_id(make_rig):
    """Every submit times out after the broker accepted it: the walk adopts, never duplicates."""
    rig = make_rig(
        symbols=steady(spread_bps=20), fill_intensity=NEVER, submit_timeout_probability=1.0,
        market_partial_probability=0.0,
    )  # fmt: skip
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert result.filled_qty == Decimal(10)
    intents = of_kind(rig, oid, EventKind.SUBMIT_INTENT)
    unknown = of_kind(rig, oid, EventKind.OUTCOME_UNKNOWN)
    acks = of_kind(rig, oid, EventKind.SUBMIT_ACK)
    assert intents
    assert [e.data["client_order_id"] for e in unknown] == [
        e.data["client_order_id"] for e in intents
    ]
    assert [e.data["client_order_id"] for e in acks] == [e.data["client_order_id"] for e in intents]
    assert all(e.data["adopted"] is True for e in acks)
    # each unknown comes after its intent and before its ack
    log = events(rig, oid)
    for intent, gap, ack in zip(intents, unknown, acks, strict=True):
        assert log.index(intent) < log.index(gap) < log.index(ack)
    # exactly one broker order per client_order_id, and it is the one adopted
    counts = Counter(o.client_order_id for o in rig.broker.orders.values())
    assert set(counts.values()) == {1}
    by_cid = broker_orders_by_cid(rig)
    for ack in acks:
        assert by_cid[ack.data["client_order_id"]].id == ack.data["broker_order_id"]
    assert rig.broker.positions["AAPL"] == Decimal(10)
    check_invariants(rig, result)


# -- replace races --------------------------------------------------------------------


class FillsBeforeReplaceBroker(SimBroker):
    """The old order fills completely just before the replace arrives, so the replace is refused."""

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        old = self.orders[order_id]
        if not old.status.is_terminal:
            assert old.limit_price is not None
            self._fill(old, old.remaining, old.limit_price)
        raise NotReplaceable(
            f"order {order_id} is {old.status.value} and cannot be replaced",
            status=old.status.value,
        )


def test_replace_refused_because_old_order_filled_does_not_overfill(make_rig):
    """Replace refused (old order filled first): its fills are counted, nothing more is sent."""
    rig = make_rig(broker_cls=FillsBeforeReplaceBroker, config=REPLACING, **resting())
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert result.filled_qty == Decimal(10)
    (l1,) = rig.broker.orders.values()  # no second order was ever created
    assert l1.client_order_id.endswith("-L1-1")
    assert l1.status is BrokerOrderStatus.FILLED
    assert l1.filled_qty == Decimal(10)
    assert rig.broker.positions["AAPL"] == Decimal(10)
    (refused,) = of_kind(rig, oid, EventKind.REJECTED)
    assert refused.data["reason"] == "not_replaceable"
    assert not of_kind(rig, oid, EventKind.REPLACE_ACK)
    assert [e.data["client_order_id"] for e in of_kind(rig, oid, EventKind.SUBMIT_INTENT)] == [
        l1.client_order_id
    ]
    check_invariants(rig, result)


class FillsDuringReplaceBroker(SimBroker):
    """Three shares of the old order fill just before the broker applies the replace."""

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        old = self.orders[order_id]
        if not old.status.is_terminal and old.remaining > 3:
            assert old.limit_price is not None
            self._fill(old, Decimal(3), old.limit_price)
        return await super().replace_order(order_id, qty, limit_price, client_order_id)


@pytest.mark.parametrize(
    "spread_bps",
    [
        pytest.param(20, id="new-order-rests"),
        pytest.param(10, id="new-order-marketable"),
    ],
)
def test_fill_landing_during_replace_never_overfills(make_rig, spread_bps):
    """Old order fills 3 while a replace is in flight: total filled must still equal qty."""
    rig = make_rig(
        broker_cls=FillsDuringReplaceBroker,
        config=REPLACING,
        symbols=steady(spread_bps=spread_bps),
        fill_intensity=NEVER,
        market_partial_probability=0.0,
    )
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")

    assert rig.broker.orders["sim-000001"].filled_qty == Decimal(3)  # the race really happened
    assert result.filled_qty == Decimal(10)
    assert rig.broker.positions["AAPL"] == Decimal(10)
    assert result.state == "VALIDATED"
    check_invariants(rig, result)


class ReplaceTimesOutBroker(SimBroker):
    """Applies every replace, then loses the answer (a timeout after acceptance)."""

    async def replace_order(
        self, order_id: str, qty: Decimal, limit_price: Decimal, client_order_id: str
    ) -> BrokerOrder:
        await super().replace_order(order_id, qty, limit_price, client_order_id)
        raise OutcomeUnknown("simulated timeout after the replace was accepted")


def test_replace_with_unknown_outcome_is_adopted_not_repeated(make_rig):
    """A replace whose answer is lost is found by client_order_id and adopted; no second one."""
    rig = make_rig(broker_cls=ReplaceTimesOutBroker, config=REPLACING, **resting())
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state == "VALIDATED"
    intents = of_kind(rig, oid, EventKind.REPLACE_INTENT)
    acks = of_kind(rig, oid, EventKind.REPLACE_ACK)
    unknown = of_kind(rig, oid, EventKind.OUTCOME_UNKNOWN)
    assert len(intents) == len(acks) == len(unknown) == 2
    assert all(a.data["adopted"] is True for a in acks)
    by_cid = broker_orders_by_cid(rig)
    for intent, ack in zip(intents, acks, strict=True):
        new = by_cid[ack.data["client_order_id"]]
        assert new.id == ack.data["broker_order_id"]
        assert new.replaces == intent.data["broker_order_id"]
        assert rig.broker.orders[new.replaces].status is BrokerOrderStatus.REPLACED
    assert len(by_cid) == len(rig.broker.orders)
    check_invariants(rig, result)


# -- cancel races and outages ------------------------------------------------------------


class FillsAtCancelBroker(SimBroker):
    """Part or all of an order fills after the cancel was sent, before it takes effect."""

    fill_share: Decimal = Decimal(1)

    async def cancel_order(self, order_id: str) -> None:
        order = self.orders[order_id]
        if not order.status.is_terminal:
            assert order.limit_price is not None
            qty = (order.remaining * self.fill_share).to_integral_value()
            self._fill(order, qty, order.limit_price)
        await super().cancel_order(order_id)


@pytest.mark.parametrize("fill_share", [Decimal(1), Decimal("0.3")], ids=["all", "part"])
def test_fill_arriving_after_the_cancel_is_counted_before_the_market_order(make_rig, fill_share):
    """Escalating to market cancels the last limit order; fills that beat the cancel count."""
    rig = make_rig(broker_cls=FillsAtCancelBroker, config=REPLACING, **resting())
    rig.broker.fill_share = fill_share
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state == "VALIDATED"
    assert result.filled_qty == Decimal(10)
    assert rig.broker.positions["AAPL"] == Decimal(10)
    by_cid = broker_orders_by_cid(rig)
    limit_fill = sum(o.filled_qty for cid, o in by_cid.items() if "-M-" not in cid)
    assert limit_fill == (Decimal(10) * fill_share).to_integral_value()  # the race happened
    market = [o for cid, o in by_cid.items() if "-M-" in cid]
    assert sum(o.qty for o in market) == Decimal(10) - limit_fill  # only what was left
    (cancel,) = of_kind(rig, oid, EventKind.CANCEL_INTENT)
    assert all(e.seq > cancel.seq for e in of_kind(rig, oid, EventKind.SUBMIT_INTENT)[1:])
    check_invariants(rig, result)


class ReadOutageBroker(SimBroker):
    """Once the first order is on the book, every read fails for a while (HTTP 503)."""

    outage_seconds: float = 120.0
    outage_until: float | None = None

    async def submit_order(self, request: OrderRequest) -> BrokerOrder:
        order = await super().submit_order(request)
        if self.outage_until is None:
            self.outage_until = self.clock.monotonic() + self.outage_seconds
        return order

    async def _call(self, *, read: bool = True) -> None:
        await super()._call(read=read)
        if read and self.outage_until is not None and self.clock.monotonic() < self.outage_until:
            raise BrokerUnavailable("simulated outage (HTTP 503)")


def test_status_reads_that_keep_failing_pull_the_order_and_leave_it_for_resume(make_rig):
    """An outage longer than the retries: not a rejection, no live order left, resume finishes."""
    rig = make_rig(broker_cls=ReadOutageBroker, **resting())
    result = run_one(rig, symbol="AAPL", side="buy", quantity="10")
    oid = result.order_id

    assert result.state.startswith("LIMIT_STEP_")  # interrupted mid-walk, not FAILED
    assert not of_kind(rig, oid, EventKind.REJECTED)
    (error,) = of_kind(rig, oid, EventKind.ERROR)
    assert error.data["error"] == "broker_unavailable"
    (l1,) = rig.broker.orders.values()
    assert l1.status in (BrokerOrderStatus.PENDING_CANCEL, BrokerOrderStatus.CANCELED)
    (cancel,) = of_kind(rig, oid, EventKind.CANCEL_INTENT)
    assert cancel.data["broker_order_id"] == l1.id

    rig.clock.run(rig.clock.sleep(rig.broker.outage_seconds))  # the outage passes
    rig.engine.close()
    rig.engine = Engine(rig.broker, rig.journal_path, clock=rig.clock)  # a fresh process
    (order,) = rig.engine.resume_sync().orders
    assert order.result.state == "VALIDATED"
    assert order.result.filled_qty == Decimal(10)
    check_invariants(rig, order.result)
