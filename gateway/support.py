"""Support reads of the durable history on the admin listener (persistence/support_queries.py
runs the queries):

- GET /admin/players/{user_id}/transactions?limit=&before=   newest first, paged by a cursor
- GET /admin/rounds/{round_id}   our ledger of the round, the provider's aggregate, the result
- POST /admin/incidents/{incident_id}/resolve   {"note", "resolved_by"}: kept with the incident

gateway/admin.py lists the players and the incidents with them. Answers use the protocol's
envelope, also for a bad query (400) and an unreachable history (503). The admin app's
bearer-token middleware guards them once mounted: `app.add_routes(SupportApi(pool).routes())`.
"""

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TypeVar

import asyncpg
from aiohttp import web

from gateway.callbacks import respond
from gateway.outcomes import OK
from gateway.schemas import ResolveIncidentRequest, decode_object
from persistence.postgres import PG_UNREACHABLE
from persistence.support_queries import (
    BIGINT_MAX,
    TRANSACTIONS_PAGE_DEFAULT,
    TRANSACTIONS_PAGE_MAX,
    PageCursor,
    SupportQueries,
)

Api = TypeVar("Api")
Handler = Callable[[Api, web.Request], Awaitable[web.Response]]


class BadQuery(ValueError):
    pass


def history_handler(handler: Handler[Api]) -> Handler[Api]:
    """A handler that reads the history: a bad query is a 400, an unreachable history a 503."""

    @wraps(handler)
    async def answer(api: Api, request: web.Request) -> web.Response:
        try:
            return await handler(api, request)
        except BadQuery as exc:
            return respond("BAD_REQUEST", message=str(exc))
        except PG_UNREACHABLE:
            return respond("WALLET_UNAVAILABLE", message="History database unavailable")

    return answer


def query_limit(request: web.Request, default: int, maximum: int) -> int:
    text = request.query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise BadQuery(f"limit must be a whole number from 1 to {maximum}")
    return int(text)


def stored_id(text: str) -> int | None:
    """A row id as sent (in a path or a query), or None when no row can have it."""
    return int(text) if text.isdigit() and 1 <= int(text) <= BIGINT_MAX else None


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
            web.post("/admin/incidents/{incident_id}/resolve", self.resolve_incident),
        ]

    @history_handler
    async def player_transactions(self, request: web.Request) -> web.Response:
        limit = query_limit(request, TRANSACTIONS_PAGE_DEFAULT, TRANSACTIONS_PAGE_MAX)
        before = _cursor(request)
        user_id = request.match_info["user_id"]
        page = await self.queries.player_transactions(user_id, limit, before)
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

    @history_handler
    async def round_view(self, request: web.Request) -> web.Response:
        view = await self.queries.round_view(request.match_info["round_id"])
        if view is None:
            return respond("NOT_FOUND", message="No such round in the history")
        return respond(OK, view)

    @history_handler
    async def resolve_incident(self, request: web.Request) -> web.Response:
        body = ResolveIncidentRequest.parse(decode_object(await request.read()))
        incident_id = stored_id(request.match_info["incident_id"])
        outcome, incident = (
            ("NOT_FOUND", None)
            if incident_id is None
            else await self.queries.resolve_incident(incident_id, body.note, body.resolved_by)
        )
        if outcome == "NOT_FOUND":
            return respond(outcome, message="No such incident in the history")
        return respond(outcome, incident)
