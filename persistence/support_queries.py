"""Support views of the durable history (served by gateway/support.py and gateway/admin.py): a
player's transactions newest first, paged by a cursor; a round as our ledger holds it, the
provider's aggregate and the result of comparing them; the players by id; the incidents newest
first, and their resolution (the one write).

No answer carries a session token: a stored request body is returned without one.

Plain data out; PostgreSQL errors go up as they are (persistence/postgres.py PG_UNREACHABLE).
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from persistence.batch import datetime_to_ms, ms_to_datetime
from persistence.rounds import PENDING, RoundTotals, ledger_totals, round_differences

# (default, most) rows of one page
TRANSACTIONS_PAGE_DEFAULT, TRANSACTIONS_PAGE_MAX = 50, 500
PLAYERS_PAGE_DEFAULT, PLAYERS_PAGE_MAX = 100, 1000
INCIDENTS_PAGE_DEFAULT, INCIDENTS_PAGE_MAX = 100, 1000
ROUND_ROWS_MAX = 10_000  # transactions listed for one round

# What a stored request body may hold that lets its holder play as the player: never returned.
SECRET_FIELDS = ("session_token", "user_token")
# A stored text that is not a JSON object is returned as {UNPARSED_KEY: text}.
UNPARSED_KEY = "text"

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

# An operator's view of the round's incidents: late calls (docs/protocol.md §7), a mismatch, 409s.
ROUND_INCIDENTS = """
SELECT kind, provider_tx_id, user_id, bet_tx_id, details, created_at FROM incidents
WHERE round_id = $1
ORDER BY created_at, id
LIMIT $2
"""

# Beyond any stored row: the first page.
BIGINT_MAX = 2**63 - 1
CURSOR_END = (datetime(9999, 12, 31, tzinfo=UTC), BIGINT_MAX)

# Code point order (the index of migration 004), from `after` on, within the prefix's range.
PLAYER_IDS = """
SELECT user_id FROM players
WHERE user_id COLLATE "C" > $1 AND user_id COLLATE "C" >= $2
  AND ($3::text IS NULL OR user_id COLLATE "C" < $3)
ORDER BY user_id COLLATE "C"
LIMIT $4
"""

INCIDENT_COLUMNS = """
i.id, i.kind, i.provider_tx_id, i.user_id, i.round_id, i.bet_tx_id, i.request, i.recorded,
i.details, i.created_at, i.resolved_at, i.resolution_note, i.resolved_by, t.action
FROM incidents i
LEFT JOIN transaction_ids ti ON ti.provider_tx_id = i.provider_tx_id
LEFT JOIN transactions t ON t.provider_tx_id = ti.provider_tx_id AND t.created_at = ti.created_at
"""

# $2: NULL for every incident, true for the open ones, false for the resolved ones.
INCIDENTS = f"""
SELECT {INCIDENT_COLUMNS}
WHERE i.id < $1 AND ($2::boolean IS NULL OR (i.resolved_at IS NULL) = $2)
ORDER BY i.id DESC
LIMIT $3
"""

INCIDENT_FOR_UPDATE = f"SELECT {INCIDENT_COLUMNS} WHERE i.id = $1 FOR UPDATE OF i"

RESOLVE_INCIDENT = """
UPDATE incidents SET resolved_at = now(), resolution_note = $2, resolved_by = $3 WHERE id = $1
"""

# Which of these (kind, provider_tx_id) the history holds already.
KNOWN_INCIDENTS = """
SELECT kind, provider_tx_id FROM incidents
WHERE (kind, provider_tx_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page ended: its last row. The next page holds the rows below it."""

    created_ms: int
    row_id: int


@dataclass(frozen=True, slots=True)
class TransactionsPage:
    transactions: list[dict[str, Any]]
    next_before: PageCursor | None  # None: this was the last page


@dataclass(frozen=True, slots=True)
class IncidentsPage:
    incidents: list[dict[str, Any]]
    next_before: int | None  # the id to page on from; None: this was the last page


def stored_json(text: str | None) -> dict[str, Any] | None:
    """A stored request or `recorded` as a JSON object, without its secret fields; a text that
    is not a JSON object (a note such as 'bet belongs to bob') as {UNPARSED_KEY: text}."""
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        return {UNPARSED_KEY: text}
    for field in SECRET_FIELDS:
        value.pop(field, None)
    return value


def prefix_end(prefix: str) -> str | None:
    """The least text after every text that starts with `prefix`, in code point order; None
    when there is none (empty, or only the last code point)."""
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


def _incident(row: asyncpg.Record) -> dict[str, Any]:
    resolved_at = row["resolved_at"]
    return {
        "id": row["id"],
        "kind": row["kind"],
        "provider_tx_id": row["provider_tx_id"],
        "user_id": row["user_id"],
        "action": row["action"],
        "referenced_tx_id": row["bet_tx_id"] or "",
        "round_id": row["round_id"],
        "request": stored_json(row["request"]),
        "recorded": stored_json(row["recorded"]),
        "details": None if row["details"] is None else orjson.loads(row["details"]),
        "ts": datetime_to_ms(row["created_at"]),
        "status": "open" if resolved_at is None else "resolved",
        "resolution": None
        if resolved_at is None
        else {
            "note": row["resolution_note"],
            "resolved_by": row["resolved_by"],
            "resolved_at": datetime_to_ms(resolved_at),
        },
    }


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
        "request": stored_json(row["request"]),
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
            rows = await connection.fetch(PLAYER_TRANSACTIONS, user_id, before_at, before_id, limit)
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

    async def player_ids(self, prefix: str, after: str, limit: int) -> list[str]:
        """Up to `limit` ids that start with `prefix`, after `after`, in code point order."""
        assert 1 <= limit <= PLAYERS_PAGE_MAX
        rows = await self.pool.fetch(PLAYER_IDS, after, prefix, prefix_end(prefix), limit)
        return [row["user_id"] for row in rows]

    async def incidents(
        self, limit: int, before: int | None, is_open: bool | None
    ) -> IncidentsPage:
        """Up to `limit` incidents below the id `before` (None: from the newest), newest first;
        `is_open`: only the open ones (True), the resolved ones (False), or all (None)."""
        assert 1 <= limit <= INCIDENTS_PAGE_MAX
        rows = await self.pool.fetch(
            INCIDENTS, BIGINT_MAX if before is None else before, is_open, limit
        )
        return IncidentsPage(
            [_incident(row) for row in rows], rows[-1]["id"] if len(rows) == limit else None
        )

    async def known_incidents(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (kind, provider_tx_id) the history holds."""
        if not keys:
            return set()
        kinds, tx_ids = zip(*keys, strict=True)
        rows = await self.pool.fetch(KNOWN_INCIDENTS, list(kinds), list(tx_ids))
        return {(row["kind"], row["provider_tx_id"]) for row in rows}

    async def resolve_incident(
        self, incident_id: int, note: str, resolved_by: str
    ) -> tuple[str, dict[str, Any] | None]:
        """-> (OK, the incident) once resolved, also again by the same note and name;
        (NOT_FOUND, None); (INCIDENT_RESOLVED, None) when resolved with another note or name."""
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(INCIDENT_FOR_UPDATE, incident_id)
            if row is None:
                return "NOT_FOUND", None
            if row["resolved_at"] is None:
                await connection.execute(RESOLVE_INCIDENT, incident_id, note, resolved_by)
                row = await connection.fetchrow(INCIDENT_FOR_UPDATE, incident_id)
            elif (row["resolution_note"], row["resolved_by"]) != (note, resolved_by):
                return "INCIDENT_RESOLVED", None
        return "OK", _incident(row)

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
