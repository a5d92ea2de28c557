"""Prometheus metrics of a history writer process, served at /metrics on their own port
(`python -m persistence.writer --metrics-port 8082`, as docker-compose.yml expects)."""

import asyncio

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from persistence.streams import WriterLag

BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METRICS_SHUTDOWN_SECONDS = 5.0


class WriterLagGauges:
    """How far the history is behind the streams: the writer serves these, and so does the
    gateway's admin listener (it reads the same progress from Redis), under the same names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.entries = Gauge(
            "wallet_writer_lag_entries",
            "Entries not yet written to PostgreSQL (upper bound)",
            registry=registry,
        )
        self.seconds = Gauge(
            "wallet_writer_lag_seconds",
            "Age of the oldest entry not yet written to PostgreSQL",
            registry=registry,
        )

    def observe(self, lag: WriterLag) -> None:
        self.entries.set(lag.retained_events)
        self.seconds.set(lag.seconds_behind)


class WriterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.events_written = Counter(
            "wallet_writer_events_written",
            "Stream entries committed to PostgreSQL and acknowledged",
            registry=registry,
        )
        self.batches = Counter(
            "wallet_writer_batches", "Batches committed (one transaction each)", registry=registry
        )
        self.batch_seconds = Histogram(
            "wallet_writer_batch_seconds",
            "Decode, commit and acknowledge one batch",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self.events_reclaimed = Counter(
            "wallet_writer_events_reclaimed",
            "Entries taken over from stopped writers (XAUTOCLAIM)",
            registry=registry,
        )
        self.events_rejected = Counter(
            "wallet_writer_events_rejected",
            "Entries that did not decode, kept in rejected_events",
            registry=registry,
        )
        self.events_quarantined = Counter(
            "wallet_writer_events_quarantined",
            "Entries kept raw in rejected_events with an incident, by why: PostgreSQL refused "
            "them (refused), or the history holds their provider_tx_id from another entry "
            "(conflict)",
            ["why"],
            registry=registry,
        )
        self.commit_failures = Counter(
            "wallet_writer_commit_failures",
            "Batch commits that failed and were retried (PostgreSQL unreachable...)",
            registry=registry,
        )
        self.pending = Gauge(
            "wallet_writer_pending_entries",
            "Entries delivered to a writer and not acknowledged yet",
            registry=registry,
        )
        self.lag = WriterLagGauges(registry)

    def observe_lag(self, lag: WriterLag) -> None:
        self.pending.set(lag.pending_events)
        self.lag.observe(lag)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


async def serve_metrics(metrics: WriterMetrics, host: str, port: int, stop: asyncio.Event) -> None:
    """GET /metrics until `stop` is set."""
    app = web.Application()
    app.add_routes([web.get("/metrics", metrics.handle_metrics)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=METRICS_SHUTDOWN_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        await runner.cleanup()
