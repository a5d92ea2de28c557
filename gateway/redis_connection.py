"""The gateway's Redis client: redis-py asyncio with hiredis parsing and hiredis packing.

REDIS_URL names one Redis (`redis://`, `rediss://`) or a Redis Cluster:
`redis+cluster://[user:password@]host:port[,host:port...]` (the hosts are startup nodes; the
client discovers the rest, follows slot moves and failovers). Every client of ours is made here,
so the gateway, the writer, reconcile, restore and the bench switch together.
"""

from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
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


CLUSTER_SCHEME = "redis+cluster"
# A client of either kind: the cluster client takes the same commands, routed by key.
AnyRedis = Redis | RedisCluster


def is_cluster_url(redis_url: str) -> bool:
    return redis_url.startswith(f"{CLUSTER_SCHEME}://")


def client_for_url(redis_url: str, **options: Any) -> AnyRedis:
    """A client of one Redis or of a Redis Cluster, as `redis_url` says; `options` as redis-py's."""
    if not is_cluster_url(redis_url):
        return Redis.from_url(redis_url, **options)
    parts = urlsplit(redis_url)
    hosts = parts.netloc.rpartition("@")[2]
    startup_nodes = []
    for host_port in hosts.split(","):
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_URL: {CLUSTER_SCHEME}:// wants host:port[,host:port...]")
        startup_nodes.append(ClusterNode(host, int(port)))
    # `max_connections` is per node; `retry` also re-reads the slot map between tries. The
    # cluster client makes its nodes' connections itself: they pack in Python.
    options.pop("connection_class", None)
    return RedisCluster(
        startup_nodes=startup_nodes,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        **options,
    )


def connect_background_redis(redis_url: str, **options: Any) -> AnyRedis:
    """A client off the request path: decoded replies, a bounded connect; `options` add to
    them (the writer's own reply timeout and name)."""
    return client_for_url(
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


def connect_redis(settings: Settings) -> AnyRedis:
    timeout_seconds = settings.redis_timeout_ms / 1000
    return client_for_url(
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
