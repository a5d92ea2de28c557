"""Restore the hot wallet from the durable history, after Redis lost its data.

Rebuilt, exactly as the Lua scripts would have left them (field names from lua/*.lua, key
names from gateway/keys.py):
- every player hash (currency, username, balance, maxbet), the balance being opening balance +
  adjustments + the delta of every OK transaction;
- for every transaction younger than the record retention: its idempotency record (the fields
  finish() in lua/money_common.lua writes, plus stake/state of bets, incident, tombstone,
  stakes/coefficients of a CLOSE_ROUND), the owner of its tx id, the tombstone a ROLL_BACK of
  an unknown bet left and the marker a WIN that overtook its bet left (and the owner of that
  bet id), the round-closed marker of a CLOSE_ROUND;
  each expiring when the original would have (retention counted from the call's `ts`);
- every adjustment record (they never expire);
- the seen-id filter: every tx id the history holds, so that a retry older than the retention
  is looked up in the history, never applied again (gateway/seen_filter.py);
- the incident lists the admin API shows.
Not rebuilt: sessions and one-time launch tokens (players launch the game again).

So a provider's retry of an old transaction gets its original response back, byte for byte.
Nothing is read from the streams. So it refuses, forced or not, a live wallet: gateways or
writers connected, or stream entries not yet written to PostgreSQL. Forced into one, it would
rewrite balances from a history that lags while the records of the calls not yet written stay:
a retry of such a debit would be answered 200 although the debit was undone. Stop the
gateways, let the writer drain the streams, stop it; then restore into an empty Redis (into a
non-empty one only when forced).
"""

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from gateway import clock
from gateway.keys import KeySpace
from gateway.logs import configure_logging
from gateway.outcomes import INCIDENT_KINDS
from gateway.redis_connection import (
    GATEWAY_CLIENT_NAME,
    WRITER_CLIENT_NAME,
    AnyRedis,
    run_with_redis,
)
from gateway.schemas import CLOSE_ROUND_ACTION
from gateway.seen_filter import filter_offsets
from gateway.settings import STORE_SETTINGS, Settings, add_setting_flags, load_settings
from persistence.batch import datetime_to_ms, ms_to_datetime
from persistence.postgres import connect_postgres
from persistence.records import TRANSACTION_RECORDS, idempotency_record, record_key_and_owner
from persistence.streams import WriterLag, read_progress

RESTORE_PIPELINE_COMMANDS_MAX = 1000  # commands per pipeline round trip
RESTORE_FETCH_ROWS = 2000  # rows per cursor fetch
INCIDENTS_KEPT_MAX = 10_000  # per shard, as lua/money_common.lua keeps them

PLAYERS = """
SELECT p.user_id, p.currency, p.username, p.maxbet,
       (p.opening_balance + coalesce(a.total, 0) + coalesce(t.total, 0))::bigint AS balance
FROM players p
LEFT JOIN (SELECT user_id, sum(amount) AS total FROM adjustments GROUP BY user_id) a
    USING (user_id)
LEFT JOIN (SELECT user_id, sum(delta) AS total FROM transactions WHERE outcome = 'OK'
           GROUP BY user_id) t USING (user_id)
"""

TRANSACTIONS = TRANSACTION_RECORDS + "WHERE t.created_at > $1 ORDER BY t.created_at, t.id"

# Every id the history holds, and the bets a tombstone or an early win names before they came:
# the seen-id filter the scripts consult once a record has expired.
SEEN_IDS = """
SELECT provider_tx_id AS tx_id FROM transactions
UNION ALL
SELECT bet_tx_id FROM transactions WHERE outcome = 'OK' AND (tombstone OR early_win)
"""

ADJUSTMENTS = "SELECT reference, user_id, amount, balance_after FROM adjustments"

INCIDENTS = """
SELECT i.kind, i.provider_tx_id, i.user_id, i.bet_tx_id, i.request, i.recorded, i.created_at,
       t.action
FROM incidents i
LEFT JOIN transaction_ids ti ON ti.provider_tx_id = i.provider_tx_id
LEFT JOIN transactions t ON t.provider_tx_id = ti.provider_tx_id AND t.created_at = ti.created_at
WHERE i.kind = ANY($1::text[])
ORDER BY i.created_at, i.id
"""


