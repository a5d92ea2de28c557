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
- adjustment records younger than the retention;
- the incident lists the admin API shows.
Not rebuilt: sessions and one-time launch tokens (players launch the game again).

So a provider's retry of an old transaction gets its original response back, byte for byte.
Nothing is read from the streams: run it with the writer stopped or caught up, into an empty
Redis (it refuses a non-empty one unless forced).
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from gateway.keys import CLOSE_ROUND_OWNER_PREFIX, KeySpace
from gateway.outcomes import INCIDENT_OUTCOMES
from gateway.schemas import BET_ACTIONS, CLOSE_ROUND_ACTION
from gateway.settings import Settings
from gateway.wallet import now_ms as wallet_now_ms
from persistence.batch import datetime_to_ms, ms_to_datetime

RESTORE_PIPELINE_COMMANDS_MAX = 1000  # commands per pipeline round trip
RESTORE_FETCH_ROWS = 2000  # rows per cursor fetch
INCIDENTS_KEPT_MAX = 10_000  # per shard, as lua/money_common.lua keeps them
PG_CONNECT_SECONDS_MAX = 10.0

PLAYERS = """
SELECT p.user_id, p.currency, p.username, p.maxbet,
       (p.opening_balance + coalesce(a.total, 0) + coalesce(t.total, 0))::bigint AS balance
FROM players p
LEFT JOIN (SELECT user_id, sum(amount) AS total FROM adjustments GROUP BY user_id) a
    USING (user_id)
LEFT JOIN (SELECT user_id, sum(delta) AS total FROM transactions WHERE outcome = 'OK'
           GROUP BY user_id) t USING (user_id)
"""

# A bet's state as the scripts leave it: 'rolledback' once a ROLL_BACK applied to it (not a
# tombstone one: that bet did not exist yet); else 'won' if it was stored so (its WIN came
# first) or once a later WIN applied naming it; else as stored. The WIN and ROLL_BACK come
# from the same player's shard stream as the bet, so stream order is call order.
TRANSACTIONS = """
SELECT t.provider_tx_id, t.user_id, t.action, t.amount, t.balance_after, t.currency,
       t.round_id, t.bet_tx_id, t.outcome, t.operator_tx_id, t.fingerprint,
       t.incident, t.tombstone, t.early_win, t.created_at,
       CASE WHEN t.action IN ('BET', 'FREE_BET') THEN
           CASE WHEN EXISTS (
                    SELECT 1 FROM transactions r
                    WHERE r.bet_tx_id = t.provider_tx_id AND r.user_id = t.user_id
                      AND r.action = 'ROLL_BACK' AND r.outcome = 'OK' AND NOT r.tombstone)
                THEN 'rolledback'
                WHEN t.state = 'won' OR EXISTS (
                    SELECT 1 FROM transactions w
                    WHERE w.bet_tx_id = t.provider_tx_id AND w.user_id = t.user_id
                      AND w.action IN ('WIN', 'FREE_BET_WIN') AND w.outcome = 'OK'
                      AND stream_position(w.stream_id) > stream_position(t.stream_id))
                THEN 'won'
                ELSE coalesce(t.state, 'open') END
       END AS bet_state,
       rounds.stakes, rounds.coefficients
FROM transactions t
LEFT JOIN rounds ON t.action = 'CLOSE_ROUND' AND rounds.close_tx_id = t.provider_tx_id
WHERE t.created_at > $1
ORDER BY t.created_at, t.id
"""

ADJUSTMENTS = """
SELECT reference, user_id, amount, balance_after, created_at FROM adjustments
WHERE created_at > $1
"""

INCIDENTS = """
SELECT i.kind, i.provider_tx_id, i.user_id, i.bet_tx_id, i.request, i.recorded, i.created_at,
       t.action
FROM incidents i
LEFT JOIN transactions t ON t.provider_tx_id = i.provider_tx_id
WHERE i.kind = ANY($1::text[])
ORDER BY i.created_at, i.id
"""


