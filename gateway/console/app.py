"""The console's pages, mounted by gateway/app.py on the admin listener as a sub-application
at /console (CONSOLE_PATH). Server-rendered (aiohttp-jinja2), no script: the overview
refreshes itself with a meta refresh, the GGR chart is SVG drawn here, confirmations are pages.

The admin listener's bearer-token middleware lets /console through (gateway/operations.py
is_console_path); this sub-application's own middleware (auth.py) requires its session cookie
on every page but the login, and the CSRF token on every POST. A sub-application rather than
routes among the API's: its own middleware and templates, and no API route can be reached
with the cookie.

The pages call what the admin API calls (SupportQueries, the wallet, persistence/reports.py),
not the API over HTTP.
"""

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import asyncpg
import jinja2
import orjson
from aiohttp import web

from gateway.console import auth, charts
from gateway.console.auth import CSRF_FIELD, SESSION, SessionStore, redirect, set_cookie
from gateway.console.overview import LiveRates, callback_rows, latency_rows, read_stores
from gateway.metrics import Metrics
from gateway.operations import CONSOLE_PATH, OperationsApi
from gateway.outcomes import INCIDENT_KINDS, OK
from gateway.redis_errors import REDIS_UNREACHABLE, WalletUnavailable
from gateway.schemas import (
    IDENTIFIER_CHARS_MAX,
    AdjustmentRequest,
    InvalidRequest,
    ResolveIncidentRequest,
    refuse_unstorable,
)
from gateway.support import stored_id
from gateway.wallet import Wallet
from persistence import reports
from persistence.postgres import PG_UNREACHABLE
from persistence.rounds import MISMATCH_INCIDENT
from persistence.support_queries import PageCursor, SupportQueries

OVERVIEW_REFRESH_SECONDS = 5
INCIDENTS_SHOWN = 200  # the newest open ones; the kind filter picks among them
PLAYERS_SHOWN = 50
TRANSACTIONS_SHOWN = 50
ROUND_STATUSES = ("mismatch", "pending", "match")

log = logging.getLogger("gateway.console")


@dataclass
class Console:
    """What the pages read and change: the admin API's own objects."""

    admin_token: str
    logins: SessionStore
    wallet: Wallet
    metrics: Metrics
    operations: OperationsApi
    history: SupportQueries | None  # None: no DATABASE_URL, the pages of the history say so
    rates: LiveRates = field(default_factory=LiveRates)

    @property
    def pool(self) -> asyncpg.Pool | None:
        return None if self.history is None else self.history.pool


CONSOLE = web.AppKey("console", Console)


def page(
    template: str, request: web.Request, http_status: int = 200, **context: Any
) -> web.Response:
    session = request.get(SESSION)
    return aiohttp_jinja2.render_template(
        template,
        request,
        {"session": session, "csrf_field": CSRF_FIELD, "base": CONSOLE_PATH, **context},
        status=http_status,
    )


