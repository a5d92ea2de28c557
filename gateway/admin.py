"""The operator's admin API, on its own listener; every call needs the bearer token."""

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from gateway.callbacks import report_internal_error, respond
from gateway.launch import LaunchClient, LaunchRequest, ProviderUnavailable
from gateway.metrics import Metrics
from gateway.operations import PUBLIC_PATHS, is_console_path
from gateway.outcomes import OK
from gateway.redis_errors import REDIS_UNREACHABLE, WalletUnavailable
from gateway.schemas import (
    IDENTIFIER_CHARS_MAX,
    AdjustmentRequest,
    CreatePlayerRequest,
    InvalidRequest,
    LaunchRequestBody,
    OpenSessionRequest,
    decode_object,
    refuse_unstorable,
)
from gateway.sessions import Sessions, new_token
from gateway.support import BadQuery, history_handler, query_limit, stored_id
from gateway.wallet import Wallet
from persistence.support_queries import (
    BIGINT_MAX,
    INCIDENTS_PAGE_DEFAULT,
    INCIDENTS_PAGE_MAX,
    PLAYERS_PAGE_DEFAULT,
    PLAYERS_PAGE_MAX,
    SupportQueries,
    stored_json,
)

# ?status= of the incident list -> only the open ones (True), only the resolved ones (False)
INCIDENT_STATUSES = {"open": True, "resolved": False}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def envelope_middleware(metrics: Metrics) -> Middleware:
    """Outermost: whatever the token check or a handler raises, the answer is the envelope
    (docs/protocol.md §3)."""

    @web.middleware
    async def answer_in_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidRequest as exc:
            return respond("BAD_REQUEST", message=str(exc))
        except (WalletUnavailable, *REDIS_UNREACHABLE):
            return respond("WALLET_UNAVAILABLE")
        except web.HTTPRequestEntityTooLarge:  # request.read() past client_max_size
            return respond("BODY_TOO_LARGE")
        except Exception:
            report_internal_error(metrics, "admin", request)
            return respond("INTERNAL_ERROR")

    return answer_in_envelope


def bearer_token_middleware(admin_token: str) -> Middleware:
    expected = f"Bearer {admin_token}".encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        # aiohttp hands a header that is not UTF-8 over with surrogate escapes: back to the
        # bytes as sent, which then never equal the token
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        public = request.path in PUBLIC_PATHS or is_console_path(request.path)
        if not public and (not admin_token or not hmac.compare_digest(given, expected)):
            return respond("UNAUTHORIZED")
        return await handler(request)

    return check_token


