"""Why an order FAILED, in one line, wherever a failure is shown: the result, the hook
notice, the log line of the FAILED transition, `walkbook status` (text and --json) and
`walkbook report` (text, --json, HTML); and an urgency HIGH order with no usable quote
going to market under `market_without_quote`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any

import pytest
from alpaca.trading.enums import OrderSide as SdkSide
from alpaca.trading.enums import TimeInForce
from alpaca.trading.requests import LimitOrderRequest
from alpaca_support import NEVER, alpaca_rig, market
from click.testing import CliRunner
from structlog.testing import capture_logs
from walk_support import check_invariants, resting, run_plan, states, steady, transitions

from engine import (
    Engine,
    EngineConfig,
    MarketSpec,
    OrderResult,
    OrderTransitioned,
    SimBroker,
    SymbolSpec,
    parse_plan,
)
from engine.cli import main
from engine.crash import CrashPoints, SimulatedCrash
from engine.events import EventKind, Failed
from engine.order import DETAIL_LIMIT, failure_detail, fold_orders
from engine.walk import MARKET_WITHOUT_QUOTE

FAILED = "FAILED"
HALT = SymbolSpec(price=Decimal("50"), spread_bps=10, volatility_bps=0, tradable=False)
# every quote either source shows is corrupt (a negative bid): none is usable
UNQUOTED = steady()["AAPL"].model_copy(
    update={
        "stream_quote": (Decimal("-100"), Decimal("100.50")),
        "rest_quote": (Decimal("-100"), Decimal("100.50")),
    }
)


@dataclass
class Watched:
    """What an engine said while it ran: the notices its hook got and its log lines."""

    notices: list[OrderTransitioned] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)


def watch(engine: Engine) -> Watched:
    watched = Watched()
    engine.subscribe(OrderTransitioned, watched.notices.append)
    return watched


def cli(*args: str) -> Any:
    shown = CliRunner().invoke(main, list(args))
    assert shown.exit_code == 0, shown.output
    return shown


def check_detail_everywhere(
    result: OrderResult, watched: Watched, journal: Path, tmp_path: Path, detail: str
) -> None:
    """The failure's reason and `detail` in the result, the hook notice, the FAILED
    transition's log line, `walkbook status` and `walkbook report`."""
    order_id, reason = result.order_id, result.reason
    assert (result.state, result.detail) == (FAILED, detail)
    assert result.failure == f"{reason}: {detail}"

    (notice,) = [n for n in watched.notices if n.order_id == order_id and n.dest == FAILED]
    assert (notice.reason, notice.detail) == (reason, detail)
    assert all(n.detail is None for n in watched.notices if n.dest != FAILED)

    (line,) = [
        log
        for log in watched.logs
        if log["event"] == "order.transition"
        and log["dest"] == FAILED
        and log["order_id"] == order_id
    ]
    assert (line["reason"], line["detail"]) == (reason, detail)

    line_of_failure = f"{order_id} {result.symbol} FAILED {reason}: {detail}"
    assert line_of_failure in cli("status", "--journal", str(journal)).stdout.splitlines()
    rows = json.loads(cli("status", "--journal", str(journal), "--json").stdout)
    (row,) = [r for r in rows if r["order_id"] == order_id]
    assert (row["reason"], row["detail"]) == (reason, detail)

    report_line = f"{result.symbol} {order_id} FAILED {reason}: {detail}"
    assert report_line in cli("report", "--journal", str(journal)).stdout.splitlines()
    report = json.loads(cli("report", "--journal", str(journal), "--json").stdout)
    (quality,) = [o for o in report["orders"] if o["order_id"] == order_id]
    assert (quality["reason"], quality["detail"]) == (reason, detail)
    page = tmp_path / f"report-{order_id}.html"
    cli("report", "--journal", str(journal), "--html", str(page))
    assert escape(f"{reason}: {detail}") in page.read_text()


def run_watched(rig: Any, *orders: dict[str, Any]) -> tuple[OrderResult, Watched]:
    """The plan's first order's result, with what the engine said on the way."""
    watched = watch(rig.engine)
    with capture_logs() as logs:
        result = run_plan(rig, *orders)
    watched.logs = logs
    return result.orders[0], watched


def resumed_on(rig: Any, later: MarketSpec, *orders: dict[str, Any]) -> tuple[OrderResult, Watched]:
    """The plan journaled on the rig's broker, the process killed before any order walked,
    then resumed against a broker whose market has since become `later`."""
    rig.engine.close()
    crashing = Engine(
        rig.broker,
        rig.journal_path,
        clock=rig.clock,
        crash_points=CrashPoints(armed=f"after_append.{EventKind.CREATED}"),
    )
    with pytest.raises(SimulatedCrash):
        crashing.execute_plan_sync(parse_plan({"plan_id": "p1", "orders": list(orders)}))
    crashing.close()
    rig.engine = Engine(SimBroker(later, rig.clock), rig.journal_path, clock=rig.clock)
    assert {r["state"] for r in rig.journal.orders()} == {"PENDING"}
    watched = watch(rig.engine)
    with capture_logs() as logs:
        report = rig.engine.resume_sync()
    watched.logs = logs
    return report.orders[0].result, watched


