"""The OpenAPI document is valid, and true: the real answers of the running app, success and
error, match the response schemas it documents, and every route the app serves is in it."""

import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import ADMIN_TOKEN, PUBLIC_KEY, SECRET
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from payloads import bet, close_round, rollback, win
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.app import Services, create_admin_app, create_gateway_app
from gateway.openapi import openapi_document
from gateway.operations import is_console_path
from gateway.settings import Settings
from gateway.signing import signed_headers

pytest_plugins = ("history_fixtures",)

DOCUMENT = openapi_document()
DOCUMENT_URI = "urn:wallet-gateway:openapi"
REGISTRY = Registry().with_resource(
    DOCUMENT_URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)
JSON = "application/json"
BODY_BYTES_TOO_MANY = 64 * 1024 + 1
CALLBACK_LISTENER = "callback listener (GATEWAY_HOST / GATEWAY_PORT)"


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def _validate_at(pointer: str, instance: Any) -> None:
    """Validate against the schema at `pointer` inside the document (its $refs resolve)."""
    validator = Draft202012Validator({"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=REGISTRY)
    errors = sorted(validator.iter_errors(instance), key=lambda error: list(error.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def _operation(method: str, template: str) -> dict[str, Any]:
    assert template in DOCUMENT["paths"], f"{template} is not documented"
    operations = DOCUMENT["paths"][template]
    assert method.lower() in operations, f"{method} {template} is not documented"
    return operations[method.lower()]


def assert_request_documented(method: str, template: str, payload: Any) -> None:
    """A request the app accepted must be one the document allows."""
    assert "requestBody" in _operation(method, template)
    _validate_at(
        _pointer("paths", template, method.lower(), "requestBody", "content", JSON, "schema"),
        payload,
    )


def assert_answer_documented(
    method: str, template: str, status: int, content_type: str, body: bytes
) -> None:
    responses = _operation(method, template)["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}: undocumented"
    base = _pointer("paths", template, method.lower(), "responses", str(status))
    response = responses[str(status)]
    if "$ref" in response:
        base = response["$ref"].removeprefix("#")
        response = DOCUMENT["components"]["responses"][base.rsplit("/", 1)[1]]
    assert content_type in response["content"], (
        f"{method} {template} {status} answered {content_type}"
    )
    if content_type == JSON:
        instance: Any = orjson.loads(body)
        if template != "/openapi.json":  # the one JSON answer that is not an envelope
            assert instance["code"] == status, "the envelope's code must equal the HTTP status"
    else:
        instance = body.decode()
    _validate_at(base + _pointer("content", content_type, "schema"), instance)


async def call(
    client: TestClient,
    method: str,
    template: str,
    path: str | None = None,
    payload: Any = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, Any]:
    """Send a request, check the answer against the document, return (status, decoded body)."""
    if body is None and payload is not None:
        body = orjson.dumps(payload)
    response = await client.request(method, path or template, data=body, headers=headers)
    raw = await response.read()
    assert_answer_documented(method, template, response.status, response.content_type, raw)
    if response.status < 300 and payload is not None:
        assert_request_documented(method, template, payload)
    if response.content_type != JSON:
        return response.status, raw.decode()
    return response.status, orjson.loads(raw)


async def signed(
    provider: Any, template: str, payload: Any = None, body: bytes | None = None, **kwargs: Any
) -> int:
    """POST a signed callback, check the answer against the document -> HTTP status."""
    raw = body if body is not None else orjson.dumps(payload)
    headers = kwargs.pop("headers", None) or signed_headers(PUBLIC_KEY, SECRET, raw)
    status, _ = await call(
        provider.client, "POST", template, payload=payload, body=raw, headers=headers, **kwargs
    )
    return status


BEARER_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def admin_status(
    admin: Any, method: str, template: str, path: str | None = None, payload: Any = None
) -> int:
    status, _ = await admin_call(admin, method, template, path, payload)
    return status


async def admin_call(
    admin: Any, method: str, template: str, path: str | None = None, payload: Any = None
) -> tuple[int, Any]:
    headers = BEARER_HEADERS if _operation(method, template)["security"] else None
    return await call(admin.client, method, template, path, payload, headers)


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route, without the envelope fallback, auto-HEADs and
    the console's HTML pages (gateway/console: not API)."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.method not in ("*", "HEAD")
        and not is_console_path(route.resource.canonical)
    }


def documented_routes(listener: str) -> set[tuple[str, str]]:
    return {
        (method.upper(), template)
        for template, item in DOCUMENT["paths"].items()
        if (item.get("servers", DOCUMENT["servers"])[0]["description"] == CALLBACK_LISTENER)
        == (listener == "callbacks")
        for method in item
        if method != "servers"
    }


@pytest.fixture
async def services(history_settings: Settings) -> AsyncIterator[Services]:
    """The whole admin listener, support reads from PostgreSQL included."""
    services = Services.create(history_settings)
    await services.redis.flushall()
    await services.start()
    yield services
    await services.close()


@pytest.fixture
def apps(services: Services) -> dict[str, web.Application]:
    return {"callbacks": create_gateway_app(services), "admin": create_admin_app(services)}


def is_served(admin: Any, method: str, template: str) -> bool:
    return (method, template) in served_routes(admin.client.app)


# --- the document itself ----------------------------------------------------------------------


def test_document_is_valid_openapi_3_1():
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate_openapi(DOCUMENT)


def test_document_is_plain_json_and_the_same_on_every_call():
    assert orjson.loads(orjson.dumps(openapi_document())) == DOCUMENT


@pytest.mark.parametrize("listener", ["callbacks", "admin"])
def test_every_served_route_is_documented_on_its_listener(apps, listener):
    undocumented = served_routes(apps[listener]) - documented_routes(listener)
    assert not undocumented, f"served but not in gateway/openapi.py: {sorted(undocumented)}"


@pytest.mark.parametrize("listener", ["callbacks", "admin"])
def test_every_documented_route_is_served(apps, listener):
    missing = documented_routes(listener) - served_routes(apps[listener])
    assert not missing, f"documented, not served: {sorted(missing)}"


def test_every_callback_requires_both_signature_headers():
    schemes = DOCUMENT["components"]["securitySchemes"]
    for template in ("/auth", "/withdraw", "/deposit", "/balance"):
        (requirement,) = _operation("POST", template)["security"]
        headers = {schemes[name]["name"] for name in requirement}
        assert headers == {"X-Public-Key", "X-Signature"}


def test_provider_payloads_are_valid_requests():
    def request_at(template: str, payload: dict[str, Any]) -> None:
        assert_request_documented("POST", template, payload)

    request_at("/withdraw", bet("alice", "s-1", "b1"))
    request_at("/withdraw", bet(42, "s-1", "b1", action="FREE_BET"))
    request_at("/deposit", win("alice", "w1", "b1"))
    request_at("/deposit", win("alice", "w1", None, action="FREE_BET_WIN"))
    request_at("/deposit", rollback("alice", "r1", "b1"))
    request_at("/deposit", close_round("round-1", [1000, 500], [0, 2.35]))
    listed = close_round("round-1", [], [])
    listed["attributes"] = [
        {"name": "aviadroneCashOutCoefficients", "value": "[0,2.35]"},
        {"name": "aviadroneBets", "value": "[1000,500]"},
    ]
    request_at("/deposit", listed)
    with pytest.raises(AssertionError):
        request_at("/deposit", {**win("alice", "w1", "b1"), "action": "JACKPOT"})


# --- callbacks --------------------------------------------------------------------------------


async def test_auth_answers_match_the_document(provider, admin):
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    assert await signed(provider, "/auth", {"session_token": session}) == 200
    assert await signed(provider, "/auth", {"session_token": "nobody"}) == 404
    wrong_currency = {"session_token": session, "currency": "EUR"}
    assert await signed(provider, "/auth", wrong_currency) == 400
    _, opened = await admin.call("POST", "/admin/sessions", {"user_id": "alice"})
    bound = {"session_token": "gp-session-1", "user_token": opened["data"]["user_token"]}
    assert await signed(provider, "/auth", bound) == 200
    # binding a new session closed the one before it
    assert await signed(provider, "/auth", {"session_token": session}) == 401
    assert await signed(provider, "/auth", body=b"{not json") == 400
    unsigned = {"X-Public-Key": PUBLIC_KEY, "X-Signature": "AAAA"}
    assert await signed(provider, "/auth", {"session_token": session}, headers=unsigned) == 401
    assert await signed(provider, "/auth", body=b" " * BODY_BYTES_TOO_MANY) == 413


async def test_withdraw_answers_match_the_document(provider, admin):
    await admin.create_player("alice", 10_000, maxbet=8_000)
    session = await admin.open_session("alice")
    assert await signed(provider, "/withdraw", bet("alice", session, "b1", 1_000)) == 200
    # a retry answers the original response
    assert await signed(provider, "/withdraw", bet("alice", session, "b1", 1_000)) == 200
    free_bet = bet("alice", session, "fb1", 0, action="FREE_BET")
    assert await signed(provider, "/withdraw", free_bet) == 200
    assert await signed(provider, "/withdraw", bet("alice", session, "b1", 2_000)) == 409
    assert await signed(provider, "/withdraw", bet("alice", session, "b2", 4_000)) == 200
    assert await signed(provider, "/withdraw", bet("alice", session, "b3", 6_000)) == 402
    assert await signed(provider, "/withdraw", bet("alice", session, "b4", 8_001)) == 400
    assert await signed(provider, "/withdraw", bet("alice", session, "b5", 10.0)) == 400
    assert await signed(provider, "/withdraw", bet("alice", "not-hers", "b6")) == 401
    assert await signed(provider, "/withdraw", bet("nobody", session, "b7")) == 404


async def test_deposit_answers_of_every_action_match_the_document(provider, admin):
    await admin.create_player("alice", 10_000)
    await admin.create_player("bob", 10_000)
    session = await admin.open_session("alice")
    await signed(provider, "/withdraw", bet("alice", session, "b1", 1_000))
    await signed(provider, "/withdraw", bet("alice", session, "b2", 1_000))
    await signed(provider, "/withdraw", bet("alice", session, "fb1", 500, action="FREE_BET"))
    assert await signed(provider, "/deposit", win("alice", "w1", "b1", 2_500)) == 200
    free_win = win("alice", "w2", "fb1", 700, action="FREE_BET_WIN")
    assert await signed(provider, "/deposit", free_win) == 200
    assert await signed(provider, "/deposit", rollback("alice", "r1", "b2")) == 200
    assert await signed(provider, "/deposit", rollback("alice", "r2", "never-seen")) == 200
    # incidents: the win of a rolled-back bet, another player's bet
    assert await signed(provider, "/deposit", win("alice", "w3", "b2")) == 409
    assert await signed(provider, "/deposit", rollback("bob", "r3", "b1")) == 409
    close = close_round("round-b1", [1_000, 1_000], [2.5, 0])
    assert await signed(provider, "/deposit", close) == 200
    listed = close_round("round-b2", [], [])
    listed["attributes"] = [
        {"name": "aviadroneCashOutCoefficients", "value": "[0]"},
        {"name": "aviadroneBets", "value": "[1000]"},
    ]
    assert await signed(provider, "/deposit", listed) == 200
    assert await signed(provider, "/deposit", {**close, "amount": 5}) == 400
    assert await signed(provider, "/deposit", {**win("alice", "w4", "b1"), "action": "X"}) == 400
    assert await signed(provider, "/deposit", win("nobody", "w5", None)) == 404


async def test_balance_answers_match_the_document(provider, admin):
    await admin.create_player("alice", 10_000)
    assert await signed(provider, "/balance", {"user_id": "alice"}) == 200
    assert await signed(provider, "/balance", {"user_id": "alice", "currency": "USD"}) == 200
    assert await signed(provider, "/balance", {"user_id": "alice", "currency": "EUR"}) == 400
    assert await signed(provider, "/balance", {"user_id": "nobody"}) == 404
    no_headers = {"Content-Type": JSON}
    assert await signed(provider, "/balance", {"user_id": "alice"}, headers=no_headers) == 401


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
async def unreachable_wallet(settings: Settings) -> AsyncIterator[Services]:
    down = Services.create(
        settings.replace(redis_url=f"redis://127.0.0.1:{_closed_port()}/0", redis_timeout_ms=200)
    )
    yield down
    await down.close()


async def test_wallet_unavailable_answers_match_the_document(unreachable_wallet, aiohttp_client):
    gateway = await aiohttp_client(create_gateway_app(unreachable_wallet))
    admin = await aiohttp_client(create_admin_app(unreachable_wallet))

    async def signed_503(template: str, payload: dict[str, Any]) -> int:
        body = orjson.dumps(payload)
        headers = signed_headers(PUBLIC_KEY, SECRET, body)
        return (await call(gateway, "POST", template, payload=payload, headers=headers))[0]

    assert await signed_503("/auth", {"session_token": "s-1"}) == 503
    assert await signed_503("/withdraw", bet("alice", "s-1", "b1")) == 503
    assert await signed_503("/deposit", win("alice", "w1", "b1")) == 503
    assert await signed_503("/balance", {"user_id": "alice"}) == 503
    player = {"user_id": "alice", "currency": "USD"}
    assert (await call(admin, "POST", "/admin/players", None, player, BEARER_HEADERS))[0] == 503
    by_id = ("/admin/players/{user_id}", "/admin/players/alice")
    assert (await call(admin, "GET", *by_id, headers=BEARER_HEADERS))[0] == 503
    assert (await call(admin, "GET", "/admin/incidents", None, None, BEARER_HEADERS))[0] == 503
    if ("GET", "/readyz") in served_routes(admin.app):
        assert (await call(admin, "GET", "/readyz"))[0] == 503


# --- admin API --------------------------------------------------------------------------------


async def test_every_admin_route_without_the_token_is_documented_401(admin):
    for method, template in sorted(documented_routes("admin")):
        if not _operation(method, template)["security"] or not is_served(admin, method, template):
            continue
        path = template.replace("{user_id}", "alice").replace("{round_id}", "round-1")
        status, _ = await call(admin.client, method, template, path)
        assert status == 401, (method, template)


async def test_player_answers_match_the_document(admin):
    player = {"user_id": "alice", "currency": "USD", "balance": 10_000, "maxbet": 5_000}
    assert await admin_status(admin, "POST", "/admin/players", payload=player) == 201
    assert await admin_status(admin, "POST", "/admin/players", payload=player) == 409
    bad_currency = {"user_id": "bob", "currency": "usd"}
    assert await admin_status(admin, "POST", "/admin/players", payload=bad_currency) == 400
    by_id = "/admin/players/{user_id}"
    assert await admin_status(admin, "GET", by_id, "/admin/players/alice") == 200
    assert await admin_status(admin, "GET", by_id, "/admin/players/nobody") == 404


async def test_adjustment_answers_match_the_document(admin):
    await admin.create_player("alice", 10_000)
    template = "/admin/players/{user_id}/adjustments"
    path = "/admin/players/alice/adjustments"

    async def adjust(payload: dict[str, Any], where: str = path) -> int:
        return await admin_status(admin, "POST", template, where, payload)

    assert await adjust({"amount": 5_000, "reference": "cash-1"}) == 200
    assert await adjust({"amount": 5_000, "reference": "cash-1"}) == 200
    assert await adjust({"amount": -5_000, "reference": "cash-1"}) == 409
    assert await adjust({"amount": -50_000, "reference": "cash-2"}) == 402
    assert await adjust({"amount": 0, "reference": "cash-3"}) == 400
    assert await adjust({"amount": 1, "reference": "c"}, "/admin/players/nobody/adjustments") == 404


async def test_session_answers_match_the_document(admin):
    await admin.create_player("alice", 10_000)

    async def open_session(payload: dict[str, Any]) -> int:
        return await admin_status(admin, "POST", "/admin/sessions", payload=payload)

    assert await open_session({"user_id": "alice"}) == 201
    assert await open_session({"user_id": "nobody"}) == 404
    assert await open_session({}) == 400


LAUNCH = {
    "user_id": "alice",
    "game": "aviadrone",
    "platform": "desktop",
    "portal_mode": "real",
    "return_url": "https://casino.example/lobby",
    "language": "en",
}


async def fake_provider_launch(request: web.Request) -> web.Response:
    game = request.match_info["game"]
    token = request.query["userToken"]
    return web.json_response(
        {"launch_url": f"https://games.example/{game}?t={token}", "session_token": "gp-s-1"}
    )


async def test_launch_answers_match_the_document(services, admin, aiohttp_client, aiohttp_server):
    await admin.create_player("alice", 10_000)
    # PROVIDER_BASE_URL unset: the provider cannot be reached
    assert await admin_status(admin, "POST", "/admin/launch", payload=LAUNCH) == 502
    unknown = {**LAUNCH, "user_id": "nobody"}
    assert await admin_status(admin, "POST", "/admin/launch", payload=unknown) == 404
    bad_platform = {**LAUNCH, "platform": "console"}
    assert await admin_status(admin, "POST", "/admin/launch", payload=bad_platform) == 400

    provider_app = web.Application()
    provider_app.router.add_get("/api/v1/launch/{game}", fake_provider_launch)
    provider_server = await aiohttp_server(provider_app)
    with_provider = Services(
        services.settings.replace(provider_base_url=str(provider_server.make_url(""))),
        services.redis,
        services.wallet,
        services.sessions,
        services.metrics,
    )
    launcher = await aiohttp_client(create_admin_app(with_provider))
    status, body = await call(launcher, "POST", "/admin/launch", None, LAUNCH, BEARER_HEADERS)
    assert status == 200, body
    assert body["data"]["session_token"] == "gp-s-1"


async def test_incident_list_matches_the_document(provider, admin):
    assert await admin_status(admin, "GET", "/admin/incidents") == 200
    await admin.create_player("alice", 10_000)
    await admin.create_player("bob", 10_000)
    session = await admin.open_session("alice")
    await signed(provider, "/withdraw", bet("alice", session, "b1", 1_000))
    await signed(provider, "/deposit", win("alice", "w1", "b1"))
    assert await signed(provider, "/deposit", rollback("alice", "r1", "b1")) == 409
    assert await signed(provider, "/deposit", win("bob", "w2", "b1")) == 409
    status, body = await admin_call(admin, "GET", "/admin/incidents")
    assert status == 200
    assert {incident["kind"] for incident in body["data"]["incidents"]} == {
        "ROLLBACK_OF_WON_BET",
        "CROSS_PLAYER",
    }


# --- routes other modules serve ----------------------------------


def _assert_served(admin: Any, method: str, template: str) -> None:
    assert is_served(admin, method, template), f"{method} {template} is not served"


@pytest.mark.parametrize("template", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
async def test_operations_answers_match_the_document(admin, template):
    _assert_served(admin, "GET", template)
    status, body = await admin_call(admin, "GET", template)
    assert status == 200
    if template == "/openapi.json":
        assert body == DOCUMENT


async def test_transaction_history_answers_match_the_document(provider, admin, drain):
    template = "/admin/players/{user_id}/transactions"
    _assert_served(admin, "GET", template)
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    await signed(provider, "/withdraw", bet("alice", session, "b1", 1_000))
    await signed(provider, "/deposit", win("alice", "w1", "b1"))
    await drain()
    assert await admin_status(admin, "GET", template, "/admin/players/alice/transactions") == 200
    await admin_call(admin, "GET", template, "/admin/players/nobody/transactions")


async def test_round_answers_match_the_document(provider, admin, drain):
    template = "/admin/rounds/{round_id}"
    _assert_served(admin, "GET", template)
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    await signed(provider, "/withdraw", bet("alice", session, "b1", 1_000))
    await signed(provider, "/deposit", close_round("round-b1", [1_000], [0]))
    await drain()
    assert await admin_status(admin, "GET", template, "/admin/rounds/round-b1") == 200
    await admin_call(admin, "GET", template, "/admin/rounds/no-such-round")
