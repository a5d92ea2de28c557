"""Sustained throughput of the history writer: events per second drained into PostgreSQL from
pre-filled shard streams, with 1, 2, ... writer processes.

    python -m persistence.writer_bench --events 50000 --writers 1 2

Without --redis-url/--database-url it starts embedded Redis and PostgreSQL (durable settings:
fsync on, as production) in a temporary folder. With them, it FLUSHES that Redis and TRUNCATES
the history tables of that database: point it at scratch servers only.

The events are what the Lua scripts write: a player event per player, then money calls
(70 % applied bets, 25 % wins, 5 % refused bets) with raw request bodies of realistic size.
The clock runs from the moment every writer process is ready until the last has acknowledged
everything; PostgreSQL is checked to hold each event once.
"""

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

import orjson
import uvloop

from gateway import clock
from gateway.embedded import EmbeddedPostgres, EmbeddedRedis
from gateway.keys import KeySpace
from gateway.redis_connection import connect_background_redis
from gateway.schemas import fingerprint
from gateway.settings import Settings
from persistence.events import PLAYER_KIND, TX_EXTRAS, TX_KIND, PlayerEvent, TxEvent
from persistence.postgres import connect_postgres
from persistence.schema import migrate
from persistence.writer import BATCH_EVENTS_MAX, HistoryWriter, WriterLimits

PLAYERS = 2000
FILL_PIPELINE_EVENTS = 2000  # XADDs per round trip while filling
DRAIN_SECONDS_MAX = 600.0
READY_SECONDS_MAX = 60.0
HISTORY_TABLES = (
    "players",
    "transactions",
    "adjustments",
    "refused_adjustments",
    "sessions",
    "rounds",
    "incidents",
    "rejected_events",
)


def tx_event(n: int, user_id: str, now_ms: int) -> dict[str, str]:
    kind = n % 20
    action, outcome, delta, ref = "BET", "OK", "-1000", ""
    if kind < 5:
        action, delta, ref = "WIN", "2350", f"bench-tx-{n - 1}"
    elif kind == 5:
        outcome, delta = "INSUFFICIENT_FUNDS", "0"
    tx = f"bench-tx-{n}"
    request = {
        "user_id": user_id,
        "session_token": "s" * 32,
        "amount": 1000,
        "currency": "USD",
        "provider_tx_id": tx,
        "round_id": f"round-{n // 50}",
        "game": "aviadrone",
        "action": action,
        **({"withdraw_provider_tx_id": ref} if ref else {}),
    }
    fields = TxEvent(
        kind=TX_KIND,
        tx=tx,
        fp=fingerprint(action, user_id, 1000, "USD", f"round-{n // 50}", ref, "aviadrone"),
        outcome=outcome,
        balance=str(10**9 - n),
        op=f"bench-op-{n}",
        currency="USD",
        user=user_id,
        action=action,
        amount="1000",
        delta=delta,
        round=f"round-{n // 50}",
        game="aviadrone",
        ref=ref,
        ts=str(now_ms),
        req=orjson.dumps(request).decode(),
    )._asdict()
    if action == "BET":
        fields |= {TX_EXTRAS.stake: "1000", TX_EXTRAS.state: "open"}
    return fields


async def fill_streams(redis_url: str, shards: int, events: int) -> int:
    """FLUSHALL, then `events` entries spread over the players' shard streams -> entries."""
    keys = KeySpace(shards)
    now_ms = clock.now_ms()
    async with connect_background_redis(redis_url) as redis:
        await redis.flushall()
        players = [f"bench-player-{n}" for n in range(min(PLAYERS, events))]
        entries: list[tuple[str, dict[str, str]]] = [
            (
                keys.events(keys.shard(user_id)),
                PlayerEvent(
                    kind=PLAYER_KIND,
                    user=user_id,
                    currency="USD",
                    username=user_id,
                    balance=str(10**9),
                    maxbet="",
                    ts=str(now_ms),
                )._asdict(),
            )
            for user_id in players
        ]
        for n in range(events - len(players)):
            user_id = players[n % len(players)]
            entries.append((keys.events(keys.shard(user_id)), tx_event(n, user_id, now_ms)))
        for start in range(0, len(entries), FILL_PIPELINE_EVENTS):
            async with redis.pipeline(transaction=False) as pipe:
                for stream, fields in entries[start : start + FILL_PIPELINE_EVENTS]:
                    pipe.xadd(stream, fields)
                await pipe.execute()
    return len(entries)


