"""The live overview's numbers: read from what /metrics serves (so with `--workers N` the
workers' summed counters too), per second over the last minute from the samples the overview
itself took; and the stores' reachability and the writer's lag, probed on each view."""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from gateway.operations import OperationsApi
from gateway.redis_errors import REDIS_UNREACHABLE
from persistence.streams import WriterLag, read_progress

RATE_WINDOW_SECONDS = 60.0  # rates and latencies over the samples of the last minute
RATE_SPAN_SECONDS_MIN = 1.0  # two samples closer than this give no rate
Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    callbacks: dict[Labels, float]  # (endpoint, status) -> answered
    buckets: dict[str, list[tuple[float, float]]]  # endpoint -> [(le, cumulative count)]
    replays: dict[Labels, float]  # (endpoint,)
    conflicts: dict[Labels, float]  # (kind,): the 409s
    incidents: dict[Labels, float]  # (kind,)


def read_sample(metrics: Metrics) -> Sample:
    text, _ = metrics.render()
    callbacks: dict[Labels, float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    counters: dict[str, dict[Labels, float]] = {
        "wallet_idempotent_replays_total": {},
        "wallet_conflicts_total": {},
        "wallet_incidents_total": {},
    }
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "wallet_requests_total":
                key = (labels["endpoint"], labels["status"])  # summed over the actions
                callbacks[key] = callbacks.get(key, 0.0) + sample.value
            elif sample.name == "wallet_request_seconds_bucket":
                buckets.setdefault(labels["endpoint"], []).append(
                    (float(labels["le"]), sample.value)
                )
            elif sample.name in counters:
                key = tuple(value for name, value in labels.items() if name != "le")
                counters[sample.name][key] = sample.value
    for series in buckets.values():
        series.sort()
    return Sample(
        time.monotonic(),
        callbacks,
        buckets,
        counters["wallet_idempotent_replays_total"],
        counters["wallet_conflicts_total"],
        counters["wallet_incidents_total"],
    )


def quantile(q: float, series: list[tuple[float, float]]) -> float | None:
    """As PromQL's histogram_quantile: linear within the bucket; the last finite bound when
    it falls in +Inf. None without observations."""
    if not series or series[-1][1] <= 0:
        return None
    rank = q * series[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in series:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _minus(
    now: list[tuple[float, float]], then: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    earlier = dict(then)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in now]


@dataclass
class LiveRates:
    """The overview's own samples of the last minute (one per view, per process)."""

    samples: deque[Sample] = field(default_factory=deque)

    def take(self, metrics: Metrics) -> tuple[Sample, Sample | None]:
        """-> (now, the oldest sample of the window to compare with; None: none far enough)"""
        now = read_sample(metrics)
        while self.samples and now.at - self.samples[0].at > RATE_WINDOW_SECONDS:
            self.samples.popleft()
        then = self.samples[0] if self.samples else None
        self.samples.append(now)
        if then is None or now.at - then.at < RATE_SPAN_SECONDS_MIN:
            return now, None
        return now, then


def callback_rows(now: Sample, then: Sample | None) -> list[dict[str, Any]]:
    span = None if then is None else now.at - then.at
    rows = []
    for (endpoint, status), total in sorted(now.callbacks.items()):
        rate = None
        if then is not None and span:
            rate = (total - then.callbacks.get((endpoint, status), 0.0)) / span
        rows.append({"endpoint": endpoint, "status": status, "total": int(total), "rate": rate})
    return rows


def latency_rows(now: Sample, then: Sample | None) -> list[dict[str, Any]]:
    """p50/p99 per endpoint over the window when it saw calls, else since the start."""
    rows = []
    for endpoint, series in sorted(now.buckets.items()):
        window = series if then is None else _minus(series, then.buckets.get(endpoint, []))
        recent = then is not None and window[-1][1] > 0
        chosen = window if recent else series
        rows.append(
            {
                "endpoint": endpoint,
                "calls": int(chosen[-1][1]),
                "over": "last minute" if recent else "since start",
                "p50_ms": _ms(quantile(0.5, chosen)),
                "p99_ms": _ms(quantile(0.99, chosen)),
            }
        )
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


@dataclass(frozen=True, slots=True)
class StoresState:
    redis: bool
    postgres: bool | None  # None: no DATABASE_URL
    lag: WriterLag | None  # None: Redis did not answer
    stream_length: int | None


async def read_stores(operations: OperationsApi) -> StoresState:
    redis_up = await operations.redis_ready()
    postgres_up = await operations.postgres_ready()
    try:
        progress = await read_progress(operations.redis, operations.streams)
    except REDIS_UNREACHABLE:
        return StoresState(redis_up, postgres_up, None, None)
    return StoresState(
        redis_up, postgres_up, WriterLag.of(progress), sum(p.length for p in progress)
    )