class RestoreRefused(RuntimeError):
    """The wallet is live, or Redis is not empty and the restore was not forced."""


@dataclass(slots=True)
class RestoreReport:
    players: int = 0
    records: int = 0
    records_expired: int = 0  # older than the retention: in the history only
    tombstones: int = 0
    early_wins: int = 0
    rounds_closed: int = 0
    adjustments: int = 0
    incidents: int = 0
    balance_total: int = 0
    seconds: float = 0.0

    def render(self) -> str:
        return (
            f"Restored in {self.seconds:.1f} s: {self.players} players "
            f"(balance total {self.balance_total} millis), {self.records} idempotency records "
            f"({self.records_expired} older than the retention skipped), {self.tombstones} "
            f"tombstones, {self.early_wins} early-win markers, {self.rounds_closed} closed "
            f"rounds, {self.adjustments} adjustment records, {self.incidents} incidents"
        )


class _BoundedPipeline:
    """Queues commands; sends them every RESTORE_PIPELINE_COMMANDS_MAX commands (on a Redis
    Cluster, redis-py sends each node the commands of its keys, all nodes at once)."""

    def __init__(self, redis: AnyRedis) -> None:
        self.pipe: Pipeline | ClusterPipeline = redis.pipeline(transaction=False)

    async def flush_if_full(self) -> None:
        if len(self.pipe) >= RESTORE_PIPELINE_COMMANDS_MAX:
            await self.flush()

    async def flush(self) -> None:
        if len(self.pipe):
            await self.pipe.execute()


async def restore(
    redis: AnyRedis, database_url: str, settings: Settings, force: bool
) -> RestoreReport:
    """Rebuild the hot wallet from PostgreSQL. Raises RestoreRefused when the wallet is live
    (see refuse_live_wallet), or when Redis holds any key and not `force` (forced, the keys it
    writes are replaced, others are left alone)."""
    await refuse_live_wallet(redis, settings)
    keys_in_redis = await redis.dbsize(**_every_node(redis, RedisCluster.PRIMARIES))
    if keys_in_redis and not force:
        raise RestoreRefused(
            f"Redis holds {keys_in_redis} keys: restore into an empty Redis, or force it"
        )
    started = time.monotonic()
    keys = KeySpace(settings.shards)
    retention_ms = settings.record_retention_seconds * 1000
    now_ms = clock.now_ms()
    kept_since = ms_to_datetime(now_ms - retention_ms)
    report = RestoreReport()
    pipe = _BoundedPipeline(redis)
    connection = await connect_postgres(database_url)
    try:
        # One snapshot for all the queries: balances and records tell the same story.
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await _restore_players(connection, pipe, keys, force, report)
            report.records_expired = await connection.fetchval(
                "SELECT count(*) FROM transactions WHERE created_at <= $1", kept_since
            )
            await _restore_records(connection, pipe, keys, force, now_ms, retention_ms, report)
            await _restore_adjustments(connection, pipe, keys, force, report)
            await _restore_seen_filter(connection, pipe, keys, settings.idempotency_filter_bits)
            await _restore_incidents(connection, pipe, keys, force, report)
        await pipe.flush()
    finally:
        await connection.close()
    report.seconds = time.monotonic() - started
    return report


def _every_node(redis: AnyRedis, nodes: str) -> dict[str, Any]:
    """The options that send a server-wide command (DBSIZE, CLIENT LIST) to every node of a
    Redis Cluster, not to one: redis-py sums DBSIZE's replies, and answers CLIENT LIST per node.
    One Redis: none."""
    return {"target_nodes": nodes} if isinstance(redis, RedisCluster) else {}


