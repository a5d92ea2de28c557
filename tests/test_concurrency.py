"""Concurrent callbacks: every money call is one atomic script, so racing calls can neither
overdraw a wallet nor apply one provider_tx_id twice."""

import asyncio
from collections import Counter
from typing import Any

import orjson
from helpers import player_with_session
from payloads import bet, rollback, win

from gateway.keys import shard_of

INSUFFICIENT_FUNDS = {"code": 402, "message": "Insufficient player balance", "data": None}


async def tx_events(services: Any, user_id: str) -> Counter[str]:
    """How many tx events each provider_tx_id has on the player's stream."""
    keys = services.wallet.keys
    entries = await services.redis.xrange(keys.events(shard_of(user_id, keys.shards)))
    return Counter(fields["tx"] for _, fields in entries if fields.get("kind") == "tx")


async def test_forty_concurrent_bets_on_ten_stakes_give_ten_debits_and_thirty_402s(
    provider, admin, services
):
    session = await player_with_session(admin, "alice", 10_000)
    results = await asyncio.gather(
        *(provider.post("/withdraw", bet("alice", session, f"b{n}", 1_000)) for n in range(40))
    )
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 10, 402: 30}
    assert all(body == INSUFFICIENT_FUNDS for status, body in results if status == 402)
    new_balances = sorted(body["data"]["new_balance"] for status, body in results if status == 200)
    assert new_balances == list(range(0, 10_000, 1_000))
    assert await admin.balance("alice") == 0
    assert set((await tx_events(services, "alice")).values()) == {1}


async def test_thirty_concurrent_copies_of_one_bet_debit_once_with_identical_bodies(
    provider, admin, services
):
    session = await player_with_session(admin, "alice", 10_000)
    body = orjson.dumps(bet("alice", session, "b1", 1_000))
    results = await asyncio.gather(*(provider.post_raw("/withdraw", body) for _ in range(30)))
    assert len(set(results)) == 1
    status, raw = results[0]
    assert status == 200
    assert orjson.loads(raw)["data"]["new_balance"] == 9_000
    assert await admin.balance("alice") == 9_000
    assert (await tx_events(services, "alice"))["b1"] == 1


async def test_concurrent_copies_of_one_win_credit_once(provider, admin, services):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    body = orjson.dumps(win("alice", "w1", "b1", 5_000))
    results = await asyncio.gather(*(provider.post_raw("/deposit", body) for _ in range(30)))
    assert len(set(results)) == 1
    assert results[0][0] == 200
    assert await admin.balance("alice") == 14_000
    assert (await tx_events(services, "alice"))["w1"] == 1


async def test_concurrent_rollbacks_of_one_bet_under_different_tx_ids_refund_once(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    results = await asyncio.gather(
        *(provider.post("/deposit", rollback("alice", f"rb{n}", "b1")) for n in range(20))
    )
    assert {status for status, _ in results} == {200}
    assert sorted(body["data"]["new_balance"] for _, body in results) == [10_000] * 20
    assert await admin.balance("alice") == 10_000


async def test_concurrent_win_and_rollback_of_one_bet_settle_it_exactly_one_way(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    (win_status, _), (rollback_status, _) = await asyncio.gather(
        provider.post("/deposit", win("alice", "w1", "b1", 3_000)),
        provider.post("/deposit", rollback("alice", "rb1", "b1")),
    )
    assert sorted([win_status, rollback_status]) == [200, 409]
    expected = 12_000 if win_status == 200 else 10_000
    assert await admin.balance("alice") == expected


async def test_concurrent_bets_of_many_players_do_not_mix_wallets(provider, admin):
    players = [f"p{n}" for n in range(8)]
    sessions = await asyncio.gather(*(player_with_session(admin, p, 5_000) for p in players))
    calls = [
        provider.post("/withdraw", bet(p, s, f"{p}-b{n}", 1_000))
        for n in range(7)
        for p, s in zip(players, sessions, strict=True)
    ]
    results = await asyncio.gather(*calls)
    assert Counter(status for status, _ in results) == {200: 40, 402: 16}
    balances = await asyncio.gather(*(admin.balance(p) for p in players))
    assert balances == [0] * len(players)