class RestoreRefused(RuntimeError):
    """Redis is not empty and the restore was not forced."""


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
    """Queues commands; sends them every RESTORE_PIPELINE_COMMANDS_MAX commands."""

    def __init__(self, redis: Redis) -> None:
        self.pipe: Pipeline = redis.pipeline(transaction=False)

    async def flush_if_full(self) -> None:
        if len(self.pipe) >= RESTORE_PIPELINE_COMMANDS_MAX:
            await self.flush()

    async def flush(self) -> None:
        if len(self.pipe):
            await self.pipe.execute()


def _text(value: int | str | None) -> str:
    return "" if value is None else str(value)


def idempotency_record(row: Mapping[str, Any]) -> dict[str, str]:
    """The record hash as lua/money_common.lua finish() writes it, plus its extras."""
    record = {
        "fp": row["fingerprint"],
        "outcome": row["outcome"],
        "balance": str(row["balance_after"]),
        "op": row["operator_tx_id"],
        "currency": _text(row["currency"]),
        "action": row["action"],
    }
    if row["action"] in BET_ACTIONS:
        record["stake"] = _text(row["amount"])
        record["state"] = row["bet_state"]
    if row["incident"]:
        record["incident"] = row["incident"]
    if row["tombstone"]:
        record["tombstone"] = "1"
    if row["early_win"]:
        record["early_win"] = "1"
    if row["action"] == CLOSE_ROUND_ACTION and row["stakes"] is not None:
        record["stakes"] = orjson.dumps(list(row["stakes"])).decode()
        record["coefficients"] = orjson.dumps([str(c) for c in row["coefficients"]]).decode()
    return record


async def restore(
    redis: Redis, database_url: str, settings: Settings, force: bool
) -> RestoreReport:
    """Rebuild the hot wallet from PostgreSQL. Raises RestoreRefused when Redis holds any key
    and not `force` (forced, the keys it writes are replaced, others are left alone)."""
    keys_in_redis = await redis.dbsize()
    if keys_in_redis and not force:
        raise RestoreRefused(
            f"Redis holds {keys_in_redis} keys: restore into an empty Redis, or force it"
        )
    started = time.monotonic()
    keys = KeySpace(settings.shards)
    retention_ms = settings.record_retention_seconds * 1000
    now_ms = wallet_now_ms()
    kept_since = ms_to_datetime(now_ms - retention_ms)
    report = RestoreReport()
    pipe = _BoundedPipeline(redis)
    connection = await asyncpg.connect(database_url, timeout=PG_CONNECT_SECONDS_MAX)
    try:
        # One snapshot for all the queries: balances and records tell the same story.
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await _restore_players(connection, pipe, keys, force, report)
            report.records_expired = await connection.fetchval(
                "SELECT count(*) FROM transactions WHERE created_at <= $1", kept_since
            )
            await _restore_records(connection, pipe, keys, force, now_ms, retention_ms, report)
            await _restore_adjustments(
                connection, pipe, keys, force, now_ms, retention_ms, kept_since, report
            )
            await _restore_incidents(connection, pipe, keys, force, report)
        await pipe.flush()
    finally:
        await connection.close()
    report.seconds = time.monotonic() - started
    return report


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
        tx_id, user_id, round_id = row["provider_tx_id"], _text(row["user_id"]), row["round_id"]
        # A CLOSE_ROUND has no player: its record lives in the shard of its round, which owns
        # its tx id.
        record_key = keys.tx(keys.shard(user_id or round_id), tx_id)
        owner_id = user_id or CLOSE_ROUND_OWNER_PREFIX + round_id
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
    now_ms: int,
    retention_ms: int,
    kept_since: Any,
    report: RestoreReport,
) -> None:
    async for row in connection.cursor(ADJUSTMENTS, kept_since, prefetch=RESTORE_FETCH_ROWS):
        remaining_ms = datetime_to_ms(row["created_at"]) + retention_ms - now_ms
        if remaining_ms <= 0:
            continue
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
        pipe.pipe.pexpire(key, remaining_ms)
        report.adjustments += 1
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
        INCIDENTS, sorted(INCIDENT_OUTCOMES), prefetch=RESTORE_FETCH_ROWS
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
