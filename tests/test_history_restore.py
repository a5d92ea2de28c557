"""Reconciliation proves Redis and PostgreSQL agree (and names who does not); restore rebuilds
the hot wallet from PostgreSQL so that old retries get their original answers back."""

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from payloads import bet, close_round, rollback, win
from redis.asyncio import Redis

from gateway.app import Services
from gateway.keys import KeySpace
from gateway.redis_connection import GATEWAY_CLIENT_NAME, WRITER_CLIENT_NAME, client_for_url
from gateway.settings import Settings
from persistence import reconcile as reconcile_module
from persistence.reconcile import reconcile, snapshot_redis
from persistence.restore import RestoreRefused, restore
from persistence.writer import HistoryWriter

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]
TTL_TOLERANCE_MS = 60_000
CLI_SECONDS_MAX = 60.0
DISCONNECT_POLLS_MAX = 100
DISCONNECT_POLL_SECONDS = 0.02
# What restore rebuilds; sessions, launch tokens and streams it does not.
RESTORED_KEY_KINDS = (
    "player",
    "tx",
    "tx_owner",
    "tombstone",
    "early_win",
    "adjustment",
    "round_closed",
)


class Recorder:
    """Posts callbacks and keeps (path, body, status, response bytes) of each."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.calls: list[tuple[str, bytes, int, bytes]] = []

    async def post(self, path: str, payload: dict[str, Any], expected_status: int) -> bytes:
        body = orjson.dumps(payload)
        status, response = await self.provider.post_raw(path, body)
        assert status == expected_status, response
        self.calls.append((path, body, status, response))
        return response


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    """The gateway with its history: a record past its retention comes back from it."""
    return settings.replace(database_url=database_url)


@pytest.fixture
async def operator_redis(settings: Settings) -> AsyncIterator[Redis]:
    """The operator's client, as `wallet-gateway restore` opens it: no gateway's client name."""
    async with client_for_url(settings.redis_url, decode_responses=True) as redis:
        yield redis


async def stop_gateway(services: Services) -> None:
    """Its connections closed, as a stopped gateway's (the pool reconnects when used again)."""
    await services.redis.connection_pool.disconnect()
    await until_disconnected(services.settings.redis_url, GATEWAY_CLIENT_NAME)


async def until_disconnected(redis_url: str, client_name: str) -> None:
    """Redis drops a closed client a moment after the client closed it: restore would still
    see it live."""
    async with Redis.from_url(redis_url, decode_responses=True) as redis:
        for _ in range(DISCONNECT_POLLS_MAX):
            if all(client["name"] != client_name for client in await redis.client_list()):
                return
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
    raise AssertionError(f"{client_name} still connected")


async def snapshot_keys(services: Services) -> dict[str, tuple[Any, int]]:
    """Every key restore rebuilds -> (value, TTL ms)."""
    redis, keys = services.redis, KeySpace(services.settings.shards)
    found: dict[str, tuple[Any, int]] = {}
    async with Redis.from_url(services.settings.redis_url) as binary:  # a bitmap is no text
        for shard in range(keys.shards):
            filter_key = keys.seen_filter(shard)
            found[filter_key] = (await binary.get(filter_key), await redis.pttl(filter_key))
    for shard in range(keys.shards):
        for kind in RESTORED_KEY_KINDS:
            wildcards = ("*", "*") if kind == "adjustment" else ("*",)  # (player, reference)
            async for key in redis.scan_iter(match=getattr(keys, kind)(shard, *wildcards)):
                value = (
                    await redis.hgetall(key)
                    if await redis.type(key) == "hash"
                    else await redis.get(key)
                )
                found[key] = (value, await redis.pttl(key))
    return found


async def play_every_kind_of_call(recorder: Recorder, admin: Any) -> None:
    await admin.create_player("alice", balance=10_000, maxbet=5_000)
    await admin.create_player("bob", balance=5_000)
    alice, bob = await admin.open_session("alice"), await admin.open_session("bob")
    post = recorder.post
    await post("/withdraw", bet("alice", alice, "b1", 1_000), 200)
    await post("/withdraw", bet("alice", alice, "b2", 50_000), 400)  # over maxbet
    await post("/withdraw", bet("alice", alice, "b3", 4_000), 200)
    await post("/withdraw", bet("alice", alice, "b4", 4_000), 200)
    await post("/deposit", rollback("alice", "r5", "b4", amount=1), 409)  # amount mismatch
    await post("/withdraw", bet("alice", alice, "b5", 2_000), 402)
    await post("/deposit", win("alice", "w1", "b1", 2_500), 200)
    await post("/deposit", rollback("alice", "r1", "b1"), 409)  # of a won bet
    await post("/deposit", rollback("alice", "r2", "b3"), 200)
    await post("/deposit", win("alice", "w2", "b3", 100), 409)  # after rollback
    await post("/deposit", rollback("alice", "r3", "ghost"), 200)  # tombstone
    await post("/withdraw", bet("alice", alice, "ghost", 100), 409)  # voided
    await post("/deposit", win("alice", "w6", "ghost", 100), 409)  # of a voided bet
    await post("/deposit", rollback("alice", "r4", "never-arrives"), 200)  # tombstone
    await post("/withdraw", bet("alice", alice, "fb1", 500, action="FREE_BET"), 200)
    await post("/deposit", win("alice", "fw1", "fb1", 300, action="FREE_BET_WIN"), 200)
    await post("/withdraw", bet("bob", bob, "x1", 1_000), 200)
    await post("/deposit", win("alice", "w3", "x1", 100), 409)  # cross player
    await post("/deposit", win("alice", "w4", "late", 200), 200)  # overtakes its bet
    await post("/withdraw", bet("alice", alice, "late", 200), 200)  # stored already won
    await post("/deposit", win("alice", "w5", "later", 200), 200)  # its bet is yet to come
    await post("/deposit", rollback("alice", "r10", "later"), 409)  # of that early win
    await post("/deposit", close_round("round-b1", [1_000], ["2.5"]), 200)
    status, _ = await admin.call(
        "POST", "/admin/players/alice/adjustments", {"amount": 700, "reference": "dep-1"}
    )
    assert status == 200


