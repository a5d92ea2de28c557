"""GET /admin/players: the players the history knows, paged by id in code point order, filtered by
an id prefix, each with the balance the wallet holds now."""

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import Admin
from helpers import assert_error_envelope
from test_openapi import assert_answer_documented

from gateway.settings import Settings
from persistence.support_queries import prefix_end

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]
# code point order: upper case before lower case, '_' between them, 'É' after both
USER_IDS = ["B-1", "a_1", "a-1", "a-2", "ab", "b", "É-1", "É-2"]


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    return settings.replace(database_url=database_url)


@pytest.fixture
async def players(admin: Admin, drain: Drain) -> list[str]:
    for n, user_id in enumerate(USER_IDS):
        await admin.create_player(user_id, balance=1_000 * n, currency="EUR" if n % 2 else "USD")
    await drain()
    return sorted(USER_IDS, key=lambda user_id: user_id.encode())


async def page(admin: Admin, query: str = "") -> dict[str, Any]:
    status, body = await admin.call("GET", f"/admin/players{query}")
    assert status == 200, body
    return body["data"]


def ids(data: dict[str, Any]) -> list[str]:
    return [player["user_id"] for player in data["players"]]


async def test_players_are_listed_by_id_with_currency_and_balance(
    admin: Admin, players: list[str]
) -> None:
    data = await page(admin)
    assert data["next_after"] is None
    assert ids(data) == players == ["B-1", "a-1", "a-2", "a_1", "ab", "b", "É-1", "É-2"]
    by_id = {player["user_id"]: player for player in data["players"]}
    assert by_id["a-1"] == {"user_id": "a-1", "currency": "USD", "balance": 2_000}
    assert by_id["a_1"] == {"user_id": "a_1", "currency": "EUR", "balance": 1_000}


async def test_the_balance_is_the_wallets_now(admin: Admin, players: list[str]) -> None:
    status, _ = await admin.call(
        "POST", "/admin/players/b/adjustments", {"amount": 1, "reference": "cash-1"}
    )
    assert status == 200
    [player] = (await page(admin, "?prefix=b"))["players"]
    assert player["balance"] == 5_001  # not yet written to the history, listed all the same


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a", ["a-1", "a-2", "a_1", "ab"]),
        ("a-", ["a-1", "a-2"]),
        ("a_", ["a_1"]),  # no LIKE wildcard
        ("%", []),
        ("É", ["É-1", "É-2"]),
        ("b", ["b"]),
        ("B", ["B-1"]),
        ("c", []),
    ],
)
async def test_a_prefix_lists_only_the_ids_that_start_with_it(
    admin: Admin, players: list[str], prefix: str, expected: list[str]
) -> None:
    assert ids(await page(admin, f"?prefix={prefix}")) == expected


async def test_pages_follow_next_after_to_the_end(admin: Admin, players: list[str]) -> None:
    seen: list[str] = []
    query = "?limit=3"
    while True:
        data = await page(admin, query)
        assert len(data["players"]) <= 3
        seen += ids(data)
        if data["next_after"] is None:
            break
        query = f"?limit=3&after={data['next_after']}"
    assert seen == players


async def test_a_prefix_and_a_cursor_together(admin: Admin, players: list[str]) -> None:
    data = await page(admin, "?prefix=a&limit=2")
    assert (ids(data), data["next_after"]) == (["a-1", "a-2"], "a-2")
    data = await page(admin, "?prefix=a&limit=2&after=a-2")
    assert (ids(data), data["next_after"]) == (["a_1", "ab"], "ab")
    data = await page(admin, "?prefix=a&limit=2&after=ab")
    assert (ids(data), data["next_after"]) == ([], None)


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=x",
        "prefix=a%00",
        "after=%00",
        f"prefix={'a' * 129}",
    ],
)
async def test_a_bad_query_is_400(admin: Admin, query: str) -> None:
    status, body = await admin.call("GET", f"/admin/players?{query}")
    assert status == 400, body
    assert_error_envelope(body, 400)


def test_prefix_end_is_the_least_text_past_the_prefix() -> None:
    assert prefix_end("a") == "b"
    assert prefix_end("a-") == "a."
    assert prefix_end("É") == "Ê"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("") is None


@pytest.mark.parametrize("query", ["", "?prefix=a&limit=2", "?after=b", "?limit=0"])
async def test_player_list_answers_match_the_openapi_document(
    admin: Admin, players: list[str], query: str
) -> None:
    response = await admin.client.get(f"/admin/players{query}", headers=admin.headers)
    assert_answer_documented(
        "GET", "/admin/players", response.status, response.content_type, await response.read()
    )
