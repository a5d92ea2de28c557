"""The admin API's incidents with the durable history (DATABASE_URL set): paged newest first by
id, `request` and `recorded` as JSON objects, and resolved by hand with a note and a name, kept
in PostgreSQL."""

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from conftest import Admin, Provider
from helpers import assert_error_envelope
from payloads import bet, close_round, rollback, win
from test_openapi import assert_answer_documented

from gateway.settings import Settings

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]
USER = "alice"
RESOLUTION = {"note": "refunded by hand, ticket 42", "resolved_by": "operator-7"}
RESOLVE = "/admin/incidents/{incident_id}/resolve"


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    """The gateway as deployed: its admin listener reads the history."""
    return settings.replace(database_url=database_url)


async def rollbacks_of_won_bets(admin: Admin, provider: Provider, count: int) -> list[str]:
    """`count` ROLLBACK_OF_WON_BET incidents of alice's, in order -> their provider_tx_ids."""
    await admin.create_player(USER, 100_000)
    session = await admin.open_session(USER)
    for n in range(count):
        assert (await provider.post("/withdraw", bet(USER, session, f"b{n}")))[0] == 200
        assert (await provider.post("/deposit", win(USER, f"w{n}", f"b{n}")))[0] == 200
        assert (await provider.post("/deposit", rollback(USER, f"rb{n}", f"b{n}")))[0] == 409
    return [f"rb{n}" for n in range(count)]


async def listed(admin: Admin, query: str = "") -> dict[str, Any]:
    status, body = await admin.call("GET", f"/admin/incidents{query}")
    assert status == 200, body
    return body["data"]


async def resolve(admin: Admin, incident_id: Any, payload: Any) -> tuple[int, dict[str, Any]]:
    return await admin.call("POST", f"/admin/incidents/{incident_id}/resolve", payload)


async def the_stored_incident(admin: Admin, provider: Provider, drain: Drain) -> dict[str, Any]:
    await rollbacks_of_won_bets(admin, provider, 1)
    await drain()
    [incident] = (await listed(admin))["incidents"]
    assert isinstance(incident["id"], int)
    return incident


# --- listing --------------------------------------------------------------------------------


async def test_an_incident_is_listed_at_once_and_gets_its_id_once_written(
    admin: Admin, provider: Provider, drain: Drain
) -> None:
    await rollbacks_of_won_bets(admin, provider, 1)
    [live] = (await listed(admin))["incidents"]
    assert (live["id"], live["kind"], live["status"]) == (None, "ROLLBACK_OF_WON_BET", "open")
    await drain()
    page = await listed(admin)
    [stored] = page["incidents"]  # the same one, not twice
    assert isinstance(stored["id"], int)
    assert page["next_before"] is None
    # as the wallet listed it, and more: the round, the id
    assert stored == {**live, "id": stored["id"], "round_id": "round-b0"}
    assert stored["request"] == rollback(USER, "rb0", "b0")
    assert stored["recorded"] == {
        "provider_tx_id": "b0",
        "action": "BET",
        "stake": 1000,
        "state": "won",
        "outcome": "OK",
    }


async def test_incidents_are_paged_newest_first_by_id(
    admin: Admin, provider: Provider, drain: Drain
) -> None:
    tx_ids = await rollbacks_of_won_bets(admin, provider, 5)
    await drain()
    seen: list[dict[str, Any]] = []
    query = "?limit=2"
    while True:
        page = await listed(admin, query)
        assert len(page["incidents"]) <= 2
        seen += page["incidents"]
        if page["next_before"] is None:
            break
        query = f"?limit=2&before={page['next_before']}"
    assert [incident["provider_tx_id"] for incident in seen] == tx_ids[::-1]
    ids = [incident["id"] for incident in seen]
    assert ids == sorted(ids, reverse=True)


async def test_the_first_page_holds_the_incidents_not_written_yet_before_the_stored_ones(
    admin: Admin, provider: Provider, drain: Drain
) -> None:
    await rollbacks_of_won_bets(admin, provider, 2)
    await drain()
    session = await admin.open_session(USER)
    assert (await provider.post("/withdraw", bet(USER, session, "b9")))[0] == 200
    assert (await provider.post("/deposit", win(USER, "w9", "b9")))[0] == 200
    assert (await provider.post("/deposit", win(USER, "w9-again", "b9")))[0] == 409
    page = await listed(admin, "?limit=2")
    assert [(i["provider_tx_id"], i["id"] is None) for i in page["incidents"]] == [
        ("w9-again", True),
        ("rb1", False),
    ]
    rest = await listed(admin, f"?limit=2&before={page['next_before']}")
    assert [i["provider_tx_id"] for i in rest["incidents"]] == ["rb0"]


