"""Hostile input: every malformed file or flag is refused with exit 2 and one line on stderr,
before anything is journaled or sent, and never reaches the user as a traceback."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import MarketSpec, SimBroker, VirtualClock
from engine.brokers.simserver.faults import FaultSpec
from engine.cli import main
from engine.config import EngineConfig
from engine.errors import InvalidIntent, InvalidPlan
from engine.intents import OrderIntent, load_plan, parse_plan
from engine.jsonfile import MAX_JSON_BYTES
from journal import Journal

WALKBOOK = str(Path(sys.executable).parent / "walkbook")
ORDER = {"symbol": "AAPL", "side": "buy", "quantity": "3"}
PLAN = {"plan_id": "p", "orders": [ORDER]}
NO_KEYS = {"APCA_API_KEY_ID": None, "APCA_API_SECRET_KEY": None}


def invoke(*args: str | Path) -> Result:
    """The CLI in-process, without Alpaca keys (a sim-server never starts serving)."""
    return CliRunner().invoke(main, [str(a) for a in args], env=NO_KEYS)


def write(path: Path, content: Any) -> Path:
    """`content` as the file's bytes: bytes as they are, text as UTF-8, anything else as JSON."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def event_count(journal: Path) -> int:
    if not journal.exists():
        return 0
    with Journal.open_readonly(journal) as j:
        return len(list(j.events()))


