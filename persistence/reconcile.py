"""Reconciliation: prove that Redis (the hot wallet) and PostgreSQL (the durable history) agree.

1. Snapshot every player's Redis balance together with their shard stream's last id, in one
   MULTI per shard (so each balance is known as of a stream position), and read every
   idempotency record's outcome and fingerprint.
2. Drain the streams into PostgreSQL up to that point (a one-off writer in the `history` group).
3. Compare, in SQL: each balance with opening balance + adjustments + delta of the OK
   transactions *up to the snapshot's stream position* (a player's events all go to their shard
   stream, in order, so this is exact even while bets keep arriving); each record with its
   transaction row; and the other way round, players and records the history has but Redis
   lost (within the record retention, minus RECORD_EXPIRY_MARGIN_SECONDS).
"""

from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.exceptions import ResponseError

from gateway.clock import now_ms
from gateway.keys import KeySpace
from gateway.redis_connection import AnyRedis
from gateway.settings import Settings
from persistence.batch import BIGINT_MAX, ms_to_datetime
from persistence.postgres import connect_postgres
from persistence.streams import parse_stream_id
from persistence.writer import HistoryWriter, default_consumer_name

RECONCILE_DRAIN_SECONDS_MAX = 300.0
SCAN_KEYS_PER_CALL = 1000  # SCAN COUNT
SNAPSHOT_KEYS_MAX = 1000  # keys read in one MULTI or one pipeline
# A record this close to its expiry may legitimately be gone from Redis already.
RECORD_EXPIRY_MARGIN_SECONDS = 3600
DIFFERENCES_RENDERED_MAX = 100

# A stream that does not exist yet: every history row counts.
POSITION_END = [BIGINT_MAX, BIGINT_MAX]

BALANCES = """
SELECT r.user_id, r.balance AS redis_balance, p.user_id IS NOT NULL AS known,
       (p.opening_balance
        + coalesce((SELECT sum(a.amount) FROM adjustments a
                    WHERE a.user_id = r.user_id
                      AND stream_position(a.stream_id) <= r.position), 0)
        + coalesce((SELECT sum(t.delta) FROM transactions t
                    WHERE t.user_id = r.user_id AND t.outcome = 'OK'
                      AND stream_position(t.stream_id) <= r.position), 0))::bigint
       AS history_balance
FROM redis_balances r LEFT JOIN players p USING (user_id)
ORDER BY r.user_id
"""

PLAYERS_NOT_IN_REDIS = """
SELECT p.user_id, p.stream_id FROM players p
WHERE NOT EXISTS (SELECT 1 FROM redis_balances r WHERE r.user_id = p.user_id)
ORDER BY p.user_id
"""

RECORDS_THAT_DIFFER = """
SELECT r.provider_tx_id, r.outcome AS redis_outcome, r.fingerprint AS redis_fingerprint,
       t.provider_tx_id IS NOT NULL AS known, t.outcome, t.fingerprint
FROM redis_records r
LEFT JOIN transaction_ids i ON i.provider_tx_id = r.provider_tx_id
LEFT JOIN transactions t ON t.provider_tx_id = i.provider_tx_id AND t.created_at = i.created_at
WHERE t.provider_tx_id IS NULL OR t.outcome IS DISTINCT FROM r.outcome
   OR t.fingerprint IS DISTINCT FROM r.fingerprint
ORDER BY r.provider_tx_id
"""

RECORDS_NOT_IN_REDIS = """
SELECT t.provider_tx_id, coalesce(t.user_id, t.round_id) AS owner_id, t.user_id, t.stream_id
FROM transactions t
WHERE t.created_at > $1
  AND NOT EXISTS (SELECT 1 FROM redis_records r WHERE r.provider_tx_id = t.provider_tx_id)
ORDER BY t.created_at
"""


# What the history could not hold (docs/protocol.md §5: never dropped silently): entries PostgreSQL
# refused, entries of an id applied twice (HISTORY_CONFLICT), entries that did not decode.
QUARANTINED = """
SELECT stream, stream_id, provider_tx_id, reason FROM rejected_events ORDER BY id
"""


