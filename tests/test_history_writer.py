"""The history writer: every event lands in PostgreSQL exactly once, whatever crashes or stops."""

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from helpers import count_rows, read_as_consumer
from payloads import bet, rollback, win
from redis.asyncio import Redis

from gateway.app import Services
from gateway.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from gateway.keys import KeySpace
from gateway.settings import Settings
from persistence.batch import STAGING_DDL, HistoryBatch
from persistence.reconcile import reconcile
from persistence.schema import migrate, migration_files
from persistence.streams import GROUP, ensure_groups, read_lag
from persistence.writer import HistoryWriter, WriterLimits, run_history_writer

pytest_plugins = ("history_fixtures",)

REPO_DIR = Path(__file__).resolve().parent.parent
WAIT_SECONDS_MAX = 60.0
ANSWERS_DURING_OUTAGE = 50
POLL_SECONDS = 0.01

Drain = Callable[[], Awaitable[None]]


async def wait_for_rows(database_url: str, more_than: int) -> int:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while (count := await count_rows(database_url, "transactions")) <= more_than:
        assert time.monotonic() < deadline, f"no more than {more_than} rows written"
        await asyncio.sleep(POLL_SECONDS)
    return count


def start_writer_process(
    settings: Settings, consumer: str, log_path: Path, *flags: str
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "persistence.writer",
                "--redis-url",
                settings.redis_url,
                "--database-url",
                settings.database_url,
                "--consumer",
                consumer,
                "--claim-idle-ms",
                "500",
                *flags,
            ],
            cwd=REPO_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def pending_ids_of(services: Services, consumer: str) -> list[tuple[str, str]]:
    """(stream, entry id) of every entry pending at `consumer`."""
    pending = []
    for stream in KeySpace(services.settings.shards).all_streams():
        for entry in await services.redis.xpending_range(
            stream, GROUP, min="-", max="+", count=100_000, consumername=consumer
        ):
            pending.append((stream, entry["message_id"]))
    return pending


async def all_entries(services: Services) -> list[tuple[str, str, dict[str, str]]]:
    entries = []
    for stream in KeySpace(services.settings.shards).all_streams():
        entries += [
            (stream, entry_id, fields) for entry_id, fields in await services.redis.xrange(stream)
        ]
    return entries


async def test_migrate_applies_each_migration_once(database_url: str) -> None:
    assert await migrate(database_url) == []  # the fixture applied them
    connection = await asyncpg.connect(database_url)
    try:
        names = [r["name"] for r in await connection.fetch("SELECT name FROM schema_migrations")]
    finally:
        await connection.close()
    assert names == [name for name, _ in migration_files()]
    assert names[:3] == ["001_initial.sql", "002_quarantine.sql", "003_rolled_back_bets.sql"]


