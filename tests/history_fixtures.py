"""Fixtures of the durable-history tests (`pytest_plugins = ("history_fixtures",)`; never
imported directly, so pytest rewrites its asserts): a database of its own per test on the
session's real PostgreSQL, migrated; a history writer on the test's Redis."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from helpers import empty_database

from gateway.app import Services
from gateway.embedded import EmbeddedPostgres
from gateway.schemas import BetRequest
from gateway.settings import Settings
from gateway.support import SupportApi
from gateway.wallet import WalletReply
from persistence.schema import migrate
from persistence.writer import HistoryWriter, WriterLimits

DRAIN_SECONDS_MAX = 60.0
# Tests reclaim a stopped writer's entries after half a second, not half a minute.
TEST_WRITER_LIMITS = WriterLimits(block_ms=100, claim_idle_ms=500)


@pytest.fixture
async def database_url(postgres_server: EmbeddedPostgres) -> AsyncIterator[str]:
    async with empty_database(postgres_server) as url:
        await migrate(url)
        yield url


@pytest.fixture
def history_settings(settings: Settings, database_url: str) -> Settings:
    return settings.replace(database_url=database_url)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
async def writer(services: Services, history_settings: Settings) -> AsyncIterator[HistoryWriter]:
    """Depends on `services`: Redis is flushed before the writer creates its groups."""
    async with HistoryWriter(history_settings, "test-writer", TEST_WRITER_LIMITS) as writer:
        yield writer


@pytest.fixture
def writer_limits() -> WriterLimits:
    return TEST_WRITER_LIMITS


@pytest.fixture
def drain(writer: HistoryWriter) -> Callable[[], Awaitable[None]]:
    """Write everything the streams hold now; fail the test if it takes too long."""

    async def drain_writer() -> None:
        assert await writer.drain_until_caught_up(DRAIN_SECONDS_MAX), await writer.lag()

    return drain_writer


class Traffic:
    """Money calls straight through the wallet's real Lua scripts (no HTTP: faster, for volume)."""

    CONCURRENCY = 64

    def __init__(self, services: Services) -> None:
        self.wallet = services.wallet
        self.sessions = services.sessions

    async def players(self, count: int, prefix: str, balance: int) -> list[tuple[str, str]]:
        """-> [(user_id, session_token)]"""
        made = []
        for n in range(count):
            user_id, session_token = f"{prefix}-{n}", f"session-{prefix}-{n}"
            assert await self.wallet.create_player(user_id, "USD", user_id, balance, None) == "OK"
            assert await self.sessions.open_session(user_id, session_token, "test") == "OK"
            made.append((user_id, session_token))
        return made

    async def bets(
        self, players: list[tuple[str, str]], per_player: int, prefix: str, amount: int = 10
    ) -> list[str]:
        """Bets spread over the players -> their provider_tx_ids (all applied)."""
        calls = [
            (user_id, session_token, f"{prefix}-{user_id}-{n}")
            for n in range(per_player)
            for user_id, session_token in players
        ]
        for start in range(0, len(calls), self.CONCURRENCY):
            replies = await asyncio.gather(
                *(
                    self._bet(user_id, session_token, tx, amount)
                    for user_id, session_token, tx in calls[start : start + self.CONCURRENCY]
                )
            )
            assert all(reply.outcome == "OK" for reply in replies), replies
        return [tx for _, _, tx in calls]

    async def _bet(self, user_id: str, session_token: str, tx: str, amount: int) -> WalletReply:
        payload = {
            "user_id": user_id,
            "session_token": session_token,
            "amount": amount,
            "currency": "USD",
            "provider_tx_id": tx,
            "round_id": f"round-{tx}",
            "game": "aviadrone",
            "action": "BET",
        }
        return await self.wallet.debit_bet(BetRequest.parse(payload), orjson.dumps(payload))


@pytest.fixture
def traffic(services: Services) -> Traffic:
    return Traffic(services)


@pytest.fixture
async def support_client(database_url: str, aiohttp_client: Any) -> AsyncIterator[Any]:
    """The admin API's support reads on the test's database alone."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    app = web.Application()
    app.add_routes(SupportApi(pool).routes())
    yield await aiohttp_client(app)
    await pool.close()