async def _clients(redis: AnyRedis) -> list[dict[str, str]]:
    """Every client connection, of every node of a cluster (replicas too: a client may read
    from one)."""
    reply = await redis.client_list(**_every_node(redis, RedisCluster.ALL_NODES))
    if isinstance(reply, dict):  # node name -> its clients
        return [client for clients in reply.values() for client in clients]
    return reply


async def refuse_live_wallet(redis: AnyRedis, settings: Settings) -> None:
    """RestoreRefused, naming them, when gateways or writers are connected to this Redis (any
    node of a cluster) or the streams hold entries the writer has not written to PostgreSQL
    yet."""
    live_names = (GATEWAY_CLIENT_NAME, WRITER_CLIENT_NAME)
    live = [client for client in await _clients(redis) if client["name"] in live_names]
    if live:
        connections = Counter(client["name"] for client in live)
        hosts = sorted({client["addr"].rpartition(":")[0] for client in live})
        raise RestoreRefused(
            f"the wallet is live: {', '.join(f'{n} {name}' for name, n in connections.items())} "
            f"connection(s) from {', '.join(hosts)}; stop the gateways and writers first"
        )
    lag = WriterLag.of(await read_progress(redis, KeySpace(settings.shards).all_streams()))
    if lag.streams_behind:
        raise RestoreRefused(
            f"the streams hold entries not yet written to PostgreSQL ({lag.render()}); "
            "run the writer until it has caught up, then stop it"
        )


async def _restore_players(
    connection: asyncpg.Connection,
    pipe: _BoundedPipeline,
    keys: KeySpace,
    force: bool,
    report: RestoreReport,
) -> None:
    async for row in connection.cursor(PLAYERS, prefetch=RESTORE_FETCH_ROWS):
        key = keys.player(keys.shard(row["user_id"]), row["user_id"])
        fields = {
            "currency": row["currency"],
            "username": row["username"],
            "balance": str(row["balance"]),
        }
        if row["maxbet"] is not None:
            fields["maxbet"] = str(row["maxbet"])
        if force:
            pipe.pipe.delete(key)
        pipe.pipe.hset(key, mapping=fields)
        report.players += 1
        report.balance_total += row["balance"]
        await pipe.flush_if_full()


async def _restore_records(
    connection: asyncpg.Connection,
    pipe: _BoundedPipeline,
    keys: KeySpace,
    force: bool,
    now_ms: int,
    retention_ms: int,
    report: RestoreReport,
) -> None:
    kept_since = ms_to_datetime(now_ms - retention_ms)
    # In call order: when two records set the same owner key, the later one wins, as live.
    async for row in connection.cursor(TRANSACTIONS, kept_since, prefetch=RESTORE_FETCH_ROWS):
        remaining_ms = datetime_to_ms(row["created_at"]) + retention_ms - now_ms
        if remaining_ms <= 0:
            continue
        record = idempotency_record(row)
        tx_id, user_id, round_id = row["provider_tx_id"], row["user_id"] or "", row["round_id"]
        record_key, owner_id = record_key_and_owner(keys, row)
        if force:
            pipe.pipe.delete(record_key)
        pipe.pipe.hset(record_key, mapping=record)
        pipe.pipe.pexpire(record_key, remaining_ms)
        pipe.pipe.set(keys.tx_owner(keys.shard(tx_id), tx_id), owner_id, px=remaining_ms)
        report.records += 1
        bet_tx_id = row["bet_tx_id"]
        bet_owner_key = keys.tx_owner(keys.shard(bet_tx_id or ""), bet_tx_id or "")
        if row["tombstone"]:
            pipe.pipe.set(keys.tombstone(keys.shard(user_id), bet_tx_id), tx_id, px=remaining_ms)
            pipe.pipe.set(bet_owner_key, user_id, px=remaining_ms)
            report.tombstones += 1
        if row["early_win"]:  # a WIN that overtook its bet: the bet comes already settled
            marker_key = keys.early_win(keys.shard(user_id), bet_tx_id)
            pipe.pipe.set(marker_key, tx_id, nx=True, px=remaining_ms)
            pipe.pipe.set(bet_owner_key, user_id, px=remaining_ms)
            report.early_wins += 1
        if row["action"] == CLOSE_ROUND_ACTION:
            pipe.pipe.set(keys.round_closed(keys.shard(round_id), round_id), tx_id, px=remaining_ms)
            report.rounds_closed += 1
        await pipe.flush_if_full()


