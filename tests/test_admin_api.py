"""The operator's admin API: bearer token on every call, players, the cashier's adjustments
(idempotent on their reference), sessions and the incident list."""

from typing import Any

import orjson
import pytest
from conftest import ADMIN_TOKEN, Admin, Provider
from helpers import assert_error_envelope
from payloads import bet, rollback, win

from gateway.app import Services, create_admin_app

USER = "player-1"

ROUTES = [
    ("POST", "/admin/players", {"user_id": "intruder", "currency": "USD", "balance": 5}),
    ("GET", f"/admin/players/{USER}", None),
    ("POST", f"/admin/players/{USER}/adjustments", {"amount": 5, "reference": "intruder"}),
    ("POST", "/admin/sessions", {"user_id": USER}),
    (
        "POST",
        "/admin/launch",
        {
            "user_id": USER,
            "game": "aviadrone",
            "platform": "desktop",
            "language": "en",
            "return_url": "https://casino.example/lobby",
            "portal_mode": "real",
        },
    ),
    ("GET", "/admin/incidents", None),
    ("GET", "/admin/players?prefix=player", None),
    ("POST", "/admin/incidents/1/resolve", {"note": "intruder", "resolved_by": "intruder"}),
    ("GET", "/admin/unknown", None),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in ROUTES]
BAD_AUTHORIZATIONS = [
    pytest.param(None, id="absent"),
    pytest.param("", id="empty"),
    pytest.param("Bearer wrong-token", id="wrong-token"),
    pytest.param("Bearer", id="scheme-only"),
    pytest.param("Bearer ", id="scheme-and-space"),
    pytest.param(ADMIN_TOKEN, id="token-without-scheme"),
    pytest.param(f"Basic {ADMIN_TOKEN}", id="basic-scheme"),
    pytest.param(f"Bearer {ADMIN_TOKEN}x", id="token-with-suffix"),
    pytest.param(f"Bearer {ADMIN_TOKEN[:-1]}", id="token-prefix"),
]


async def stream_events(services: Any) -> list[dict[str, str]]:
    events = []
    for stream in services.wallet.keys.all_streams():
        events += [fields for _, fields in await services.redis.xrange(stream)]
    return events


async def adjust(admin: Admin, amount: Any, reference: Any, user_id: str = USER) -> Any:
    return await admin.call(
        "POST", f"/admin/players/{user_id}/adjustments", {"amount": amount, "reference": reference}
    )


@pytest.fixture
async def player(admin: Admin) -> dict[str, Any]:
    return await admin.create_player(USER, balance=10_000)


