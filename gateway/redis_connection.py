"""The gateway's Redis client: redis-py asyncio with hiredis parsing and hiredis packing."""

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.settings import Settings

REDIS_CONNECTIONS_MAX = 512
# Clients off the request path (the writer, one-off commands, benchmarks); the gateway's own
# connects within its request deadline, REDIS_TIMEOUT_MS.
REDIS_CONNECT_SECONDS_MAX = 5.0
# CLIENT SETNAME of every connection of a gateway and of a history writer (see
# persistence/writer.py connect_writer_redis): CLIENT LIST then tells them from other clients,
# so restore can refuse a wallet that is live.
GATEWAY_CLIENT_NAME = "wallet-gateway"
WRITER_CLIENT_NAME = "wallet-writer"


class HiredisPackedConnection(Connection):
    """redis-py's asyncio connection packs commands in Python (its sync one uses hiredis):
    packing an EVALSHA of ~25 arguments was a tenth of the gateway's CPU under load."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._serializer.pack(*args)


def connect_background_redis(redis_url: str, **options: Any) -> Redis:
    """A client off the request path: decoded replies, a bounded connect; `options` add to
    them (the writer's own reply timeout and name)."""
    return Redis.from_url(
        redis_url,
        decode_responses=True,
        socket_connect_timeout=REDIS_CONNECT_SECONDS_MAX,
        **options,
    )


async def run_with_redis(settings: Settings, work: Any, *extra: Any) -> Any:
    """A one-off command (reconcile, restore) with a Redis client of its own:
    `work(redis, database_url, settings, *extra)`."""
    async with connect_background_redis(settings.redis_url) as redis:
        return await work(redis, settings.database_url, settings, *extra)


def connect_redis(settings: Settings) -> Redis:
    timeout_seconds = settings.redis_timeout_ms / 1000
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        max_connections=REDIS_CONNECTIONS_MAX,
        connection_class=HiredisPackedConnection,
        client_name=GATEWAY_CLIENT_NAME,
        # After a Redis restart every pooled connection is dead once: try a fresh one before
        # answering 503 (safe: a script that did run is found by its idempotency record). Only
        # then: redis-py's default retries timeouts too, three times with backoff, which held
        # answers for seconds past REDIS_TIMEOUT_MS.
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
    )
