"""Idempotency on provider_tx_id (docs/protocol.md §5): a retry gets the original response byte for
byte; the same key with different content is a 409 and moves nothing."""

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from helpers import incident_metric, incidents, player_with_session, user_in_shard
from payloads import bet, rollback, win

from gateway.clock import now_ms
from gateway.schemas import BetRequest


async def top_up(admin: Any, user_id: str, amount: int, reference: str) -> None:
    status, body = await admin.call(
        "POST", f"/admin/players/{user_id}/adjustments", {"amount": amount, "reference": reference}
    )
    assert status == 200, body


async def post_twice(
    provider: Any, path: str, payload: dict[str, Any]
) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    body = orjson.dumps(payload)
    return await provider.post_raw(path, body), await provider.post_raw(path, body)


# --- a retry gets the original response ---------------------------------------------------------


async def test_bet_retry_gets_the_original_response_byte_for_byte_and_debits_once(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    first, retry = await post_twice(provider, "/withdraw", bet("alice", session, "b1", 1_000))
    assert first[0] == 200
    assert retry == first
    assert await admin.balance("alice") == 9_000


async def test_bet_retry_after_the_balance_changed_replays_the_original_balance(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    body = orjson.dumps(bet("alice", session, "b1", 1_000))
    first = await provider.post_raw("/withdraw", body)
    await provider.post("/withdraw", bet("alice", session, "b2", 2_000))
    await provider.post("/deposit", win("alice", "w1", "b2", 500))
    await top_up(admin, "alice", 3_000, "cash-1")
    assert await admin.balance("alice") == 10_500
    retry = await provider.post_raw("/withdraw", body)
    assert retry == first
    assert orjson.loads(retry[1])["data"]["new_balance"] == 9_000
    assert await admin.balance("alice") == 10_500


async def test_win_retry_gets_the_original_response_and_credits_once(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    body = orjson.dumps(win("alice", "w1", "b1", 2_500))
    first = await provider.post_raw("/deposit", body)
    await provider.post("/withdraw", bet("alice", session, "b2", 4_000))
    retry = await provider.post_raw("/deposit", body)
    assert first[0] == 200
    assert retry == first
    assert await admin.balance("alice") == 7_500


async def test_rollback_retry_gets_the_original_response_and_refunds_once(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    first, retry = await post_twice(provider, "/deposit", rollback("alice", "rb1", "b1"))
    assert first[0] == 200
    assert retry == first
    assert await admin.balance("alice") == 10_000


async def test_insufficient_funds_is_replayed_as_402_even_after_a_top_up(provider, admin):
    session = await player_with_session(admin, "alice", 500)
    body = orjson.dumps(bet("alice", session, "b1", 1_000))
    first = await provider.post_raw("/withdraw", body)
    assert first[0] == 402
    assert orjson.loads(first[1]) == {
        "code": 402,
        "message": "Insufficient player balance",
        "data": None,
    }
    await top_up(admin, "alice", 10_000, "cash-1")
    retry = await provider.post_raw("/withdraw", body)
    assert retry == first
    assert await admin.balance("alice") == 10_500


async def test_over_maxbet_is_replayed_as_400(provider, admin):
    await admin.create_player("alice", 100_000, maxbet=1_000)
    session = await admin.open_session("alice")
    first, retry = await post_twice(provider, "/withdraw", bet("alice", session, "b1", 2_000))
    assert first[0] == 400
    assert retry == first
    assert await admin.balance("alice") == 100_000


async def test_bet_voided_by_rollback_is_replayed_as_409(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/deposit", rollback("alice", "rb1", "b1"))
    first, retry = await post_twice(provider, "/withdraw", bet("alice", session, "b1", 1_000))
    assert first[0] == 409
    assert retry == first
    assert await admin.balance("alice") == 10_000


async def test_retry_with_reordered_json_fields_is_still_the_same_content(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    payload = bet("alice", session, "b1", 1_000)
    first = await provider.post_raw("/withdraw", orjson.dumps(payload))
    reordered = dict(reversed(list(payload.items())))
    retry = await provider.post_raw("/withdraw", orjson.dumps(reordered))
    assert retry == first
    assert await admin.balance("alice") == 9_000


async def test_retry_of_a_bet_after_its_session_closed_still_replays_the_success(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    body = orjson.dumps(bet("alice", session, "b1", 1_000))
    first = await provider.post_raw("/withdraw", body)
    await admin.open_session("alice")  # a new launch closes the old session
    retry = await provider.post_raw("/withdraw", body)
    assert first[0] == 200
    assert retry == first
    assert await admin.balance("alice") == 9_000


# --- same key, different content ----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["same_shard", "different_shards"])
async def test_tx_id_reused_for_another_user_is_409_and_moves_nothing(provider, admin, layout):
    alice = user_in_shard("alice", 5)
    bob = user_in_shard("bob", 5 if layout == "same_shard" else 9)
    alice_session = await player_with_session(admin, alice, 10_000)
    bob_session = await player_with_session(admin, bob, 10_000)
    status, _ = await provider.post("/withdraw", bet(alice, alice_session, "b1", 1_000))
    assert status == 200
    status, body = await provider.post("/withdraw", bet(bob, bob_session, "b1", 1_000))
    assert status == 409, body
    assert await admin.balance(alice) == 9_000
    assert await admin.balance(bob) == 10_000
    # a win under the same id for the other user is refused too
    status, body = await provider.post("/deposit", win(bob, "b1", None, 1_000))
    assert status == 409, body
    assert await admin.balance(bob) == 10_000


async def test_bet_tx_id_reused_as_a_win_is_409_and_moves_nothing(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "t1", 1_000))
    status, body = await provider.post("/deposit", win("alice", "t1", None, 1_000))
    assert status == 409, body
    assert await admin.balance("alice") == 9_000


async def test_win_reusing_tx_id_with_and_without_bet_reference_is_409(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    original = win("alice", "w1", "b1", 2_000)
    await provider.post("/deposit", original)
    without_reference = {k: v for k, v in original.items() if k != "withdraw_provider_tx_id"}
    status, body = await provider.post("/deposit", without_reference)
    assert status == 409, body
    assert await admin.balance("alice") == 11_000


BET_CHANGES = {
    "action": {"action": "FREE_BET"},
    "amount": {"amount": 1_001},
    "currency": {"currency": "EUR"},
    "round_id": {"round_id": "another-round"},
    "game": {"game": "chicken-race"},
}

WIN_CHANGES = {
    "action": {"action": "FREE_BET_WIN"},
    "amount": {"amount": 2_001},
    "currency": {"currency": "EUR"},
    "round_id": {"round_id": "another-round"},
    "withdraw_provider_tx_id": {"withdraw_provider_tx_id": "b2"},
    "game": {"game": "chicken-race"},
}

ROLLBACK_CHANGES = {
    "action": {"action": "WIN", "amount": 1_000, "currency": "USD"},
    "amount": {"amount": 1_000},
    "currency": {"currency": "USD"},
    "round_id": {"round_id": "another-round"},
    "withdraw_provider_tx_id": {"withdraw_provider_tx_id": "b2"},
    "game": {"game": "chicken-race"},
}


# path, the original call (given alice's session; bets b1 and b2 are placed), its changes
ORIGINAL_CALLS: dict[str, tuple[str, Callable[[str], dict[str, Any]], dict[str, Any]]] = {
    "bet": ("/withdraw", lambda session: bet("alice", session, "b3", 1_000), BET_CHANGES),
    "win": ("/deposit", lambda _: win("alice", "w1", "b1", 2_000), WIN_CHANGES),
    "rollback": ("/deposit", lambda _: rollback("alice", "rb1", "b1"), ROLLBACK_CHANGES),
}


@pytest.mark.parametrize(
    ("kind", "field"),
    [(kind, field) for kind, (_, _, changes) in ORIGINAL_CALLS.items() for field in changes],
)
async def test_reusing_tx_id_with_different_field_is_409_and_moves_nothing(
    provider, admin, kind, field
):
    session = await player_with_session(admin, "alice", 10_000)
    for bet_tx in ("b1", "b2"):  # for the win and the rollback to name
        await provider.post("/withdraw", bet("alice", session, bet_tx, 1_000))
    path, original_call, changes = ORIGINAL_CALLS[kind]
    original = original_call(session)
    first = await provider.post_raw(path, orjson.dumps(original))
    assert first[0] == 200, first
    balance = await admin.balance("alice")
    status, body = await provider.post(path, {**original, **changes[field]})
    assert status == 409, body
    assert body["code"] == 409 and body["data"] is None
    assert await admin.balance("alice") == balance
    # the original content still replays the original
    assert await provider.post_raw(path, orjson.dumps(original)) == first


async def test_refused_call_reused_with_different_content_is_409(provider, admin):
    session = await player_with_session(admin, "alice", 500)
    status, _ = await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    assert status == 402
    status, body = await provider.post("/withdraw", bet("alice", session, "b1", 400))
    assert status == 409, body
    assert await admin.balance("alice") == 500


async def test_conflict_leaves_no_record_so_the_original_content_still_applies(provider, admin):
    """A 409 for different content is not stored under the key: the key stays the original's."""
    session = await player_with_session(admin, "alice", 10_000)
    first = await provider.post_raw("/withdraw", orjson.dumps(bet("alice", session, "b1", 1_000)))
    for _ in range(2):
        status, _ = await provider.post("/withdraw", bet("alice", session, "b1", 2_000))
        assert status == 409
    retry = await provider.post_raw("/withdraw", orjson.dumps(bet("alice", session, "b1", 1_000)))
    assert retry == first
    assert await admin.balance("alice") == 9_000


# --- incidents are replayed, not repeated -------------------------------------------------------


async def test_incident_409_is_replayed_without_a_second_incident(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    await provider.post("/deposit", win("alice", "w1", "b1", 2_000))
    first, retry = await post_twice(provider, "/deposit", rollback("alice", "rb1", "b1"))
    assert first[0] == 409
    assert retry == first
    assert len(await incidents(admin)) == 1
    assert await incident_metric(admin, "ROLLBACK_OF_WON_BET") == 1
    assert await admin.balance("alice") == 11_000


async def test_amount_mismatch_incident_is_replayed_without_a_second_incident(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    first, retry = await post_twice(provider, "/deposit", rollback("alice", "rb1", "b1", amount=1))
    assert first[0] == 409
    assert retry == first
    assert [i["kind"] for i in await incidents(admin)] == ["AMOUNT_MISMATCH"]
    assert await admin.balance("alice") == 9_000


async def test_cross_player_incident_is_replayed_without_a_second_incident(provider, admin):
    alice_session = await player_with_session(admin, "alice", 10_000)
    await admin.create_player("bob", 10_000)
    await provider.post("/withdraw", bet("alice", alice_session, "b1", 1_000))
    first, retry = await post_twice(provider, "/deposit", win("bob", "w1", "b1", 5_000))
    assert first[0] == 409
    assert retry == first
    assert [i["kind"] for i in await incidents(admin)] == ["CROSS_PLAYER"]
    assert await admin.balance("bob") == 10_000


# --- what the record keeps, and what the event keeps -------------------------------------------

# Read back by replays (fp..currency), by the settlement of a bet (action, stake, state) and by
# reconcile (outcome, fp); everything else of a call goes to the history only, through the event.
BET_RECORD_FIELDS = {"fp", "outcome", "balance", "op", "currency", "action", "stake", "state"}


async def test_a_bets_record_holds_only_what_is_read_back_and_its_event_everything(
    provider, admin, services
):
    session = await player_with_session(admin, "alice", 10_000)
    payload = bet("alice", session, "b1", 1_000)
    body = orjson.dumps(payload)
    status, response = await provider.post_raw("/withdraw", body)
    assert status == 200, response
    keys = services.wallet.keys
    shard = keys.shard("alice")

    record = await services.redis.hgetall(keys.tx(shard, "b1"))
    assert record.keys() == BET_RECORD_FIELDS
    assert record == {
        "fp": BetRequest.parse(payload).fingerprint(),
        "outcome": "OK",
        "balance": "9000",
        "op": orjson.loads(response)["data"]["operator_tx_id"],
        "currency": "USD",
        "action": "BET",
        "stake": "1000",
        "state": "open",
    }
    assert len(record["fp"]) == 32

    [event] = [
        fields
        for _, fields in await services.redis.xrange(keys.events(shard))
        if fields.get("kind") == "tx" and fields.get("tx") == "b1"
    ]
    assert abs(int(event["ts"]) - now_ms()) < 60_000
    assert event == {
        "kind": "tx",
        "tx": "b1",
        **record,
        "user": "alice",
        "amount": "1000",
        "delta": "-1000",
        "round": "round-b1",
        "game": "aviadrone",
        "ref": "",
        "ts": event["ts"],
        "req": body.decode(),
    }


async def test_a_typical_bets_record_is_kept_in_redis_compact_hash_encoding(
    provider, admin, services
):
    # ids as the load test makes them: long enough that a joined fingerprint would not fit
    user_id = "load-1a2b3c4d-12345-17"
    session = await player_with_session(admin, user_id, 10**9)
    tx = f"{user_id}-1"
    status, body = await provider.post(
        "/withdraw", bet(user_id, session, tx, 1_000, round_id=f"{user_id}-r")
    )
    assert status == 200, body
    keys = services.wallet.keys
    # ziplist up to Redis 6.2, listpack from 7.0: values of at most hash-max-*-value bytes
    encoding = await services.redis.object("encoding", keys.tx(keys.shard(user_id), tx))
    assert encoding in {"ziplist", "listpack"}