async def test_restore_after_flushall_answers_old_retries_with_the_same_bytes(
    provider: Any,
    admin: Any,
    services: Services,
    writer: HistoryWriter,
    drain: Drain,
    history_settings: Settings,
    database_url: str,
    operator_redis: Redis,
) -> None:
    recorder = Recorder(provider)
    await play_every_kind_of_call(recorder, admin)
    balances = {user: await admin.balance(user) for user in ("alice", "bob")}
    keys_before = await snapshot_keys(services)
    # the wallet's incident lists, which restore rebuilds (the admin API lists the history's)
    incidents_before = await services.wallet.incidents(100)
    await drain()
    await writer.close()
    await stop_gateway(services)

    await operator_redis.flushall()
    report = await restore(operator_redis, database_url, history_settings, force=False)

    assert (report.players, report.tombstones, report.early_wins, report.rounds_closed) == (
        2,
        2,
        2,
        1,
    )
    assert {user: await admin.balance(user) for user in balances} == balances
    keys_after = await snapshot_keys(services)
    assert keys_after.keys() == keys_before.keys()
    for key, (value, ttl_ms) in keys_before.items():
        assert keys_after[key][0] == value, key
        assert abs(keys_after[key][1] - ttl_ms) < TTL_TOLERANCE_MS, key
    incidents = await services.wallet.incidents(100)
    assert incidents == incidents_before  # in order, with what each found of its bet

    for path, body, status, response in recorder.calls:
        assert await provider.post_raw(path, body) == (status, response), body
    status, body = await admin.call(
        "POST", "/admin/players/alice/adjustments", {"amount": 700, "reference": "dep-1"}
    )
    assert (status, body["data"]) == (200, {"balance": balances["alice"]})
    assert {user: await admin.balance(user) for user in balances} == balances

    # the bets' states, tombstones and tx owners came back too
    alice = await admin.open_session("alice")
    assert (await provider.post("/deposit", rollback("alice", "r9", "b1")))[1]["code"] == 409
    assert (await provider.post("/deposit", win("alice", "w9", "b3", 1)))[1]["code"] == 409
    assert (await provider.post("/withdraw", bet("alice", alice, "never-arrives", 1)))[0] == 409
    assert (await provider.post("/deposit", win("alice", "w8", "x1", 1)))[0] == 409
    assert (await provider.post("/deposit", rollback("alice", "r7", "late")))[0] == 409
    assert (await provider.post("/deposit", rollback("alice", "r6", "later")))[0] == 409
    status, body = await provider.post("/deposit", rollback("alice", "r8", "b4"))
    assert (status, body["data"]["new_balance"]) == (200, balances["alice"] + 4_000)

    agreement = await reconcile(services.redis, database_url, history_settings)
    assert agreement.agrees, agreement.render()

    # Past the retention the records leave Redis; the rebuilt seen-id filter sends each retry
    # to the history, which answers it as before: nothing is applied a second time.
    keys = KeySpace(services.settings.shards)
    for pattern in (keys.tx("*", "*"), keys.tx_owner("*", "*")):
        async for key in services.redis.scan_iter(match=pattern):
            await services.redis.delete(key)
    balances = {user: await admin.balance(user) for user in balances}
    for path, body, status, response in recorder.calls:
        assert await provider.post_raw(path, body) == (status, response), body
    assert {user: await admin.balance(user) for user in balances} == balances