@web.middleware
async def storable_parameters(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Path parameters reach Redis and PostgreSQL as text, like the bodies do ('%00' decodes to
    NUL; bytes that are not UTF-8 stay percent text). The query texts a handler sends to
    PostgreSQL are checked where it reads them."""
    for name, value in request.match_info.items():
        refuse_unstorable(value, name)
    return await handler(request)


def _id_query(request: web.Request, name: str) -> str:
    """A player id in the query (a prefix, a cursor): any text the history could hold."""
    text = request.query.get(name, "")
    if len(text) > IDENTIFIER_CHARS_MAX:
        raise BadQuery(f"{name} must have at most {IDENTIFIER_CHARS_MAX} characters")
    refuse_unstorable(text, name)
    return text


def _live_incident(listed: dict[str, Any]) -> dict[str, Any]:
    """An incident of the wallet's list (lua/money_common.lua) that the history does not hold
    (yet): as the history's, without an id, so not resolvable yet."""
    return {
        "id": None,
        "kind": listed["kind"],
        "provider_tx_id": listed["provider_tx_id"],
        "user_id": listed["user_id"],
        "action": listed["action"],
        "referenced_tx_id": listed["referenced_tx_id"],
        "round_id": None,
        "request": stored_json(listed["request"]),
        "recorded": stored_json(listed["recorded"]),
        "details": None,
        "ts": listed["ts"],
        "status": "open",
        "resolution": None,
    }


class AdminApi:
    def __init__(
        self,
        wallet: Wallet,
        sessions: Sessions,
        launch_client: LaunchClient,
        metrics: Metrics,
        history: SupportQueries | None,
    ) -> None:
        self.wallet = wallet
        self.sessions = sessions
        self.launch_client = launch_client
        self.metrics = metrics
        self.history = history  # None: no DATABASE_URL

    def routes(self) -> list[web.RouteDef]:
        # the players are listed from the history, which knows them in order
        listing = [] if self.history is None else [web.get("/admin/players", self.list_players)]
        return [
            *listing,
            web.post("/admin/players", self.create_player),
            web.get("/admin/players/{user_id}", self.get_player),
            web.post("/admin/players/{user_id}/adjustments", self.adjust_balance),
            web.post("/admin/sessions", self.open_session),
            web.post("/admin/launch", self.launch),
            web.get("/admin/incidents", self.list_incidents),
        ]

    async def create_player(self, request: web.Request) -> web.Response:
        body = CreatePlayerRequest.parse(decode_object(await request.read()))
        outcome = await self.wallet.create_player(
            body.user_id,
            body.currency,
            body.user_id if body.username is msgspec.UNSET else body.username,
            body.balance_millis or 0,
            body.maxbet_millis,
        )
        if outcome != OK:
            return respond(outcome)
        player = await self.wallet.get_player(body.user_id)
        assert player is not None, "a player just created must exist"
        return respond("CREATED", player.as_dict())

    async def get_player(self, request: web.Request) -> web.Response:
        player = await self.wallet.get_player(request.match_info["user_id"])
        if player is None:
            return respond("UNKNOWN_USER")
        return respond(OK, player.as_dict())

    async def adjust_balance(self, request: web.Request) -> web.Response:
        body = AdjustmentRequest.parse(decode_object(await request.read()))
        outcome, balance = await self.wallet.adjust_balance(
            request.match_info["user_id"], body.amount_millis, body.reference, body.reason
        )
        self.metrics.observe_outcome(outcome)  # BALANCE_LIMIT is an incident here too
        return respond(outcome, {"balance": balance})

    async def open_session(self, request: web.Request) -> web.Response:
        """A session opened directly (development and tests), plus a fresh one-time token."""
        user_id = OpenSessionRequest.parse(decode_object(await request.read())).user_id
        session_token = new_token()
        outcome = await self.sessions.open_session(user_id, session_token, "admin")
        if outcome != OK:
            return respond(outcome)
        user_token = await self.sessions.issue_user_token(user_id)
        return respond("CREATED", {"session_token": session_token, "user_token": user_token})

    async def launch(self, request: web.Request) -> web.Response:
        body = LaunchRequestBody.parse(decode_object(await request.read()))
        user_id = body.user_id
        player = await self.wallet.get_player(user_id)
        if player is None:
            return respond("UNKNOWN_USER")
        user_token = await self.sessions.issue_user_token(user_id)
        launch_request = LaunchRequest(
            game=body.game,
            user_token=user_token,
            currency=player.currency,
            platform=body.platform,
            portal_mode=body.portal_mode,
            return_url=body.return_url,
            language=body.language,
        )
        try:
            launch = await self.launch_client.launch(launch_request)
        except ProviderUnavailable as exc:
            return respond("PROVIDER_UNAVAILABLE", message=str(exc))
        outcome, _ = await self.sessions.redeem_user_token(user_token, launch.session_token)
        if outcome == OK:
            outcome = await self.sessions.open_session(user_id, launch.session_token, "launch")
        if outcome != OK:
            return respond(outcome)
        return respond(OK, {"launch_url": launch.launch_url, "session_token": launch.session_token})

    @history_handler
    async def list_players(self, request: web.Request) -> web.Response:
        """?prefix=&after=&limit=: in code point order of their ids, with the live balance."""
        assert self.history is not None, "served with the history only"
        limit = query_limit(request, PLAYERS_PAGE_DEFAULT, PLAYERS_PAGE_MAX)
        user_ids = await self.history.player_ids(
            _id_query(request, "prefix"), _id_query(request, "after"), limit
        )
        players = [
            {"user_id": user_id, "currency": currency, "balance": int(balance)}
            for user_id, (currency, balance) in zip(
                user_ids, await self._currencies_and_balances(user_ids), strict=True
            )
            if currency is not None  # in the history, no longer in the wallet: not listed
        ]
        next_after = user_ids[-1] if len(user_ids) == limit else None
        return respond(OK, {"players": players, "next_after": next_after})

    async def _currencies_and_balances(self, user_ids: list[str]) -> list[list[str | None]]:
        """[currency, balance] of each player as the wallet holds them now; one round trip (on a
        Redis Cluster one per node, at once: a non-transactional pipeline is split by key)."""
        keys = self.wallet.keys
        async with self.wallet.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hmget(keys.player(keys.shard(user_id), user_id), ["currency", "balance"])
            return await pipe.execute()

    @history_handler
    async def list_incidents(self, request: web.Request) -> web.Response:
        """?limit=&before=&status=open|resolved, newest first. With the history: its incidents,
        paged by id; the first page also holds the wallet's newest ones the history has not
        written yet (no id). Without: the wallet's newest ones."""
        limit = query_limit(request, INCIDENTS_PAGE_DEFAULT, INCIDENTS_PAGE_MAX)
        status = request.query.get("status")
        if status is not None and status not in INCIDENT_STATUSES:
            raise BadQuery("status must be open or resolved")
        is_open = None if status is None else INCIDENT_STATUSES[status]
        before_text = request.query.get("before")
        before = None if before_text is None else stored_id(before_text)
        if before_text is not None and (before is None or self.history is None):
            raise BadQuery("before must be the next_before of a previous page")
        live: list[dict[str, Any]] = []
        if before is None and is_open is not False:
            live = [_live_incident(item) for item in await self.wallet.incidents(limit)]
        if self.history is None:
            return respond(OK, {"incidents": live, "next_before": None})
        held = await self.history.known_incidents(
            [(item["kind"], item["provider_tx_id"]) for item in live]
        )
        live = [item for item in live if (item["kind"], item["provider_tx_id"]) not in held]
        if len(live) == limit:  # the stored ones from their newest on, on the next page
            return respond(OK, {"incidents": live, "next_before": BIGINT_MAX})
        page = await self.history.incidents(limit - len(live), before, is_open)
        incidents = sorted(live + page.incidents, key=lambda item: item["ts"], reverse=True)
        return respond(OK, {"incidents": incidents, "next_before": page.next_before})
