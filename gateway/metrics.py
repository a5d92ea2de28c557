"""Prometheus metrics, served at /metrics on the admin listener.

With `--workers N` the N gateway processes write their counters and histograms to files
(prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR); the admin process serves
their sum plus its own gauges of the shared Redis, streams and PostgreSQL.
"""

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.outcomes import INCIDENT_OUTCOMES, status_of
from persistence.writer_metrics import WriterLagGauges

LATENCY_BUCKETS_SECONDS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
GAUGES_REFRESH_SECONDS = 5.0
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("gateway.metrics")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "wallet_requests",
            "Callbacks answered",
            ["endpoint", "action", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "wallet_request_seconds",
            "Callback latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.redis_batch_seconds = Histogram(
            "wallet_redis_batch_seconds",
            "Round trip of one batch of Lua script calls (one write, one read) to Redis",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.replays = Counter(
            "wallet_idempotent_replays",
            "Retries answered from the idempotency record",
            ["endpoint"],
            registry=registry,
        )
        self.conflicts = Counter(
            "wallet_conflicts", "409 answers by kind", ["kind"], registry=registry
        )
        self.incidents = Counter(
            "wallet_incidents", "Incidents recorded, by kind", ["kind"], registry=registry
        )
        self.internal_errors = Counter(
            "wallet_internal_errors",
            "Failures nobody foresaw, answered 500 and logged with their traceback",
            ["listener"],
            registry=registry,
        )
        self.stream_length = Gauge(
            "wallet_stream_entries",
            "Entries in the event streams (all shards)",
            registry=registry,
        )
        self.writer_lag = WriterLagGauges(registry)
        self.redis_up = Gauge("wallet_redis_up", "1 when Redis answers", registry=registry)
        self.postgres_up = Gauge(
            "wallet_postgres_up", "1 when PostgreSQL answers", registry=registry
        )

    def observe_callback(
        self, endpoint: str, action: str, outcome: str, seconds: float, replayed: bool
    ) -> None:
        status = status_of(outcome)
        self.requests.labels(endpoint, action, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)
        if replayed:
            self.replays.labels(endpoint).inc()
        else:
            self.observe_outcome(outcome)
        if status == 409:
            self.conflicts.labels(outcome).inc()

    def observe_outcome(self, outcome: str) -> None:
        """A new (not replayed) outcome of the wallet's, from a callback or the admin API."""
        if outcome in INCIDENT_OUTCOMES:
            self.observe_incident(outcome)

    def observe_incident(self, kind: str) -> None:
        self.incidents.labels(kind).inc()

    def render(self) -> tuple[bytes, str]:
        workers_dir = os.environ.get(MULTIPROCESS_DIR_ENV)
        if not workers_dir:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        registry.register(_WorkersAndGauges(workers_dir, self._gauges()))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _gauges(self) -> list[Gauge]:
        return [
            self.stream_length, self.writer_lag.entries, self.writer_lag.seconds,
            self.redis_up, self.postgres_up,
        ]  # fmt: skip


class _WorkersAndGauges(Collector):
    """The workers' counters and histograms, summed from their files, and this process's
    gauges (the workers' own gauge files only ever hold their unset zeros)."""

    def __init__(self, workers_dir: str, gauges: list[Gauge]) -> None:
        self._workers = MultiProcessCollector(None, path=workers_dir)
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for family in self._workers.collect():
            if family.type != "gauge":
                yield family
        for gauge in self._gauges:
            yield from gauge.collect()


Probe = Callable[[], Awaitable[None]]


async def refresh_gauges(metrics: Metrics, probes: list[Probe], stop: asyncio.Event) -> None:
    """Keep the shared gauges (reachability, stream length, lag) fresh until `stop`."""
    while not stop.is_set():
        for probe in probes:
            try:
                await probe()
            except Exception:  # a probe must never stop the others
                log.exception("metrics probe failed")
        try:
            await asyncio.wait_for(stop.wait(), GAUGES_REFRESH_SECONDS)
        except TimeoutError:
            pass
