"""The post-round hook (docs/protocol.md §7): the provider's aggregate of a closed round against our
ledger, stored once per round in `rounds` (a mismatch is also an incident).

When to compare: the CLOSE_ROUND event sits on the round's shard stream, the round's bets and
wins on their players' shard streams, and a writer may well commit the close first. So the
close is stored as a `pending` round, and compared only once every shard stream has been
written (committed and acknowledged) past the close's stream time: the provider sends the close
after every per-bet callback was acknowledged, so each of those events has a stream id at or
before the close's (plus ROUND_CLOSE_SKEW_MS for clocks of different Redis Cluster nodes).
The writer computes that position (`written_before_ms`) from the consumer group's pending and
undelivered entries; `settle_closed_rounds` compares the rounds behind it, each exactly once
(status leaves 'pending' once; FOR UPDATE SKIP LOCKED lets several writers share the work).
"""

import decimal
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import asyncpg
import orjson

from gateway.outcomes import LATE_AFTER_CLOSE

# Bets of a round may carry stream times up to this much after the close (clock skew between
# Redis nodes); the comparison waits that much longer.
ROUND_CLOSE_SKEW_MS = 1000
ROUNDS_SETTLED_PER_PASS_MAX = 500
# stake (<= 10**15, 16 digits) times a multiplier must stay exact: an inexact product is refused
DECIMAL_PRECISION_DIGITS = 100

MATCH = "match"
MISMATCH = "mismatch"
PENDING = "pending"
MISMATCH_INCIDENT = "ROUND_MISMATCH"


@dataclass(frozen=True, slots=True)
class RoundTotals:
    bets_count: int
    staked_millis: int
    paid_millis: int

    def as_dict(self) -> dict[str, int]:
        return {
            "bets_count": self.bets_count,
            "staked": self.staked_millis,
            "paid": self.paid_millis,
        }


@dataclass(frozen=True, slots=True)
class RoundClose:
    round_id: str
    close_tx_id: str
    game: str
    stakes: tuple[int, ...]
    coefficients: tuple[Decimal, ...]
    provider: RoundTotals
    closed_at: datetime
    close_stream_ms: int


def provider_totals(stakes: list[int] | tuple[int, ...], coefficients: Any) -> RoundTotals:
    """Count, total staked, and total paid = sum of floor(stake * multiplier) per bet.

    Raises decimal.Inexact (an ArithmeticError) rather than round a product.
    """
    with decimal.localcontext() as context:
        context.prec = DECIMAL_PRECISION_DIGITS
        context.traps[decimal.Inexact] = True
        paid = sum(
            int((Decimal(stake) * Decimal(coefficient)).to_integral_value(rounding=ROUND_FLOOR))
            for stake, coefficient in zip(stakes, coefficients, strict=True)
        )
    return RoundTotals(len(stakes), sum(stakes), paid)


def round_differences(provider: RoundTotals, ledger: RoundTotals) -> dict[str, dict[str, int]]:
    """{field: {"provider": x, "ledger": y}} for every total that differs."""
    ours, theirs = ledger.as_dict(), provider.as_dict()
    return {
        name: {"provider": theirs[name], "ledger": ours[name]}
        for name in theirs
        if theirs[name] != ours[name]
    }


INSERT_ROUND = """
INSERT INTO rounds (round_id, close_tx_id, game, stakes, coefficients, provider_bets_count,
                    provider_staked, provider_paid, closed_at, close_stream_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (round_id) DO NOTHING
"""

# Our ledger of a round: bets applied and not rolled back (rolled_back_bets, migration 003),
# and wins applied.
LEDGER_TOTALS = """
WITH bets AS (
    SELECT bet.amount FROM transactions bet
    WHERE bet.round_id = $1 AND bet.action IN ('BET', 'FREE_BET') AND bet.outcome = 'OK'
      AND NOT EXISTS (
          SELECT 1 FROM rolled_back_bets r
          WHERE r.bet_tx_id = bet.provider_tx_id AND r.user_id = bet.user_id)
)
SELECT (SELECT count(*) FROM bets)::integer AS bets_count,
       (SELECT coalesce(sum(amount), 0) FROM bets)::bigint AS staked,
       (SELECT coalesce(sum(amount), 0) FROM transactions win
        WHERE win.round_id = $1 AND win.action IN ('WIN', 'FREE_BET_WIN')
          AND win.outcome = 'OK')::bigint AS paid
"""


