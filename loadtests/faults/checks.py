"""Every acknowledged call against the wallet: the hot wallet (Redis), the history (PostgreSQL),
and `reconcile` between the two.

- lost: a call answered 200 whose idempotency record is not in Redis, or whose row is not in
  the history as applied with its amount; its amount is money lost (the provider was told it
  moved).
- doubled: per player, the Redis balance against the opening balance plus every call answered
  200 (what the lost calls explain aside): any rest was applied more than once, or applied
  though never acknowledged; and any call answered 4xx that the history holds as applied.
"""

from dataclasses import dataclass, field

import asyncpg

from gateway.keys import KeySpace
from gateway.redis_connection import connect_background_redis, run_with_redis
from gateway.settings import Settings
from loadtests.faults.traffic import CLOSE_ROUND, Call, Traffic
from persistence.postgres import connect_postgres
from persistence.reconcile import ReconcileReport, reconcile

DETAILS_MAX = 10
HISTORY_ROWS = """
SELECT provider_tx_id, outcome, delta FROM transactions WHERE provider_tx_id = ANY($1::text[])
"""
QUARANTINED_ROWS = "SELECT count(*) FROM rejected_events"
# docs/protocol.md §7: each CLOSE_ROUND's aggregate against the ledger, once the history holds
# the round
ROUND_STATUSES = """
SELECT status, count(*) AS rounds FROM rounds WHERE round_id = ANY($1::text[]) GROUP BY status
"""


@dataclass
class MoneyCheck:
    acknowledged: int = 0  # money calls with a definitive answer
    unsettled: int = 0  # money calls still without one after the settling
    lost_calls: list[Call] = field(default_factory=list)
    money_lost: int = 0  # millis
    money_doubled: int = 0  # millis
    quarantined: int = 0  # history rows kept aside (an id applied twice among them)
    # the rounds closed with a 200 (CLOSE_ROUND), by comparison status: match, mismatch, pending
    rounds: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.details) < DETAILS_MAX:
            self.details.append(text)


async def check_money(traffic: Traffic, settings: Settings) -> MoneyCheck:
    """Run after `reconcile` drained the streams: the history is then complete."""
    keys = KeySpace(settings.shards)
    money_calls = [call for call in traffic.calls if call.money]
    check = MoneyCheck(
        acknowledged=sum(call.acknowledged for call in money_calls),
        unsettled=sum(not call.acknowledged for call in money_calls),
    )
    async with connect_background_redis(settings.redis_url) as redis:
        async with redis.pipeline(transaction=False) as pipe:
            for user in traffic.opening:
                pipe.hget(keys.player(keys.shard(user), user), "balance")
            for call in money_calls:
                pipe.hget(keys.tx(keys.shard(call.owner), call.tx), "outcome")
            replies = await pipe.execute()
    balances = dict(zip(traffic.opening, replies[: len(traffic.opening)], strict=True))
    records = dict(
        zip((call.tx for call in money_calls), replies[len(traffic.opening) :], strict=True)
    )
    connection: asyncpg.Connection = await connect_postgres(settings.database_url)
    try:
        rows = {
            row["provider_tx_id"]: row
            for row in await connection.fetch(HISTORY_ROWS, [call.tx for call in money_calls])
        }
        check.quarantined = await connection.fetchval(QUARANTINED_ROWS)
        closed = [call.round_id for call in money_calls if call.kind == CLOSE_ROUND]
        check.rounds = {
            row["status"]: row["rounds"] for row in await connection.fetch(ROUND_STATUSES, closed)
        }
    finally:
        await connection.close()

    missing_in_redis: dict[str, int] = {}  # user -> the effect of their calls Redis lost
    for call in money_calls:
        row = rows.get(call.tx)
        if call.status == 200:
            in_redis = records[call.tx] == "OK"
            in_history = row is not None and row["outcome"] == "OK" and row["delta"] == call.effect
            if not (in_redis and in_history):
                check.lost_calls.append(call)
                check.money_lost += abs(call.effect)
                check.note(
                    f"lost {call.kind} {call.tx} ({call.effect} millis): "
                    f"Redis {'has' if in_redis else 'lacks'} it, "
                    f"history {'has' if in_history else 'lacks'} it"
                )
            if not in_redis:
                missing_in_redis[call.user_id] = missing_in_redis.get(call.user_id, 0) + call.effect
        elif call.acknowledged and row is not None and row["outcome"] == "OK" and row["delta"]:
            check.money_doubled += abs(row["delta"])
            check.note(f"{call.kind} {call.tx} answered {call.status} but applied")
    for user, opening in traffic.opening.items():
        told = sum(
            call.effect for call in money_calls if call.user_id == user and call.status == 200
        )
        expected = opening + told - missing_in_redis.get(user, 0)
        actual = int(balances[user]) if balances[user] is not None else 0
        if actual != expected:
            check.money_doubled += abs(actual - expected)
            check.note(f"player {user}: balance {actual}, acknowledged calls say {expected}")
    return check


async def run_reconcile(settings: Settings) -> ReconcileReport:
    """`wallet-gateway reconcile`, in process: it first drains the streams into the history."""
    report: ReconcileReport = await run_with_redis(settings, reconcile)
    return report
