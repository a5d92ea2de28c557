"""The history writer, reconcile and restore on a real Redis Cluster: the shard streams sit in
different slots on different nodes, so a command naming two of them would fail with CROSSSLOT,
and server-wide commands (SCAN, DBSIZE, CLIENT LIST) must reach every node.

On the session's Redis when it is a cluster (WALLET_GATEWAY_TEST_REDIS=cluster), else on a
cluster of this module's own (3 masters, no replicas). The events are written as the Lua
scripts write them (the writer bench's, persistence/events.py fields), not through the wallet:
these tests hold the history to the cluster, not the scripts.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from helpers import count_rows, running
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway import clock
from gateway.embedded import EmbeddedRedisCluster
from gateway.keys import KeySpace
from gateway.redis_connection import (
    GATEWAY_CLIENT_NAME,
    WRITER_CLIENT_NAME,
    AnyRedis,
    connect_background_redis,
)
from gateway.settings import Settings
from persistence.events import PLAYER_KIND, PlayerEvent
from persistence.reconcile import reconcile, snapshot_redis
from persistence.restore import RestoreRefused, refuse_live_wallet, restore
from persistence.streams import read_progress
from persistence.writer import HistoryWriter, WriterLimits
from persistence.writer_bench import count_history, fill_streams, tx_event

pytest_plugins = ("history_fixtures",)

MASTERS = 3
DRAIN_SECONDS_MAX = 60.0
POLL_SECONDS = 0.05
EVENTS = 600
LIMITS = WriterLimits(block_ms=100, claim_idle_ms=500)


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """This module's: without replicas, a master that stops leaves its slots unserved."""
    yield from running(
        EmbeddedRedisCluster(
            tmp_path_factory.mktemp("redis-cluster"), masters=MASTERS, replicas_per_master=0
        )
    )


@pytest.fixture(scope="module")
def cluster_url(request: pytest.FixtureRequest) -> str:
    if os.environ.get("WALLET_GATEWAY_TEST_REDIS") == "cluster":
        server = request.getfixturevalue("redis_server")
    else:
        server = request.getfixturevalue("own_cluster")
    assert isinstance(server, EmbeddedRedisCluster)
    return server.url


@pytest.fixture
def cluster_settings(cluster_url: str, database_url: str) -> Settings:
    return Settings(redis_url=cluster_url, database_url=database_url)


@pytest.fixture
async def redis(cluster_settings: Settings) -> AsyncIterator[AnyRedis]:
    async with connect_background_redis(cluster_settings.redis_url) as client:
        assert isinstance(client, RedisCluster)
        await client.flushall()
        yield client


async def test_the_shard_streams_are_spread_over_every_master(redis: AnyRedis) -> None:
    """What the other tests rely on: streams on several nodes, so one call cannot read them."""
    assert isinstance(redis, RedisCluster)
    streams = KeySpace(16).all_streams()
    assert len({key_slot(stream.encode()) for stream in streams}) == len(streams)
    nodes = {redis.get_node_from_key(stream).name for stream in streams}
    assert nodes == {node.name for node in redis.get_primaries()} and len(nodes) == MASTERS


async def _put_players(redis: AnyRedis, keys: KeySpace, user_ids: list[str]) -> None:
    """As lua/create_player.lua: the event, then the player hash, atomically (one slot)."""
    for user_id in user_ids:
        shard = keys.shard(user_id)
        event = PlayerEvent(PLAYER_KIND, user_id, "USD", user_id, "5000", "", str(clock.now_ms()))
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.events(shard), event._asdict())
            pipe.hset(
                keys.player(shard, user_id),
                mapping={"currency": "USD", "username": user_id, "balance": "5000"},
            )
            await pipe.execute()


async def _put_money_calls(redis: AnyRedis, keys: KeySpace, user_ids: list[str]) -> None:
    """One money call event per player (bets, wins, a refused bet), on their shard streams."""
    now_ms = clock.now_ms()
    async with redis.pipeline(transaction=False) as pipe:
        for n, user_id in enumerate(user_ids):
            pipe.xadd(keys.events(keys.shard(user_id)), tx_event(n, user_id, now_ms))
        await pipe.execute()


async def test_a_drain_writes_every_event_of_every_node_once(
    redis: AnyRedis, cluster_settings: Settings
) -> None:
    events = await fill_streams(cluster_settings.redis_url, cluster_settings.shards, EVENTS)
    async with HistoryWriter(cluster_settings, "cluster-drain", LIMITS) as writer:
        assert await writer.drain_until_caught_up(DRAIN_SECONDS_MAX), await writer.lag()
        assert await count_history(cluster_settings.database_url) == events
        lag = await writer.lag()
        assert (lag.pending_events, lag.streams_behind) == (0, 0)
        # a second drain finds nothing more to write
        assert await writer.drain_until_caught_up(DRAIN_SECONDS_MAX)
        await writer.leave_group()
    assert await count_history(cluster_settings.database_url) == events
    # acknowledged, so trimmed (XTRIM MINID per stream)
    assert sum(p.length for p in await read_progress(redis, KeySpace(16).all_streams())) == 0


