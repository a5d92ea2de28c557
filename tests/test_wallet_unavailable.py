"""When the hot wallet is unreachable or slow the gateway answers 503 in the envelope
(docs/protocol.md §3): "not confirmed". The provider's retry of the same provider_tx_id then
applies it once.

These tests use their own Redis servers; the shared one is never stopped or paused.
"""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Admin, Provider
from helpers import frozen_test_heap, pause_scripts, running, unpause
from payloads import bet, close_round, rollback, win
from redis.asyncio import Redis

from gateway import coalesced_scripts
from gateway.app import Services, create_admin_app, create_gateway_app
from gateway.embedded import EmbeddedRedis, free_port
from gateway.settings import Settings

WALLET_UNAVAILABLE = {"code": 503, "message": "Wallet temporarily unavailable", "data": None}
REDIS_TIMEOUT_MS_SHORT = 200

AppClients = tuple[Provider, Admin, Services]


async def gateway_on(
    settings: Settings, aiohttp_client: Callable[..., Any], *, start: bool = True
) -> AppClients:
    services = Services.create(settings)
    if start:
        await services.wallet.start()
    provider = Provider(await aiohttp_client(create_gateway_app(services)))
    admin = Admin(await aiohttp_client(create_admin_app(services)))
    return provider, admin, services


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test alone, which it may stop, restart and pause."""
    yield from running(EmbeddedRedis(tmp_path / "own-redis"))


@pytest.fixture
async def own_gateway(
    own_redis: EmbeddedRedis, settings: Settings, aiohttp_client: Callable[..., Any]
) -> AsyncIterator[AppClients]:
    provider, admin, services = await gateway_on(
        settings.replace(redis_url=own_redis.url, redis_timeout_ms=REDIS_TIMEOUT_MS_SHORT),
        aiohttp_client,
    )
    yield provider, admin, services
    await services.close()


CALLBACKS = {
    "bet": ("/withdraw", bet("alice", "s-1", "b1", 1_000)),
    "free_bet": ("/withdraw", bet("alice", "s-1", "b1", 1_000, action="FREE_BET")),
    "win": ("/deposit", win("alice", "w1", "b1", 1_000)),
    "rollback": ("/deposit", rollback("alice", "rb1", "b1")),
    "close_round": ("/deposit", close_round("r1", [1_000], [2.35])),
    "balance": ("/balance", {"user_id": "alice"}),
    "auth": ("/auth", {"session_token": "s-1"}),
}


@pytest.mark.parametrize("callback", sorted(CALLBACKS))
async def test_callback_answers_503_envelope_when_nothing_listens(
    settings, aiohttp_client, callback
):
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    provider, _, services = await gateway_on(
        settings.replace(redis_url=dead_url), aiohttp_client, start=False
    )
    path, payload = CALLBACKS[callback]
    status, body = await provider.post(path, payload)
    assert (status, body) == (503, WALLET_UNAVAILABLE)
    await services.close()


async def test_wallet_outage_of_one_gateway_leaves_the_shared_wallet_working(
    settings, aiohttp_client, provider, admin
):
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    dead_provider, _, dead_services = await gateway_on(
        settings.replace(redis_url=dead_url), aiohttp_client, start=False
    )
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    payload = bet("alice", session, "b1", 1_000)
    assert await dead_provider.post("/withdraw", payload) == (503, WALLET_UNAVAILABLE)
    assert await admin.balance("alice") == 10_000
    status, body = await provider.post("/withdraw", payload)
    assert status == 200, body
    assert await admin.balance("alice") == 9_000
    await dead_services.close()


async def test_bet_retried_after_redis_returns_applies_exactly_once(own_redis, own_gateway):
    provider, admin, services = own_gateway
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    body = orjson.dumps(bet("alice", session, "b1", 1_000))

    own_redis.stop()
    status, raw = await provider.post_raw("/withdraw", body)
    assert (status, orjson.loads(raw)) == (503, WALLET_UNAVAILABLE)
    assert (await admin.call("GET", "/admin/players/alice"))[0] == 503

    own_redis.start()  # same port and data folder: the AOF brings the wallet back
    await assert_retries_debit_once(provider, admin, services, body)


async def test_bet_that_timed_out_is_applied_once_by_its_retry(own_redis, own_gateway):
    """A 503 after a timeout: the script may or may not have run; the retry settles it."""
    provider, admin, services = own_gateway
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    body = orjson.dumps(bet("alice", session, "b1", 1_000))

    pauser = await pause_scripts(own_redis.url)
    status, raw = await provider.post_raw("/withdraw", body)
    assert (status, orjson.loads(raw)) == (503, WALLET_UNAVAILABLE)
    await unpause(pauser)  # the held script runs now, after its caller gave up

    await assert_retries_debit_once(provider, admin, services, body)


async def test_win_retried_after_an_outage_credits_exactly_once(own_redis, own_gateway):
    provider, admin, services = own_gateway
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    body = orjson.dumps(win("alice", "w1", "b1", 2_500))

    own_redis.stop()
    assert (await provider.post_raw("/deposit", body))[0] == 503
    own_redis.start()
    first = await retry_until_answered(provider, "/deposit", body)
    assert first[0] == 200
    assert await retry_until_answered(provider, "/deposit", body) == first
    assert await admin.balance("alice") == 11_500
    assert await tx_event_count(services, "alice", "w1") == 1


async def assert_retries_debit_once(
    provider: Provider, admin: Any, services: Services, body: bytes
) -> None:
    """The provider's retries of alice's bet b1 of 1,000 (of 10,000): debited once, and every
    answer after the first success is that success, byte for byte."""
    first = await retry_until_answered(provider, "/withdraw", body)
    assert first[0] == 200
    assert orjson.loads(first[1])["data"]["new_balance"] == 9_000
    assert await provider.post_raw("/withdraw", body) == first
    assert await admin.balance("alice") == 9_000
    assert await tx_event_count(services, "alice", "b1") == 1


# The provider retries a 503; so does this helper, a bounded number of times.
RETRIES_MAX = 5


async def retry_until_answered(provider: Provider, path: str, body: bytes) -> tuple[int, bytes]:
    for _ in range(RETRIES_MAX):
        status, raw = await provider.post_raw(path, body)
        if status != 503:
            return status, raw
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} still 503 after {RETRIES_MAX} retries")


async def tx_event_count(services: Services, user_id: str, tx: str) -> int:
    keys = services.wallet.keys
    entries = await services.redis.xrange(keys.events(keys.shard(user_id)))
    return sum(1 for _, fields in entries if fields.get("tx") == tx)


# --- a deadline, whatever Redis does (docs/protocol.md §3) ----------------------------------------

DEADLINE_MARGIN_SECONDS = 0.05  # the protocol's "REDIS_TIMEOUT_MS plus a few milliseconds"
CONCURRENT_BETS = 60
PENDING_CALLS_MAX_SMALL = 16


async def timed_post(provider: Provider, path: str, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    status, _ = await provider.post_raw(path, body)
    return status, time.perf_counter() - started


async def test_paused_redis_answers_every_bet_503_within_the_deadline_then_retries_apply_once(
    own_redis: EmbeddedRedis, own_gateway: AppClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLIENT PAUSE during 60 concurrent bets: each answers 503 within REDIS_TIMEOUT_MS (+50
    ms), calls past the pending bound answer at once, nothing queues without bound; once Redis
    is back, the provider's retries apply every bet exactly once."""
    monkeypatch.setattr(coalesced_scripts, "PENDING_CALLS_MAX", PENDING_CALLS_MAX_SMALL)
    provider, admin, services = own_gateway
    await admin.create_player("alice", 1_000_000)
    session = await admin.open_session("alice")
    bodies = [orjson.dumps(bet("alice", session, f"b{n}", 1_000)) for n in range(CONCURRENT_BETS)]
    pauser = await pause_scripts(own_redis.url)
    with frozen_test_heap():
        answers = await asyncio.gather(*(timed_post(provider, "/withdraw", b) for b in bodies))
    script_calls = services.wallet._script_calls
    assert len(script_calls._pending) <= PENDING_CALLS_MAX_SMALL

    assert {status for status, _ in answers} == {503}
    # as the gateway timed each answer (the test client queues requests past 100 connections)
    registry = services.metrics.registry
    answered = registry.get_sample_value("wallet_request_seconds_count", {"endpoint": "withdraw"})
    deadline = REDIS_TIMEOUT_MS_SHORT / 1000 + DEADLINE_MARGIN_SECONDS  # a bucket's bound
    within = registry.get_sample_value(
        "wallet_request_seconds_bucket", {"endpoint": "withdraw", "le": str(deadline)}
    )
    assert answered == within == CONCURRENT_BETS
    # past the bound, a call is refused at once instead of waiting its whole deadline (timed by
    # the gateway: the test client's own queue past 100 connections is no part of it)
    at_once = registry.get_sample_value(
        "wallet_request_seconds_bucket", {"endpoint": "withdraw", "le": "0.1"}
    )
    assert at_once and at_once >= 1

    await unpause(pauser)
    for body in bodies:
        assert (await retry_until_answered(provider, "/withdraw", body))[0] == 200
    assert await admin.balance("alice") == 1_000_000 - CONCURRENT_BETS * 1_000
    keys = services.wallet.keys
    entries = await services.redis.xrange(keys.events(keys.shard("alice")))
    tx_ids = [fields["tx"] for _, fields in entries if fields.get("kind") == "tx"]
    assert sorted(tx_ids) == sorted(f"b{n}" for n in range(CONCURRENT_BETS))


