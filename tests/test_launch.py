"""docs/protocol.md §8: the game launch, operator -> provider. A tiny fake provider runs as a real
aiohttp server on 127.0.0.1; the session it hands out is the player's one live session."""

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import Admin, Provider
from helpers import assert_error_envelope
from payloads import bet

from gateway import launch
from gateway.app import Services, create_admin_app, create_gateway_app
from gateway.embedded import free_port

OPERATOR_PUBLIC_KEY = "operator-public"
USER = "player-1"
LAUNCH = {
    "user_id": USER,
    "game": "aviadrone",
    "platform": "mobile",
    "language": "en",
    "return_url": "https://casino.example/lobby?from=game&x=1",
    "portal_mode": "real",
}
QUERY_PARAMS = {"userToken", "currency", "platform", "portalMode", "returnUrl", "language"}


@dataclass
class FakeProvider:
    """The provider's launch API: checks what the operator sends, hands out sessions."""

    mode: str = "ok"  # ok | error | garbage | incomplete | slow
    launches: list[dict[str, Any]] = field(default_factory=list)
    _session_numbers: Any = field(default_factory=lambda: itertools.count(1))

    async def launch(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Public-Key") != OPERATOR_PUBLIC_KEY:
            return web.json_response({"error": "unknown operator"}, status=401)
        query = dict(request.query)
        problems = [name for name in QUERY_PARAMS if not query.get(name)]
        if query.get("platform") not in ("mobile", "desktop"):
            problems.append("platform")
        if query.get("portalMode") not in ("real", "demo"):
            problems.append("portalMode")
        if len(query.get("language", "")) != 2:
            problems.append("language")
        if problems:
            return web.json_response({"error": f"bad {sorted(problems)}"}, status=400)
        self.launches.append({"game": request.match_info["game"], **query})
        if self.mode == "error":
            return web.json_response({"error": "internal"}, status=500)
        if self.mode == "garbage":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        if self.mode == "error-page":
            page = "<html>\n" + "down for maintenance " * 10_000 + "</html>"
            return web.Response(text=page, status=503, content_type="text/html")
        if self.mode == "incomplete":
            return web.json_response({"launch_url": "https://gp.example/play"})
        if self.mode == "null-session":
            return web.json_response(
                {"launch_url": "https://gp.example/play", "session_token": None}
            )
        if self.mode == "unusable-session":
            return web.json_response(
                {"launch_url": "https://gp.example/play", "session_token": "s" * 129}
            )
        if self.mode == "array":
            return web.json_response(["https://gp.example/play", "gp-session-1"])
        if self.mode == "integer-session":
            return web.json_response(
                {"launch_url": "https://gp.example/play", "session_token": 4242}
            )
        if self.mode == "slow":
            await asyncio.sleep(5)
        number = next(self._session_numbers)
        game = request.match_info["game"]
        return web.json_response(
            {
                "launch_url": f"https://gp.example/play/{game}?session=gp-session-{number}",
                "session_token": f"gp-session-{number}",
            }
        )


@dataclass
class Launcher:
    fake: FakeProvider
    admin: Admin
    provider: Provider


async def wired_to(
    base_url: str, services: Services, aiohttp_client: Any
) -> tuple[Admin, Provider]:
    launching = Services.create(
        services.settings.replace(
            provider_base_url=base_url, provider_public_key=OPERATOR_PUBLIC_KEY
        ),
        redis=services.redis,
    )
    await launching.wallet.start()
    return (
        Admin(await aiohttp_client(create_admin_app(launching))),
        Provider(await aiohttp_client(create_gateway_app(launching))),
    )


@pytest.fixture
async def launcher(services: Services, aiohttp_server: Any, aiohttp_client: Any) -> Launcher:
    fake = FakeProvider()
    app = web.Application()
    app.router.add_get("/api/v1/launch/{game}", fake.launch)
    server = await aiohttp_server(app, host="127.0.0.1")
    admin, provider = await wired_to(str(server.make_url("/")), services, aiohttp_client)
    await admin.create_player(USER, balance=10_000, currency="EUR")
    return Launcher(fake, admin, provider)


async def launch_game(admin: Admin, **overrides: Any) -> tuple[int, dict[str, Any]]:
    return await admin.call("POST", "/admin/launch", {**LAUNCH, **overrides})


async def test_launch_returns_the_providers_url_and_session(launcher: Launcher) -> None:
    status, body = await launch_game(launcher.admin)
    assert status == 200, body
    assert body["data"] == {
        "launch_url": "https://gp.example/play/aviadrone?session=gp-session-1",
        "session_token": "gp-session-1",
    }


async def test_launch_sends_the_public_key_and_the_query_of_the_protocol(
    launcher: Launcher,
) -> None:
    status, body = await launch_game(launcher.admin)
    assert status == 200, body
    [sent] = launcher.fake.launches
    user_token = sent.pop("userToken")
    assert sent == {
        "game": "aviadrone",
        "currency": "EUR",  # the player's wallet currency
        "platform": "mobile",
        "portalMode": "real",
        "returnUrl": "https://casino.example/lobby?from=game&x=1",
        "language": "en",
    }
    assert len(user_token) >= 16


async def test_each_launch_gets_a_fresh_user_token(launcher: Launcher) -> None:
    for _ in range(2):
        status, body = await launch_game(launcher.admin)
        assert status == 200, body
    first, second = launcher.fake.launches
    assert first["userToken"] != second["userToken"]


async def test_launched_session_authenticates_and_bets(launcher: Launcher) -> None:
    status, body = await launch_game(launcher.admin)
    session_token = body["data"]["session_token"]
    user_token = launcher.fake.launches[0]["userToken"]
    # the provider's first /auth may carry the user token it got at launch, or not
    for request in (
        {"session_token": session_token, "user_token": user_token},
        {"session_token": session_token},
    ):
        status, auth = await launcher.provider.post("/auth", request)
        assert status == 200, auth
        assert auth["data"]["user_id"] == USER
        assert auth["data"]["currency"] == "EUR"
        assert auth["data"]["balance"] == 10_000
    status, body = await launcher.provider.post(
        "/withdraw", bet(USER, session_token, "tx-1", currency="EUR")
    )
    assert status == 200, body
    assert await launcher.admin.balance(USER) == 9_000


async def test_launch_user_token_is_spent_on_the_launched_session(launcher: Launcher) -> None:
    status, body = await launch_game(launcher.admin)
    assert status == 200, body
    user_token = launcher.fake.launches[0]["userToken"]
    status, auth = await launcher.provider.post(
        "/auth", {"session_token": "gp-session-forged", "user_token": user_token}
    )
    assert status == 404
    assert_error_envelope(auth, 404)


async def test_second_launch_closes_the_first_session(launcher: Launcher) -> None:
    status, first = await launch_game(launcher.admin)
    assert status == 200, first
    status, second = await launch_game(launcher.admin, game="chicken-race", platform="desktop")
    assert status == 200, second
    old, new = first["data"]["session_token"], second["data"]["session_token"]
    assert old != new
    assert launcher.fake.launches[1]["game"] == "chicken-race"

    status, body = await launcher.provider.post(
        "/withdraw", bet(USER, old, "tx-old", currency="EUR")
    )
    assert status == 401
    assert_error_envelope(body, 401)
    status, body = await launcher.provider.post("/auth", {"session_token": old})
    assert status == 401
    assert_error_envelope(body, 401)
    assert await launcher.admin.balance(USER) == 10_000

    status, body = await launcher.provider.post("/auth", {"session_token": new})
    assert status == 200, body
    status, body = await launcher.provider.post(
        "/withdraw", bet(USER, new, "tx-new", currency="EUR")
    )
    assert status == 200, body


async def test_integer_session_token_of_the_provider_is_its_decimal_string(
    launcher: Launcher,
) -> None:
    launcher.fake.mode = "integer-session"
    status, body = await launch_game(launcher.admin)
    assert status == 200, body
    assert body["data"]["session_token"] == "4242"
    status, auth = await launcher.provider.post("/auth", {"session_token": 4242})
    assert status == 200, auth
    assert auth["data"]["user_id"] == USER


async def test_game_id_cannot_reshape_the_launch_url(launcher: Launcher) -> None:
    game = "aviadrone?userToken=forged&x=#frag/../y"
    status, body = await launch_game(launcher.admin, game=game)
    assert status == 200, body
    [sent] = launcher.fake.launches
    assert sent["game"] == game
    assert sent["userToken"] != "forged"


async def test_launch_of_an_unknown_player_is_404_without_calling_the_provider(
    launcher: Launcher,
) -> None:
    status, body = await launch_game(launcher.admin, user_id="nobody")
    assert status == 404
    assert_error_envelope(body, 404)
    assert launcher.fake.launches == []


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"platform": "tablet"}, id="platform"),
        pytest.param({"portal_mode": "fun"}, id="portal_mode"),
        pytest.param({"game": ""}, id="empty-game"),
        pytest.param({"game": None}, id="no-game"),
        pytest.param({"return_url": None}, id="no-return_url"),
        pytest.param({"language": None}, id="no-language"),
        pytest.param({"user_id": None}, id="no-user_id"),
    ],
)
async def test_launch_with_bad_input_is_400_without_calling_the_provider(
    overrides: dict[str, Any], launcher: Launcher
) -> None:
    status, body = await launch_game(launcher.admin, **overrides)
    assert status == 400, body
    assert_error_envelope(body, 400)
    assert launcher.fake.launches == []


