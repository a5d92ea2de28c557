"""When the hot wallet is unreachable or slow the gateway answers 503 in the envelope (PROTOCOL.md
§3): "not confirmed". The provider's retry of the same provider_tx_id then applies it once.

These tests use their own Redis servers; the shared one is never stopped or paused.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Admin, Provider
from payloads import bet, close_round, rollback, win
from redis.asyncio import Redis

from gateway.app import Services, create_admin_app, create_gateway_app
from gateway.embedded import EmbeddedRedis, free_port
from gateway.settings import Settings

WALLET_UNAVAILABLE = {"code": 503, "message": "Wallet temporarily unavailable", "data": None}
REDIS_TIMEOUT_MS_SHORT = 200
REDIS_PAUSE_MS = 1_000

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
    server = EmbeddedRedis(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()


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

    pauser = Redis.from_url(own_redis.url)
    await pauser.execute_command("CLIENT", "PAUSE", REDIS_PAUSE_MS, "ALL")
    status, raw = await provider.post_raw("/withdraw", body)
    assert (status, orjson.loads(raw)) == (503, WALLET_UNAVAILABLE)
    await asyncio.sleep(REDIS_PAUSE_MS / 1000 + 0.2)
    await pauser.aclose()

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
