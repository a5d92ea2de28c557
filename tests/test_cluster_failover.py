"""A Redis Cluster master killed under load (docs/scaling.md): its replica is promoted; the calls
in flight answer 503 within the deadline, never a 500; the provider's retries after the failover
are applied exactly once; with REDIS_WAIT_REPLICAS=1 no acknowledged call is lost (and the
promoted master answers once the killed node is back as its replica); scripts come back after
NOSCRIPT; the history writer keeps draining."""

import asyncio
import itertools
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import ADMIN_TOKEN, PUBLIC_KEY, SECRET
from helpers import frozen_test_heap, running
from payloads import bet

from gateway.app import Services, create_gateway_app
from gateway.embedded import EmbeddedPostgres, EmbeddedRedisCluster
from gateway.settings import Settings
from gateway.signing import signed_headers
from persistence.writer import HistoryWriter

pytest_plugins = ("history_fixtures",)

PLAYERS = 12
BALANCE = 10_000_000
STAKE = 100
CONCURRENCY = 16
KILL_AFTER_SECONDS = 1.0
LOAD_SECONDS_MAX = 20.0
AFTER_FAILOVER_SECONDS = 1.0
REDIS_TIMEOUT_MS = 1000
# an answer's time beyond the deadline: the event loop of this one process also runs the load
ANSWER_SLACK_SECONDS = 0.5
RETRIES_MAX = 50
RETRY_PAUSE_SECONDS = 0.05


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """A cluster of its own: this module kills one of its masters."""
    yield from running(  # type: ignore[misc]
        EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster"), password=secrets.token_hex(12))
    )


@pytest.fixture
async def stack(
    cluster: EmbeddedRedisCluster, database_url: str, aiohttp_client: Any
) -> AsyncIterator[tuple[Services, TestClient]]:
    settings = Settings(
        redis_url=cluster.url,
        database_url=database_url,
        provider_keys=f"{PUBLIC_KEY}:{SECRET}",
        admin_token=ADMIN_TOKEN,
        redis_wait_replicas=1,
        redis_timeout_ms=REDIS_TIMEOUT_MS,
    )
    services = Services.create(settings)
    await services.redis.flushall()
    await services.start()
    yield services, await aiohttp_client(create_gateway_app(services))
    await services.close()


