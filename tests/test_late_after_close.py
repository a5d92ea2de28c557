"""A BET, WIN or ROLL_BACK that arrives after its round was closed (docs/protocol.md §7): answered
and applied as usual, listed as a LATE_AFTER_CLOSE incident, and the round compared again."""

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from helpers import incident_metric, incidents
from payloads import bet, close_round, rollback, win

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]
ROUND = "round-late"
CLOSE_TX = f"{ROUND}-operator-close-round"


async def play_and_close(provider: Any, admin: Any, drain: Drain) -> str:
    """alice bets 1000 and cashes out at 2.35, bob bets 2000 and loses; the provider's close
    agrees and the round is compared: a match. -> bob's session."""
    sessions = {}
    for user in ("alice", "bob"):
        await admin.create_player(user, balance=10_000)
        sessions[user] = await admin.open_session(user)
    for payload in (
        bet("alice", sessions["alice"], "a1", 1_000, round_id=ROUND),
        bet("bob", sessions["bob"], "b1", 2_000, round_id=ROUND),
    ):
        assert (await provider.post("/withdraw", payload))[0] == 200
    status, _ = await provider.post("/deposit", win("alice", "a1-win", "a1", 2_350, round_id=ROUND))
    assert status == 200
    status, _ = await provider.post("/deposit", close_round(ROUND, [1_000, 2_000], ["2.35", "0"]))
    assert status == 200
    await drain()
    return sessions["bob"]


# (endpoint, the late call of bob's, bob's balance after it, our ledger after it)
LATE_CALLS: dict[str, Callable[[str], tuple[str, dict[str, Any], int, tuple[int, int, int]]]] = {
    "BET": lambda session: (
        "/withdraw",
        bet("bob", session, "b2", 700, round_id=ROUND),
        7_300,
        (3, 3_700, 2_350),
    ),
    "WIN": lambda session: (
        "/deposit",
        win("bob", "b1-win", "b1", 1_000, round_id=ROUND),
        9_000,
        (2, 3_000, 3_350),
    ),
    "ROLL_BACK": lambda session: (
        "/deposit",
        rollback("bob", "b1-void", "b1", round_id=ROUND),
        10_000,
        (1, 1_000, 2_350),
    ),
}


@pytest.mark.parametrize("action", sorted(LATE_CALLS))
async def test_a_call_after_close_round_is_applied_listed_and_compared_again(
    action: str,
    provider: Any,
    admin: Any,
    drain: Drain,
    database: asyncpg.Connection,
    support_client: Any,
) -> None:
    session = await play_and_close(provider, admin, drain)
    assert await database.fetchval("SELECT status FROM rounds") == "match"
    assert await incidents(admin) == []  # the calls before the close were not late

    endpoint, payload, balance_after, (bets_count, staked, paid) = LATE_CALLS[action](session)
    status, body = await provider.post(endpoint, payload)

    # answered as without the close: the provider is authoritative on money
    assert (status, body["code"], body["message"]) == (200, 200, "OK")
    assert body["data"]["new_balance"] == balance_after
    assert body["data"]["provider_tx_id"] == payload["provider_tx_id"]
    assert await admin.balance("bob") == balance_after
    (listed,) = await incidents(admin)
    assert (listed["kind"], listed["provider_tx_id"], listed["action"]) == (
        "LATE_AFTER_CLOSE",
        payload["provider_tx_id"],
        action,
    )
    assert listed["recorded"] == {"text": f"round closed by {CLOSE_TX}"}
    assert await incident_metric(admin, "LATE_AFTER_CLOSE") == 1

    await drain()
    late = await database.fetch("SELECT * FROM incidents WHERE kind = 'LATE_AFTER_CLOSE'")
    assert [(row["provider_tx_id"], row["round_id"]) for row in late] == [
        (payload["provider_tx_id"], ROUND)
    ]
    row = await database.fetchrow("SELECT * FROM rounds WHERE round_id = $1", ROUND)
    assert row["status"] == "mismatch"
    assert (row["ledger_bets_count"], row["ledger_staked"], row["ledger_paid"]) == (
        bets_count,
        staked,
        paid,
    )
    assert orjson.loads(row["differences"])  # the provider's aggregate no longer agrees
    view = (await (await support_client.get(f"/admin/rounds/{ROUND}")).json())["data"]
    assert view["result"] == "mismatch"
    assert (view["ledger"]["bets_count"], view["ledger"]["staked"], view["ledger"]["paid"]) == (
        bets_count,
        staked,
        paid,
    )
    assert view["differences"] == orjson.loads(row["differences"])
    assert {(i["kind"], i["provider_tx_id"]) for i in view["incidents"]} == {
        ("LATE_AFTER_CLOSE", payload["provider_tx_id"]),
        ("ROUND_MISMATCH", CLOSE_TX),
    }

    # redelivered: a replay, nothing more
    assert await provider.post(endpoint, payload) == (status, body)
    assert await admin.balance("bob") == balance_after
    assert len(await incidents(admin)) == 1
    assert await incident_metric(admin, "LATE_AFTER_CLOSE") == 1
    await drain()
    assert await database.fetchval("SELECT count(*) FROM incidents") == 2
    assert await database.fetchrow("SELECT * FROM rounds WHERE round_id = $1", ROUND) == row
