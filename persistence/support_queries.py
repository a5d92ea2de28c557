"""Read-only support views of the durable history (served by gateway/support.py): a player's
transactions newest first, paged by a cursor; a round as our ledger holds it, the provider's
aggregate and the result of comparing them.

Plain data out; PostgreSQL errors go up as they are (persistence/postgres.py PG_UNREACHABLE).
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from persistence.batch import datetime_to_ms, ms_to_datetime
from persistence.rounds import PENDING, RoundTotals, ledger_totals, round_differences

TRANSACTIONS_PAGE_MAX = 500
ROUND_ROWS_MAX = 10_000  # transactions listed for one round

TRANSACTION_COLUMNS = """
id, provider_tx_id, action, amount, delta, balance_after, currency, round_id, game,
bet_tx_id, outcome, operator_tx_id, incident, tombstone, request, created_at, user_id
"""

PLAYER_TRANSACTIONS = f"""
SELECT {TRANSACTION_COLUMNS} FROM transactions
WHERE user_id = $1 AND (created_at, id) < ($2, $3)
ORDER BY created_at DESC, id DESC
LIMIT $4
"""

ROUND_TRANSACTIONS = f"""
SELECT {TRANSACTION_COLUMNS},
       EXISTS (SELECT 1 FROM rolled_back_bets r
               WHERE r.bet_tx_id = t.provider_tx_id AND r.user_id = t.user_id)
       AS rolled_back
FROM transactions t
WHERE round_id = $1
ORDER BY created_at, id
LIMIT $2
"""

# An operator's view of the round's incidents: late calls (PROTOCOL.md §7), a mismatch, 409s.
ROUND_INCIDENTS = """
SELECT kind, provider_tx_id, user_id, bet_tx_id, details, created_at FROM incidents
WHERE round_id = $1
ORDER BY created_at, id
LIMIT $2
"""

# Beyond any stored row: the first page.
CURSOR_END = (datetime(9999, 12, 31, tzinfo=UTC), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page ended: its last row. The next page holds the rows below it."""

    created_ms: int
    row_id: int


@dataclass(frozen=True, slots=True)
class TransactionsPage:
    transactions: list[dict[str, Any]]
    next_before: PageCursor | None  # None: this was the last page


def _transaction(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "provider_tx_id": row["provider_tx_id"],
        "user_id": row["user_id"],
        "action": row["action"],
        "amount": row["amount"],
        "delta": row["delta"],
        "balance_after": row["balance_after"],
        "currency": row["currency"],
        "round_id": row["round_id"],
        "game": row["game"],
        "bet_tx_id": row["bet_tx_id"],
        "outcome": row["outcome"],
        "operator_tx_id": row["operator_tx_id"],
        "incident": row["incident"],
        "tombstone": row["tombstone"],
        "ts": datetime_to_ms(row["created_at"]),
        "request": orjson.loads(row["request"]),
    }


class SupportQueries:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def player_transactions(
        self, user_id: str, limit: int, before: PageCursor | None
    ) -> TransactionsPage | None:
        """Up to `limit` transactions below `before` (None: from the newest), newest first;
        None when the history knows no such player."""
        assert 1 <= limit <= TRANSACTIONS_PAGE_MAX
        before_at, before_id = (
            CURSOR_END if before is None else (ms_to_datetime(before.created_ms), before.row_id)
        )
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(
                PLAYER_TRANSACTIONS, user_id, before_at, before_id, limit
            )
            known = rows or await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM players WHERE user_id = $1)", user_id
            )
        if not known:
            return None
        last = rows[-1] if len(rows) == limit else None
        return TransactionsPage(
            [_transaction(row) for row in rows],
            PageCursor(datetime_to_ms(last["created_at"]), last["id"]) if last else None,
        )

    async def round_view(self, round_id: str) -> dict[str, Any] | None:
        """Our ledger of the round, the provider's aggregate once it closed it, and the result;
        None when the history knows nothing of the round."""
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(ROUND_TRANSACTIONS, round_id, ROUND_ROWS_MAX)
            ledger = await ledger_totals(connection, round_id)
            close = await connection.fetchrow("SELECT * FROM rounds WHERE round_id = $1", round_id)
            incidents = await connection.fetch(ROUND_INCIDENTS, round_id, ROUND_ROWS_MAX)
        if not rows and close is None:
            return None
        provider = None
        result = "open"  # no CLOSE_ROUND yet
        differences: Any = None
        if close is not None:
            totals = RoundTotals(
                close["provider_bets_count"], close["provider_staked"], close["provider_paid"]
            )
            provider = {
                **totals.as_dict(),
                "close_tx_id": close["close_tx_id"],
                "stakes": list(close["stakes"]),
                "coefficients": [str(c) for c in close["coefficients"]],
                "closed_at": datetime_to_ms(close["closed_at"]),
            }
            result = close["status"]
            # compared: as stored; pending (also again, after a late call): as the ledger
            # stands now (may still change)
            differences = (
                round_differences(totals, ledger)
                if result == PENDING
                else orjson.loads(close["differences"])
            )
        return {
            "round_id": round_id,
            "result": result,
            "ledger": {
                **ledger.as_dict(),
                "transactions": [
                    {**_transaction(row), "rolled_back": row["rolled_back"]} for row in rows
                ],
            },
            "provider": provider,
            "differences": differences,
            "incidents": [
                {
                    "kind": row["kind"],
                    "provider_tx_id": row["provider_tx_id"],
                    "user_id": row["user_id"],
                    "bet_tx_id": row["bet_tx_id"],
                    "details": None if row["details"] is None else orjson.loads(row["details"]),
                    "created_at": datetime_to_ms(row["created_at"]),
                }
                for row in incidents
            ],
        }