@dataclass(frozen=True, slots=True)
class Difference:
    # balance | player_missing_in_history | player_missing_in_redis | record_... | quarantined
    # | lag
    kind: str
    subject: str  # the player or the provider_tx_id
    detail: str

    def render(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}"


@dataclass(slots=True)
class ReconcileReport:
    caught_up: bool = True
    players_checked: int = 0
    records_checked: int = 0
    redis_balance_total: int = 0
    history_balance_total: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return self.caught_up and not self.differences

    def players_named(self) -> set[str]:
        return {d.subject for d in self.differences if d.kind.startswith(("balance", "player"))}

    def render(self) -> str:
        lines = [
            f"Reconciliation: {'AGREES' if self.agrees else 'DIFFERS'}",
            f"  players checked: {self.players_checked} (balance total: Redis "
            f"{self.redis_balance_total}, history {self.history_balance_total} millis)",
            f"  idempotency records checked: {self.records_checked}",
            f"  differences: {len(self.differences)}",
        ]
        if not self.caught_up:
            lines.append("  the history writer did not catch up: the comparison is incomplete")
        lines += [f"  - {d.render()}" for d in self.differences[:DIFFERENCES_RENDERED_MAX]]
        if len(self.differences) > DIFFERENCES_RENDERED_MAX:
            lines.append(f"  ... and {len(self.differences) - DIFFERENCES_RENDERED_MAX} more")
        return "\n".join(lines)


@dataclass(slots=True)
class RedisSnapshot:
    # (user_id, balance, stream position of the balance)
    balances: list[tuple[str, int, list[int]]] = field(default_factory=list)
    # shard -> the earliest position of the snapshot: older history must be in Redis
    shard_positions: dict[int, list[int]] = field(default_factory=dict)
    records: list[tuple[str, str | None, str | None]] = field(default_factory=list)


def _position(stream_info: Any) -> list[int]:
    if isinstance(stream_info, ResponseError):  # no such stream
        return POSITION_END
    return list(parse_stream_id(stream_info["last-generated-id"]))


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def _scan(redis: AnyRedis, pattern: str) -> list[str]:
    # On a Redis Cluster, scan_iter walks every master, each with a cursor of its own.
    return [key async for key in redis.scan_iter(match=pattern, count=SCAN_KEYS_PER_CALL)]


async def snapshot_redis(redis: AnyRedis, keys: KeySpace) -> RedisSnapshot:
    snapshot = RedisSnapshot()
    for shard in range(keys.shards):
        prefix = keys.player(shard, "")
        player_keys = await _scan(redis, keys.player(shard, "*"))
        for chunk in _chunks(player_keys, SNAPSHOT_KEYS_MAX) or [[]]:
            # One MULTI: the balances and the stream position they correspond to. Every key of
            # one shard is in one slot (its hash tag), so on a Redis Cluster too it is one MULTI,
            # on the node that holds the slot.
            async with redis.pipeline(transaction=True) as pipe:
                pipe.xinfo_stream(keys.events(shard))
                for key in chunk:
                    pipe.hget(key, "balance")
                stream_info, *balances = await pipe.execute(raise_on_error=False)
            position = _position(stream_info)
            snapshot.shard_positions.setdefault(shard, position)
            snapshot.balances += [
                (key[len(prefix) :], int(balance), position)
                for key, balance in zip(chunk, balances, strict=True)
                if balance is not None
            ]
    # After the balances: every record older than their positions is already in Redis.
    for shard in range(keys.shards):
        prefix = keys.tx(shard, "")
        for chunk in _chunks(await _scan(redis, keys.tx(shard, "*")), SNAPSHOT_KEYS_MAX):
            async with redis.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hmget(key, ["outcome", "fp"])
                replies = await pipe.execute()
            snapshot.records += [
                (key[len(prefix) :], outcome, fingerprint)
                for key, (outcome, fingerprint) in zip(chunk, replies, strict=True)
                if outcome is not None or fingerprint is not None
            ]
    return snapshot