def assert_refused(result: Result, needle: str, journal: Path | None = None) -> None:
    """Exit 2, one `walkbook: error:` line naming the problem, no traceback, nothing journaled."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("walkbook: error:"), lines[0]
    assert needle in lines[0], lines[0]
    if journal is not None:
        assert event_count(journal) == 0


def run_plan(tmp_path: Path, plan: Any, *extra: str | Path) -> tuple[Result, Path]:
    journal = tmp_path / "j.db"
    plan_file = write(tmp_path / "plan.json", plan)
    return invoke("run", plan_file, "--journal", journal, *extra), journal


# -- finding 1: what reached the user as a traceback ------------------------------------------

DEEP = "[" * 100_000
PLAN_FILES = [
    ("not utf-8", b'{"plan_id":"p\xff"}', "not UTF-8 text"),
    ("utf-16", json.dumps(PLAN).encode("utf-16"), "not UTF-8 text"),
    ("nested 100,000 deep", DEEP, "nests deeper than 32 levels"),
    (
        "5,000-digit quantity",
        '{"plan_id": "p", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": '
        + "9" * 5000
        + "}]}",
        "a number 5000 characters long",
    ),
]


@pytest.mark.parametrize(("case", "content", "needle"), PLAN_FILES, ids=[c[0] for c in PLAN_FILES])
def test_unreadable_plan_files_are_refused(
    tmp_path: Path, case: str, content: Any, needle: str
) -> None:
    result, journal = run_plan(tmp_path, content)
    assert_refused(result, needle, journal)


@pytest.mark.parametrize("endless", ["/dev/zero", "/dev/urandom"])
@pytest.mark.parametrize("option", ["plan", "--market", "--engine-config"])
def test_an_endless_file_is_read_no_further_than_64_mib(
    tmp_path: Path, endless: str, option: str
) -> None:
    """Before, /dev/zero as a plan filled memory (a MemoryError traceback) and /dev/urandom
    read forever."""
    journal = tmp_path / "j.db"
    plan = write(tmp_path / "plan.json", PLAN)
    if option == "plan":
        result = invoke("run", endless, "--journal", journal)
    else:
        result = invoke("run", plan, "--journal", journal, option, endless)
    assert_refused(result, f"{endless} is larger than 64 MiB", journal)


SPEC_FILES = [
    ("directory", None, "Is a directory"),
    ("price 1e400", {"symbols": {"AAPL": {"price": "1e400"}}}, "symbols.AAPL.price"),
    ("spread 1e308", {"symbols": {"AAPL": {"spread_bps": 1e308}}}, "symbols.AAPL.spread_bps"),
    ("nested", '{"symbols": ' + DEEP, "nests deeper"),
    ("not utf-8", b'{"seed": 1, "unknown_symbols": ["\xff"]}', "not UTF-8 text"),
]


@pytest.mark.parametrize(("case", "content", "needle"), SPEC_FILES, ids=[c[0] for c in SPEC_FILES])
def test_unreadable_market_specs_are_refused(
    tmp_path: Path, case: str, content: Any, needle: str
) -> None:
    market = tmp_path if content is None else write(tmp_path / "market.json", content)
    result, journal = run_plan(tmp_path, PLAN, "--market", market)
    assert_refused(result, needle, journal)


FAULT_FILES = [
    ("directory", None, "Is a directory"),
    ("nested", '{"only": ' + DEEP, "nests deeper"),
    ("not utf-8", b'{"only": ["POST /v2/orders\xff"]}', "not UTF-8 text"),
]


@pytest.mark.parametrize(
    ("case", "content", "needle"), FAULT_FILES, ids=[c[0] for c in FAULT_FILES]
)
def test_unreadable_fault_specs_are_refused(
    tmp_path: Path, case: str, content: Any, needle: str
) -> None:
    faults = tmp_path if content is None else write(tmp_path / "faults.json", content)
    result = invoke("sim-server", "--state", tmp_path / "s.db", "--faults", faults)
    assert_refused(result, needle)
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_sim_server_port_out_of_range_is_a_usage_error(tmp_path: Path, port: str) -> None:
    result = invoke("sim-server", "--port", port, "--state", tmp_path / "s.db")
    assert_refused(result, "--port")


@pytest.mark.parametrize("command", [["status"], ["journal", "verify"], ["resume"]])
def test_a_fifo_as_the_journal_is_refused_not_waited_on(tmp_path: Path, command: list[str]) -> None:
    """Before, a reader's open of a FIFO blocked until something wrote to it: forever."""
    fifo = tmp_path / "journal.db"
    os.mkfifo(fifo)
    done = subprocess.run(
        [WALKBOOK, *command, "--journal", str(fifo)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert "is not a regular file" in done.stderr


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_as_the_journal_is_refused(tmp_path: Path, device: str) -> None:
    assert_refused(invoke("status", "--journal", device), "is not a regular file")
    plan = write(tmp_path / "plan.json", PLAN)
    assert_refused(invoke("run", plan, "--journal", device), "is not a regular file")


def test_empty_journal_path_is_refused(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.json", PLAN)
    assert_refused(invoke("run", plan, "--journal", ""), "--journal")


@pytest.mark.parametrize("key", ["\n", "\x1e", "\u2028", "\x1b[2J"])
def test_a_refusal_naming_a_hostile_key_stays_one_printable_line(tmp_path: Path, key: str) -> None:
    result, journal = run_plan(tmp_path, {"plan_id": "p", "orders": [{**ORDER, key: "1"}]})
    assert_refused(result, "unknown field", journal)
    assert result.stderr.removesuffix("\n").isprintable(), result.stderr


def test_result_json_in_a_missing_directory_is_refused_before_trading(tmp_path: Path) -> None:
    """Today's traceback came after the plan traded; now nothing is journaled or sent."""
    out = tmp_path / "nonexistent" / "dir" / "r.json"
    result, journal = run_plan(tmp_path, PLAN, "--result-json", out)
    assert_refused(result, "does not exist", journal)
    assert not journal.exists()


def test_result_json_is_written_owner_only(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result, _ = run_plan(tmp_path, PLAN, "--result-json", out)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["status"] == "SUCCESS"


def crashed_run(tmp_path: Path, crash_at: str, *extra: str | Path) -> Path:
    """A `walkbook run` process killed at `crash_at` (see engine/crash.py); its journal."""
    journal = tmp_path / "j.db"
    plan = write(tmp_path / "plan.json", PLAN)
    env = {**os.environ, "WALKBOOK_CRASH_AT": crash_at}
    args = [WALKBOOK, "run", str(plan), "--journal", str(journal), *map(str, extra)]
    killed = subprocess.run(args, env=env, capture_output=True, timeout=60)
    assert killed.returncode == 137, killed.stderr
    return journal


def test_resume_against_another_account_is_refused_before_journaling(tmp_path: Path) -> None:
    """The broker knows none of the journal's acknowledged live orders: another account's
    journal. Refused (exit 2, nothing journaled); against its own account it resumes."""
    own, other = tmp_path / "own.db", tmp_path / "other.db"
    journal = crashed_run(tmp_path, "after_append.submit_ack:1", "--sim-state", own)
    SimBroker.open(other, MarketSpec(), VirtualClock()).close()
    events = event_count(journal)

    result = invoke("resume", "--journal", journal, "--sim-state", other)
    assert_refused(result, "belongs to another account")
    assert event_count(journal) == events

    result = invoke("resume", "--journal", journal, "--sim-state", own)
    assert result.exit_code == 0, result.output
    assert "now VALIDATED" in result.stdout


# -- finding 2: hostile plans that were accepted ----------------------------------------------


def test_duplicate_key_in_a_plan_is_refused(tmp_path: Path) -> None:
    plan = '{"plan_id": "p", "orders": [{"symbol": "AAPL", "side": "buy", '
    plan += '"quantity": "1", "quantity": "1000000"}]}'
    result, journal = run_plan(tmp_path, plan)
    assert_refused(result, "key 'quantity' appears twice", journal)


DUPLICATE = '{"seed": 1, "seed": 2}'


def test_duplicate_key_in_a_market_spec_is_refused(tmp_path: Path) -> None:
    market = write(tmp_path / "market.json", DUPLICATE)
    result, journal = run_plan(tmp_path, PLAN, "--market", market)
    assert_refused(result, "key 'seed' appears twice", journal)


def test_duplicate_key_in_a_fault_spec_is_refused(tmp_path: Path) -> None:
    faults = write(tmp_path / "faults.json", DUPLICATE)
    result = invoke("sim-server", "--state", tmp_path / "s.db", "--faults", faults)
    assert_refused(result, "key 'seed' appears twice")


def test_duplicate_key_in_an_engine_config_is_refused(tmp_path: Path) -> None:
    config = '{"market_attempts": 1, "market_attempts": 9}'
    config_file = write(tmp_path / "config.json", config)
    result, journal = run_plan(tmp_path, PLAN, "--engine-config", config_file)
    assert_refused(result, "key 'market_attempts' appears twice", journal)


@pytest.mark.parametrize("symbol", ["aßpl", "\ufb00", "\u3000AAPL", "\uff21\uff21\uff30\uff2c"])
def test_a_symbol_must_be_ascii_before_case_mapping(tmp_path: Path, symbol: str) -> None:
    result, journal = run_plan(tmp_path, {"plan_id": "p", "orders": [{**ORDER, "symbol": symbol}]})
    assert_refused(result, "not ASCII", journal)


NOT_PLAIN = [
    "1_000",
    "1e3",
    "1E3",
    " 1",
    "1 ",
    "+1",
    "NaN",
    "Infinity",
    "-Infinity",
    "\u0661",
    ".5",
]


@pytest.mark.parametrize("quantity", NOT_PLAIN)
def test_quantity_text_must_be_plain_decimal(tmp_path: Path, quantity: str) -> None:
    result, journal = run_plan(
        tmp_path, {"plan_id": "p", "orders": [{**ORDER, "quantity": quantity}]}
    )
    assert_refused(result, "plain decimal notation", journal)


@pytest.mark.parametrize("number", ["1e3", "1E+3", "1.5e2", "10e-1"])
def test_a_json_number_with_an_exponent_is_refused(tmp_path: Path, number: str) -> None:
    plan = '{"plan_id": "p", "orders": [{"symbol": "AAPL", "side": "buy", "quantity": '
    result, journal = run_plan(tmp_path, plan + number + "}]}")
    assert_refused(result, "has an exponent", journal)


def test_plain_json_numbers_are_still_quantities(tmp_path: Path) -> None:
    order = '{"symbol": "AAPL", "side": "buy", "quantity": 2.50}'
    path = write(tmp_path / "plan.json", '{"plan_id": "p", "orders": [' + order + "]}")
    assert load_plan(path).orders[0].quantity == Decimal("2.5")


def test_a_boolean_quantity_is_refused() -> None:
    with pytest.raises(InvalidIntent, match="boolean"):
        OrderIntent.build(symbol="AAPL", side="buy", quantity=True)


@pytest.mark.parametrize("field", ["correlation_id", "strategy_id"])
def test_free_text_is_at_most_128_characters(tmp_path: Path, field: str) -> None:
    assert parse_plan({"plan_id": "p", "orders": [{**ORDER, field: "x" * 128}]})
    result, journal = run_plan(tmp_path, {"plan_id": "p", "orders": [{**ORDER, field: "x" * 129}]})
    assert_refused(result, f"orders.0.{field}", journal)


def many_orders(count: int) -> dict[str, Any]:
    return {"plan_id": "p", "orders": [{**ORDER, "symbol": f"S{i}"} for i in range(count)]}


def test_a_plan_has_at_most_10000_orders_by_default(tmp_path: Path) -> None:
    result, journal = run_plan(tmp_path, many_orders(10_001))
    assert_refused(result, "10001 orders, at most 10000 per plan", journal)
    assert len(parse_plan(many_orders(10_000)).orders) == 10_000


def test_the_largest_plan_allowed_by_default_is_far_inside_the_file_size_limit(
    tmp_path: Path,
) -> None:
    """docs/plans.md: 10,000 orders, every free text at its 128 characters, about 4 MB."""
    order = {**ORDER, "correlation_id": "c" * 128, "strategy_id": "s" * 128}
    largest = {"plan_id": "p" * 64, "orders": [{**order, "symbol": f"S{i}"} for i in range(10_000)]}
    path = write(tmp_path / "plan.json", largest)
    assert path.stat().st_size < MAX_JSON_BYTES / 10
    assert len(load_plan(path).orders) == 10_000


def test_max_plan_orders_sets_the_limit(tmp_path: Path) -> None:
    result, journal = run_plan(tmp_path, many_orders(3), "--max-plan-orders", "2")
    assert_refused(result, "3 orders, at most 2 per plan", journal)
    with pytest.raises(InvalidPlan, match="at most 2 per plan"):
        parse_plan(many_orders(3), max_orders=2)


# -- finding 3: specs and flags that were accepted --------------------------------------------


def test_a_short_starting_position_is_refused(tmp_path: Path) -> None:
    market = write(tmp_path / "market.json", {"positions": {"TSLA": "-5"}})
    result, journal = run_plan(tmp_path, PLAN, "--market", market)
    assert_refused(result, "models no short positions", journal)


@pytest.mark.parametrize(
    ("faults", "needle"),
    [
        ({"only": ["BOGUS /x"]}, "is not 'METHOD /path'"),
        ({"only": ["POST /v3/orders"]}, "is not 'METHOD /path'"),
        ('{"stale_quote_seconds": {"*": NaN}}', "NaN is not a JSON number"),
        ({"stale_quote_seconds": {"*": -1}}, "stale_quote_seconds.*"),
        ('{"stale_quote_seconds": {"*": 1e400}}', "finite"),
    ],
)
def test_malformed_fault_knobs_are_refused(tmp_path: Path, faults: Any, needle: str) -> None:
    faults_file = write(tmp_path / "faults.json", faults)
    result = invoke("sim-server", "--state", tmp_path / "s.db", "--faults", faults_file)
    assert_refused(result, needle)


def test_fault_spec_refuses_a_nan_quote_age_from_the_library() -> None:
    with pytest.raises(ValueError, match="finite"):
        FaultSpec(stale_quote_seconds={"*": float("nan")})
    assert FaultSpec(only=["POST /v2/orders", "GET /v1beta1/news"]).applies_to("post", "/v2/orders")


@pytest.mark.parametrize("timeout", ["nan", "inf", "-inf", "0"])
def test_alpaca_timeout_must_be_finite_and_positive(tmp_path: Path, timeout: str) -> None:
    result, journal = run_plan(tmp_path, PLAN, "--broker", "alpaca", "--alpaca-timeout", timeout)
    assert_refused(result, "--alpaca-timeout", journal)


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("resume", "--offline-seconds", "nan"),
        ("resume", "--max-age", "inf"),
        ("halt", "--wait", "nan"),
        ("abandon", "--wait", "inf"),
    ],
)
def test_seconds_must_be_finite(tmp_path: Path, command: str, option: str, value: str) -> None:
    journal = tmp_path / "j.db"
    Journal.open(journal).close()
    extra = ["--plan", "p"] if command == "abandon" else []
    assert_refused(invoke(command, "--journal", journal, *extra, option, value), option)


def test_validation_tolerance_is_at_most_a_hundredth_of_a_share(tmp_path: Path) -> None:
    assert EngineConfig(validation_tolerance=Decimal("0.01"))
    config = write(tmp_path / "config.json", {"validation_tolerance": 1000})
    result, journal = run_plan(tmp_path, PLAN, "--engine-config", config)
    assert_refused(result, "validation_tolerance", journal)


def test_a_listed_symbol_without_a_price_starts_at_its_seeded_price(tmp_path: Path) -> None:
    """docs/plans.md: every market spec field is optional, symbols.X.price included."""
    spec = MarketSpec.model_validate({"seed": 11, "symbols": {"AAPL": {"spread_bps": 3}}})
    assert spec.symbol("AAPL").price == MarketSpec(seed=11).symbol("AAPL").price
    assert spec.symbol("AAPL").spread_bps == 3
    market = write(tmp_path / "market.json", {"symbols": {"AAPL": {"spread_bps": 3}}})
    result, _ = run_plan(tmp_path, PLAN, "--market", market)
    assert result.exit_code == 0, result.output


# -- finding 4: resume with nothing in flight -------------------------------------------------


@pytest.mark.parametrize(
    "options", [["--sim-state", "missing.db"], ["--broker", "alpaca"], []], ids=str
)
def test_resume_with_nothing_in_flight_exits_0_whatever_the_options(
    tmp_path: Path, options: list[str]
) -> None:
    """A run killed during start-up leaves a journal with nothing in it and no simulator
    state: resuming it has nothing to do, so it needs neither."""
    journal = crashed_run(tmp_path, "before_append.created:1")
    result = invoke("resume", "--journal", journal, *options)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("nothing in flight")
    assert event_count(journal) == 0


# -- finding 5: a stream of malformed files and flags -----------------------------------------

BASE_MARKET = {
    "seed": 3,
    "cash": "50000",
    "positions": {"TSLA": "4"},
    "symbols": {"AAPL": {"price": "120.5", "spread_bps": 4, "volatility_bps": 0.5}},
}
BASE_FAULTS = {"seed": 2, "latency_seconds": 0.0, "only": ["POST /v2/orders"]}
BASE_PLAN = {
    "plan_id": "hostile",
    "orders": [
        {"symbol": "TSLA", "side": "sell", "quantity": "2", "close_type": "partial"},
        {"symbol": "AAPL", "side": "buy", "quantity": "1.5", "urgency": "high"},
    ],
}
ODD_STRINGS = ["1e400", "-1", "NaN", "1_000", "+1", " 1", "aßpl", "ﬀ", "", "0", "9" * 80,
               "0.0000000001", "POST /v2/orders", "BOGUS /x", "\x00", "x" * 200]  # fmt: skip
# values at the edges of what the specs accept, so that some odd markets do get simulated
EDGES = [0.0001, "0.0001", 59.9, 604_800, 99.9, 9_999.9, "10000000", "1000000000000", 0]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**70), max_value=10**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
    st.sampled_from(EDGES),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _containers(doc: Any, found: list[Any]) -> list[Any]:
    """Every dict and list in `doc`, itself first."""
    if isinstance(doc, dict | list):
        found.append(doc)
        for child in doc.values() if isinstance(doc, dict) else doc:
            _containers(child, found)
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """`base` with a few values replaced, keys dropped or keys added."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(_containers(doc, [])))
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if keys and draw(st.booleans()):
            key = draw(st.sampled_from(keys))
            if draw(st.booleans()):
                target[key] = draw(VALUES)
            else:
                del target[key]
        elif isinstance(target, dict):
            target[draw(st.text(max_size=8))] = draw(VALUES)
        else:
            target.append(draw(VALUES))
    return doc


@st.composite
def encoded(draw: st.DrawFn, doc: Any) -> bytes:
    """`doc` as a file: mostly JSON (NaN and Infinity as Python writes them), sometimes
    re-encoded, truncated, with a key given twice, nested deep or plain noise."""
    text = json.dumps(doc)
    how = draw(st.sampled_from(["json"] * 9 + ["utf16", "bom", "cut", "twice", "deep", "noise"]))
    if how == "utf16":
        return text.encode("utf-16")
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if how == "cut":
        return text.encode()[: draw(st.integers(0, len(text)))]
    if how == "twice" and text.startswith("{") and len(text) > 2:
        return ('{"seed": 1, "seed": 1, ' + text[1:]).encode()
    if how == "deep":
        return ("[" * draw(st.integers(30, 5000)) + text).encode()
    if how == "noise":
        return draw(st.binary(max_size=64))
    return text.encode()


def maybe(option: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """`option` with a drawn value, one time in three: most runs get as far as the simulator."""
    return st.one_of(st.just([]), st.just([]), values.map(lambda v: [option, v]))


NUMBERS = st.sampled_from(["1", "0", "-1", "nan", "inf", "x", "1e400", "99999999999999999999"])


@st.composite
def hostile_command(draw: st.DrawFn, workdir: Path) -> list[str]:
    """One walkbook command line over freshly written hostile files in `workdir`."""
    market = write(workdir / "market.json", draw(encoded(draw(mutated(BASE_MARKET)))))
    faults = write(workdir / "faults.json", draw(encoded(draw(mutated(BASE_FAULTS)))))
    plan = write(workdir / "plan.json", draw(encoded(draw(mutated(BASE_PLAN)))))
    journal = draw(st.sampled_from([str(workdir / "j.db")] * 4 + ["", str(workdir)]))
    paths = st.sampled_from([str(market), str(workdir), str(workdir / "missing.json")])
    command = draw(st.sampled_from(["run", "run", "run", "sim-server", "resume"]))
    if command == "sim-server":
        args = ["sim-server", "--state", str(workdir / "s.db"), "--faults", str(faults)]
        args += draw(maybe("--port", st.sampled_from(["0", "99999", "-1", "x"])))
        return args + draw(maybe("--market", paths))
    if command == "resume":
        Journal.open(workdir / "j.db").close()
        args = ["resume", "--journal", journal]
        args += draw(maybe("--offline-seconds", NUMBERS)) + draw(maybe("--max-age", NUMBERS))
        return args + draw(maybe("--sim-state", st.just(str(workdir / "missing.db"))))
    args = ["run", str(plan), "--journal", journal]
    args += draw(maybe("--market", paths)) + draw(maybe("--seed", NUMBERS))
    args += draw(maybe("--max-plan-orders", NUMBERS)) + draw(maybe("--alpaca-timeout", NUMBERS))
    result_json = st.sampled_from([str(workdir / "r.json"), str(workdir / "no" / "r.json")])
    return args + draw(maybe("--result-json", result_json))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_files_and_flags_never_reach_a_traceback(
    tmp_path: Path, data: st.DataObject
) -> None:
    """Whatever the files and flags, the CLI answers 0, 1 or 2 (2 as one line on stderr),
    and no exception but SystemExit comes out of it."""
    workdir = tmp_path / uuid.uuid4().hex
    workdir.mkdir()
    args = data.draw(hostile_command(workdir))
    result = CliRunner().invoke(main, args, env=NO_KEYS, catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args,
        result.exception,
    )
    assert result.exit_code in (0, 1, 2), (args, result.output)
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("walkbook: error:"), (args, result.stderr)
