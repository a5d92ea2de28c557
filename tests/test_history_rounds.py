"""The post-round hook (docs/protocol.md §7): the provider's aggregate of a closed round against our
ledger, stored once per round; and the support views of the history."""

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from helpers import read_as_consumer
from payloads import bet, close_round, rollback, win

from gateway.app import Services
from gateway.keys import KeySpace
from persistence.batch import STAGING_DDL, HistoryBatch
from persistence.rounds import provider_totals
from persistence.streams import GROUP
from persistence.writer import HistoryWriter

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]


async def play_round(provider: Any, admin: Any, round_id: str) -> None:
    """alice and bob bet 1000 and 2000; alice cashes out at 2.35, bob loses; carol bets 500 and
    is rolled back; a bet refused for funds does not count."""
    for user, balance in (("alice", 10_000), ("bob", 10_000), ("carol", 10_000), ("dave", 10)):
        await admin.create_player(user, balance=balance)
    sessions = {user: await admin.open_session(user) for user in ("alice", "bob", "carol", "dave")}
    for user, tx, amount in (("alice", "a1", 1_000), ("bob", "b1", 2_000), ("carol", "c1", 500)):
        status, _ = await provider.post(
            "/withdraw", bet(user, sessions[user], tx, amount, round_id=round_id)
        )
        assert status == 200
    status, _ = await provider.post(
        "/withdraw", bet("dave", sessions["dave"], "d1", 1_000, round_id=round_id)
    )
    assert status == 402
    status, _ = await provider.post(
        "/deposit", win("alice", "a1-win", "a1", 2_350, round_id=round_id)
    )
    assert status == 200
    status, _ = await provider.post(
        "/deposit", rollback("carol", "c1-void", "c1", round_id=round_id)
    )
    assert status == 200


def test_provider_totals_floor_each_cash_out_to_a_milli() -> None:
    totals = provider_totals([1_001, 333, 7], [Decimal("2.35"), Decimal("0"), Decimal("1.999")])
    # 1001 * 2.35 = 2352.35 -> 2352; 7 * 1.999 = 13.993 -> 13
    assert (totals.bets_count, totals.staked_millis, totals.paid_millis) == (3, 1_341, 2_365)


async def test_a_matching_close_records_a_match_and_a_redelivery_changes_nothing(
    provider: Any,
    admin: Any,
    services: Services,
    drain: Drain,
    database: asyncpg.Connection,
) -> None:
    await play_round(provider, admin, "round-1")
    status, _ = await provider.post(
        "/deposit", close_round("round-1", [1_000, 2_000], ["2.35", "0"])
    )
    assert status == 200
    keys = KeySpace(services.settings.shards)
    stream = keys.events(keys.shard("round-1"))
    close_entries = [
        (stream, entry_id, fields)
        for entry_id, fields in await services.redis.xrange(stream)
        if fields.get("action") == "CLOSE_ROUND"
    ]
    assert len(close_entries) == 1
    await drain()

    row = await database.fetchrow("SELECT * FROM rounds WHERE round_id = 'round-1'")
    assert row["status"] == "match"
    assert (row["ledger_bets_count"], row["ledger_staked"], row["ledger_paid"]) == (2, 3_000, 2_350)
    assert orjson.loads(row["differences"]) == {}
    assert row["coefficients"] == [Decimal("2.35"), Decimal("0")]

    # delivered again: by the provider (a replay, no new event), and by the stream (a writer
    # that crashed before its XACK commits the same entry again)
    status, _ = await provider.post(
        "/deposit", close_round("round-1", [1_000, 2_000], ["2.35", "0"])
    )
    assert status == 200
    async with database.transaction():
        await database.execute(STAGING_DDL)
        await HistoryBatch.decode(close_entries).store(database)
    await drain()
    assert await database.fetchrow("SELECT * FROM rounds WHERE round_id = 'round-1'") == row
    assert await database.fetchval("SELECT count(*) FROM incidents") == 0