@pytest.mark.parametrize("callback", ["bet", "balance", "auth"])
async def test_a_redis_slower_than_the_deadline_answers_503_in_time(
    own_redis: EmbeddedRedis, own_gateway: AppClients, callback: str
) -> None:
    """DEBUG SLEEP blocks Redis itself: scripts, plain reads and the session index alike."""
    provider, admin, _ = own_gateway
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    path, payload = {
        "bet": ("/withdraw", bet("alice", session, "b1", 1_000)),
        "balance": ("/balance", {"user_id": "alice"}),
        "auth": ("/auth", {"session_token": session}),
    }[callback]
    sleeper = Redis.from_url(own_redis.url)
    sleeping = asyncio.create_task(sleeper.execute_command("DEBUG", "SLEEP", 1))
    await asyncio.sleep(0.05)
    with frozen_test_heap():
        status, seconds = await timed_post(provider, path, orjson.dumps(payload))
    assert status == 503
    assert seconds <= REDIS_TIMEOUT_MS_SHORT / 1000 + DEADLINE_MARGIN_SECONDS, seconds
    await sleeping
    await sleeper.aclose()


# --- Redis says "not now": READONLY, OOM -> 503, nothing half-applied ---------------------------


async def test_out_of_memory_redis_answers_503_and_the_retry_applies_once(
    own_redis: EmbeddedRedis, own_gateway: AppClients
) -> None:
    provider, admin, services = own_gateway
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    body = orjson.dumps(bet("alice", session, "b1", 1_000))
    configurer = Redis.from_url(own_redis.url)
    await configurer.config_set("maxmemory", 1)
    status, raw = await provider.post_raw("/withdraw", body)
    assert (status, orjson.loads(raw)) == (503, WALLET_UNAVAILABLE)
    await configurer.config_set("maxmemory", 0)
    await configurer.aclose()
    await assert_retries_debit_once(provider, admin, services, body)


