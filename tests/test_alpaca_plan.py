"""Done means: a 20-order plan runs end to end through alpaca-py against the sim-server, with
trade_updates live, no order-status polling, and inside Alpaca's 200-requests-a-minute budget."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from alpaca_support import EAGER, RESTING, alpaca_rig, market

from engine import OrderState, PlanStatus

SELLS = {"NVDA": "12", "AMZN": "7.5", "GOOG": "30", "META": "4", "NFLX": "2.25", "AMD": "40"}
BUYS = {
    "AAPL": "10", "MSFT": "3", "TSLA": "5", "INTC": "25", "ORCL": "6", "IBM": "2.5",
    "CSCO": "15", "ADBE": "1", "CRM": "4", "PYPL": "9", "UBER": "11", "SHOP": "0.75",
    "QCOM": "3", "TXN": "2",
}  # fmt: skip


def test_twenty_order_plan_streams_fills_and_stays_inside_the_rate_budget(tmp_path: Path) -> None:
    orders = [
        {"symbol": s, "side": "sell", "quantity": q, "close_type": "full" if i % 2 else "partial"}
        for i, (s, q) in enumerate(SELLS.items())
    ] + [{"symbol": s, "side": "buy", "quantity": q} for s, q in BUYS.items()]
    assert len(orders) == 20
    spec = market(
        EAGER,
        partial_fill_probability=0.3,
        symbols={},
        positions={s: Decimal(q) for s, q in SELLS.items()},
    )
    with alpaca_rig(tmp_path, spec, config=RESTING) as rig:
        result = rig.run(*orders, plan_id="twenty")
        rig.check(result)
        counters = rig.broker.counters
        per_order = counters.rest_calls / len(orders)
        print(
            f"REST calls: {counters.rest_calls} ({per_order:.1f} per order) {counters.by_endpoint}"
        )
        assert result.status is PlanStatus.SUCCESS
        assert all(o.state == OrderState.VALIDATED for o in result.orders)
        # fills arrive over trade_updates: not one status poll, not one refresh
        assert counters.status_polls == 0
        assert counters.order_refreshes == 0
        assert counters.trade_updates >= 2 * len(orders)
        # inside the budget: the adapter never had to wait and the server never said 429
        # facts every walk asks for at once are read once: the clock, and the asset list
        # (every symbol of the plan is on it: not one read of a single asset)
        assert counters.by_endpoint["get_clock"] == 1
        assert counters.by_endpoint["get_assets"] == 1
        assert "get_asset" not in counters.by_endpoint
        assert counters.rest_calls + 1 <= 190
        assert counters.throttled == 0
        assert rig.server.app.stats["rate_limited"] == 0
        assert counters.rate_limited == 0
        assert result.quote_counters["streaming_success"] >= len(orders)