async def test_the_running_writer_follows_new_events_and_outlasts_a_dead_master(
    own_cluster: EmbeddedRedisCluster, database_url: str
) -> None:
    settings = Settings(redis_url=own_cluster.url, database_url=database_url)
    keys = KeySpace(settings.shards)
    players = [f"cluster-player-{n}" for n in range(32)]
    stop = asyncio.Event()
    async with (
        connect_background_redis(settings.redis_url) as redis,
        HistoryWriter(settings, "cluster-run", LIMITS) as writer,
    ):
        await redis.flushall()
        await _put_players(redis, keys, players)
        running_writer = asyncio.create_task(writer.run(stop))
        try:
            await _wait_for_rows(database_url, "players", len(players))

            # a master stops: its streams' slots answer nothing ("connection refused") until
            # it is back; the writer polls, fails, backs off, re-reads the slot map
            master, _ = own_cluster.serving(keys.events(0))
            master.stop()
            await asyncio.sleep(1.0)
            assert not running_writer.done()
            master.start()
            await asyncio.to_thread(own_cluster.wait_until_healthy)

            await _put_money_calls(redis, keys, players)
            await _wait_for_rows(database_url, "transactions", len(players))
        finally:
            stop.set()
            await running_writer  # it stopped when told: it did not raise
    assert await count_rows(database_url, "players") == len(players)


async def _wait_for_rows(database_url: str, table: str, rows: int) -> None:
    deadline = time.monotonic() + DRAIN_SECONDS_MAX
    while (count := await count_rows(database_url, table)) < rows:
        assert time.monotonic() < deadline, f"{count} of {rows} rows in {table}"
        await asyncio.sleep(POLL_SECONDS)
    assert count == rows


async def test_reconcile_snapshots_players_of_every_node_and_agrees(
    redis: AnyRedis, cluster_settings: Settings
) -> None:
    keys = KeySpace(cluster_settings.shards)
    players = [f"reconciled-{n}" for n in range(48)]
    await _put_players(redis, keys, players)
    snapshot = await snapshot_redis(redis, keys)
    assert sorted(user for user, _, _ in snapshot.balances) == sorted(players)
    assert set(snapshot.shard_positions) == set(range(keys.shards))

    report = await reconcile(redis, cluster_settings.database_url, cluster_settings)
    assert report.agrees, report.render()
    assert report.players_checked == len(players)


@pytest.mark.parametrize("client_name", [GATEWAY_CLIENT_NAME, WRITER_CLIENT_NAME])
async def test_restore_sees_a_live_client_on_any_node(
    redis: AnyRedis, cluster_settings: Settings, client_name: str
) -> None:
    assert isinstance(redis, RedisCluster)
    await refuse_live_wallet(redis, cluster_settings)  # nobody connected: not refused
    password = redis.get_connection_kwargs().get("password")
    for node in redis.get_nodes():  # masters, and replicas if any
        live = Redis(host=node.host, port=node.port, password=password, client_name=client_name)
        try:
            await live.ping()
            with pytest.raises(RestoreRefused, match=f"the wallet is live: 1 {client_name}"):
                await refuse_live_wallet(redis, cluster_settings)
        finally:
            await live.aclose()


async def test_restore_rebuilds_keys_on_every_node_and_refuses_a_non_empty_cluster(
    redis: AnyRedis, cluster_settings: Settings
) -> None:
    keys = KeySpace(cluster_settings.shards)
    players = [f"restored-{n}" for n in range(64)]
    await _put_players(redis, keys, players)
    await _put_money_calls(redis, keys, players)
    async with HistoryWriter(cluster_settings, "cluster-restore", LIMITS) as writer:
        assert await writer.drain_until_caught_up(DRAIN_SECONDS_MAX), await writer.lag()
        await writer.leave_group()
    assert await count_history(cluster_settings.database_url) == 2 * len(players)

    with pytest.raises(RestoreRefused, match="Redis holds"):  # DBSIZE summed over the masters
        await restore(redis, cluster_settings.database_url, cluster_settings, False)
    await redis.flushall()
    report = await restore(redis, cluster_settings.database_url, cluster_settings, False)

    assert (report.players, report.records) == (len(players), len(players))
    assert isinstance(redis, RedisCluster)
    user_id = players[0]
    assert await redis.hget(keys.player(keys.shard(user_id), user_id), "balance") is not None
    # players, records, owners, seen-id filters; streams are not restored
    total = await redis.dbsize(target_nodes=RedisCluster.PRIMARIES)
    assert total >= 3 * len(players)
    for node in redis.get_primaries():  # every master holds some of the wallet
        assert await redis.dbsize(target_nodes=node) > 0