# --- the bearer token -----------------------------------------------------------------------


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATIONS)
@pytest.mark.parametrize(("method", "path", "payload"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_refuses_a_missing_or_wrong_token(
    method: str,
    path: str,
    payload: Any,
    authorization: str | None,
    admin: Admin,
    services: Services,
    player: Any,
) -> None:
    events_before = await stream_events(services)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await admin.client.request(method, path, json=payload, headers=headers)
    body = orjson.loads(await response.read())
    assert response.status == 401, body
    assert_error_envelope(body, 401)
    assert await admin.balance(USER) == 10_000
    assert await stream_events(services) == events_before
    status, _ = await admin.call("GET", "/admin/players/intruder")
    assert status == 404


async def test_an_empty_admin_token_setting_refuses_everyone(
    services: Services, aiohttp_client: Any
) -> None:
    locked = Services.create(services.settings.replace(admin_token=""), redis=services.redis)
    client = await aiohttp_client(create_admin_app(locked))
    for authorization in ("Bearer ", "Bearer", ""):
        response = await client.get("/admin/incidents", headers={"Authorization": authorization})
        assert response.status == 401
        assert_error_envelope(orjson.loads(await response.read()), 401)


# --- players --------------------------------------------------------------------------------


async def test_create_player_is_201_with_the_player(admin: Admin, settings: Any) -> None:
    status, body = await admin.call(
        "POST",
        "/admin/players",
        {
            "user_id": USER,
            "currency": "EUR",
            "username": "Alice",
            "balance": 2_500,
            "maxbet": 1_000,
        },
    )
    assert status == 201, body
    assert body == {
        "code": 201,
        "message": "Created",
        "data": {
            "user_id": USER,
            "username": "Alice",
            "currency": "EUR",
            "balance": 2_500,
            "maxbet": 1_000,
        },
    }
    status, body = await admin.call("GET", f"/admin/players/{USER}")
    assert status == 200, body
    assert body["data"] == {
        "user_id": USER,
        "username": "Alice",
        "currency": "EUR",
        "balance": 2_500,
        "maxbet": 1_000,
    }


async def test_create_player_defaults(admin: Admin, settings: Any) -> None:
    status, body = await admin.call("POST", "/admin/players", {"user_id": USER, "currency": "USD"})
    assert status == 201, body
    assert body["data"] == {
        "user_id": USER,
        "username": USER,
        "currency": "USD",
        "balance": 0,
        "maxbet": settings.default_maxbet_millis,
    }


async def test_create_player_with_an_integer_user_id_normalises_it(admin: Admin) -> None:
    status, body = await admin.call("POST", "/admin/players", {"user_id": 12345, "currency": "USD"})
    assert status == 201, body
    assert body["data"]["user_id"] == "12345"
    assert await admin.balance("12345") == 0


async def test_creating_an_existing_player_is_409_and_changes_nothing(
    admin: Admin, player: Any
) -> None:
    status, body = await admin.call(
        "POST",
        "/admin/players",
        {"user_id": USER, "currency": "EUR", "balance": 99, "username": "Mallory"},
    )
    assert status == 409
    assert_error_envelope(body, 409)
    status, body = await admin.call("GET", f"/admin/players/{USER}")
    assert body["data"] == player


async def test_get_unknown_player_is_404(admin: Admin) -> None:
    status, body = await admin.call("GET", "/admin/players/nobody")
    assert status == 404
    assert_error_envelope(body, 404)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"currency": "USD"}, id="no-user_id"),
        pytest.param({"user_id": USER}, id="no-currency"),
        pytest.param({"user_id": USER, "currency": "usd"}, id="lower-case-currency"),
        pytest.param({"user_id": USER, "currency": "US1"}, id="digit-in-currency"),
        pytest.param({"user_id": "", "currency": "USD"}, id="empty-user_id"),
        pytest.param({"user_id": "x" * 129, "currency": "USD"}, id="long-user_id"),
        pytest.param({"user_id": "a\nb", "currency": "USD"}, id="non-printable-user_id"),
        pytest.param({"user_id": USER, "currency": "USD", "balance": 10.0}, id="float-balance"),
        pytest.param({"user_id": USER, "currency": "USD", "balance": -1}, id="negative-balance"),
        pytest.param({"user_id": USER, "currency": "USD", "balance": "5"}, id="string-balance"),
        pytest.param({"user_id": USER, "currency": "USD", "balance": True}, id="bool-balance"),
        pytest.param({"user_id": USER, "currency": "USD", "maxbet": 2.5}, id="float-maxbet"),
        pytest.param({"user_id": USER, "currency": "USD", "username": 7}, id="int-username"),
    ],
)
async def test_create_player_with_bad_input_is_400_and_creates_nothing(
    payload: dict[str, Any], admin: Admin, services: Services
) -> None:
    status, body = await admin.call("POST", "/admin/players", payload)
    assert status == 400, body
    assert_error_envelope(body, 400)
    assert await services.redis.dbsize() == 0


@pytest.mark.parametrize("body", [b"{", b"[]", b"", b'"player-1"'])
async def test_admin_call_with_a_body_that_is_not_a_json_object_is_400(
    body: bytes, admin: Admin
) -> None:
    response = await admin.client.post("/admin/players", data=body, headers=admin.headers)
    assert response.status == 400
    assert_error_envelope(orjson.loads(await response.read()), 400)


# --- adjustments ----------------------------------------------------------------------------


async def test_credit_and_debit_move_the_balance(admin: Admin, player: Any) -> None:
    status, body = await adjust(admin, 2_500, "deposit-1")
    assert (status, body) == (200, {"code": 200, "message": "OK", "data": {"balance": 12_500}})
    status, body = await adjust(admin, -12_000, "withdrawal-1")
    assert (status, body["data"]) == (200, {"balance": 500})
    assert await admin.balance(USER) == 500


async def test_debit_to_exactly_zero_is_allowed(admin: Admin, player: Any) -> None:
    status, body = await adjust(admin, -10_000, "withdrawal-1")
    assert (status, body["data"]) == (200, {"balance": 0})


async def test_adjustment_is_idempotent_on_its_reference(
    admin: Admin, services: Services, player: Any
) -> None:
    first = await adjust(admin, 2_500, "deposit-1")
    assert first[0] == 200
    await adjust(admin, -500, "withdrawal-1")
    # the retry answers what the first call answered, and moves nothing
    assert await adjust(admin, 2_500, "deposit-1") == first
    assert await admin.balance(USER) == 12_000
    adjustments = [e for e in await stream_events(services) if e["kind"] == "adjustment"]
    assert [e["reference"] for e in adjustments] == ["deposit-1", "withdrawal-1"]