async def test_every_event_kind_is_written_once_even_when_delivered_twice(
    provider: Any, admin: Any, services: Services, drain: Drain, database: asyncpg.Connection
) -> None:
    await admin.create_player("alice", balance=10_000, maxbet=5_000)
    session = await admin.open_session("alice")
    assert (await provider.post("/withdraw", bet("alice", session, "b1", 1_000)))[0] == 200
    assert (await provider.post("/withdraw", bet("alice", session, "b2", 50_000)))[0] == 400
    assert (await provider.post("/deposit", win("alice", "w1", "b1", 2_500)))[0] == 200
    assert (await provider.post("/deposit", rollback("alice", "r1", "b1")))[0] == 409
    assert (await provider.post("/deposit", rollback("alice", "r2", "never-seen")))[0] == 200
    status, _ = await admin.call(
        "POST", "/admin/players/alice/adjustments", {"amount": -500, "reference": "cashout-1"}
    )
    assert status == 200
    status, _ = await admin.call(
        "POST", "/admin/players/alice/adjustments", {"amount": -(10**9), "reference": "cashout-2"}
    )
    assert status == 402
    entries = await all_entries(services)

    await drain()
    # a crash between COMMIT and XACK: the same entries (same stream ids) are committed again
    async with database.transaction():
        await database.execute(STAGING_DDL)
        await HistoryBatch.decode(entries).store(database)

    rows = {r["provider_tx_id"]: r for r in await database.fetch("SELECT * FROM transactions")}
    assert set(rows) == {"b1", "b2", "w1", "r1", "r2"}
    assert (rows["b1"]["delta"], rows["b1"]["balance_after"], rows["b1"]["outcome"]) == (
        -1_000,
        9_000,
        "OK",
    )
    assert (rows["b2"]["delta"], rows["b2"]["outcome"]) == (0, "OVER_MAXBET")
    assert (rows["w1"]["delta"], rows["w1"]["bet_tx_id"]) == (2_500, "b1")
    assert (rows["r1"]["outcome"], rows["r1"]["incident"]) == ("ROLLBACK_OF_WON_BET",) * 2
    assert rows["r2"]["tombstone"] and rows["r2"]["amount"] is None
    assert orjson.loads(rows["b1"]["request"])["provider_tx_id"] == "b1"
    player = await database.fetchrow("SELECT * FROM players")
    assert (player["user_id"], player["opening_balance"], player["maxbet"]) == (
        "alice",
        10_000,
        5_000,
    )
    adjustment = await database.fetchrow("SELECT * FROM adjustments")
    assert (adjustment["amount"], adjustment["balance_after"]) == (-500, 11_000)
    refused = await database.fetchrow("SELECT * FROM refused_adjustments")
    assert (refused["reference"], refused["outcome"], refused["balance"]) == (
        "cashout-2",
        "INSUFFICIENT_FUNDS",
        11_000,
    )
    assert await database.fetchval("SELECT count(*) FROM sessions") == 1
    assert await database.fetchval("SELECT count(*) FROM rejected_events") == 0
    assert await database.fetchval("SELECT count(*) FROM incidents") == 1
    incident = await database.fetchrow("SELECT * FROM incidents")
    assert (incident["kind"], incident["provider_tx_id"]) == ("ROLLBACK_OF_WON_BET", "r1")
    assert orjson.loads(incident["recorded"])["provider_tx_id"] == "b1"
    # the history holds what the wallet recorded when it refused, as the admin API lists it
    status, body = await admin.call("GET", "/admin/incidents")
    assert status == 200, body
    assert [listed["recorded"] for listed in body["data"]["incidents"]] == [
        orjson.loads(incident["recorded"])
    ]


async def test_an_id_applied_twice_is_a_history_conflict_kept_raw_never_dropped(
    provider: Any,
    admin: Any,
    services: Services,
    drain: Drain,
    database: asyncpg.Connection,
    history_settings: Settings,
) -> None:
    """The same provider_tx_id in two stream entries means the wallet applied it twice: the
    history keeps the first, quarantines the other raw and opens an incident (docs/protocol.md §5),
    where `ON CONFLICT DO NOTHING` alone dropped it silently."""
    await admin.create_player("alice", balance=10_000)
    session = await admin.open_session("alice")
    assert (await provider.post("/withdraw", bet("alice", session, "tx-1", 1_000)))[0] == 200
    entries = [entry for entry in await all_entries(services) if entry[2]["kind"] == "tx"]
    await drain()
    stream, first_id, fields = entries[0]
    second_id = await services.redis.xadd(stream, {**fields, "op": "another-operator-tx-id"})
    await drain()

    assert await database.fetchval("SELECT stream_id FROM transactions") == first_id
    kept = await database.fetchrow("SELECT * FROM rejected_events")
    assert (kept["stream"], kept["stream_id"], kept["provider_tx_id"]) == (
        stream, second_id, "tx-1",
    )  # fmt: skip
    raw = dict(zip(kept["raw"][::2], kept["raw"][1::2], strict=True))
    assert raw[b"op"] == b"another-operator-tx-id" and raw[b"req"] == fields["req"].encode()
    incident = await database.fetchrow("SELECT * FROM incidents")
    assert (incident["kind"], incident["provider_tx_id"], incident["user_id"]) == (
        "HISTORY_CONFLICT", "tx-1", "alice",
    )  # fmt: skip
    details = orjson.loads(incident["details"])
    assert (details["stream_id"], details["held_stream_id"]) == (second_id, first_id)
    # and reconcile says so, until an operator has dealt with it
    report = await reconcile(services.redis, history_settings.database_url, history_settings)
    quarantined = [d for d in report.differences if d.kind == "quarantined"]
    assert [d.subject for d in quarantined] == [f"{stream} {second_id}"], report.render()
    assert not report.agrees