async def _compare(
    connection: asyncpg.Connection,
    snapshot: RedisSnapshot,
    keys: KeySpace,
    settings: Settings,
    report: ReconcileReport,
) -> None:
    differences = report.differences
    await connection.execute(
        "CREATE TEMP TABLE redis_balances (user_id text PRIMARY KEY, balance bigint NOT NULL,"
        " position bigint[] NOT NULL) ON COMMIT DROP;"
        "CREATE TEMP TABLE redis_records (provider_tx_id text PRIMARY KEY, outcome text,"
        " fingerprint text) ON COMMIT DROP"
    )
    await connection.copy_records_to_table("redis_balances", records=snapshot.balances)
    await connection.copy_records_to_table("redis_records", records=snapshot.records)
    await connection.execute("ANALYZE redis_balances; ANALYZE redis_records")

    for row in await connection.fetch(BALANCES):
        report.players_checked += 1
        report.redis_balance_total += row["redis_balance"]
        if not row["known"]:
            differences.append(
                Difference("player_missing_in_history", row["user_id"], "in Redis only")
            )
            continue
        report.history_balance_total += row["history_balance"]
        if row["history_balance"] != row["redis_balance"]:
            gap = row["redis_balance"] - row["history_balance"]
            differences.append(
                Difference(
                    "balance",
                    row["user_id"],
                    f"Redis {row['redis_balance']}, history {row['history_balance']} "
                    f"(Redis {'+' if gap > 0 else ''}{gap} millis)",
                )
            )
    for row in await connection.fetch(PLAYERS_NOT_IN_REDIS):
        # created after the snapshot of their shard: not a difference
        if _at_or_before(row["stream_id"], snapshot.shard_positions, keys.shard(row["user_id"])):
            differences.append(
                Difference("player_missing_in_redis", row["user_id"], "in the history only")
            )

    report.records_checked = len(snapshot.records)
    for row in await connection.fetch(RECORDS_THAT_DIFFER):
        tx = row["provider_tx_id"]
        if not row["known"]:
            differences.append(Difference("record_missing_in_history", tx, "in Redis only"))
            continue
        for name, ours, theirs in (
            ("outcome", row["redis_outcome"], row["outcome"]),
            ("fingerprint", row["redis_fingerprint"], row["fingerprint"]),
        ):
            if ours != theirs:
                differences.append(
                    Difference("record_differs", tx, f"{name}: Redis {ours!r}, history {theirs!r}")
                )
    for row in await connection.fetch(QUARANTINED):
        differences.append(
            Difference(
                "quarantined",
                f"{row['stream']} {row['stream_id']}",
                f"tx {row['provider_tx_id'] or '-'}: {row['reason']} (kept raw in "
                "rejected_events; see its incident)",
            )
        )
    retention_ms = settings.record_retention_seconds * 1000
    margin_ms = RECORD_EXPIRY_MARGIN_SECONDS * 1000
    expected_since = ms_to_datetime(now_ms() - retention_ms + margin_ms)
    for row in await connection.fetch(RECORDS_NOT_IN_REDIS, expected_since):
        shard = keys.shard(row["owner_id"])
        if _at_or_before(row["stream_id"], snapshot.shard_positions, shard):
            differences.append(
                Difference(
                    "record_missing_in_redis",
                    row["provider_tx_id"],
                    f"player {row['user_id'] or '-'}: in the history only (a retry would apply "
                    "it again)",
                )
            )


def _at_or_before(stream_id: str, positions: dict[int, list[int]], shard: int) -> bool:
    return list(parse_stream_id(stream_id)) <= positions.get(shard, POSITION_END)


async def reconcile(redis: AnyRedis, database_url: str, settings: Settings) -> ReconcileReport:
    """Compare Redis with PostgreSQL after writing the streams up to now. `redis` decodes
    responses (as gateway.redis_connection makes it)."""
    keys = KeySpace(settings.shards)
    report = ReconcileReport()
    snapshot = await snapshot_redis(redis, keys)
    async with HistoryWriter(
        settings.replace(database_url=database_url), f"reconcile-{default_consumer_name()}"
    ) as writer:
        report.caught_up = await writer.drain_until_caught_up(RECONCILE_DRAIN_SECONDS_MAX)
        if not report.caught_up:
            lag = await writer.lag()
            report.differences.append(Difference("lag", "history", lag.render()))
        await writer.leave_group()
    connection = await connect_postgres(database_url)
    try:
        async with connection.transaction(isolation="repeatable_read"):
            await _compare(connection, snapshot, keys, settings, report)
    finally:
        await connection.close()
    return report