async def test_same_reference_with_another_amount_is_409_and_moves_nothing(
    admin: Admin, player: Any
) -> None:
    assert (await adjust(admin, 2_500, "deposit-1"))[0] == 200
    for amount in (2_501, -2_500):
        status, body = await adjust(admin, amount, "deposit-1")
        assert status == 409
        assert_error_envelope(body, 409)
    assert await admin.balance(USER) == 12_500


async def test_debit_below_zero_is_402_moves_nothing_and_is_an_event(
    admin: Admin, services: Services, player: Any
) -> None:
    status, body = await adjust(admin, -10_001, "withdrawal-1")
    assert status == 402
    assert_error_envelope(body, 402)
    assert await admin.balance(USER) == 10_000
    refused = [e for e in await stream_events(services) if e.get("reference") == "withdrawal-1"]
    assert len(refused) == 1
    assert refused[0]["amount"] == "-10001"
    assert refused[0]["user"] == USER
    assert refused[0]["kind"] != "adjustment"  # not a ledger movement


async def test_refused_debit_may_be_retried_once_the_funds_are_there(
    admin: Admin, player: Any
) -> None:
    assert (await adjust(admin, -15_000, "withdrawal-1"))[0] == 402
    assert (await adjust(admin, 5_000, "deposit-1"))[0] == 200
    status, body = await adjust(admin, -15_000, "withdrawal-1")
    assert (status, body["data"]) == (200, {"balance": 0})


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param(10.0, id="float-10.0"),
        pytest.param(5.5, id="float-5.5"),
        pytest.param(0, id="zero"),
        pytest.param("100", id="numeric-string"),
        pytest.param(True, id="boolean"),
        pytest.param(None, id="null"),
        pytest.param(10**15 + 1, id="above-10**15"),
        pytest.param(-(10**15) - 1, id="below-minus-10**15"),
    ],
)
async def test_adjustment_with_an_invalid_amount_is_400_and_moves_nothing(
    amount: Any, admin: Admin, player: Any
) -> None:
    status, body = await adjust(admin, amount, "ref-1")
    assert status == 400
    assert_error_envelope(body, 400)
    assert await admin.balance(USER) == 10_000
    # the reference was not consumed
    assert (await adjust(admin, 1, "ref-1"))[0] == 200


@pytest.mark.parametrize("reference", [None, "", "x" * 129, 1.5])
async def test_adjustment_without_a_valid_reference_is_400(
    reference: Any, admin: Admin, player: Any
) -> None:
    status, body = await adjust(admin, 100, reference)
    assert status == 400
    assert_error_envelope(body, 400)
    assert await admin.balance(USER) == 10_000


async def test_adjustment_of_an_unknown_player_is_404(admin: Admin) -> None:
    status, body = await adjust(admin, 100, "ref-1", user_id="nobody")
    assert status == 404
    assert_error_envelope(body, 404)


# --- sessions -------------------------------------------------------------------------------


async def test_open_session_is_201_with_tokens_that_work(
    admin: Admin, provider: Provider, player: Any
) -> None:
    status, body = await admin.call("POST", "/admin/sessions", {"user_id": USER})
    assert status == 201, body
    assert set(body["data"]) == {"session_token", "user_token"}
    assert body["data"]["session_token"] != body["data"]["user_token"]
    status, auth = await provider.post("/auth", {"session_token": body["data"]["session_token"]})
    assert status == 200, auth
    assert auth["data"]["user_id"] == USER


async def test_open_session_of_an_unknown_player_is_404(admin: Admin) -> None:
    status, body = await admin.call("POST", "/admin/sessions", {"user_id": "nobody"})
    assert status == 404
    assert_error_envelope(body, 404)


async def test_open_session_without_user_id_is_400(admin: Admin) -> None:
    status, body = await admin.call("POST", "/admin/sessions", {})
    assert status == 400
    assert_error_envelope(body, 400)


# --- incidents ------------------------------------------------------------------------------


async def test_incidents_list_is_empty_at_first(admin: Admin) -> None:
    status, body = await admin.call("GET", "/admin/incidents")
    assert (status, body) == (
        200,
        {"code": 200, "message": "OK", "data": {"incidents": [], "next_before": None}},
    )


