"""What many test modules check or set up the same way (imported as `from helpers import ...`,
like payloads.py)."""

import contextlib
import gc
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import asyncpg
from redis.asyncio import Redis

from gateway.embedded import EmbeddedPostgres, EmbeddedRedis
from gateway.keys import shard_of
from gateway.redis_connection import client_for_url

Server = TypeVar("Server", EmbeddedRedis, EmbeddedPostgres)


def assert_error_envelope(body: dict[str, Any], code: int) -> None:
    assert set(body) == {"code", "message", "data"}, body
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert body["data"] is None


async def stream_event_count(services: Any) -> int:
    """Entries on every shard's event stream."""
    total = 0
    for stream in services.wallet.keys.all_streams():
        total += await services.redis.xlen(stream)
    return total


def running(server: Server) -> Iterator[Server]:
    """A fixture's body for an embedded server: `yield from running(EmbeddedRedis(...))`."""
    server.start()
    yield server
    server.stop()


def user_in_shard(prefix: str, shard: int, shards: int = 16) -> str:
    """A user id whose keys land in `shard`."""
    for n in range(10_000):
        user_id = f"{prefix}-{n}"
        if shard_of(user_id, shards) == shard:
            return user_id
    raise AssertionError("no user id for that shard")


async def player_with_session(admin: Any, user_id: str, balance: int = 10_000, **extra: Any) -> str:
    await admin.create_player(user_id, balance, **extra)
    return await admin.open_session(user_id)


async def incidents(admin: Any) -> list[dict[str, Any]]:
    status, body = await admin.call("GET", "/admin/incidents")
    assert status == 200, body
    return body["data"]["incidents"]


async def incident_metric(admin: Any, kind: str) -> float:
    """wallet_incidents_total for one kind, from /metrics on the admin listener."""
    response = await admin.client.get("/metrics", headers=admin.headers)
    assert response.status == 200
    prefix = f'wallet_incidents_total{{kind="{kind}"}} '
    for line in (await response.text()).splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def base_url(server: Any) -> str:
    """The root URL of an aiohttp test server, without the trailing slash."""
    return str(server.make_url("")).rstrip("/")


async def redis_dump(redis_url: str) -> dict[bytes, tuple[Any, ...]]:
    """Every key of the Redis -> (type, DUMP of its value, whether it expires, a stream's
    entries). Two equal dumps: nothing was written between them. TTL values are left out (they
    tick); DUMP covers a stream's consumer groups, XRANGE shows its entries readably."""
    dump: dict[bytes, tuple[Any, ...]] = {}
    async with client_for_url(redis_url) as redis:  # bytes: DUMP is not text
        for key in await redis.keys("*"):
            kind = await redis.type(key)
            entries = await redis.xrange(key) if kind == b"stream" else None
            dump[key] = (kind, await redis.dump(key), await redis.pttl(key) >= 0, entries)
    return dump


def without_claims(dump: dict[bytes, Any]) -> dict[bytes, Any]:
    """A dump without what lua/claim.lua writes (an id's owner, a shard's seen-id filter): a
    money call claims its ids before its script decides, in the ids' own slots. A claim moves
    no money; a call refused after it, retried, is decided as if new."""
    return {
        key: value
        for key, value in dump.items()
        if b":owner:" not in key and not key.endswith(b":seen")
    }


async def read_as_consumer(
    redis: Any, group: str, consumer: str, streams: list[str], count: int | None = None
) -> list[Any]:
    """XREADGROUP of new entries for `consumer`, one stream at a time (a Redis Cluster refuses
    one read of streams in several slots): [(stream, entries)] as redis-py gives them."""
    read = []
    for stream in streams:
        read += await redis.xreadgroup(group, consumer, {stream: ">"}, count=count) or []
    return read


@contextlib.contextmanager
def frozen_test_heap() -> Iterator[None]:
    """For a test that times answers on the gateway's clock: the gateway under test shares this
    process with pytest, hypothesis and a thousand tests' leftovers, and one full collection of
    that heap stops the loop for 0.1-0.5 s (measured in CI). Frozen, a collection scans only
    what the test itself allocates, as in a gateway's own small process."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# A write pause holds every script while reads and CLIENT UNPAUSE still answer: the test ends
# it when it is done. Its length only bounds a test that dies paused.
REDIS_PAUSE_MS_MAX = 10_000


async def pause_scripts(redis_url: str) -> Redis:
    """-> the connection to UNPAUSE with."""
    pauser = Redis.from_url(redis_url)
    await pauser.execute_command("CLIENT", "PAUSE", REDIS_PAUSE_MS_MAX, "WRITE")
    return pauser


async def unpause(pauser: Redis) -> None:
    await pauser.execute_command("CLIENT", "UNPAUSE")
    await pauser.aclose()


async def count_rows(database_url: str, table: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def empty_database(postgres_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A database of its own on the session's server, dropped after: its URL."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_server.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(postgres_server.url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