async def test_writer_killed_mid_batch_then_a_new_one_writes_every_event_exactly_once(
    services: Services,
    traffic: Any,
    history_settings: Settings,
    drain: Drain,
    database_url: str,
    tmp_path: Path,
) -> None:
    players = await traffic.players(8, "player", balance=10**9)
    bet_ids = await traffic.bets(players, 600, "bet")
    log_path = tmp_path / "writers.log"

    # Killed after a COMMIT and before its XACK: the batch is in PostgreSQL and still pending.
    doomed = start_writer_process(
        history_settings, "doomed-1", log_path, "--batch-events-max", "400", "--ack-delay-ms", "500"
    )
    written = await wait_for_rows(database_url, 0)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    pending = await pending_ids_of(services, "doomed-1")
    assert pending, "killed between batches: nothing was in flight"
    connection = await asyncpg.connect(database_url)
    try:
        committed_unacknowledged = await connection.fetchval(
            "SELECT count(*) FROM transactions WHERE stream_id = ANY($1::text[])",
            [entry_id for _, entry_id in pending],
        )
    finally:
        await connection.close()
    assert committed_unacknowledged > 0

    # Killed at an arbitrary point while catching up.
    doomed = start_writer_process(
        history_settings, "doomed-2", log_path, "--batch-events-max", "400"
    )
    await wait_for_rows(database_url, written + 400)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    assert await count_rows(database_url, "transactions") < len(bet_ids), "nothing left to do"

    await drain()  # a new writer reclaims what the dead ones left pending

    connection = await asyncpg.connect(database_url)
    try:
        written_ids = [
            r["provider_tx_id"]
            for r in await connection.fetch("SELECT provider_tx_id FROM transactions")
        ]
        assert sorted(written_ids) == sorted(bet_ids)
        assert await connection.fetchval("SELECT count(*) FROM players") == len(players)
        assert await connection.fetchval("SELECT count(*) FROM sessions") == len(players)
    finally:
        await connection.close()
    assert await pending_ids_of(services, "doomed-1") == []
    assert await pending_ids_of(services, "doomed-2") == []


async def test_two_writers_write_each_event_once(
    services: Services, traffic: Any, history_settings: Settings, database_url: str
) -> None:
    players = await traffic.players(16, "player", balance=10**9)
    bet_ids = await traffic.bets(players, 100, "bet")
    async with (
        HistoryWriter(history_settings, "writer-a") as writer_a,
        HistoryWriter(history_settings, "writer-b") as writer_b,
    ):
        caught_up = await asyncio.gather(
            writer_a.drain_until_caught_up(60), writer_b.drain_until_caught_up(60)
        )
        assert caught_up == [True, True]
        assert writer_a.events_written > 0 and writer_b.events_written > 0
        assert writer_a.events_written + writer_b.events_written == len(bet_ids) + 2 * len(players)
    assert await count_rows(database_url, "transactions") == len(bet_ids)