async def test_incidents_list_shows_a_rollback_of_a_won_bet(
    admin: Admin, provider: Provider, player: Any
) -> None:
    session_token = await admin.open_session(USER)
    assert (await provider.post("/withdraw", bet(USER, session_token, "bet-1")))[0] == 200
    assert (await provider.post("/deposit", win(USER, "win-1", "bet-1")))[0] == 200
    status, body = await provider.post("/deposit", rollback(USER, "rb-1", "bet-1"))
    assert status == 409, body
    status, body = await admin.call("GET", "/admin/incidents")
    assert status == 200, body
    [incident] = body["data"]["incidents"]
    assert body["data"]["next_before"] is None
    # without the history (no DATABASE_URL): the wallet's list, no id, so not resolvable
    assert incident == {
        "id": None,
        "kind": "ROLLBACK_OF_WON_BET",
        "provider_tx_id": "rb-1",
        "user_id": USER,
        "action": "ROLL_BACK",
        "referenced_tx_id": "bet-1",
        "round_id": None,
        # the refused request as sent, and the bet as the wallet recorded it: JSON objects
        "request": rollback(USER, "rb-1", "bet-1"),
        "recorded": {
            "provider_tx_id": "bet-1",
            "action": "BET",
            "stake": 1000,
            "state": "won",
            "outcome": "OK",
        },
        "details": None,
        "ts": incident["ts"],
        "status": "open",
        "resolution": None,
    }


async def test_an_incident_whose_recorded_is_a_sentence_lists_it_under_text(
    admin: Admin, provider: Provider, player: Any
) -> None:
    await admin.create_player("player-2")
    session_token = await admin.open_session(USER)
    assert (await provider.post("/withdraw", bet(USER, session_token, "bet-1")))[0] == 200
    assert (await provider.post("/deposit", win("player-2", "win-1", "bet-1")))[0] == 409
    [incident] = (await admin.call("GET", "/admin/incidents"))[1]["data"]["incidents"]
    assert incident["kind"] == "CROSS_PLAYER"
    assert incident["recorded"] == {"text": f"bet belongs to {USER}"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("limit=0", "limit must be a whole number from 1 to 1000", id="limit-0"),
        pytest.param("limit=1001", "limit must be a whole number from 1 to 1000", id="limit-1001"),
        pytest.param("limit=ten", "limit must be a whole number from 1 to 1000", id="limit-text"),
        pytest.param("status=closed", "status must be open or resolved", id="status-unknown"),
        pytest.param("before=abc", "before must be the next_before of a previous page", id="abc"),
        # without the history no incident has an id to page on
        pytest.param("before=5", "before must be the next_before of a previous page", id="no-db"),
    ],
)
async def test_a_bad_incident_list_query_is_400(admin: Admin, query: str, message: str) -> None:
    status, body = await admin.call("GET", f"/admin/incidents?{query}")
    assert status == 400, body
    assert_error_envelope(body, 400)
    assert body["message"] == message


async def test_incidents_list_limit_and_status_without_the_history(
    admin: Admin, provider: Provider, player: Any
) -> None:
    session_token = await admin.open_session(USER)
    for n in range(3):
        assert (await provider.post("/withdraw", bet(USER, session_token, f"bet-{n}")))[0] == 200
        assert (await provider.post("/deposit", win(USER, f"win-{n}", f"bet-{n}")))[0] == 200
        assert (await provider.post("/deposit", rollback(USER, f"rb-{n}", f"bet-{n}")))[0] == 409
    status, body = await admin.call("GET", "/admin/incidents?limit=2")
    assert status == 200, body
    assert [i["provider_tx_id"] for i in body["data"]["incidents"]] == ["rb-2", "rb-1"]
    status, body = await admin.call("GET", "/admin/incidents?status=open")
    assert len(body["data"]["incidents"]) == 3
    status, body = await admin.call("GET", "/admin/incidents?status=resolved")
    assert body["data"] == {"incidents": [], "next_before": None}


# --- routing --------------------------------------------------------------------------------


async def test_unknown_admin_path_is_404_envelope(admin: Admin) -> None:
    status, body = await admin.call("GET", "/admin/nothing-here")
    assert status == 404
    assert_error_envelope(body, 404)


async def test_wrong_method_on_an_admin_route_is_405_envelope(admin: Admin) -> None:
    status, body = await admin.call("DELETE", f"/admin/players/{USER}")
    assert status == 405
    assert_error_envelope(body, 405)


async def test_create_player_with_maxbet_zero_is_refused(admin: Admin) -> None:
    status, body = await admin.call(
        "POST", "/admin/players", {"user_id": "p-zero", "currency": "USD", "maxbet": 0}
    )
    assert status == 400 and body["data"] is None
    status, _ = await admin.call("GET", "/admin/players/p-zero")
    assert status == 404


@pytest.mark.parametrize("other", ["a", "player-2"])  # same shard as player-1, and another
async def test_adjustment_references_belong_to_their_player(admin: Admin, other: str) -> None:
    await admin.create_player("player-1", 1_000)
    await admin.create_player(other, 1_000)
    for user_id in ("player-1", other):
        status, body = await admin.call(
            "POST", f"/admin/players/{user_id}/adjustments", {"amount": 500, "reference": "dep-1"}
        )
        assert status == 200, body
        assert body["data"]["balance"] == 1_500
