"""What operations tooling reads on the admin listener, without the admin token: liveness,
readiness, Prometheus metrics and the OpenAPI document."""

import asyncio
from typing import Any

import asyncpg
from aiohttp import web

from gateway.callbacks import respond
from gateway.keys import KeySpace
from gateway.metrics import Metrics, Probe
from gateway.openapi import openapi_document
from gateway.outcomes import OK
from gateway.redis_connection import AnyRedis
from gateway.scripts import Scripts
from persistence.streams import WriterLag, read_progress

PROBE_TIMEOUT_SECONDS = 1.0
# probes, scrapers and the API document need no admin token
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
# the operator's console (gateway/console): not the bearer token, its own session cookie
CONSOLE_PATH = "/console"


def is_console_path(path: str) -> bool:
    return path == CONSOLE_PATH or path.startswith(f"{CONSOLE_PATH}/")


class OperationsApi:
    def __init__(
        self,
        redis: AnyRedis,
        scripts: Scripts,
        metrics: Metrics,
        pool: asyncpg.Pool | None,
        shards: int,
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.metrics = metrics
        self.pool = pool
        self.streams = KeySpace(shards).all_streams()

    def probes(self) -> list[Probe]:
        """What keeps the shared gauges fresh between scrapes (metrics.refresh_gauges)."""
        return [self.redis_ready, self.postgres_ready, self.stream_gauges]

    async def stream_gauges(self) -> None:
        progress = await read_progress(self.redis, self.streams)
        lag = WriterLag.of(progress)
        self.metrics.stream_length.set(sum(stream.length for stream in progress))
        self.metrics.writer_lag.observe(lag)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics_text),
            web.get("/openapi.json", self.openapi),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return respond(OK, {"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready = Redis answers and holds our scripts. PostgreSQL is reported, not required:
        the wallet runs without it for a while and the streams buffer the history."""
        redis_ready = await self.redis_ready()
        checks: dict[str, Any] = {"redis": redis_ready, "postgres": await self.postgres_ready()}
        if not redis_ready:
            return respond("WALLET_UNAVAILABLE", message=f"not ready: {checks}")
        return respond(OK, checks)

    async def redis_ready(self) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                # on a Redis Cluster: asked of every master, loaded = loaded on all of them
                loaded = await self.redis.script_exists(*self.scripts.shas())
        except Exception:  # any failure means not ready; the reason is in the Redis logs
            self.metrics.redis_up.set(0)
            return False
        self.metrics.redis_up.set(1)
        return all(loaded)

    async def postgres_ready(self) -> bool | None:
        """None when no database is configured."""
        if self.pool is None:
            return None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await self.pool.fetchval("SELECT 1")
        except Exception:
            self.metrics.postgres_up.set(0)
            return False
        self.metrics.postgres_up.set(1)
        return True

    async def metrics_text(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())