# -- one line of why, for each way an order fails ---------------------------------------


def test_an_invalid_intent_skipped_from_a_plan_says_what_preflight_found(
    make_rig: Any, tmp_path: Path
) -> None:
    rig = make_rig(
        **resting(symbols=steady() | {"HALT": HALT}),
        config=EngineConfig(validation="skip_invalid"),
    )
    halt, watched = run_watched(
        rig,
        {"symbol": "HALT", "side": "buy", "quantity": "5"},
        {"symbol": "AAPL", "side": "buy", "quantity": "1", "urgency": "HIGH"},
    )
    assert halt.reason == "invalid_intent"
    detail = "order 0 (HALT buy 5): asset is not tradable"
    check_detail_everywhere(halt, watched, rig.journal_path, tmp_path, detail)


def test_an_asset_halted_before_its_order_walks_fails_not_tradable_naming_it(
    make_rig: Any, tmp_path: Path
) -> None:
    rig = make_rig(**resting(symbols={"HALT": HALT.model_copy(update={"tradable": True})}))
    halted = MarketSpec(**resting(symbols={"HALT": HALT}))
    result, watched = resumed_on(rig, halted, {"symbol": "HALT", "side": "buy", "quantity": "5"})
    assert result.reason == "not_tradable"
    check_detail_everywhere(result, watched, rig.journal_path, tmp_path, "HALT is not tradable")


def test_a_position_sold_elsewhere_fails_insufficient_position_with_both_figures(
    make_rig: Any, tmp_path: Path
) -> None:
    rig = make_rig(**resting(symbols=steady(), positions={"AAPL": Decimal(5)}))
    smaller = MarketSpec(**resting(symbols=steady(), positions={"AAPL": Decimal(3)}))
    result, watched = resumed_on(rig, smaller, {"symbol": "AAPL", "side": "sell", "quantity": "5"})
    assert result.reason == "insufficient_position"
    detail = "sell of 5 exceeds the position of 3"
    check_detail_everywhere(result, watched, rig.journal_path, tmp_path, detail)


def test_no_usable_quote_says_so(make_rig: Any, tmp_path: Path) -> None:
    rig = make_rig(**resting(symbols={"AAPL": UNQUOTED}))
    result, watched = run_watched(rig, {"symbol": "AAPL", "side": "buy", "quantity": "2"})
    assert result.reason == "no_quote"
    assert not rig.broker.orders
    check_detail_everywhere(result, watched, rig.journal_path, tmp_path, "no usable quote for AAPL")


def test_a_buy_the_funds_do_not_cover_says_what_it_needs_against_what_is_left(
    make_rig: Any, tmp_path: Path
) -> None:
    """Costed at the ask (100.05) plus the 50 bps buffer, 100.55 a share: 20 shares do not
    fit in the $1,000 cash buys, and the buy is failed before it is sent."""
    rig = make_rig(**resting(symbols=steady(), cash=Decimal(1000)))
    result, watched = run_watched(rig, {"symbol": "AAPL", "side": "buy", "quantity": "20"})
    assert result.reason == "insufficient_funds"
    assert not rig.broker.orders
    detail = (
        "buy of 20 at about 100.55 a share does not fit the 1000 of "
        "non_marginable_buying_power left"
    )
    check_detail_everywhere(result, watched, rig.journal_path, tmp_path, detail)


def test_a_closed_market_says_so(make_rig: Any, tmp_path: Path) -> None:
    rig = make_rig(**resting(symbols=steady(), market_open=False))
    result, watched = run_watched(rig, {"symbol": "AAPL", "side": "buy", "quantity": "2"})
    assert result.reason == "market_closed"
    check_detail_everywhere(result, watched, rig.journal_path, tmp_path, "the market is closed")


def test_a_refusal_through_alpaca_py_carries_the_broker_s_message_and_figures(
    tmp_path: Path,
) -> None:
    """sim-server answers the sell 403 as Alpaca does when open orders hold shares: the
    detail is the adapter's (redacted) message with the figures of the answer's body."""
    spec = market(NEVER, positions={"AAPL": Decimal(5)})
    with alpaca_rig(tmp_path, spec) as rig:
        holding = LimitOrderRequest(
            symbol="AAPL",
            qty=2,
            side=SdkSide.SELL,
            time_in_force=TimeInForce.DAY,
            limit_price=300,
            client_order_id="held-elsewhere-1",
        )
        rig.broker.rest.trading.submit_order(holding)
        watched = watch(rig.engine)
        with capture_logs() as logs:
            result = rig.run({"symbol": "AAPL", "side": "sell", "quantity": "5"}).orders[0]
        watched.logs = logs
        assert result.reason == "insufficient_position"
        assert rig.events(EventKind.REJECTED)  # sent, and refused by the broker
        detail = (
            "alpaca: HTTP 403: insufficient qty available for order (requested: 5, "
            "available: 3); available 3, existing_qty 5, held_for_orders 2"
        )
        check_detail_everywhere(result, watched, rig.journal_path, tmp_path, detail)
        assert "test-secret-never-logged" not in json.dumps(result.model_dump(mode="json"))