async def test_a_close_that_disagrees_with_the_ledger_records_a_mismatch_and_an_incident(
    provider: Any, admin: Any, drain: Drain, database: asyncpg.Connection
) -> None:
    await play_round(provider, admin, "round-2")
    # the provider counts carol's voided bet and pays alice at 2.5
    status, _ = await provider.post(
        "/deposit", close_round("round-2", [1_000, 2_000, 500], ["2.5", "0", "0"])
    )
    assert status == 200
    await drain()

    row = await database.fetchrow("SELECT * FROM rounds WHERE round_id = 'round-2'")
    assert row["status"] == "mismatch"
    assert orjson.loads(row["differences"]) == {
        "bets_count": {"provider": 3, "ledger": 2},
        "staked": {"provider": 3_500, "ledger": 3_000},
        "paid": {"provider": 2_500, "ledger": 2_350},
    }
    incident = await database.fetchrow("SELECT * FROM incidents WHERE kind = 'ROUND_MISMATCH'")
    assert incident["round_id"] == "round-2"
    assert orjson.loads(incident["details"]) == orjson.loads(row["differences"])


async def test_a_close_is_compared_only_once_the_bets_streams_are_written_past_it(
    provider: Any,
    admin: Any,
    services: Services,
    writer: HistoryWriter,
    drain: Drain,
    database: asyncpg.Connection,
) -> None:
    await play_round(provider, admin, "round-3")
    streams = KeySpace(services.settings.shards).all_streams()
    # another writer has taken the bets and not committed them yet
    await writer._ensure_groups()
    await read_as_consumer(services.redis, GROUP, "slow-writer", streams)
    status, _ = await provider.post(
        "/deposit", close_round("round-3", [1_000, 2_000], ["2.35", "0"])
    )
    assert status == 200

    assert not await writer.drain_until_caught_up(0.3)  # writes the close, not the bets
    assert await database.fetchval("SELECT status FROM rounds") == "pending"
    assert await writer.settle_rounds() == []  # compared now, it would see no bets: it waits

    await drain()  # the slow writer's entries are reclaimed, then the round is compared
    assert await database.fetchval("SELECT status FROM rounds") == "match"


async def test_support_api_pages_a_players_transactions_newest_first(
    provider: Any, admin: Any, drain: Drain, support_client: Any
) -> None:
    await play_round(provider, admin, "round-4")
    session = await admin.open_session("alice")
    for n in range(4):
        await provider.post("/withdraw", bet("alice", session, f"more-{n}", 10))
    await drain()

    seen: list[str] = []
    before = None
    for _ in range(10):
        query = {"limit": "2", **({"before": before} if before else {})}
        response = await support_client.get("/admin/players/alice/transactions", params=query)
        body = await response.json()
        assert response.status == 200 and body["code"] == 200
        seen += [tx["provider_tx_id"] for tx in body["data"]["transactions"]]
        before = body["data"]["next_before"]
        if before is None:
            break
    assert seen == ["more-3", "more-2", "more-1", "more-0", "a1-win", "a1"]

    response = await support_client.get("/admin/players/nobody/transactions")
    assert response.status == 404
    response = await support_client.get("/admin/players/alice/transactions?limit=0")
    assert response.status == 400


async def test_support_api_shows_a_round_ledger_aggregate_and_result(
    provider: Any, admin: Any, drain: Drain, support_client: Any
) -> None:
    await play_round(provider, admin, "round-5")
    await drain()
    body = await (await support_client.get("/admin/rounds/round-5")).json()
    assert (body["data"]["result"], body["data"]["provider"]) == ("open", None)

    await provider.post("/deposit", close_round("round-5", [1_000, 2_000], ["2.35", "0"]))
    await drain()
    response = await support_client.get("/admin/rounds/round-5")
    data = (await response.json())["data"]
    assert response.status == 200 and data["result"] == "match"
    assert data["provider"]["coefficients"] == ["2.35", "0"]
    assert (data["ledger"]["bets_count"], data["ledger"]["staked"], data["ledger"]["paid"]) == (
        2,
        3_000,
        2_350,
    )
    rolled_back = {tx["provider_tx_id"]: tx["rolled_back"] for tx in data["ledger"]["transactions"]}
    assert rolled_back["c1"] and not rolled_back["a1"]
    assert (await support_client.get("/admin/rounds/no-such-round")).status == 404
