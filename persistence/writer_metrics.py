"""Prometheus metrics of a history writer process, served at /metrics on their own port
(`python -m persistence.writer --metrics-port 8082`, as docker-compose.yml expects)."""

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from persistence.streams import WriterLag

BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


async def serve_metrics(metrics: WriterMetrics, host: str, port: int, stop: asyncio.Event) -> None:
    """GET /metrics until `stop` is set, from prometheus_client's own server (a thread): the
    writer serves nothing else over HTTP, so it needs no web framework."""
    server, thread = start_http_server(port, host, registry=metrics.registry)
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(server.shutdown)  # waits out its poll interval: not on the loop
        server.server_close()
        thread.join()
