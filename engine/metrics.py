"""Prometheus metrics of an Engine's work: what its orders came to and what its broker and
journal cost (docs/metrics.md lists every one).

Order metrics are fed after each journal commit, so none counts a fact the journal does not
hold; the quote service's and the Alpaca adapter's own counters are read when scraped, never
copied. Labels carry only fixed vocabularies (states, reasons, sides, sources, endpoint
names): no symbol, plan, order id or key, so a registry's size does not grow with the work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from threading import Thread
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import structlog
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from journal import Event

from .crash import CrashingBroker
from .errors import InputError
from .events import EventKind, Fill, Payload
from .fsm import TERMINAL_STATES
from .intents import OrderSide
from .order import OrderRecord
from .quotes import QuoteCounters
from .results import OrderResult

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .broker import Broker
    from .engine import Engine

__all__ = [
    "METRICS_HOST",
    "MetricsServer",
    "RestCounters",
    "WalkbookMetrics",
    "serve_metrics",
]

# metrics are served on the loopback interface only: they show what an account trades
METRICS_HOST = "127.0.0.1"

STEP_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10)
SLIPPAGE_BPS_BUCKETS = (-50, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 50, 100, 200)
SLIPPAGE_DOLLARS_BUCKETS = (-1000, -100, -10, -1, 0, 1, 10, 100, 1000, 10_000)
ORDER_SECONDS_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# the quote counters that name where a usable quote came from; every other one is a problem
QUOTE_SOURCES = {"streaming_success": "stream", "rest_fallback": "rest"}


@runtime_checkable
class RestCounters(Protocol):
    """What a REST broker adapter counts (the Alpaca adapter's `AlpacaCounters`)."""

    rest_calls: int
    rest_retries: int
    rate_limited: int
    throttled: int
    by_endpoint: Counter[str]


@dataclass
class _Source:
    """One attached engine's live counters, and its orders in flight (by order id)."""

    quotes: QuoteCounters
    rest: RestCounters | None
    in_flight: set[str] = field(default_factory=set)


# the Alpaca adapter's own counters, read at scrape time: (name, help, AlpacaCounters field)
REST_COUNTERS = (
    (
        "walkbook_rest_retries",
        "REST writes sent again after a 429 (refused unread); reads are retried by the "
        "engine, logged as broker.read_retry.",
        "rest_retries",
    ),
    ("walkbook_rest_rate_limited", "REST answers of 429 Too Many Requests.", "rate_limited"),
    (
        "walkbook_rate_limiter_waits",
        "REST requests the adapter's own rate budget held back before sending.",
        "throttled",
    ),
)


class _LiveCounters:
    """The counters the engines already keep, read at scrape time."""

    def __init__(self, sources: list[_Source]) -> None:
        self.sources = sources

    def describe(self) -> Iterator[Metric]:
        """The families without samples: lets the registry refuse a duplicate name."""
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return self._families(self.sources)

    @staticmethod
    def _families(sources: Sequence[_Source]) -> Iterator[Metric]:
        quotes: Counter[str] = Counter()
        endpoints: Counter[str] = Counter()
        for source in sources:
            quotes.update(source.quotes.as_dict())
        by_source = CounterMetricFamily(
            "walkbook_quotes",
            "Usable quotes taken, by source (stream, or rest when the stream had none).",
            labels=["source"],
        )
        problems = CounterMetricFamily(
            "walkbook_quote_problems",
            "Quotes found unusable or doubtful, by problem (a QuoteCounters field).",
            labels=["problem"],
        )
        for name, count in sorted(quotes.items()):
            if name in QUOTE_SOURCES:
                by_source.add_metric([QUOTE_SOURCES[name]], float(count))
            else:
                problems.add_metric([name], float(count))
        yield by_source
        yield problems
        rests = [source.rest for source in sources if source.rest is not None]
        for counters in rests:
            # dict() copies in one step: the loop thread may add an endpoint meanwhile
            endpoints.update(dict(counters.by_endpoint))
        calls = CounterMetricFamily(
            "walkbook_rest_calls",
            "REST requests sent to the broker, by endpoint.",
            labels=["endpoint"],
        )
        for endpoint, count in sorted(endpoints.items()):
            calls.add_metric([endpoint], float(count))
        yield calls

        def total(values: Iterable[int]) -> float | None:
            """No sample without a REST adapter (the embedded simulator): nothing measured."""
            return float(sum(values)) if rests else None

        for name, help_text, counter in REST_COUNTERS:
            values = (getattr(c, counter) for c in rests)
            yield CounterMetricFamily(name, help_text, value=total(values))
        yield GaugeMetricFamily(
            "walkbook_orders_in_flight",
            "Orders whose latest event this process journaled is not terminal.",
            value=float(sum(len(source.in_flight) for source in sources)) if sources else None,
        )


class WalkbookMetrics:
    """An Engine's metrics in one Prometheus registry (a new one unless given): create once
    per registry, then `attach` each engine to feed it (their figures add up)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._sources: list[_Source] = []
        self._log = structlog.get_logger("walkbook.metrics")
        registry = self.registry
        self.orders_finished = CounterMetric(
            "walkbook_orders_finished",
            "Orders that reached a terminal state, by state and FAILED reason ('' if VALIDATED).",
            ["state", "reason"],
            registry=registry,
        )
        self.fills = CounterMetric(
            "walkbook_fills", "Broker fills counted, by order side.", ["side"], registry=registry
        )
        self.filled_dollars = CounterMetric(
            "walkbook_filled_dollars",
            "Value of the fills counted (quantity times fill price), by order side.",
            ["side"],
            registry=registry,
        )
        self.steps_used = Histogram(
            "walkbook_order_steps_used",
            "LIMIT_STEP_k and MARKET states each finished order entered.",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.slippage_bps = Histogram(
            "walkbook_slippage_bps",
            "Average fill price against the arrival mid per finished order with fills, in "
            "basis points; positive is a cost.",
            buckets=SLIPPAGE_BPS_BUCKETS,
            registry=registry,
        )
        self.slippage_dollars = Histogram(
            "walkbook_slippage_dollars",
            "What the fills cost against the arrival mid in dollars (filled quantity times "
            "the average price's distance from it) per finished order with fills; positive "
            "is a cost.",
            buckets=SLIPPAGE_DOLLARS_BUCKETS,
            registry=registry,
        )
        # a histogram with negative buckets exposes no _sum (the OpenMetrics rule), so the
        # signed total has a gauge of its own
        self.slippage_net_dollars = Gauge(
            "walkbook_slippage_net_dollars",
            "The sum of walkbook_slippage_dollars: what the fills cost against their arrival "
            "mids, negative when they beat them.",
            registry=registry,
        )
        self.order_seconds = Histogram(
            "walkbook_order_seconds",
            "Seconds from an order's creation to its terminal state (journal time).",
            buckets=ORDER_SECONDS_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "walkbook_journal_commit_seconds",
            "Seconds each journal commit took, BEGIN to COMMIT.",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.registry.register(_LiveCounters(self._sources))

    def attach(self, engine: Engine) -> WalkbookMetrics:
        """Feed these metrics from `engine`'s commits and counters from now on."""
        if self._after_commit in engine.context.listeners:
            raise ValueError("these metrics are already attached to this engine")
        source = _Source(engine.quotes.counters, _rest_counters(engine.broker))
        self._sources.append(source)
        engine.journal.commit_observers.append(
            lambda seconds, events: self._committed(source, seconds, events)
        )
        engine.context.listeners.append(self._after_commit)
        return self

    def _committed(self, source: _Source, seconds: float, events: list[Event]) -> None:
        """Each commit: its latency, and which orders it started or finished."""
        try:
            self.commit_seconds.observe(seconds)
            in_flight = source.in_flight
            for event in events:
                if event.order_id is None or event.to_state is None:
                    continue
                if event.to_state in TERMINAL_STATES:
                    in_flight.discard(event.order_id)
                else:
                    in_flight.add(event.order_id)
        except Exception as exc:  # the commit stands; a metric must never fail it
            self._log.error("metrics.failed", error=f"{type(exc).__name__}: {exc}")

    def _after_commit(self, record: OrderRecord, event: Event, payload: Payload) -> None:
        """Each order event: a fill counted, or an order finished."""
        try:
            if isinstance(payload, Fill):
                side = record.intent.side.value
                self.fills.labels(side).inc()
                self.filled_dollars.labels(side).inc(float(payload.qty * payload.price))
            elif event.kind == EventKind.TRANSITION and event.to_state in TERMINAL_STATES:
                self._finished(record)
        except Exception as exc:  # the walk goes on as if metrics were off
            self._log.error(
                "metrics.failed", order_id=record.order_id, error=f"{type(exc).__name__}: {exc}"
            )

    def _finished(self, record: OrderRecord) -> None:
        result = OrderResult.from_record(record)
        self.orders_finished.labels(result.state, result.reason or "").inc()
        self.steps_used.observe(result.steps_used)
        if result.seconds_to_complete is not None:
            self.order_seconds.observe(result.seconds_to_complete)
        average, mid = record.avg_price, result.arrival_mid
        if result.slippage_bps is None or average is None or mid is None:
            return
        self.slippage_bps.observe(float(result.slippage_bps))
        cost = average - mid if record.intent.side is OrderSide.BUY else mid - average
        dollars = float(cost * record.filled_qty)
        self.slippage_dollars.observe(dollars)
        self.slippage_net_dollars.inc(dollars)


def _rest_counters(broker: Broker) -> RestCounters | None:
    """The broker adapter's REST counters behind the engine's crash-point wrapper; None for
    a broker without REST (the embedded simulator)."""
    inner = broker.inner if isinstance(broker, CrashingBroker) else broker
    counters = getattr(inner, "counters", None)
    return counters if isinstance(counters, RestCounters) else None


@dataclass
class MetricsServer:
    """`/metrics` on 127.0.0.1:`port`, serving `registry` from a daemon thread."""

    registry: CollectorRegistry
    port: int
    _server: WSGIServer
    _thread: Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_metrics(port: int, registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve `registry` on 127.0.0.1 only (port 0 picks a free port); without one, a new
    registry with the client's process, platform and garbage-collector metrics.

    A port that cannot be listened on (taken, privileged) is an `InputError`.
    """
    if not 0 <= port <= 65535:
        raise InputError(f"metrics port {port} is not between 0 and 65535", port=port)
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    try:
        server, thread = start_http_server(port, addr=METRICS_HOST, registry=registry)
    except OSError as exc:
        raise InputError(
            f"cannot serve metrics on {METRICS_HOST}:{port}: {exc.strerror or exc}", port=port
        ) from None
    return MetricsServer(registry, int(server.server_address[1]), server, thread)
