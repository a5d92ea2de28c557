"""Idempotency has no expiry (docs/protocol.md §5): once a call's record has left Redis, its retry
still gets the original answer or a 409, from the history (persistence/records.py), decided
exactly as within retention; the gateway answers 503 rather than guess when it cannot tell.

Retention passing is simulated by deleting the records, owners, tombstones and early-win markers
of the ids, which is exactly what their PEXPIRE does; the seen-id filter is never expired."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from helpers import (
    assert_error_envelope,
    incidents,
    player_with_session,
    redis_dump,
    stream_event_count,
    user_in_shard,
    without_claims,
)
from payloads import bet, rollback, win

from gateway.app import Services
from gateway.keys import shard_of
from gateway.outcomes import OUTCOMES
from gateway.settings import Settings

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]
# Every key a tx id leaves in Redis that expires with its retention (gateway/keys.py).
EXPIRING_KINDS = ("tx", "tx_owner", "tombstone", "early_win")
SATURATED_FILTER_BITS = 64  # the least the settings allow: full after a few dozen ids


@pytest.fixture
def with_history() -> bool:
    """A test's `parametrize("with_history", [False])` runs it on a gateway without
    DATABASE_URL."""
    return True


@pytest.fixture
def filter_bits() -> int:
    return Settings().idempotency_filter_bits


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, settings: Settings, with_history: bool, filter_bits: int
) -> Settings:
    """conftest's, which `services` starts as the gateway does: with DATABASE_URL set, the
    wallet brings records back from the history."""
    if with_history:  # its own database only when asked for
        settings = settings.replace(database_url=request.getfixturevalue("database_url"))
    return settings.replace(idempotency_filter_bits=filter_bits)


async def expire_records(services: Services, *tx_ids: str) -> int:
    """What the PEXPIRE of every key these ids left behind does once the retention passed
    -> how many keys were deleted."""
    keys = services.wallet.keys
    names = [
        getattr(keys, kind)(shard, tx_id)
        for tx_id in tx_ids
        for shard in range(keys.shards)
        for kind in EXPIRING_KINDS
    ]
    return await services.redis.delete(*names)


async def post(provider: Any, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    return await provider.post_raw(path, orjson.dumps(payload))


def assert_outcome(status: int, raw: bytes, outcome: str) -> None:
    code, message = OUTCOMES[outcome]
    assert status == code, raw
    assert orjson.loads(raw)["message"] == message


async def assert_history_clean(database: asyncpg.Connection, transactions: int) -> None:
    """The history holds `transactions` rows, and no id was applied twice (that would be a
    HISTORY_CONFLICT, quarantined) and nothing else went wrong."""
    assert await database.fetchval("SELECT count(*) FROM transactions") == transactions
    assert await database.fetchval("SELECT count(*) FROM rejected_events") == 0
    assert await database.fetchval("SELECT count(*) FROM incidents") == 0


async def test_a_bet_retried_after_its_record_expired_replays_the_original_bytes(
    provider: Any, admin: Any, services: Services, drain: Drain, database: asyncpg.Connection
) -> None:
    session = await player_with_session(admin, "alice", 10_000)
    payload = bet("alice", session, "tx-1", 1_000)
    first = await post(provider, "/withdraw", payload)
    assert first[0] == 200
    await drain()
    assert await expire_records(services, "tx-1") == 2  # its record and its owner

    assert await post(provider, "/withdraw", payload) == first
    assert await admin.balance("alice") == 9_000
    # the same id with another amount, its record expired again: a conflict, nothing moves
    assert await expire_records(services, "tx-1") == 2
    events = await stream_event_count(services)
    status, raw = await post(provider, "/withdraw", {**payload, "amount": 2_000})
    assert_outcome(status, raw, "TX_CONFLICT")
    assert await admin.balance("alice") == 9_000
    assert await stream_event_count(services) == events
    await drain()
    await assert_history_clean(database, transactions=1)
    assert await incidents(admin) == []


@pytest.mark.parametrize("bet_arrives_first", [True, False], ids=["bet-then-wins", "early-wins"])
async def test_a_second_win_of_a_bet_whose_records_expired_is_a_double_win(
    provider: Any, admin: Any, services: Services, drain: Drain, bet_arrives_first: bool
) -> None:
    """What settled the bet comes back from the history: the bet's record as 'won', or the
    early-win marker the first WIN left for a bet yet to come."""
    session = await player_with_session(admin, "alice", 10_000)
    stake = 1_000 if bet_arrives_first else 0
    if bet_arrives_first:
        assert (await post(provider, "/withdraw", bet("alice", session, "b1", stake)))[0] == 200
    assert (await post(provider, "/deposit", win("alice", "w1", "b1", 2_000)))[0] == 200
    await drain()
    # record (or early-win marker) and owner of b1, record and owner of w1
    assert await expire_records(services, "b1", "w1") == 4

    status, raw = await post(provider, "/deposit", win("alice", "w2", "b1", 2_000))
    assert_outcome(status, raw, "DOUBLE_WIN")
    assert await admin.balance("alice") == 10_000 - stake + 2_000
    [incident] = await incidents(admin)
    assert (incident["kind"], incident["provider_tx_id"]) == ("DOUBLE_WIN", "w2")


async def test_a_bet_voided_by_a_rollback_whose_tombstone_expired_is_still_refused(
    provider: Any, admin: Any, services: Services, drain: Drain
) -> None:
    session = await player_with_session(admin, "alice", 10_000)
    assert (await post(provider, "/deposit", rollback("alice", "rb-1", "b-late")))[0] == 200
    await drain()
    # the rollback's record and owner, the tombstone and the bet id's owner
    assert await expire_records(services, "rb-1", "b-late") == 4

    status, raw = await post(provider, "/withdraw", bet("alice", session, "b-late", 1_000))
    assert_outcome(status, raw, "BET_VOIDED")
    assert await admin.balance("alice") == 10_000


@pytest.mark.parametrize("with_history", [False])
async def test_without_a_history_a_retry_of_an_expired_record_is_503_and_moves_nothing(
    provider: Any, admin: Any, services: Services
) -> None:
    session = await player_with_session(admin, "alice", 10_000)
    payload = bet("alice", session, "tx-1", 1_000)
    assert (await post(provider, "/withdraw", payload))[0] == 200
    assert await expire_records(services, "tx-1") == 2
    before = await redis_dump(services.settings.redis_url)

    status, body = await provider.post("/withdraw", payload)
    assert await redis_dump(services.settings.redis_url) == before
    assert status == 503, body
    assert_error_envelope(body, 503)
    assert await admin.balance("alice") == 9_000
    # a new id is decided in Redis alone (its filter bits are clear): no history needed
    status, _ = await post(provider, "/withdraw", bet("alice", session, "tx-2", 1_000))
    assert status == 200
    assert await admin.balance("alice") == 8_000


async def test_while_the_history_is_behind_the_retention_an_undecidable_call_is_503(
    provider: Any,
    admin: Any,
    services: Services,
    drain: Drain,
    database: asyncpg.Connection,
) -> None:
    """w1 is new but its bet's record expired: only a history written as far back as the
    retention proves that no w1 is waiting in a stream. An entry of 1970 not yet written means
    it is not: 503, nothing moves; once the writer caught up, w1 is decided as usual."""
    session = await player_with_session(admin, "alice", 10_000)
    assert (await post(provider, "/withdraw", bet("alice", session, "b1", 1_000)))[0] == 200
    await drain()
    assert await expire_records(services, "b1") == 2
    info = [(s, await services.redis.xinfo_stream(s)) for s in services.wallet.keys.all_streams()]
    stream = next(s for s, i in info if i["last-generated-id"] == "0-0")  # never written to
    await services.redis.xadd(
        stream,
        {"kind": "player", "user": "ghost", "currency": "USD", "username": "ghost",
         "balance": "0", "maxbet": "", "ts": "1"},
        id="1-0",
    )  # fmt: skip
    before = await redis_dump(services.settings.redis_url)
    payload = win("alice", "w1", "b1", 2_000)

    status, body = await provider.post("/deposit", payload)
    after = await redis_dump(services.settings.redis_url)
    assert without_claims(after) == without_claims(before)
    assert status == 503, body
    assert_error_envelope(body, 503)
    assert await admin.balance("alice") == 9_000

    await drain()
    assert await database.fetchval("SELECT user_id FROM players WHERE stream_id = '1-0'") == (
        "ghost"
    )
    status, body = await provider.post("/deposit", payload)
    assert (status, body["data"]["new_balance"]) == (200, 11_000)
    # and the bet it settled is 'won' now: a second win is refused
    status, raw = await post(provider, "/deposit", win("alice", "w2", "b1", 2_000))
    assert_outcome(status, raw, "DOUBLE_WIN")
    assert await admin.balance("alice") == 11_000


def tx_ids_in_shard(prefix: str, shard: int, count: int, shards: int = 16) -> list[str]:
    ids = (f"{prefix}-{n}" for n in range(100_000))
    found = [tx_id for tx_id in ids if shard_of(tx_id, shards) == shard][:count]
    assert len(found) == count
    return found


@pytest.mark.parametrize("filter_bits", [SATURATED_FILTER_BITS])
async def test_a_saturated_filter_costs_lookups_never_a_wrong_answer(
    provider: Any,
    admin: Any,
    services: Services,
    drain: Drain,
    database: asyncpg.Connection,
) -> None:
    """Every bit of the filter set: each new id 'may have been seen', is looked up in the
    history, is found nowhere while the history is caught up, and is applied once."""
    players = [user_in_shard("saturated", shard) for shard in (2, 9)]
    sessions = [await player_with_session(admin, user_id, 100_000) for user_id in players]
    tx_shard = 5  # every id in one shard's filter: it fills up after a few dozen
    filter_key = services.wallet.keys.seen_filter(tx_shard)

    async def bets(tx_ids: list[str]) -> list[tuple[dict[str, Any], tuple[int, bytes]]]:
        payloads = [
            bet(players[n % 2], sessions[n % 2], tx_id, 10 + n) for n, tx_id in enumerate(tx_ids)
        ]
        answers = await asyncio.gather(*(post(provider, "/withdraw", p) for p in payloads))
        assert [status for status, _ in answers] == [200] * len(tx_ids)
        return list(zip(payloads, answers, strict=True))

    filling = await bets(tx_ids_in_shard("fill", tx_shard, 100))
    assert await services.redis.bitcount(filter_key) == SATURATED_FILTER_BITS
    looked_up = await bets(tx_ids_in_shard("new", tx_shard, 40))  # each one a lookup now

    made = filling + looked_up

    async def assert_each_debited_once() -> None:
        for user_id in players:
            staked = sum(p["amount"] for p, _ in made if p["user_id"] == user_id)
            assert await admin.balance(user_id) == 100_000 - staked

    await assert_each_debited_once()
    await drain()
    assert await expire_records(services, *(p["provider_tx_id"] for p, _ in made)) == 2 * len(made)
    retried = await asyncio.gather(*(post(provider, "/withdraw", p) for p, _ in made))
    assert retried == [answer for _, answer in made]
    await assert_each_debited_once()
    await drain()
    await assert_history_clean(database, transactions=len(made))