async def test_restore_refuses_a_live_wallet_even_forced_and_says_what_is_live(
    services: Services,
    traffic: Any,
    writer: HistoryWriter,
    drain: Drain,
    history_settings: Settings,
    database_url: str,
    operator_redis: Redis,
) -> None:
    players = await traffic.players(3, "player", balance=10_000)
    await traffic.bets(players, 2, "bet")

    # the gateway's client is connected (it made the calls above)
    with pytest.raises(RestoreRefused, match=r"live: \d+ wallet-gateway connection\(s\) from "):
        await restore(operator_redis, database_url, history_settings, force=True)
    cli = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway.cli", "restore", "--force"),
        env=dict(os.environ, REDIS_URL=history_settings.redis_url, DATABASE_URL=database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(cli.communicate(), CLI_SECONDS_MAX)
    assert (cli.returncode, stdout) == (1, b"")
    [line] = stderr.decode().splitlines()
    assert line.startswith("wallet-gateway: restore refused: the wallet is live: "), line
    assert "wallet-gateway connection" in line

    # the gateway stopped, but nothing it wrote is in PostgreSQL yet
    await stop_gateway(services)
    streams = KeySpace(history_settings.shards).all_streams()
    unwritten = sum([await operator_redis.xlen(stream) for stream in streams])
    assert unwritten >= 3 + 3 * 2  # players and bets at least
    with pytest.raises(RestoreRefused, match=rf"<= {unwritten} unacknowledged in \d+ stream"):
        await restore(operator_redis, database_url, history_settings, force=True)

    # written, but the writer still connected
    await drain()
    with pytest.raises(RestoreRefused, match=r"live: \d+ wallet-writer connection"):
        await restore(operator_redis, database_url, history_settings, force=True)

    # stopped and drained: refused only because Redis is not empty, unless forced
    await writer.close()
    await until_disconnected(history_settings.redis_url, WRITER_CLIENT_NAME)
    with pytest.raises(RestoreRefused, match=r"Redis holds \d+ keys"):
        await restore(operator_redis, database_url, history_settings, force=False)
    report = await restore(operator_redis, database_url, history_settings, force=True)
    assert (report.players, report.balance_total) == (3, 3 * (10_000 - 2 * 10))


async def test_reconcile_agrees_then_names_the_player_whose_balance_moved_behind_its_back(
    services: Services,
    traffic: Any,
    drain: Drain,
    history_settings: Settings,
    database_url: str,
) -> None:
    players = await traffic.players(6, "player", balance=100_000)
    await traffic.bets(players, 20, "bet")
    report = await reconcile(services.redis, database_url, history_settings)
    assert report.agrees, report.render()
    assert (report.players_checked, report.records_checked) == (6, 120)
    assert report.redis_balance_total == report.history_balance_total == 6 * (100_000 - 200)

    keys = KeySpace(services.settings.shards)
    victim = players[3][0]
    await services.redis.hincrby(keys.player(keys.shard(victim), victim), "balance", 1_000)
    report = await reconcile(services.redis, database_url, history_settings)

    assert not report.agrees
    assert report.players_named() == {victim}
    assert f"balance {victim}: Redis 100800, history 99800" in report.render()


async def test_reconcile_names_idempotency_records_lost_or_changed_in_redis(
    services: Services, traffic: Any, history_settings: Settings, database_url: str
) -> None:
    players = await traffic.players(2, "player", balance=100_000)
    bet_ids = await traffic.bets(players, 3, "bet")
    keys = KeySpace(services.settings.shards)
    lost, changed = bet_ids[0], bet_ids[1]
    lost_owner, changed_owner = lost.split("-")[1:3], changed.split("-")[1:3]
    lost_key = keys.tx(keys.shard("-".join(lost_owner)), lost)
    changed_key = keys.tx(keys.shard("-".join(changed_owner)), changed)
    await services.redis.delete(lost_key)
    await services.redis.hset(changed_key, "outcome", "INSUFFICIENT_FUNDS")

    report = await reconcile(services.redis, database_url, history_settings)

    named = {(d.kind, d.subject) for d in report.differences}
    assert named == {("record_missing_in_redis", lost), ("record_differs", changed)}


async def test_reconcile_agrees_while_bets_keep_arriving(
    services: Services,
    traffic: Any,
    history_settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    players = await traffic.players(8, "player", balance=10**9)
    await traffic.bets(players, 10, "warmup")
    betting_done = asyncio.Event()
    rounds_during: list[int] = []

    async def keep_betting() -> None:
        while not betting_done.is_set():
            await traffic.bets(players, 1, f"live-{len(rounds_during)}")
            rounds_during.append(1)
            await asyncio.sleep(0.005)  # steady, not a flood

    async def snapshot_then_bet(redis: Redis, keys: KeySpace) -> Any:
        """Bets that land after the snapshot, before the comparison, however fast both run."""
        snapshot = await snapshot_redis(redis, keys)
        await traffic.bets(players, 1, "after-snapshot")
        return snapshot

    monkeypatch.setattr(reconcile_module, "snapshot_redis", snapshot_then_bet)
    betting = asyncio.create_task(keep_betting())
    await asyncio.sleep(0.05)
    try:
        report = await reconcile(services.redis, database_url, history_settings)
    finally:
        betting_done.set()
        await betting
    assert report.agrees, report.render()