class Calls:
    """Every bet sent, by tx id: its body, and each answer (status, body, seconds)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.bodies: dict[str, bytes] = {}
        self.answers: dict[str, list[tuple[int, dict[str, Any], float]]] = {}

    async def send(self, tx: str) -> int:
        body = self.bodies[tx]
        started = time.monotonic()
        response = await self.client.post(
            "/withdraw", data=body, headers=signed_headers(PUBLIC_KEY, SECRET, body)
        )
        answer = orjson.loads(await response.read())
        self.answers.setdefault(tx, []).append(
            (response.status, answer, time.monotonic() - started)
        )
        return response.status

    async def retry_until_answered(self, tx: str) -> None:
        for _ in range(RETRIES_MAX):
            if self.answers[tx][-1][0] == 200:
                return
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            await self.send(tx)
        assert self.answers[tx][-1][0] == 200, (tx, self.answers[tx][-1])

    async def each(self, call: Callable[[str], Awaitable[Any]], txs: list[str]) -> None:
        """`call` for every tx, CONCURRENCY at a time, as the provider's retries come."""
        queue = iter(txs)

        async def worker() -> None:
            for tx in queue:
                await call(tx)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def test_a_killed_master_fails_over_and_every_call_is_applied_once(
    cluster: EmbeddedRedisCluster,
    stack: tuple[Services, TestClient],
    postgres_server: EmbeddedPostgres,
    database_url: str,
) -> None:
    services, client = stack
    players = [f"player-{n}" for n in range(PLAYERS)]
    for user_id in players:
        assert await services.wallet.create_player(user_id, "USD", user_id, BALANCE, None) == "OK"
        assert await services.sessions.open_session(user_id, f"s-{user_id}", "test") == "OK"
    keys = services.wallet.keys
    victim_key = keys.player(keys.shard(players[0]), players[0])
    master, replicas = cluster.serving(victim_key)
    calls = Calls(client)
    numbers = itertools.count()
    stop_at = time.monotonic() + LOAD_SECONDS_MAX
    failed_over_at: list[float] = []

    async def player_loop() -> None:
        while time.monotonic() < stop_at:
            if failed_over_at and time.monotonic() > failed_over_at[0] + AFTER_FAILOVER_SECONDS:
                return
            number = next(numbers)
            user_id = players[number % PLAYERS]
            tx = f"fo-{number}"
            calls.bodies[tx] = orjson.dumps(bet(user_id, f"s-{user_id}", tx, STAKE))
            await calls.send(tx)

    async def kill_then_watch() -> None:
        await asyncio.sleep(KILL_AFTER_SECONDS)
        os.kill(master.pid, signal.SIGKILL)
        while time.monotonic() < stop_at:
            await asyncio.sleep(0.1)
            promoted = await asyncio.to_thread(cluster.serving, victim_key)
            if promoted[0] is not master:
                assert promoted[0] in replicas
                failed_over_at.append(time.monotonic())
                return

    async with HistoryWriter(services.settings, "failover-writer") as writer:
        stop_writer = asyncio.Event()
        writing = asyncio.create_task(writer.run(stop_writer))
        with frozen_test_heap():  # the answers are timed
            await asyncio.gather(kill_then_watch(), *(player_loop() for _ in range(CONCURRENCY)))
        assert failed_over_at, "the replica was not promoted in time"
        # with REDIS_WAIT_REPLICAS=1 the promoted master answers only once it has a replica:
        # the killed node, started again, rejoins as one (as an operator would bring it back)
        master.stop()
        await asyncio.to_thread(master.start)
        await asyncio.to_thread(cluster.wait_until_healthy)
        assert cluster.serving(victim_key)[1] == [master]

        first_answers = [answers[0] for answers in calls.answers.values()]
        statuses = {status for status, _, _ in first_answers}
        assert statuses <= {200, 503}, statuses  # never a 500
        assert 503 in statuses and 200 in statuses
        slowest = max(seconds for _, _, seconds in first_answers)
        assert slowest < REDIS_TIMEOUT_MS / 1000 + ANSWER_SLACK_SECONDS

        # the provider retries every unanswered call until answered: each is applied once
        await calls.each(calls.retry_until_answered, list(calls.answers))
        # no acknowledged call lost: each replays what it answered first (WAIT 1 held every
        # answer until a replica had it), and every balance adds up to one debit per tx
        await calls.each(calls.send, list(calls.answers))
        for tx, answers in calls.answers.items():
            first_ok = next(body["data"] for status, body, _ in answers if status == 200)
            assert answers[-1][0] == 200 and answers[-1][1]["data"] == first_ok, (tx, answers)
        for user_id in players:
            player = await services.wallet.get_player(user_id)
            assert player is not None
            bets = sum(
                1 for tx in calls.bodies if orjson.loads(calls.bodies[tx])["user_id"] == user_id
            )
            assert player.balance_millis == BALANCE - STAKE * bets, user_id

        # a promoted replica, or a flushed script cache: NOSCRIPT, loaded again, called again
        for node in cluster.nodes:
            if node.running:
                await asyncio.to_thread(_flush_scripts, node)
        for user_id in players:
            tx = f"after-flush-{user_id}"
            calls.bodies[tx] = orjson.dumps(bet(user_id, f"s-{user_id}", tx, STAKE))
            assert await calls.send(tx) == 200, calls.answers[tx]

        # the writer drained through the failover: every bet is in the history, once
        assert await writer.drain_until_caught_up(60), await writer.lag()
        stop_writer.set()
        await writing
    connection = await asyncpg.connect(database_url)
    try:
        stored = await connection.fetchval(
            "SELECT count(*) FROM transactions WHERE provider_tx_id = ANY($1::text[])",
            list(calls.bodies),
        )
    finally:
        await connection.close()
    assert stored == len(calls.bodies)


def _flush_scripts(node: Any) -> None:
    with node.client(socket_timeout=5) as client:
        client.script_flush()