def millis_from_units(text: str) -> int:
    """'12.5' -> 12500; ValueError unless a number with at most three decimals."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError("the amount must be a number, e.g. 25.00 or -10") from None
    millis = amount * 1000
    if not amount.is_finite() or millis != millis.to_integral_value():
        raise ValueError("the amount must have at most three decimals")
    return int(millis)


# --- login ---------------------------------------------------------------------------------


async def login_form(
    request: web.Request, error: str | None = None, next_path: str | None = None, operator: str = ""
) -> web.Response:
    token = secrets.token_urlsafe(32)
    response = page(
        "login.html",
        request,
        401 if error else 200,
        login_csrf=token,
        next=auth.safe_next(next_path or request.query.get("next")),
        error=error,
        operator=operator,
    )
    set_cookie(request, response, auth.LOGIN_COOKIE, token, auth.LOGIN_FORM_SECONDS)
    return response


async def login(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    form = await request.post()
    login_csrf = str(form.get(CSRF_FIELD, ""))
    if not auth.same_token(login_csrf, request.cookies.get(auth.LOGIN_COOKIE, "")):
        return web.Response(status=403, text="Refused: reload the login page and try again.")
    operator = str(form.get("operator", "")).strip()
    next_path = str(form.get("next", ""))
    if not auth.same_token(str(form.get("token", "")), console.admin_token):
        log.warning("console: login refused (wrong token) for %r", operator[:64])
        return await login_form(request, "Wrong token.", next_path, operator[:64])
    if not operator or len(operator) > 64 or not operator.isprintable():
        return await login_form(
            request, "Give your name (1 to 64 printable characters).", next_path
        )
    session_id, _ = await console.logins.open(operator)
    log.info("console: %r logged in", operator)
    response = redirect(auth.safe_next(next_path))
    set_cookie(request, response, auth.SESSION_COOKIE, session_id, auth.SESSION_SECONDS)
    response.del_cookie(auth.LOGIN_COOKIE, path=CONSOLE_PATH)
    return response


async def logout(request: web.Request) -> web.Response:
    await request.app[CONSOLE].logins.close(request.cookies.get(auth.SESSION_COOKIE, ""))
    response = redirect(f"{CONSOLE_PATH}/login")
    response.del_cookie(auth.SESSION_COOKIE, path=CONSOLE_PATH)
    return response


# --- 1. overview ---------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    now, then = console.rates.take(console.metrics)
    callbacks = callback_rows(now, then)
    return page(
        "overview.html",
        request,
        nav="overview",
        refresh=OVERVIEW_REFRESH_SECONDS,
        callbacks=callbacks,
        callbacks_total=sum(row["total"] for row in callbacks),
        callbacks_rate=None if then is None else sum(row["rate"] or 0 for row in callbacks),
        latencies=latency_rows(now, then),
        replays=sorted(now.replays.items()),
        conflicts=sorted(now.conflicts.items()),
        incidents=sorted(now.incidents.items()),
        stores=await read_stores(console.operations),
        window_seconds=None if then is None else now.at - then.at,
    )


# --- 2. incidents --------------------------------------------------------------------------


def _pretty(value: Any) -> str:
    return "" if value is None else orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


async def incidents(request: web.Request, error: str | None = None) -> web.Response:
    history = request.app[CONSOLE].history
    if history is None:
        return page("no_history.html", request, nav="incidents")
    kind = request.query.get("kind", "")
    before = stored_id(request.query.get("before", ""))
    found = await history.incidents(INCIDENTS_SHOWN, before, True)
    listed = found.incidents
    # the wallet's newest, as the admin API lists them: those the writer has not written yet
    live = await request.app[CONSOLE].wallet.incidents(INCIDENTS_SHOWN)
    held = await history.known_incidents([(i["kind"], i["provider_tx_id"]) for i in live])
    unwritten = [i for i in live if (i["kind"], i["provider_tx_id"]) not in held]
    kinds = sorted(INCIDENT_KINDS | {MISMATCH_INCIDENT} | {item["kind"] for item in listed})
    shown = [item for item in listed if not kind or item["kind"] == kind]
    for item in shown:
        item["request_text"] = _pretty(item["request"])
        item["recorded_text"] = _pretty(item["recorded"])
        item["details_text"] = _pretty(item["details"])
    return page(
        "incidents.html",
        request,
        400 if error else 200,
        nav="incidents",
        incidents=shown,
        kinds=kinds,
        kind=kind,
        error=error,
        resolved=request.query.get("resolved"),
        unwritten=[i for i in unwritten if not kind or i["kind"] == kind],
        next_before=found.next_before,
    )


async def resolve_incident(request: web.Request) -> web.Response:
    history = request.app[CONSOLE].history
    if history is None:
        return page("no_history.html", request, nav="incidents")
    form = await request.post()
    incident_id = stored_id(request.match_info["incident_id"])
    try:
        refuse_unstorable(str(form.get("note", "")), "note")
        body = ResolveIncidentRequest.parse(
            {"note": str(form.get("note", "")), "resolved_by": request[SESSION].operator}
        )
    except InvalidRequest as exc:
        return await incidents(request, f"Not resolved: {exc}")
    outcome = "NOT_FOUND"
    if incident_id is not None:
        outcome, _ = await history.resolve_incident(incident_id, body.note, body.resolved_by)
    if outcome != OK:
        return await incidents(request, f"Not resolved: {outcome}")
    log.info("console: incident %s resolved by %r", incident_id, body.resolved_by)
    query = {"resolved": str(incident_id), "kind": str(form.get("kind", ""))}
    return redirect(f"{CONSOLE_PATH}/incidents?{urlencode(query)}")


# --- 3. rounds -----------------------------------------------------------------------------


async def rounds(request: web.Request) -> web.Response:
    pool = request.app[CONSOLE].pool
    if pool is None:
        return page("no_history.html", request, nav="rounds")
    status = request.query.get("status") or None
    if status not in (None, *ROUND_STATUSES):
        status = None
    return page(
        "rounds.html",
        request,
        nav="rounds",
        rounds=await reports.closed_rounds(pool, status),
        status=status or "",
        statuses=ROUND_STATUSES,
    )


async def round_view(request: web.Request) -> web.Response:
    history = request.app[CONSOLE].history
    if history is None:
        return page("no_history.html", request, nav="rounds")
    view = await history.round_view(request.match_info["round_id"])
    return page(
        "round.html",
        request,
        200 if view else 404,
        nav="rounds",
        round_id=request.match_info["round_id"],
        view=view,
        differences_text=_pretty(view and view["differences"]),
    )


# --- 4. players ----------------------------------------------------------------------------


async def players(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    if console.history is None:
        return page("no_history.html", request, nav="players")
    prefix = request.query.get("q", "").strip()[:IDENTIFIER_CHARS_MAX]
    after = request.query.get("after", "")[:IDENTIFIER_CHARS_MAX]
    refuse_unstorable(prefix + after, "the player id")  # texts PostgreSQL is sent
    user_ids = await console.history.player_ids(prefix, after, PLAYERS_SHOWN)
    found = await asyncio.gather(*(console.wallet.get_player(user_id) for user_id in user_ids))
    return page(
        "players.html",
        request,
        nav="players",
        q=prefix,
        players=[player for player in found if player is not None],
        next_after=user_ids[-1] if len(user_ids) == PLAYERS_SHOWN else None,
    )


def _cursor(text: str | None) -> PageCursor | None:
    milliseconds, _, row_id = (text or "").partition(".")
    if not milliseconds.isdigit() or not row_id.isdigit():
        return None
    return PageCursor(int(milliseconds), int(row_id))


async def player(request: web.Request, adjustment: dict[str, Any] | None = None) -> web.Response:
    console = request.app[CONSOLE]
    user_id = request.match_info["user_id"]
    wallet_player = await console.wallet.get_player(user_id)
    transactions = sessions = adjustments = None
    next_before = None
    if console.history is not None and console.pool is not None:
        found = await console.history.player_transactions(
            user_id, TRANSACTIONS_SHOWN, _cursor(request.query.get("before"))
        )
        if found is not None:
            transactions = found.transactions
            last = found.next_before
            next_before = None if last is None else f"{last.created_ms}.{last.row_id}"
        sessions = await reports.player_sessions(console.pool, user_id)
        adjustments = await reports.player_adjustments(console.pool, user_id)
    if wallet_player is None and transactions is None:
        return page("player.html", request, 404, nav="players", user_id=user_id, player=None)
    return page(
        "player.html",
        request,
        nav="players",
        user_id=user_id,
        player=wallet_player,
        transactions=transactions,
        next_before=next_before,
        sessions=sessions,
        adjustments=adjustments,
        adjustment=adjustment or {"reference": f"console-{secrets.token_hex(6)}"},
        adjusted=request.query.get("adjusted"),
        outcome=request.query.get("outcome"),
    )


async def adjust(request: web.Request) -> web.Response:
    """First POST: the confirmation page. Second POST (confirmed): the money moves, once per
    reference (the wallet's idempotency), then back to the player's page."""
    console = request.app[CONSOLE]
    user_id = request.match_info["user_id"]
    form = await request.post()
    entered = {name: str(form.get(name, "")).strip() for name in ("amount", "reference", "reason")}
    try:
        refuse_unstorable(entered, "the adjustment")
        millis = millis_from_units(entered["amount"])
        if not entered["reason"]:
            raise ValueError("give a reason")
        body = AdjustmentRequest.parse(
            {"amount": millis, "reference": entered["reference"], "reason": entered["reason"]}
        )
    except ValueError as exc:  # InvalidRequest is one
        return await player(request, {**entered, "error": str(exc)})
    wallet_player = await console.wallet.get_player(user_id)
    if wallet_player is None:
        return await player(request, {**entered, "error": "no such player in the wallet"})
    if form.get("confirmed") != "yes":
        return page(
            "adjust_confirm.html",
            request,
            nav="players",
            player=wallet_player,
            amount=body.amount_millis,
            reference=body.reference,
            reason=entered["reason"],
            amount_text=entered["amount"],
        )
    outcome, balance = await console.wallet.adjust_balance(
        user_id, body.amount_millis, str(body.reference), body.reason
    )
    console.metrics.observe_outcome(outcome)
    operator = request[SESSION].operator
    log.info(
        "console: adjustment %s of %s millis for %r by %r: %s, balance %s; reason: %s",
        body.reference, body.amount_millis, user_id, operator, outcome, balance, entered["reason"],
    )  # fmt: skip
    query = urlencode({"adjusted": str(body.reference), "outcome": outcome})
    return redirect(f"{CONSOLE_PATH}/players/{_quoted(user_id)}?{query}")


def _quoted(user_id: str) -> str:
    return quote(user_id, safe="")


# --- 5. reports ----------------------------------------------------------------------------


def _report_days(request: web.Request) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    first = request.query.get("from") or today.replace(day=1).isoformat()
    last = request.query.get("to") or today.isoformat()
    return date.fromisoformat(first), date.fromisoformat(last)


async def ggr(request: web.Request) -> web.Response:
    pool = request.app[CONSOLE].pool
    if pool is None:
        return page("no_history.html", request, nav="reports")
    try:
        first_day, last_day = _report_days(request)
        report = await reports.ggr_report(pool, first_day, last_day)
    except ValueError as exc:
        return page("ggr.html", request, 400, nav="reports", error=str(exc), report=None)
    totals = report.totals()
    return page(
        "ggr.html",
        request,
        nav="reports",
        report=report,
        totals=totals,
        charts=[
            (total.currency, charts.daily_bars(report.daily_ggr(total.currency)))
            for total in totals
        ],
        csv_query=urlencode({"from": first_day.isoformat(), "to": last_day.isoformat()}),
        error=None,
    )


async def ggr_csv(request: web.Request) -> web.Response:
    pool = request.app[CONSOLE].pool
    if pool is None:
        return web.Response(status=503, text="no history database configured")
    try:
        first_day, last_day = _report_days(request)
        report = await reports.ggr_report(pool, first_day, last_day)
    except ValueError as exc:
        return web.Response(status=400, text=str(exc))
    return web.Response(
        text=report.csv_text(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="ggr-{first_day}-{last_day}.csv"'},
    )


# --- the application -----------------------------------------------------------------------


def _static(name: str) -> bytes:
    return resources.files("gateway.console").joinpath("static", name).read_bytes()


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STYLESHEET], content_type="text/css")


STYLESHEET = web.AppKey("stylesheet", bytes)


@web.middleware
async def stores_unreachable(request: web.Request, handler: auth.Handler) -> web.StreamResponse:
    """An unreachable PostgreSQL or Redis is a page that says so, not the API's envelope."""
    try:
        return await handler(request)
    except PG_UNREACHABLE:
        return page("no_history.html", request, 503, unreachable="PostgreSQL")
    except (WalletUnavailable, *REDIS_UNREACHABLE):
        return page("no_history.html", request, 503, unreachable="Redis")
    except InvalidRequest as exc:  # a text no store may hold (a NUL, a lone surrogate)
        return web.Response(status=400, text=f"Bad request: {exc}")


def _money(millis: int | None) -> str:
    return "" if millis is None else reports.units(millis)


def _when(milliseconds: int | None) -> str:
    if milliseconds is None:
        return ""
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def create_console_app(console: Console) -> web.Application:
    app = web.Application(middlewares=[auth.session_middleware(console.logins), stores_unreachable])
    app[CONSOLE] = console
    app[STYLESHEET] = _static("console.css")
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("gateway.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        filters={"money": _money, "when": _when, "quoted": _quoted},
    )
    app.add_routes(
        [
            web.get("/login", login_form),
            web.post("/login", login),
            web.post("/logout", logout),
            web.get("/static/console.css", stylesheet),
            web.get("/", overview),
            web.get("/incidents", incidents),
            web.post("/incidents/{incident_id}/resolve", resolve_incident),
            web.get("/rounds", rounds),
            web.get("/rounds/{round_id}", round_view),
            web.get("/players", players),
            web.get("/players/{user_id}", player),
            web.post("/players/{user_id}/adjustments", adjust),
            web.get("/reports/ggr", ggr),
            web.get("/reports/ggr.csv", ggr_csv),
        ]
    )
    return app
