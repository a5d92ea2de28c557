"""The operator's admin API, on its own listener; every call needs the bearer token."""

import hmac
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from gateway.callbacks import report_internal_error, respond
from gateway.launch import LaunchClient, LaunchRequest, ProviderUnavailable
from gateway.metrics import Metrics
from gateway.operations import PUBLIC_PATHS
from gateway.outcomes import OK
from gateway.redis_errors import REDIS_UNREACHABLE, WalletUnavailable
from gateway.schemas import (
    AdjustmentRequest,
    CreatePlayerRequest,
    InvalidRequest,
    LaunchRequestBody,
    OpenSessionRequest,
    decode_object,
    refuse_unstorable,
)
from gateway.sessions import Sessions, new_token
from gateway.wallet import Wallet

INCIDENTS_LISTED_MAX = 1000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def envelope_middleware(metrics: Metrics) -> Middleware:
    """Outermost: whatever the token check or a handler raises, the answer is the envelope
    (PROTOCOL.md §3)."""

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
        public = request.path in PUBLIC_PATHS
        if not public and (not admin_token or not hmac.compare_digest(given, expected)):
            return respond("UNAUTHORIZED")
        return await handler(request)

    return check_token


@web.middleware
async def storable_parameters(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Path parameters reach Redis and PostgreSQL as text, like the bodies do ('%00' decodes to
    NUL; bytes that are not UTF-8 stay percent text). No query text is stored."""
    for name, value in request.match_info.items():
        refuse_unstorable(value, name)
    return await handler(request)


class AdminApi:
    def __init__(
        self, wallet: Wallet, sessions: Sessions, launch_client: LaunchClient, metrics: Metrics
    ) -> None:
        self.wallet = wallet
        self.sessions = sessions
        self.launch_client = launch_client
        self.metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [
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
            request.match_info["user_id"], body.amount_millis, body.reference
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

    async def list_incidents(self, request: web.Request) -> web.Response:
        return respond(OK, {"incidents": await self.wallet.incidents(INCIDENTS_LISTED_MAX)})