async def wait_for_events_written(writer: HistoryWriter, count: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while writer.events_written < count:
        assert time.monotonic() < deadline, f"{writer.events_written} of {count} events written"
        await asyncio.sleep(POLL_SECONDS)


async def test_after_a_partial_batch_the_writer_lingers_so_events_arriving_meanwhile_go_in_one(
    services: Services, traffic: Any, history_settings: Settings, database_url: str
) -> None:
    players = await traffic.players(4, "player", balance=10**6)
    setup_events = 2 * len(players)  # a player and a session each
    stop = asyncio.Event()
    limits = WriterLimits(block_ms=100, linger_ms=2000)
    async with HistoryWriter(history_settings, "lingering", limits) as writer:
        running = asyncio.create_task(writer.run(stop))
        await wait_for_events_written(writer, setup_events)
        batches_before = writer.batches_written
        bet_ids = await traffic.bets(players, 25, "bet")  # while the writer lingers
        await wait_for_events_written(writer, setup_events + len(bet_ids))
        assert writer.batches_written == batches_before + 1
        stop.set()
        await running
    assert await count_rows(database_url, "transactions") == len(bet_ids)


async def test_streams_are_trimmed_only_below_what_was_acknowledged(
    services: Services,
    traffic: Any,
    history_settings: Settings,
    writer: HistoryWriter,
    drain: Drain,
) -> None:
    streams = KeySpace(services.settings.shards).all_streams()
    players = await traffic.players(4, "player", balance=10**6)
    await traffic.bets(players, 5, "first")
    await drain()
    assert sum([await services.redis.xlen(stream) for stream in streams]) == 0

    await traffic.bets(players, 5, "second")
    # another consumer takes some entries and never acknowledges them
    stalled = await read_as_consumer(services.redis, GROUP, "stalled", streams, count=1)
    stalled_ids = {(stream, entries[0][0]) for stream, entries in stalled}
    assert stalled_ids
    patient = HistoryWriter(history_settings, "patient", WriterLimits(claim_idle_ms=60_000))
    async with patient:
        assert not await patient.drain_until_caught_up(0.5)  # the stalled entries stay pending
        await patient._trim_acknowledged(await patient.progress())
        for stream, entry_id in stalled_ids:
            assert await services.redis.xrange(stream, min=entry_id, max=entry_id)
        lag = await patient.lag()
        assert lag.pending_events == len(stalled_ids) and lag.seconds_behind > 0
    await drain()  # a writer that reclaims them once idle 0.5 s
    assert (await writer.lag()).pending_events == 0


async def test_an_undecodable_entry_is_kept_aside_and_does_not_block_the_history(
    services: Services, traffic: Any, drain: Drain, database: asyncpg.Connection
) -> None:
    players = await traffic.players(1, "player", balance=10**6)
    stream = KeySpace(services.settings.shards).events(0)
    await services.redis.xadd(stream, {"kind": "tx", "tx": "broken", "delta": "not a number"})
    await traffic.bets(players, 3, "bet")
    await drain()
    rejected = await database.fetchrow("SELECT * FROM rejected_events")
    assert rejected["stream"] == stream and "missing" in rejected["reason"]
    assert await database.fetchval("SELECT count(*) FROM transactions") == 3


async def test_postgres_outage_under_steady_bets_loses_nothing_and_the_writer_catches_up(
    provider: Any,
    admin: Any,
    services: Services,
    writer: HistoryWriter,
    drain: Drain,
    postgres_server: EmbeddedPostgres,
    history_settings: Settings,
    database_url: str,
) -> None:
    sessions = {}
    for n in range(4):
        await admin.create_player(f"p{n}", balance=10**9)
        sessions[f"p{n}"] = await admin.open_session(f"p{n}")
    answers: list[int] = []
    betting_done = asyncio.Event()

    async def steady_bets() -> None:
        while not betting_done.is_set():
            user = f"p{len(answers) % 4}"
            status, _ = await provider.post(
                "/withdraw", bet(user, sessions[user], f"steady-{len(answers)}", 10)
            )
            answers.append(status)
            await asyncio.sleep(0.002)

    stop_writer = asyncio.Event()
    writer_task = asyncio.create_task(writer.run(stop_writer))
    betting = asyncio.create_task(steady_bets())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(postgres_server.stop)
    try:
        # the gateway keeps answering while the history is away (a count, not a rate)
        answered_before_outage = len(answers)
        deadline = time.monotonic() + WAIT_SECONDS_MAX
        while len(answers) < answered_before_outage + ANSWERS_DURING_OUTAGE:
            assert time.monotonic() < deadline, "the gateway stopped answering"
            await asyncio.sleep(0.05)
        lag = await writer.lag()
        assert lag.pending_events + lag.retained_events > 0 and lag.seconds_behind > 0
    finally:
        await asyncio.to_thread(postgres_server.start)
    await asyncio.sleep(0.5)
    betting_done.set()
    await betting
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while (lag := await writer.lag()).streams_behind:  # the running writer catches up
        assert time.monotonic() < deadline, lag
        await asyncio.sleep(0.1)
    stop_writer.set()
    await writer_task
    await drain()  # and compares nothing left over

    assert set(answers) == {200}
    assert await count_rows(database_url, "transactions") == len(answers)
    report = await reconcile(services.redis, database_url, history_settings)
    assert report.agrees, report.render()
    assert report.players_checked == 4


async def test_redis_restart_keeps_balances_and_pending_entries_and_the_writer_reconnects(
    redis_server: EmbeddedRedis,
    services: Services,
    traffic: Any,
    writer: HistoryWriter,
    drain: Drain,
    history_settings: Settings,
    database_url: str,
) -> None:
    redis = services.redis
    streams = KeySpace(services.settings.shards).all_streams()
    players = await traffic.players(4, "player", balance=10**6)
    await traffic.bets(players, 25, "before")
    await ensure_groups(redis, streams)
    # a writer that read some entries and died before acknowledging them
    await read_as_consumer(redis, GROUP, "crashed", streams, count=3)

    async def state() -> tuple[Any, ...]:
        keys = KeySpace(services.settings.shards)
        balances = [await redis.hget(keys.player(keys.shard(u), u), "balance") for u, _ in players]
        pending = [(await redis.xpending(stream, GROUP))["pending"] for stream in streams]
        lengths = [await redis.xlen(stream) for stream in streams]
        return balances, pending, lengths

    async def restart_redis(down_seconds: float = 0.0) -> None:
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(redis_server.start)
        # start() returns once Redis answers, which it does while still loading its AOF.
        async with Redis.from_url(redis_server.url) as probe:
            for _ in range(int(WAIT_SECONDS_MAX / POLL_SECONDS)):
                if not (await probe.info("persistence"))["loading"]:
                    break
                await asyncio.sleep(POLL_SECONDS)
        # The gateway's client fails once per pooled connection after a restart (a 503 the
        # provider retries): drop them. The writer's own client is left to reconnect alone.
        await redis.connection_pool.disconnect()

    before = await state()
    assert sum(before[1]) > 0
    await restart_redis()
    assert await state() == before

    stop_writer = asyncio.Event()
    writer_task = asyncio.create_task(writer.run(stop_writer))
    await traffic.bets(players, 10, "between")
    await restart_redis(down_seconds=0.5)
    await traffic.bets(players, 10, "after")
    stop_writer.set()
    await writer_task

    await drain()
    assert await count_rows(database_url, "transactions") == 4 * 45
    report = await reconcile(redis, database_url, history_settings)
    assert report.agrees, report.render()


async def test_the_writer_serves_its_batches_and_lag_as_prometheus_metrics(
    services: Services, traffic: Any, history_settings: Settings
) -> None:
    players = await traffic.players(4, "player", balance=10**6)
    await traffic.bets(players, 5, "bet")
    lag = await read_lag(services.redis, services.settings.shards)
    assert lag.seconds_behind > 0 and lag.retained_events == 4 + 4 + 20  # players, sessions, bets
    port = free_port()
    stop = asyncio.Event()
    running = asyncio.create_task(
        run_history_writer(history_settings, stop, "metered", metrics_port=port)
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS_MAX
        async with aiohttp.ClientSession() as session:
            while True:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
                try:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        text = await response.text()
                except aiohttp.ClientConnectionError:
                    continue
                if "wallet_writer_events_written_total 28.0" in text:
                    break
    finally:
        stop.set()
        await running
    assert "wallet_writer_batches_total" in text and "wallet_writer_lag_seconds" in text
    assert (await read_lag(services.redis, services.settings.shards)).seconds_behind == 0
