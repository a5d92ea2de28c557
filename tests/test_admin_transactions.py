"""The history the admin API returns never holds a session token, although the raw request
bodies it keeps do: a bet's `request` comes back as a JSON object without it."""

from collections.abc import Awaitable, Callable

import pytest
from conftest import Admin, Provider
from payloads import bet, rollback, win

from gateway.settings import Settings
from persistence.support_queries import stored_json

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]
USER = "alice"


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    return settings.replace(database_url=database_url)


async def test_no_answer_of_the_history_holds_the_session_token(
    admin: Admin, provider: Provider, drain: Drain
) -> None:
    await admin.create_player(USER, 10_000)
    session = await admin.open_session(USER)
    placed = bet(USER, session, "b1", round_id="r1")
    assert (await provider.post("/withdraw", placed))[0] == 200
    assert (await provider.post("/withdraw", bet(USER, session, "b2", round_id="r1")))[0] == 200
    assert (await provider.post("/deposit", win(USER, "w1", "b1", round_id="r1")))[0] == 200
    assert (await provider.post("/deposit", rollback(USER, "rb1", "b2", round_id="r1")))[0] == 200
    await drain()
    for path in (f"/admin/players/{USER}/transactions", "/admin/rounds/r1"):
        response = await admin.client.get(path, headers=admin.headers)
        assert response.status == 200
        assert session not in await response.text(), path
    _, history = await admin.call("GET", f"/admin/players/{USER}/transactions")
    by_id = {tx["provider_tx_id"]: tx for tx in history["data"]["transactions"]}
    assert by_id["b1"]["request"] == {k: v for k, v in placed.items() if k != "session_token"}
    assert by_id["w1"]["request"] == win(USER, "w1", "b1", round_id="r1")


def test_a_stored_body_loses_its_secret_fields_and_keeps_the_rest() -> None:
    stored = '{"session_token":"s-1","user_token":"u-1","amount":5,"nested":{"session_token":1}}'
    assert stored_json(stored) == {"amount": 5, "nested": {"session_token": 1}}
    assert stored_json(None) is None
    assert stored_json("bet belongs to bob") == {"text": "bet belongs to bob"}