async def _restore_adjustments(
    connection: asyncpg.Connection,
    pipe: _BoundedPipeline,
    keys: KeySpace,
    force: bool,
    report: RestoreReport,
) -> None:
    """Every adjustment record: they never expire (lua/adjust_balance.lua)."""
    async for row in connection.cursor(ADJUSTMENTS, prefetch=RESTORE_FETCH_ROWS):
        key = keys.adjustment(keys.shard(row["user_id"]), row["user_id"], row["reference"])
        if force:
            pipe.pipe.delete(key)
        pipe.pipe.hset(
            key,
            mapping={
                "user": row["user_id"],
                "amount": str(row["amount"]),
                "balance": str(row["balance_after"]),
            },
        )
        report.adjustments += 1
        await pipe.flush_if_full()


async def _restore_seen_filter(
    connection: asyncpg.Connection, pipe: _BoundedPipeline, keys: KeySpace, filter_bits: int
) -> None:
    """Every id ever seen, back in the seen-id filter, so that a retry of a call older than the
    retention is looked up in the history, never applied again (gateway/seen_filter.py)."""
    async for row in connection.cursor(SEEN_IDS, prefetch=RESTORE_FETCH_ROWS):
        tx_id = row["tx_id"]
        offsets = filter_offsets(tx_id, filter_bits).split()
        pipe.pipe.execute_command(
            "BITFIELD",
            keys.seen_filter(keys.shard(tx_id)),
            *(arg for offset in offsets for arg in ("SET", "u1", offset, 1)),
        )
        await pipe.flush_if_full()


async def _restore_incidents(
    connection: asyncpg.Connection,
    pipe: _BoundedPipeline,
    keys: KeySpace,
    force: bool,
    report: RestoreReport,
) -> None:
    """The admin API's incident lists, oldest first so the newest end up at the head."""
    lists: set[str] = set()
    async for row in connection.cursor(
        INCIDENTS, sorted(INCIDENT_KINDS), prefetch=RESTORE_FETCH_ROWS
    ):
        key = keys.incidents(keys.shard(row["user_id"]))
        if force and key not in lists:
            pipe.pipe.delete(key)
        lists.add(key)
        pipe.pipe.lpush(
            key,
            orjson.dumps(
                {
                    "kind": row["kind"],
                    "provider_tx_id": row["provider_tx_id"],
                    "user_id": row["user_id"],
                    "action": row["action"],
                    "referenced_tx_id": row["bet_tx_id"] or "",
                    "request": row["request"],
                    "recorded": row["recorded"],
                    "ts": datetime_to_ms(row["created_at"]),
                }
            ),
        )
        report.incidents += 1
        await pipe.flush_if_full()
    for key in lists:
        pipe.pipe.ltrim(key, 0, INCIDENTS_KEPT_MAX - 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`wallet-gateway restore`: the settings it reads (and DATA_DIR, where the CLI finds a
    running stack) and --force."""
    add_setting_flags(
        parser,
        (*STORE_SETTINGS, "record_retention_seconds", "idempotency_filter_bits", "data_dir"),
    )
    parser.add_argument(
        "--force", action="store_true", help="restore into a Redis that is not empty"
    )


def run(args: argparse.Namespace) -> int:
    """Rebuild the hot wallet from PostgreSQL into an empty Redis; exit 1 when refused."""
    settings = load_settings(args)
    if not settings.redis_url or not settings.database_url:
        raise ValueError("restore needs REDIS_URL and DATABASE_URL")
    configure_logging(settings.log_level)
    try:
        report = asyncio.run(run_with_redis(settings, restore, args.force))
    except RestoreRefused as exc:
        print(f"wallet-gateway: restore refused: {exc}", file=sys.stderr)
        return 1
    print(report.render())
    return 0
