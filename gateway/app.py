"""App factories: the callback listener and the admin listener share one wallet."""

from dataclasses import dataclass

import asyncpg
from aiohttp import hdrs, web
from redis.asyncio import Redis

from gateway.admin import (
    AdminApi,
    bearer_token_middleware,
    envelope_middleware,
    storable_parameters,
)
from gateway.callbacks import BODY_BYTES_MAX, Callbacks, respond
from gateway.console.app import Console, create_console_app
from gateway.console.auth import SessionStore
from gateway.launch import LaunchClient
from gateway.metrics import Metrics
from gateway.operations import CONSOLE_PATH, OperationsApi
from gateway.redis_connection import connect_redis
from gateway.sessions import Sessions
from gateway.settings import Settings
from gateway.signing import KeyRing
from gateway.support import SupportApi
from gateway.wallet import Wallet
from persistence.postgres import open_postgres_pool
from persistence.records import HistoryRecords

HISTORY_POOL_CONNECTIONS_MAX = 4


@dataclass
class Services:
    """What both listeners use; one per process."""

    settings: Settings
    redis: Redis
    wallet: Wallet
    sessions: Sessions
    metrics: Metrics
    history_pool: asyncpg.Pool | None = None  # PostgreSQL, for support reads and readiness

    @classmethod
    def create(cls, settings: Settings, redis: Redis | None = None) -> "Services":
        redis = redis or connect_redis(settings)
        metrics = Metrics()
        wallet = Wallet(
            redis, settings, metrics.redis_batch_seconds.observe, metrics.observe_incident
        )
        return cls(settings, redis, wallet, Sessions(wallet), metrics)

    async def start(self) -> None:
        await self.wallet.start()
        if self.settings.database_url:
            self.history_pool = await open_postgres_pool(
                self.settings.database_url, HISTORY_POOL_CONNECTIONS_MAX
            )
            wallet = self.wallet
            wallet.history = HistoryRecords(
                self.history_pool,
                self.redis,
                wallet.scripts.bring_back_record,
                wallet.keys,
                self.settings.record_retention_seconds * 1000,
            )

    async def close(self) -> None:
        if self.history_pool is not None:
            await self.history_pool.close()
        await self.redis.aclose()


async def _no_route(request: web.Request) -> web.Response:
    # The catch-all hides aiohttp's own 405: a known path with another method is still a 405.
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        _, methods = await resource.resolve(request)
        allowed |= methods
    allowed.discard(hdrs.METH_ANY)
    if allowed:
        response = respond("METHOD_NOT_ALLOWED")
        response.headers[hdrs.ALLOW] = ",".join(sorted(allowed))
        return response
    return respond("NOT_FOUND")


def _with_envelope_fallback(app: web.Application) -> web.Application:
    # Unknown paths and methods answer in the protocol's envelope, not aiohttp's plain text.
    # [\s\S], not '.': a path may hold a percent-encoded newline, which '.' does not match
    app.router.add_route("*", r"/{tail:[\s\S]*}", _no_route)
    return app


def create_gateway_app(services: Services) -> web.Application:
    app = web.Application(client_max_size=BODY_BYTES_MAX)
    callbacks = Callbacks(
        services.wallet,
        services.sessions,
        KeyRing.parse(services.settings.provider_keys),
        services.metrics,
        body_seconds=services.settings.client_timeout_seconds,
    )
    app.add_routes(callbacks.routes())
    return _with_envelope_fallback(app)


def operations_api(services: Services) -> OperationsApi:
    return OperationsApi(
        services.redis,
        services.wallet.scripts,
        services.metrics,
        services.history_pool,
        services.settings.shards,
    )


def create_admin_app(services: Services) -> web.Application:
    settings = services.settings
    app = web.Application(
        middlewares=[
            envelope_middleware(services.metrics),
            bearer_token_middleware(settings.admin_token),
            storable_parameters,
        ]
    )
    launch_client = LaunchClient(
        settings.provider_base_url, settings.provider_public_key, settings.operator_id
    )
    support = None if services.history_pool is None else SupportApi(services.history_pool)
    app.add_routes(
        AdminApi(
            services.wallet,
            services.sessions,
            launch_client,
            services.metrics,
            None if support is None else support.queries,
        ).routes()
    )
    operations = operations_api(services)
    app.add_routes(operations.routes())
    if support is not None:
        app.add_routes(support.routes())
    # the operator's console: its own session cookie, not the bearer token (gateway/console)
    console = Console(
        settings.admin_token,
        SessionStore(services.redis),
        services.wallet,
        services.metrics,
        operations,
        None if support is None else support.queries,
    )
    app.add_subapp(CONSOLE_PATH, create_console_app(console))
    return _with_envelope_fallback(app)
