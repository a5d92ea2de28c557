"""Read-only support views of the durable history, for the admin listener:

- GET /admin/players/{user_id}/transactions?limit=&before=   newest first, paged by a cursor
- GET /admin/rounds/{round_id}   our ledger of the round, the provider's aggregate, the result

Answers use the protocol's envelope (gateway.callbacks.respond). The admin app's bearer-token
middleware guards them once mounted: `app.add_routes(SupportApi(pool).routes())`.
"""

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from gateway.callbacks import respond
from gateway.outcomes import OK
from persistence.batch import datetime_to_ms, ms_to_datetime
from persistence.rounds import RoundTotals, ledger_totals, round_differences

TRANSACTIONS_PAGE_DEFAULT = 50
TRANSACTIONS_PAGE_MAX = 500
ROUND_ROWS_MAX = 10_000  # transactions listed for one round

PG_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

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
       EXISTS (SELECT 1 FROM transactions r
               WHERE r.bet_tx_id = t.provider_tx_id AND r.user_id = t.user_id
                 AND r.action = 'ROLL_BACK' AND r.outcome = 'OK' AND NOT r.tombstone)
       AS rolled_back
FROM transactions t
WHERE round_id = $1
ORDER BY created_at, id
LIMIT $2
"""

# Beyond any stored row: the first page.
CURSOR_END = (datetime(9999, 12, 31, tzinfo=UTC), 2**63 - 1)


class BadQuery(ValueError):
    pass


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(TRANSACTIONS_PAGE_DEFAULT))
    if not text.isdigit() or not 1 <= int(text) <= TRANSACTIONS_PAGE_MAX:
        raise BadQuery(f"limit must be a whole number from 1 to {TRANSACTIONS_PAGE_MAX}")
    return int(text)


def _cursor(request: web.Request) -> tuple[Any, int]:
    """`before` is the `next_before` of the previous page: '<ms>.<row id>'."""
    text = request.query.get("before")
    if text is None:
        return CURSOR_END
    milliseconds, _, row_id = text.partition(".")
    if not milliseconds.isdigit() or not row_id.isdigit():
        raise BadQuery("before must be the next_before of a previous page")
    return ms_to_datetime(int(milliseconds)), int(row_id)


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


class SupportApi:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/players/{user_id}/transactions", self.player_transactions),
            web.get("/admin/rounds/{round_id}", self.round_view),
        ]

    async def player_transactions(self, request: web.Request) -> web.Response:
        try:
            limit, (before_at, before_id) = _limit(request), _cursor(request)
        except BadQuery as exc:
            return respond("BAD_REQUEST", message=str(exc))
        user_id = request.match_info["user_id"]
        try:
            async with self.pool.acquire() as connection:
                rows = await connection.fetch(
                    PLAYER_TRANSACTIONS, user_id, before_at, before_id, limit
                )
                known = rows or await connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM players WHERE user_id = $1)", user_id
                )
        except PG_UNREACHABLE:
            return respond("WALLET_UNAVAILABLE", message="History database unavailable")
        if not known:
            return respond("UNKNOWN_USER")
        last = rows[-1] if len(rows) == limit else None
        return respond(
            OK,
            {
                "user_id": user_id,
                "transactions": [_transaction(row) for row in rows],
                "next_before": (
                    f"{datetime_to_ms(last['created_at'])}.{last['id']}" if last else None
                ),
            },
        )

    async def round_view(self, request: web.Request) -> web.Response:
        round_id = request.match_info["round_id"]
        try:
            async with self.pool.acquire() as connection:
                rows = await connection.fetch(ROUND_TRANSACTIONS, round_id, ROUND_ROWS_MAX)
                ledger = await ledger_totals(connection, round_id)
                close = await connection.fetchrow(
                    "SELECT * FROM rounds WHERE round_id = $1", round_id
                )
        except PG_UNREACHABLE:
            return respond("WALLET_UNAVAILABLE", message="History database unavailable")
        if not rows and close is None:
            return respond("NOT_FOUND", message="No such round in the history")
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
            # compared: as stored; pending: as the ledger stands now (may still change)
            differences = (
                orjson.loads(close["differences"])
                if close["differences"] is not None
                else round_differences(totals, ledger)
            )
        return respond(
            OK,
            {
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
            },
        )