async def record_round_closes(connection: asyncpg.Connection, closes: list[RoundClose]) -> None:
    """A pending round per close; a redelivered close finds its row and changes nothing."""
    await connection.executemany(
        INSERT_ROUND,
        [
            (
                close.round_id,
                close.close_tx_id,
                close.game,
                list(close.stakes),
                list(close.coefficients),
                close.provider.bets_count,
                close.provider.staked_millis,
                close.provider.paid_millis,
                close.closed_at,
                close.close_stream_ms,
            )
            for close in sorted(closes, key=lambda close: close.round_id)
        ],
    )


@dataclass(frozen=True, slots=True)
class LateCall:
    """A BET, WIN or ROLL_BACK applied after its round was closed (its event says `late`)."""

    provider_tx_id: str
    user_id: str
    round_id: str
    bet_tx_id: str | None
    request: str
    recorded: str  # which close it came after
    created_at: datetime


INSERT_LATE_INCIDENT = f"""
INSERT INTO incidents (kind, provider_tx_id, user_id, round_id, bet_tx_id, request, recorded,
                       created_at)
VALUES ('{LATE_AFTER_CLOSE}', $1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (kind, provider_tx_id) DO NOTHING
"""

# The settle loop compares a pending round again; its previous result stays in the row until then.
REOPEN_ROUNDS = """
UPDATE rounds SET status = 'pending' WHERE round_id = ANY($1::text[]) AND status <> 'pending'
"""


async def record_late_calls(connection: asyncpg.Connection, late: list[LateCall]) -> None:
    """docs/protocol.md §7: each late call an incident, and its round compared again. Called after
    record_round_closes: a close in the same batch is pending already."""
    await connection.executemany(
        INSERT_LATE_INCIDENT,
        [
            (
                call.provider_tx_id,
                call.user_id,
                call.round_id,
                call.bet_tx_id,
                call.request,
                call.recorded,
                call.created_at,
            )
            for call in sorted(late, key=lambda call: call.provider_tx_id)
        ],
    )
    await connection.execute(REOPEN_ROUNDS, sorted({call.round_id for call in late}))


async def ledger_totals(connection: asyncpg.Connection, round_id: str) -> RoundTotals:
    row = await connection.fetchrow(LEDGER_TOTALS, round_id)
    return RoundTotals(row["bets_count"], row["staked"], row["paid"])


async def settle_closed_rounds(
    connection: asyncpg.Connection,
    written_before_ms: int,
    skew_ms: int = ROUND_CLOSE_SKEW_MS,
) -> list[tuple[str, str]]:
    """Compare the pending rounds whose close every stream is written past -> [(round, result)]."""
    settled: list[tuple[str, str]] = []
    async with connection.transaction():
        rounds = await connection.fetch(
            """
            SELECT round_id, close_tx_id, provider_bets_count, provider_staked, provider_paid,
                   closed_at
            FROM rounds
            WHERE status = $1 AND close_stream_ms + $2 < $3
            ORDER BY close_stream_ms
            LIMIT $4
            FOR UPDATE SKIP LOCKED
            """,
            PENDING,
            skew_ms,
            written_before_ms,
            ROUNDS_SETTLED_PER_PASS_MAX,
        )
        for row in rounds:
            provider = RoundTotals(
                row["provider_bets_count"], row["provider_staked"], row["provider_paid"]
            )
            ledger = await ledger_totals(connection, row["round_id"])
            differences = round_differences(provider, ledger)
            result = MISMATCH if differences else MATCH
            await connection.execute(
                """
                UPDATE rounds SET status = $2, ledger_bets_count = $3, ledger_staked = $4,
                                  ledger_paid = $5, differences = $6::jsonb, compared_at = now()
                WHERE round_id = $1 AND status = 'pending'
                """,
                row["round_id"],
                result,
                ledger.bets_count,
                ledger.staked_millis,
                ledger.paid_millis,
                orjson.dumps(differences).decode(),
            )
            if differences:
                await connection.execute(
                    """
                    INSERT INTO incidents (kind, provider_tx_id, round_id, details, created_at)
                    VALUES ($1, $2, $3, $4::jsonb, $5)
                    ON CONFLICT (kind, provider_tx_id) DO NOTHING
                    """,
                    MISMATCH_INCIDENT,
                    row["close_tx_id"],
                    row["round_id"],
                    orjson.dumps(differences).decode(),
                    row["closed_at"],
                )
            settled.append((row["round_id"], result))
    return settled