async def test_a_late_bets_request_is_listed_without_its_session_token(
    admin: Admin, provider: Provider, drain: Drain
) -> None:
    await admin.create_player(USER, 10_000)
    session = await admin.open_session(USER)
    assert (await provider.post("/withdraw", bet(USER, session, "b1", round_id="r1")))[0] == 200
    assert (await provider.post("/deposit", close_round("r1", [1_000], [0])))[0] == 200
    late = bet(USER, session, "b2", round_id="r1")
    assert (await provider.post("/withdraw", late))[0] == 200
    for written in (False, True):
        if written:
            await drain()
        response = await admin.client.get("/admin/incidents", headers=admin.headers)
        raw = await response.text()
        assert session not in raw
        incidents = (await response.json())["data"]["incidents"]
        # once written, the history's own incident too: the round no longer matches
        kinds = ["LATE_AFTER_CLOSE", "ROUND_MISMATCH"] if written else ["LATE_AFTER_CLOSE"]
        assert sorted(i["kind"] for i in incidents) == kinds
        [incident] = [i for i in incidents if i["kind"] == "LATE_AFTER_CLOSE"]
        assert (incident["id"] is not None) == written
        assert incident["request"] == {k: v for k, v in late.items() if k != "session_token"}
        assert incident["recorded"] == {"text": "round closed by r1-operator-close-round"}


async def test_a_stored_text_that_is_not_json_is_listed_under_text(
    admin: Admin, database: asyncpg.Connection
) -> None:
    await database.execute(
        "INSERT INTO incidents (kind, provider_tx_id, request, recorded, details, created_at)"
        " VALUES ('HISTORY_CONFLICT', 'tx-1', '{\"cut', '[1, 2]', '{\"held\": 1}', now())"
    )
    [incident] = (await listed(admin))["incidents"]
    assert incident["request"] == {"text": '{"cut'}
    assert incident["recorded"] == {"text": "[1, 2]"}  # JSON, but not an object
    assert incident["details"] == {"held": 1}
    assert (incident["user_id"], incident["action"]) == (None, None)


# --- resolving ------------------------------------------------------------------------------


async def test_resolving_an_incident_keeps_the_note_and_who_in_the_history(
    admin: Admin, provider: Provider, drain: Drain, database: asyncpg.Connection
) -> None:
    incident = await the_stored_incident(admin, provider, drain)
    status, body = await resolve(admin, incident["id"], RESOLUTION)
    assert status == 200, body
    resolved = body["data"]
    assert resolved["status"] == "resolved"
    assert resolved["resolution"] == {
        **RESOLUTION,
        "resolved_at": resolved["resolution"]["resolved_at"],
    }
    assert {k: v for k, v in resolved.items() if k not in ("status", "resolution")} == {
        k: v for k, v in incident.items() if k not in ("status", "resolution")
    }
    row = await database.fetchrow(
        "SELECT resolution_note, resolved_by, resolved_at FROM incidents WHERE id = $1",
        incident["id"],
    )
    assert (row["resolution_note"], row["resolved_by"]) == (RESOLUTION["note"], "operator-7")
    assert (await listed(admin))["incidents"] == [resolved]


async def test_resolving_again_with_the_same_note_changes_nothing(
    admin: Admin, provider: Provider, drain: Drain
) -> None:
    incident = await the_stored_incident(admin, provider, drain)
    first = await resolve(admin, incident["id"], RESOLUTION)
    assert first[0] == 200
    assert await resolve(admin, incident["id"], RESOLUTION) == first


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({**RESOLUTION, "note": "something else"}, id="another-note"),
        pytest.param({**RESOLUTION, "resolved_by": "operator-8"}, id="another-operator"),
    ],
)
async def test_resolving_again_otherwise_is_409_and_keeps_the_first_resolution(
    admin: Admin, provider: Provider, drain: Drain, other: dict[str, str]
) -> None:
    incident = await the_stored_incident(admin, provider, drain)
    status, first = await resolve(admin, incident["id"], RESOLUTION)
    assert status == 200
    status, body = await resolve(admin, incident["id"], other)
    assert status == 409, body
    assert_error_envelope(body, 409)
    assert body["message"] == "Incident already resolved with another note"
    assert (await listed(admin))["incidents"] == [first["data"]]