async def reset_database(database_url: str) -> None:
    await migrate(database_url)
    connection = await connect_postgres(database_url)
    try:
        await connection.execute(f"TRUNCATE {', '.join(HISTORY_TABLES)} RESTART IDENTITY")
    finally:
        await connection.close()


async def count_history(database_url: str) -> int:
    connection = await connect_postgres(database_url)
    try:
        return await connection.fetchval(
            "SELECT (SELECT count(*) FROM transactions) + (SELECT count(*) FROM players)"
        )
    finally:
        await connection.close()


async def _drain_when_told(
    settings: Settings, consumer: str, batch_events_max: int, ready: ProcessEvent, go: ProcessEvent
) -> None:
    limits = WriterLimits(batch_events_max=batch_events_max)
    async with HistoryWriter(settings, consumer, limits) as writer:
        await writer.progress()  # connected, groups known: ready to go
        ready.set()
        await asyncio.to_thread(go.wait)
        assert await writer.drain_until_caught_up(DRAIN_SECONDS_MAX), await writer.lag()


def _writer_process(
    settings: Settings, consumer: str, batch_events_max: int, ready: ProcessEvent, go: ProcessEvent
) -> None:
    uvloop.run(_drain_when_told(settings, consumer, batch_events_max, ready, go))


def measure(settings: Settings, writers: int, events: int, batch_events_max: int) -> float:
    """Seconds for `writers` processes to drain `events` pre-filled entries."""
    asyncio.run(reset_database(settings.database_url))
    filled = asyncio.run(fill_streams(settings.redis_url, settings.shards, events))
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    readies = [context.Event() for _ in range(writers)]
    processes = [
        context.Process(
            target=_writer_process,
            args=(settings, f"bench-{n}", batch_events_max, readies[n], go),
        )
        for n in range(writers)
    ]
    for process in processes:
        process.start()
    for ready in readies:
        assert ready.wait(READY_SECONDS_MAX), "a writer process did not start"
    started = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
        assert process.exitcode == 0, f"writer exited with {process.exitcode}"
    seconds = time.perf_counter() - started
    written = asyncio.run(count_history(settings.database_url))
    assert written == filled, f"{written} rows for {filled} events"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m persistence.writer_bench", description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-events-max", type=int, default=BATCH_EVENTS_MAX)
    parser.add_argument("--shards", type=int, default=Settings().shards)
    parser.add_argument("--redis-url", default="", help="scratch Redis (it is flushed)")
    parser.add_argument("--database-url", default="", help="scratch database (it is truncated)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="writer-bench-") as folder:
        servers: list[EmbeddedRedis | EmbeddedPostgres] = []
        redis_url, database_url = args.redis_url, args.database_url
        if not redis_url:
            redis_server = EmbeddedRedis(Path(folder) / "redis")
            redis_server.start()
            servers.append(redis_server)
            redis_url = redis_server.url
        if not database_url:
            postgres_server = EmbeddedPostgres(Path(folder) / "postgres")
            postgres_server.start()
            servers.append(postgres_server)
            database_url = postgres_server.url
        settings = Settings(redis_url=redis_url, database_url=database_url, shards=args.shards)
        try:
            print(
                f"{args.events} events, {args.shards} shard streams, batches of "
                f"<= {args.batch_events_max}, {os.cpu_count()} CPUs"
            )
            for writers in args.writers:
                seconds = measure(settings, writers, args.events, args.batch_events_max)
                print(
                    f"writers {writers}: {seconds:6.2f} s, {args.events / seconds:8.0f} events/s",
                    flush=True,
                )
        finally:
            for server in reversed(servers):
                server.stop()


if __name__ == "__main__":
    main()
