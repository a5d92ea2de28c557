"""Support reads of the durable history on the admin listener (persistence/support_queries.py
runs the queries):

- GET /admin/players/{user_id}/transactions?limit=&before=   newest first, paged by a cursor
- GET /admin/rounds/{round_id}   our ledger of the round, the provider's aggregate, the result

Answers use the protocol's envelope. The admin app's bearer-token middleware guards them once
mounted: `app.add_routes(SupportApi(pool).routes())`.
"""

import asyncpg
from aiohttp import web

from gateway.callbacks import respond
from gateway.outcomes import OK
from persistence.postgres import PG_UNREACHABLE
from persistence.support_queries import TRANSACTIONS_PAGE_MAX, PageCursor, SupportQueries

TRANSACTIONS_PAGE_DEFAULT = 50


class BadQuery(ValueError):
    pass


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(TRANSACTIONS_PAGE_DEFAULT))
    if not text.isdigit() or not 1 <= int(text) <= TRANSACTIONS_PAGE_MAX:
        raise BadQuery(f"limit must be a whole number from 1 to {TRANSACTIONS_PAGE_MAX}")
    return int(text)


def _cursor(request: web.Request) -> PageCursor | None:
    """`before` is the `next_before` of the previous page: '<ms>.<row id>'."""
    text = request.query.get("before")
    if text is None:
        return None
    milliseconds, _, row_id = text.partition(".")
    if not milliseconds.isdigit() or not row_id.isdigit():
        raise BadQuery("before must be the next_before of a previous page")
    return PageCursor(int(milliseconds), int(row_id))


def _cursor_text(cursor: PageCursor | None) -> str | None:
    return None if cursor is None else f"{cursor.created_ms}.{cursor.row_id}"


class SupportApi:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.queries = SupportQueries(pool)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/players/{user_id}/transactions", self.player_transactions),
            web.get("/admin/rounds/{round_id}", self.round_view),
        ]

    async def player_transactions(self, request: web.Request) -> web.Response:
        try:
            limit, before = _limit(request), _cursor(request)
        except BadQuery as exc:
            return respond("BAD_REQUEST", message=str(exc))
        user_id = request.match_info["user_id"]
        try:
            page = await self.queries.player_transactions(user_id, limit, before)
        except PG_UNREACHABLE:
            return respond("WALLET_UNAVAILABLE", message="History database unavailable")
        if page is None:
            return respond("UNKNOWN_USER")
        return respond(
            OK,
            {
                "user_id": user_id,
                "transactions": page.transactions,
                "next_before": _cursor_text(page.next_before),
            },
        )

    async def round_view(self, request: web.Request) -> web.Response:
        try:
            view = await self.queries.round_view(request.match_info["round_id"])
        except PG_UNREACHABLE:
            return respond("WALLET_UNAVAILABLE", message="History database unavailable")
        if view is None:
            return respond("NOT_FOUND", message="No such round in the history")
        return respond(OK, view)