@pytest.mark.parametrize("incident_id", ["999999", "0", "abc", "9" * 30])
async def test_resolving_an_unknown_incident_is_404(admin: Admin, incident_id: str) -> None:
    status, body = await resolve(admin, incident_id, RESOLUTION)
    assert status == 404, body
    assert_error_envelope(body, 404)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"resolved_by": "operator-7"}, id="no-note"),
        pytest.param({"note": "done"}, id="no-resolved_by"),
        pytest.param({**RESOLUTION, "note": ""}, id="empty-note"),
        pytest.param({**RESOLUTION, "note": " \n\t"}, id="blank-note"),
        pytest.param({**RESOLUTION, "note": "a\x00b"}, id="nul-in-note"),
        pytest.param({**RESOLUTION, "note": "x" * 4001}, id="long-note"),
        pytest.param({**RESOLUTION, "resolved_by": ""}, id="empty-resolved_by"),
        pytest.param({**RESOLUTION, "resolved_by": "a\nb"}, id="non-printable-resolved_by"),
        pytest.param({**RESOLUTION, "note": 7}, id="number-note"),
    ],
)
async def test_resolving_with_a_bad_body_is_400_and_resolves_nothing(
    admin: Admin, provider: Provider, drain: Drain, payload: dict[str, Any]
) -> None:
    incident = await the_stored_incident(admin, provider, drain)
    status, body = await resolve(admin, incident["id"], payload)
    assert status == 400, body
    assert_error_envelope(body, 400)
    assert (await listed(admin))["incidents"] == [incident]


async def test_a_note_may_span_lines(admin: Admin, provider: Provider, drain: Drain) -> None:
    incident = await the_stored_incident(admin, provider, drain)
    note = "refunded 10.00 USD\nsee ticket 42"
    status, body = await resolve(admin, incident["id"], {**RESOLUTION, "note": note})
    assert status == 200, body
    assert body["data"]["resolution"]["note"] == note


async def test_the_list_filters_open_and_resolved_incidents(
    admin: Admin, provider: Provider, drain: Drain
) -> None:
    await rollbacks_of_won_bets(admin, provider, 3)
    await drain()
    incidents = (await listed(admin))["incidents"]
    assert (await resolve(admin, incidents[1]["id"], RESOLUTION))[0] == 200
    open_ones = (await listed(admin, "?status=open"))["incidents"]
    resolved = (await listed(admin, "?status=resolved"))["incidents"]
    assert [i["provider_tx_id"] for i in open_ones] == ["rb2", "rb0"]
    assert [(i["provider_tx_id"], i["status"]) for i in resolved] == [("rb1", "resolved")]


async def test_incident_answers_match_the_openapi_document(
    admin: Admin, provider: Provider, drain: Drain
) -> None:
    await rollbacks_of_won_bets(admin, provider, 2)
    await drain()
    session = await admin.open_session(USER)
    assert (await provider.post("/withdraw", bet(USER, session, "b9")))[0] == 200
    assert (await provider.post("/deposit", rollback(USER, "rb9", "b9", amount=5)))[0] == 409
    first = (await listed(admin))["incidents"]
    resolve_path = f"/admin/incidents/{first[-1]['id']}/resolve"
    other = {**RESOLUTION, "note": "another"}
    for method, template, path, payload in [
        ("GET", "/admin/incidents", "/admin/incidents", None),
        ("POST", RESOLVE, resolve_path, RESOLUTION),
        ("POST", RESOLVE, resolve_path, RESOLUTION),
        ("POST", RESOLVE, resolve_path, other),
        ("POST", RESOLVE, "/admin/incidents/424242/resolve", RESOLUTION),
        ("POST", RESOLVE, resolve_path, {"note": ""}),
        ("GET", "/admin/incidents", "/admin/incidents?status=resolved", None),
        ("GET", "/admin/incidents", "/admin/incidents?limit=1&before=1", None),
        ("GET", "/admin/incidents", "/admin/incidents?limit=0", None),
    ]:
        response = await admin.client.request(method, path, json=payload, headers=admin.headers)
        assert_answer_documented(
            method, template, response.status, response.content_type, await response.read()
        )