async def assert_provider_unavailable(admin: Admin, provider: Provider) -> dict[str, Any]:
    before = await admin.balance(USER)
    status, body = await launch_game(admin)
    assert 500 <= status < 600, body
    assert_error_envelope(body, status)
    assert "provider" in body["message"].lower()
    # no session was opened: the player still has none to authenticate
    status, auth = await provider.post("/auth", {"session_token": "gp-session-1"})
    assert status == 404, auth
    assert await admin.balance(USER) == before
    return body


async def test_provider_down_is_a_clear_5xx(services: Services, aiohttp_client: Any) -> None:
    admin, provider = await wired_to(f"http://127.0.0.1:{free_port()}", services, aiohttp_client)
    await admin.create_player(USER, currency="EUR")
    body = await assert_provider_unavailable(admin, provider)
    assert body["code"] == 502


async def test_launch_without_a_provider_base_url_is_a_clear_5xx(
    services: Services, aiohttp_client: Any
) -> None:
    admin, provider = await wired_to("", services, aiohttp_client)
    await admin.create_player(USER, currency="EUR")
    body = await assert_provider_unavailable(admin, provider)
    assert "PROVIDER_BASE_URL" in body["message"]


@pytest.mark.parametrize(
    "mode", ["error", "garbage", "incomplete", "null-session", "unusable-session", "array"]
)
async def test_provider_error_or_odd_answer_is_a_clear_5xx(mode: str, launcher: Launcher) -> None:
    launcher.fake.mode = mode
    await assert_provider_unavailable(launcher.admin, launcher.provider)
    assert len(launcher.fake.launches) == 1


