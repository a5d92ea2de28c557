"""The console's login: the admin token exchanged for a session cookie, and CSRF checks.

- A session is a random id in a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/console`, and
  `Secure` when the request came over https). Redis holds it under the SHA-256 of the id, with
  the operator's name and the session's CSRF token, and forgets it after SESSION_SECONDS or at
  logout: revocable, and a copy of Redis holds no usable cookie.
  On plain http (the admin listener on loopback, as `up` serves it) the cookie cannot be
  `Secure`: a browser would not send it back. Behind a TLS proxy that speaks https to the
  admin listener it is.
- Every POST carries the session's CSRF token in a hidden field `csrf`, compared in constant
  time; the login form, before any session, a token of its own, also set as a short-lived
  cookie (double submit). SameSite=Strict already keeps other sites' forms from sending the
  cookie; the token also guards a browser or a proxy that ignores it.
- Every answer forbids framing and caching and allows only this origin's style sheet and
  forms (no script at all: the pages need none).
"""

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from redis.asyncio import Redis

from gateway.operations import CONSOLE_PATH

SESSION_COOKIE = "wg_console"
LOGIN_COOKIE = "wg_console_login"
SESSION_SECONDS = 8 * 3600  # one shift
LOGIN_FORM_SECONDS = 600
SESSION_KEY_PREFIX = "console:session:"  # outside the wallet's own keys (gateway/keys.py PREFIX)
CSRF_FIELD = "csrf"
# reachable without a session: the login form and what it is styled with
PUBLIC_CONSOLE_PATHS = frozenset({f"{CONSOLE_PATH}/login", f"{CONSOLE_PATH}/static/console.css"})
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

log = logging.getLogger("gateway.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    operator: str  # who is logged in: kept as `resolved_by` of what they resolve
    csrf: str


SESSION = web.RequestKey("console_session", ConsoleSession)


def _key(session_id: str) -> str:
    return SESSION_KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def same_token(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


class SessionStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def open(self, operator: str) -> tuple[str, ConsoleSession]:
        """-> (the cookie's session id, the session)"""
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(operator, secrets.token_urlsafe(32))
        key = _key(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"operator": operator, "csrf": session.csrf})
            pipe.expire(key, SESSION_SECONDS)
            await pipe.execute()
        return session_id, session

    async def find(self, session_id: str) -> ConsoleSession | None:
        if not session_id:
            return None
        fields = await self.redis.hgetall(_key(session_id))
        if not fields:
            return None
        return ConsoleSession(fields["operator"], fields["csrf"])

    async def close(self, session_id: str) -> None:
        await self.redis.delete(_key(session_id))


def set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, seconds: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=seconds,
        path=CONSOLE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def redirect(location: str) -> web.Response:
    """303: after a POST the browser GETs the next page (a reload does not post again)."""
    return web.Response(status=303, headers={"Location": location})


def safe_next(path: str | None) -> str:
    """Where to go after the login: a page of the console only (no open redirect)."""
    if path and path.startswith(f"{CONSOLE_PATH}/") and not path.startswith("//"):
        return path
    return f"{CONSOLE_PATH}/"


def session_middleware(store: SessionStore) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check_session(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await _checked(request, handler)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == CONSOLE_PATH:
            return redirect(f"{CONSOLE_PATH}/")
        if request.path in PUBLIC_CONSOLE_PATHS:
            return await _answered(request, handler)
        session = await store.find(request.cookies.get(SESSION_COOKIE, ""))
        if session is None:
            if request.method == "GET":
                return redirect(f"{CONSOLE_PATH}/login?next={quote(request.path_qs)}")
            return web.Response(status=403, text="Not logged in: log in again.")
        if request.method != "GET":
            form = await request.post()
            given = form.get(CSRF_FIELD)
            if not isinstance(given, str) or not same_token(given, session.csrf):
                log.warning("console: %s %s refused: CSRF token", request.method, request.path)
                return web.Response(status=403, text="Refused: the form's CSRF token is wrong.")
        request[SESSION] = session
        return await _answered(request, handler)

    return check_session


async def _answered(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404 or 405 as a plain page (the admin app's envelope middleware would
    turn a raised one into a 500)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.Response(status=exc.status, text=exc.reason, headers=exc.headers)