@pytest.fixture
def replica(own_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A read-only replica of own_redis, from the same binary."""
    server = EmbeddedRedis(tmp_path / "replica", replica_of=own_redis)
    server.start()
    yield server
    os.kill(server.pid, signal.SIGCONT)  # should a test stop with it paused
    server.stop()


async def wait_until_replicating(replica: EmbeddedRedis) -> None:
    """Linked to its primary, and done with the AOF rewrite that follows the first sync (a
    SIGTERM that lands during it is lost: the replica's teardown would wait 30 s)."""
    async with Redis.from_url(replica.url) as client:
        for _ in range(200):
            linked = (await client.info("replication")).get("master_link_status") == "up"
            aof = await client.info("persistence")
            rewriting = aof["aof_rewrite_in_progress"] or aof["aof_rewrite_scheduled"]
            if linked and not rewriting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the replica did not connect to its primary")


async def test_a_read_only_redis_answers_503_and_moves_nothing(
    own_redis: EmbeddedRedis,
    replica: EmbeddedRedis,
    own_gateway: AppClients,
    settings: Settings,
    aiohttp_client: Callable[..., Any],
) -> None:
    """A gateway still pointed at a replica (a failover it has not followed): READONLY."""
    _, admin, _ = own_gateway
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    await wait_until_replicating(replica)
    stale, _, stale_services = await gateway_on(
        settings.replace(redis_url=replica.url, redis_timeout_ms=REDIS_TIMEOUT_MS_SHORT),
        aiohttp_client,
    )
    status, body = await stale.post("/withdraw", bet("alice", session, "b1", 1_000))
    assert (status, body) == (503, WALLET_UNAVAILABLE)
    assert await admin.balance("alice") == 10_000
    await stale_services.close()


async def test_wait_for_a_replica_covers_replays_too_and_a_paused_replica_is_never_a_200(
    own_redis: EmbeddedRedis,
    replica: EmbeddedRedis,
    settings: Settings,
    aiohttp_client: Callable[..., Any],
) -> None:
    """REDIS_WAIT_REPLICAS=1: a WAIT on the connection that ran the scripts ends every batch,
    so no answer, new or replayed, is a 200 before a replica holds it."""
    provider, admin, services = await gateway_on(
        settings.replace(
            redis_url=own_redis.url,
            redis_timeout_ms=REDIS_TIMEOUT_MS_SHORT,
            redis_wait_replicas=1,
        ),
        aiohttp_client,
    )
    await wait_until_replicating(replica)
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    first = orjson.dumps(bet("alice", session, "b1", 1_000))
    answered = await provider.post_raw("/withdraw", first)
    assert answered[0] == 200

    os.kill(replica.pid, signal.SIGSTOP)
    second = orjson.dumps(bet("alice", session, "b2", 1_000))
    assert (await provider.post_raw("/withdraw", second))[0] == 503
    assert (await provider.post_raw("/withdraw", first))[0] == 503  # a replay waits too
    os.kill(replica.pid, signal.SIGCONT)

    assert await retry_until_answered(provider, "/withdraw", first) == answered
    assert (await retry_until_answered(provider, "/withdraw", second))[0] == 200
    assert await admin.balance("alice") == 8_000
    assert await tx_event_count(services, "alice", "b2") == 1
    await services.close()