def test_a_detail_is_one_line_of_at_most_about_two_hundred_characters(make_rig: Any) -> None:
    rig = make_rig(**resting(symbols={"AAPL": UNQUOTED}))
    result, _ = run_watched(rig, {"symbol": "AAPL", "side": "buy", "quantity": "2"})
    record = fold_orders(rig.journal.events(order_id=result.order_id))[result.order_id]
    message = "the broker said:\n" + "far too much " * 40
    detail = failure_detail(record, Failed(trigger="fail", reason="rejected", message=message))
    assert detail is not None
    assert "\n" not in detail
    assert detail.startswith("the broker said: far too much")
    assert detail.endswith(" ...")
    assert len(detail) <= DETAIL_LIMIT + len(" ...")


def test_walkbook_run_ends_with_each_failure_s_line(tmp_path: Path) -> None:
    """The run's own output, below its results table, and its --result-json."""
    market_file, plan_file = tmp_path / "market.json", tmp_path / "plan.json"
    config_file, result_file = tmp_path / "config.json", tmp_path / "result.json"
    symbols = {"AAPL": {"price": "100"}, "HALT": {"price": "50", "tradable": False}}
    market_file.write_text(json.dumps({"symbols": symbols}))
    config_file.write_text(json.dumps({"validation": "skip_invalid"}))
    orders = [
        {"symbol": "HALT", "side": "buy", "quantity": "5"},
        {"symbol": "AAPL", "side": "buy", "quantity": "1"},
    ]
    plan_file.write_text(json.dumps({"plan_id": "p1", "orders": orders}))
    shown = CliRunner().invoke(
        main,
        ["run", str(plan_file), "--journal", str(tmp_path / "j.db"), "--market", str(market_file),
         "--engine-config", str(config_file), "--result-json", str(result_file)],
    )  # fmt: skip
    assert shown.exit_code == 1, shown.output
    halt = json.loads(result_file.read_text())["orders"][0]
    detail = "order 0 (HALT buy 5): asset is not tradable"
    assert (halt["reason"], halt["detail"]) == ("invalid_intent", detail)
    line = f"HALT {halt['order_id']} FAILED invalid_intent: {detail}"
    assert line in shown.stdout.splitlines()


# -- market_without_quote ---------------------------------------------------------------

HIGH_BUY = {"symbol": "AAPL", "side": "buy", "quantity": "4", "urgency": "HIGH"}


def test_high_urgency_without_a_quote_goes_to_market_when_allowed(make_rig: Any) -> None:
    rig = make_rig(
        **resting(symbols={"AAPL": UNQUOTED}), config=EngineConfig(market_without_quote=True)
    )
    result = run_plan(rig, HIGH_BUY)
    (order,) = result.orders
    assert (order.state, order.filled_qty) == ("VALIDATED", Decimal(4))
    assert (order.arrival_mid, order.slippage_bps) == (None, None)
    (sent,) = rig.broker.orders.values()
    assert sent.order_type == "market"
    quoted, escalated = transitions(rig, order.order_id)[:2]
    assert (quoted.to_state, quoted.data["quote"]) == ("QUOTED", None)
    assert quoted.data["quote_missing"] == MARKET_WITHOUT_QUOTE
    assert (escalated.to_state, escalated.data["quote"]) == ("MARKET", None)
    check_invariants(rig, result)


def test_high_urgency_without_a_quote_fails_no_quote_by_default(make_rig: Any) -> None:
    rig = make_rig(**resting(symbols={"AAPL": UNQUOTED}))
    (order,) = run_plan(rig, HIGH_BUY).orders
    assert (order.state, order.reason, order.detail) == (
        FAILED,
        "no_quote",
        "no usable quote for AAPL",
    )
    assert not rig.broker.orders


def test_only_high_urgency_goes_to_market_without_a_quote(make_rig: Any) -> None:
    rig = make_rig(
        **resting(symbols={"AAPL": UNQUOTED}), config=EngineConfig(market_without_quote=True)
    )
    (order,) = run_plan(rig, {**HIGH_BUY, "urgency": "MEDIUM"}).orders
    assert (order.state, order.reason) == (FAILED, "no_quote")
    assert states(rig, order.order_id) == [FAILED]  # never QUOTED without a quote
    assert not rig.broker.orders
