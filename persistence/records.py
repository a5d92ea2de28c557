"""What the history holds of tx ids whose records left the hot wallet, put back into Redis.

Idempotency has no expiry (docs/protocol.md §5). When a money script finds no record of an id but
the seen-id filter says it may have been seen (gateway/seen_filter.py), the gateway calls
`bring_back` and then the script again: the script then finds the record (a retry gets its
original answer, or a 409) and the markers of its bet (tombstone, early win), exactly as within
retention. Ids the history does not hold were false positives of the filter, or are not written
yet: the second is ruled out by checking that every stream entry older than the retention is
written; otherwise the call cannot be decided now (503, the provider retries).
"""

from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from gateway.clock import now_ms
from gateway.keys import CLOSE_ROUND_OWNER_PREFIX, KeySpace
from gateway.redis_errors import WalletUnavailable
from gateway.schemas import BET_ACTIONS, CLOSE_ROUND_ACTION
from persistence.events import TxRecord
from persistence.postgres import PG_UNREACHABLE
from persistence.streams import read_progress

# Each record as restore rebuilds it: the transaction, its bet's state now, its round.
# A bet's state as the scripts leave it: 'rolledback' once a ROLL_BACK refunded it
# (rolled_back_bets, migration 003); else 'won' if it was stored so (its WIN came
# first) or once a later WIN applied naming it; else as stored. The WIN and ROLL_BACK come
# from the same player's shard stream as the bet, so stream order is call order.
TRANSACTION_RECORDS = """
SELECT t.provider_tx_id, t.user_id, t.action, t.amount, t.balance_after, t.currency,
       t.round_id, t.bet_tx_id, t.outcome, t.operator_tx_id, t.fingerprint,
       t.incident, t.tombstone, t.early_win, t.created_at,
       CASE WHEN t.action IN ('BET', 'FREE_BET') THEN
           CASE WHEN EXISTS (
                    SELECT 1 FROM rolled_back_bets r
                    WHERE r.bet_tx_id = t.provider_tx_id AND r.user_id = t.user_id)
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
"""

# Through the ids' claims (migration 006): each row is looked up in the one partition of its
# month.
RECORDS_OF_IDS = TRANSACTION_RECORDS + (
    "JOIN transaction_ids i ON i.provider_tx_id = t.provider_tx_id AND i.created_at = t.created_at"
    " WHERE i.provider_tx_id = ANY($1::text[])"
)

# The ROLL_BACK that voided a bet before it came, and the WIN that settled it before it came.
MARKERS_NAMING_IDS = """
SELECT provider_tx_id, user_id, bet_tx_id, tombstone, early_win FROM transactions
WHERE bet_tx_id = ANY($1::text[]) AND outcome = 'OK' AND (tombstone OR early_win)
"""


def _text(value: int | str | None) -> str:
    return "" if value is None else str(value)


def idempotency_record(row: Mapping[str, Any]) -> dict[str, str]:
    """The record hash as lua/money_common.lua finish() writes it (TxRecord), plus its extras
    (RECORD_EXTRAS; tests/test_event_fields.py holds both sides to them)."""
    record: dict[str, str] = TxRecord(
        fp=row["fingerprint"],
        outcome=row["outcome"],
        balance=str(row["balance_after"]),
        op=row["operator_tx_id"],
        currency=_text(row["currency"]),
        action=row["action"],
    )._asdict()
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


def record_key_and_owner(keys: KeySpace, row: Mapping[str, Any]) -> tuple[str, str]:
    """Where a transaction's record lives, and who owns its tx id: its player, or for a
    CLOSE_ROUND (no player) its round, in whose shard the record lives."""
    user_id = _text(row["user_id"])
    key = keys.tx(keys.shard(user_id or row["round_id"]), row["provider_tx_id"])
    return key, user_id or CLOSE_ROUND_OWNER_PREFIX + row["round_id"]


class HistoryRecords:
    """Brings back records from PostgreSQL for the gateway (see the module's docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        bring_back_script: AsyncScript,
        keys: KeySpace,
        retention_ms: int,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._script = bring_back_script
        self._keys = keys
        self._retention_ms = retention_ms

    async def bring_back(self, tx_ids: list[str]) -> None:
        """Raises WalletUnavailable when the history cannot tell (down, or not written yet)."""
        try:
            async with self._pool.acquire() as connection:
                records = await connection.fetch(RECORDS_OF_IDS, tx_ids)
                markers = await connection.fetch(MARKERS_NAMING_IDS, tx_ids)
        except PG_UNREACHABLE as exc:
            raise WalletUnavailable(f"history unreachable: {exc!r}") from exc
        known = {row["provider_tx_id"] for row in records} | {row["bet_tx_id"] for row in markers}
        if not known.issuperset(tx_ids):
            await self._require_written_through_retention()
        keys = self._keys
        for row in records:
            key, owner_id = record_key_and_owner(keys, row)
            owner_key = keys.tx_owner(keys.shard(row["provider_tx_id"]), row["provider_tx_id"])
            fields = [item for pair in idempotency_record(row).items() for item in pair]
            await self._put_back(key, owner_key, owner_id, "hash", fields)
        for row in markers:
            user_id, bet_tx_id = row["user_id"], row["bet_tx_id"]
            shard = keys.shard(user_id)
            marker_key = (
                keys.tombstone(shard, bet_tx_id)
                if row["tombstone"]
                else keys.early_win(shard, bet_tx_id)
            )
            bet_owner_key = keys.tx_owner(keys.shard(bet_tx_id), bet_tx_id)
            await self._put_back(
                marker_key, bet_owner_key, user_id, "string", [row["provider_tx_id"]]
            )

    async def _put_back(
        self, key: str, owner_key: str, owner_id: str, kind: str, values: list[str]
    ) -> None:
        """lua/bring_back_record.lua: a hash (field/value pairs) or a string (one value); then
        the owner of its id, in the id's slot. A crash in between leaves the owner absent: the
        next claim of the id asks for the history again and this converges."""
        await self._script(keys=[key], args=[self._retention_ms, kind, *values])
        await self._redis.set(owner_key, owner_id, px=self._retention_ms, nx=True)

    async def _require_written_through_retention(self) -> None:
        """An id absent from the history is new only if no entry older than the retention
        (when its record would have been written) is still waiting for the writer."""
        now = now_ms()
        progress = await read_progress(self._redis, self._keys.all_streams())
        written_before_ms = min(p.written_before_ms(now) for p in progress)
        if written_before_ms < now - self._retention_ms:
            raise WalletUnavailable(
                "the history is not yet written as far back as the record retention"
            )