async def test_provider_that_refuses_our_public_key_is_a_clear_5xx(
    services: Services, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeProvider()
    app = web.Application()
    app.router.add_get("/api/v1/launch/{game}", fake.launch)
    server = await aiohttp_server(app, host="127.0.0.1")
    launching = Services.create(
        services.settings.replace(
            provider_base_url=str(server.make_url("/")), provider_public_key="someone-else"
        ),
        redis=services.redis,
    )
    admin = Admin(await aiohttp_client(create_admin_app(launching)))
    provider = Provider(await aiohttp_client(create_gateway_app(launching)))
    await admin.create_player(USER, currency="EUR")
    body = await assert_provider_unavailable(admin, provider)
    assert fake.launches == []
    # the provider's own reason, passed through: the operator sees which key to fix
    assert body["message"] == "provider answered 401: unknown operator"


async def test_a_providers_refusal_that_is_not_json_is_passed_through_on_one_bounded_line(
    launcher: Launcher,
) -> None:
    launcher.fake.mode = "error-page"
    body = await assert_provider_unavailable(launcher.admin, launcher.provider)
    prefix = "provider answered 503: <html> down for maintenance down"
    assert body["message"].startswith(prefix)
    assert len(body["message"]) == len("provider answered 503: ") + launch.PROVIDER_REASON_CHARS_MAX


async def test_slow_provider_times_out_as_a_clear_5xx(
    services: Services,
    aiohttp_server: Any,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(launch, "LAUNCH_TIMEOUT_SECONDS", 0.3)
    fake = FakeProvider(mode="slow")
    app = web.Application()
    app.router.add_get("/api/v1/launch/{game}", fake.launch)
    server = await aiohttp_server(app, host="127.0.0.1")
    admin, provider = await wired_to(str(server.make_url("/")), services, aiohttp_client)
    await admin.create_player(USER, currency="EUR")
    await assert_provider_unavailable(admin, provider)


def test_launch_query_uses_the_protocols_names() -> None:
    request = launch.LaunchRequest(
        game="aviadrone",
        user_token="u",
        currency="USD",
        platform="desktop",
        portal_mode="demo",
        return_url="https://x",
        language="de",
    )
    assert request.query() == {
        "userToken": "u",
        "currency": "USD",
        "platform": "desktop",
        "portalMode": "demo",
        "returnUrl": "https://x",
        "language": "de",
    }
    assert set(request.query()) == QUERY_PARAMS
    assert orjson.dumps(request.query())  # plain strings only
