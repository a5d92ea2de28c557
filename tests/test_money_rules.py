"""Money movement on /withdraw and /deposit (docs/protocol.md §4) and the money rules of §6."""

from typing import Any

import pytest
from conftest import ManualClock
from helpers import incident_metric, incidents, player_with_session, user_in_shard
from payloads import bet, rollback, win

from gateway.app import Services
from gateway.keys import shard_of
from gateway.settings import Settings

INSUFFICIENT_FUNDS = {"code": 402, "message": "Insufficient player balance", "data": None}


def assert_error(status: int, body: dict[str, Any], code: int) -> None:
    assert status == code, body
    assert body["code"] == code
    assert body["data"] is None
    assert isinstance(body["message"], str) and body["message"]


def assert_ok(status: int, body: dict[str, Any], user_id: str, tx: str, new_balance: int) -> None:
    assert status == 200, body
    assert body["code"] == 200
    data = body["data"]
    assert data["user_id"] == user_id
    assert data["currency"] == "USD"
    assert data["new_balance"] == new_balance
    assert data["provider_tx_id"] == tx
    assert isinstance(data["operator_tx_id"], str) and data["operator_tx_id"]


# --- /withdraw --------------------------------------------------------------------------------


async def test_bet_debits_the_stake(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    status, body = await provider.post("/withdraw", bet("alice", session, "b1", 2_500))
    assert_ok(status, body, "alice", "b1", 7_500)
    assert await admin.balance("alice") == 7_500


async def test_bets_get_distinct_operator_tx_ids(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    _, first = await provider.post("/withdraw", bet("alice", session, "b1", 100))
    _, second = await provider.post("/withdraw", bet("alice", session, "b2", 100))
    assert first["data"]["operator_tx_id"] != second["data"]["operator_tx_id"]


async def test_bet_of_the_whole_balance_leaves_zero(provider, admin):
    session = await player_with_session(admin, "alice", 1_000)
    status, body = await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    assert_ok(status, body, "alice", "b1", 0)
    assert await admin.balance("alice") == 0


async def test_bet_over_balance_is_402_and_moves_nothing(provider, admin):
    session = await player_with_session(admin, "alice", 999)
    status, body = await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    assert (status, body) == (402, INSUFFICIENT_FUNDS)
    assert await admin.balance("alice") == 999


async def test_bet_over_maxbet_is_400_and_moves_nothing(provider, admin):
    session = await player_with_session(admin, "alice", 100_000, maxbet=5_000)
    status, body = await provider.post("/withdraw", bet("alice", session, "b1", 5_001))
    assert_error(status, body, 400)
    assert await admin.balance("alice") == 100_000
    status, body = await provider.post("/withdraw", bet("alice", session, "b2", 5_000))
    assert_ok(status, body, "alice", "b2", 95_000)


async def test_bet_over_default_maxbet_is_400(provider, admin, settings: Settings):
    limit = settings.default_maxbet_millis
    session = await player_with_session(admin, "alice", limit + 1)
    status, body = await provider.post("/withdraw", bet("alice", session, "b1", limit + 1))
    assert_error(status, body, 400)
    assert await admin.balance("alice") == limit + 1


async def test_bet_in_another_currency_is_400_and_moves_nothing(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    status, body = await provider.post("/withdraw", bet("alice", session, "b1", currency="EUR"))
    assert_error(status, body, 400)
    assert await admin.balance("alice") == 10_000


async def test_free_bet_does_not_move_the_real_balance(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    status, body = await provider.post(
        "/withdraw", bet("alice", session, "fb1", 3_000, action="FREE_BET")
    )
    assert_ok(status, body, "alice", "fb1", 10_000)
    assert await admin.balance("alice") == 10_000


async def test_free_bet_larger_than_the_balance_is_accepted(provider, admin):
    session = await player_with_session(admin, "alice", 0)
    status, body = await provider.post(
        "/withdraw", bet("alice", session, "fb1", 3_000, action="FREE_BET")
    )
    assert_ok(status, body, "alice", "fb1", 0)


async def test_free_bet_is_recorded_and_its_rollback_refunds_nothing(provider, admin, services):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "fb1", 3_000, action="FREE_BET"))
    shard = shard_of("alice", services.settings.shards)
    record = await services.redis.hgetall(services.wallet.keys.tx(shard, "fb1"))
    assert record["action"] == "FREE_BET"
    assert record["stake"] == "3000"
    # a rollback with the recorded stake is accepted (it agrees) and refunds 0
    status, body = await provider.post("/deposit", rollback("alice", "rb1", "fb1", amount=3_000))
    assert_ok(status, body, "alice", "rb1", 10_000)
    assert await admin.balance("alice") == 10_000
    # it was recorded as a bet: a second rollback finds it rolled back, still 0
    status, body = await provider.post("/deposit", rollback("alice", "rb2", "fb1"))
    assert_ok(status, body, "alice", "rb2", 10_000)


async def test_bet_with_another_players_session_is_401(provider, admin):
    await player_with_session(admin, "alice", 10_000)
    bobs_session = await player_with_session(admin, "bob", 10_000)
    status, body = await provider.post("/withdraw", bet("alice", bobs_session, "b1"))
    assert_error(status, body, 401)
    assert await admin.balance("alice") == 10_000
    assert await admin.balance("bob") == 10_000


async def test_bet_with_unknown_session_is_401(provider, admin):
    await admin.create_player("alice", 10_000)
    status, body = await provider.post("/withdraw", bet("alice", "no-such-session", "b1"))
    assert_error(status, body, 401)
    assert await admin.balance("alice") == 10_000


async def test_bet_on_a_session_closed_by_a_new_launch_is_401(provider, admin):
    old_session = await player_with_session(admin, "alice", 10_000)
    new_session = await admin.open_session("alice")
    status, body = await provider.post("/withdraw", bet("alice", old_session, "b1"))
    assert_error(status, body, 401)
    assert await admin.balance("alice") == 10_000
    status, body = await provider.post("/withdraw", bet("alice", new_session, "b2"))
    assert_ok(status, body, "alice", "b2", 9_000)


async def test_bet_of_unknown_user_is_404(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    status, body = await provider.post("/withdraw", bet("nobody", session, "b1"))
    assert_error(status, body, 404)
    assert await admin.balance("alice") == 10_000


@pytest.mark.parametrize(
    "field, value",
    [
        ("amount", 10.0),
        ("amount", "1000"),
        ("amount", True),
        ("amount", -1),
        ("amount", 0),
        ("amount", 10**15 + 1),
        ("currency", "usd"),
        ("provider_tx_id", ""),
    ],
)
async def test_bet_with_ill_typed_field_is_400_and_moves_nothing(provider, admin, field, value):
    session = await player_with_session(admin, "alice", 10_000)
    status, body = await provider.post("/withdraw", bet("alice", session, "b1", **{field: value}))
    assert_error(status, body, 400)
    assert await admin.balance("alice") == 10_000


# --- sessions that expire -----------------------------------------------------------------------


def expire_sessions(clock: ManualClock, services: Services) -> None:
    """One millisecond past the idle limit of every session opened so far."""
    clock.advance(services.wallet.session_idle_ms + 1)


async def test_bet_on_an_expired_session_is_401_and_moves_nothing(provider, admin, services, clock):
    session = await player_with_session(admin, "alice", 10_000)
    status, body = await provider.post("/withdraw", bet("alice", session, "b1"))
    assert_ok(status, body, "alice", "b1", 9_000)
    expire_sessions(clock, services)
    status, body = await provider.post("/withdraw", bet("alice", session, "b2"))
    assert_error(status, body, 401)
    assert await admin.balance("alice") == 9_000


async def test_win_after_the_session_expired_still_credits(provider, admin, services, clock):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    expire_sessions(clock, services)
    status, body = await provider.post(
        "/deposit", win("alice", "w1", "b1", 2_500, session_token=session)
    )
    assert_ok(status, body, "alice", "w1", 11_500)
    assert await admin.balance("alice") == 11_500


# --- /deposit WIN -------------------------------------------------------------------------------


# bet action, win action, win amount, balance after (of 10,000, after a bet of 1,000)
WINS = {
    "win": ("BET", "WIN", 2_350, 11_350),
    "free-bet-win": ("FREE_BET", "FREE_BET_WIN", 4_000, 14_000),  # a free bet debits nothing
    "win-of-zero": ("BET", "WIN", 0, 9_000),
}


@pytest.mark.parametrize("case", WINS)
async def test_win_credits_the_real_balance(provider, admin, case):
    bet_action, win_action, amount, new_balance = WINS[case]
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000, action=bet_action))
    payload = win("alice", "w1", "b1", amount, action=win_action)
    assert "session_token" not in payload  # a settlement needs no session
    status, body = await provider.post("/deposit", payload)
    assert_ok(status, body, "alice", "w1", new_balance)
    assert await admin.balance("alice") == new_balance


async def test_win_without_a_bet_reference_credits(provider, admin):
    await admin.create_player("alice", 10_000)
    status, body = await provider.post("/deposit", win("alice", "w1", None, 500))
    assert_ok(status, body, "alice", "w1", 10_500)


async def test_win_in_another_currency_is_400_and_moves_nothing(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    status, body = await provider.post("/deposit", win("alice", "w1", "b1", currency="EUR"))
    assert_error(status, body, 400)
    assert await admin.balance("alice") == 9_000


@pytest.mark.parametrize("amount", [-1, 1.5, "100", None])
async def test_win_with_bad_amount_is_400(provider, admin, amount):
    await admin.create_player("alice", 10_000)
    status, body = await provider.post("/deposit", win("alice", "w1", None, amount))
    assert_error(status, body, 400)
    assert await admin.balance("alice") == 10_000


async def test_deposit_with_unknown_action_is_400(provider, admin):
    await admin.create_player("alice", 10_000)
    status, body = await provider.post("/deposit", win("alice", "w1", None, action="JACKPOT"))
    assert_error(status, body, 400)
    assert await admin.balance("alice") == 10_000


# --- §6 money rules -----------------------------------------------------------------------------


async def test_rollback_refunds_the_recorded_stake(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_500))
    status, body = await provider.post("/deposit", rollback("alice", "rb1", "b1"))
    assert_ok(status, body, "alice", "rb1", 10_000)
    assert await admin.balance("alice") == 10_000


async def test_rollback_with_amount_equal_to_the_stake_refunds_it(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_500))
    status, body = await provider.post(
        "/deposit", rollback("alice", "rb1", "b1", amount=1_500, currency="USD")
    )
    assert_ok(status, body, "alice", "rb1", 10_000)


async def test_rollback_of_unknown_bet_is_ok_unchanged_and_tombstones_the_bet(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    status, body = await provider.post("/deposit", rollback("alice", "rb1", "b-late"))
    assert_ok(status, body, "alice", "rb1", 10_000)
    assert await admin.balance("alice") == 10_000
    # the bet arrives after its rollback: refused, nothing charged
    status, body = await provider.post("/withdraw", bet("alice", session, "b-late", 1_000))
    assert_error(status, body, 409)
    assert await admin.balance("alice") == 10_000
    # and the refusal is what its retry gets
    assert await provider.post("/withdraw", bet("alice", session, "b-late", 1_000)) == (
        status,
        body,
    )
    assert await admin.balance("alice") == 10_000


async def test_bet_tombstoned_by_another_players_rollback_is_409(provider, admin):
    await admin.create_player("bob", 10_000)
    alice_session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/deposit", rollback("bob", "rb1", "b-late"))
    status, body = await provider.post("/withdraw", bet("alice", alice_session, "b-late"))
    assert_error(status, body, 409)
    assert await admin.balance("alice") == 10_000


async def test_rollback_of_a_refused_bet_refunds_nothing(provider, admin):
    session = await player_with_session(admin, "alice", 500)
    status, _ = await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    assert status == 402
    status, body = await provider.post("/deposit", rollback("alice", "rb1", "b1"))
    assert_ok(status, body, "alice", "rb1", 500)
    assert await admin.balance("alice") == 500


async def test_rollback_of_bet_already_rolled_back_under_another_tx_id_moves_nothing(
    provider, admin
):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    await provider.post("/deposit", rollback("alice", "rb1", "b1"))
    await provider.post("/withdraw", bet("alice", session, "b2", 3_000))
    assert await admin.balance("alice") == 7_000
    status, body = await provider.post("/deposit", rollback("alice", "rb2", "b1"))
    assert_ok(status, body, "alice", "rb2", 7_000)
    assert await admin.balance("alice") == 7_000
    assert await incidents(admin) == []


async def test_rollback_of_won_bet_is_conflict_and_moves_nothing(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    await provider.post("/deposit", win("alice", "w1", "b1", 2_000))
    assert await admin.balance("alice") == 11_000
    rollback_payload = rollback("alice", "rb1", "b1")
    status, body = await provider.post("/deposit", rollback_payload)
    assert_error(status, body, 409)
    assert await admin.balance("alice") == 11_000


async def test_rollback_of_won_bet_records_an_incident_with_both_payloads(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    await provider.post("/deposit", win("alice", "w1", "b1", 2_000))
    rollback_payload = rollback("alice", "rb1", "b1")
    await provider.post("/deposit", rollback_payload)
    [incident] = await incidents(admin)
    assert incident["kind"] == "ROLLBACK_OF_WON_BET"
    assert incident["provider_tx_id"] == "rb1"
    assert incident["referenced_tx_id"] == "b1"
    assert incident["user_id"] == "alice"
    assert incident["request"] == rollback_payload
    assert incident["recorded"] == recorded_bet("b1", 1_000, "won")


def recorded_bet(tx_id: str, stake: int, state: str, action: str = "BET") -> dict[str, Any]:
    """An incident's `recorded`: the accepted bet as its idempotency record holds it."""
    return {
        "provider_tx_id": tx_id,
        "action": action,
        "stake": stake,
        "state": state,
        "outcome": "OK",
    }


async def test_win_naming_a_rolled_back_bet_is_conflict_and_records_an_incident(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    await provider.post("/deposit", rollback("alice", "rb1", "b1"))
    assert await admin.balance("alice") == 10_000
    win_payload = win("alice", "w1", "b1", 5_000)
    status, body = await provider.post("/deposit", win_payload)
    assert_error(status, body, 409)
    assert await admin.balance("alice") == 10_000
    [incident] = await incidents(admin)
    assert incident["kind"] == "WIN_AFTER_ROLLBACK"
    assert incident["provider_tx_id"] == "w1"
    assert incident["request"] == win_payload
    assert incident["recorded"] == recorded_bet("b1", 1_000, "rolledback")


async def test_win_naming_a_bet_voided_before_it_arrived_is_conflict_and_an_incident(
    provider, admin
):
    await admin.create_player("alice", 10_000)
    await provider.post("/deposit", rollback("alice", "rb1", "b-voided"))
    status, body = await provider.post("/deposit", win("alice", "w1", "b-voided", 5_000))
    assert_error(status, body, 409)
    assert await admin.balance("alice") == 10_000
    [incident] = await incidents(admin)
    assert incident["kind"] == "WIN_AFTER_ROLLBACK"
    assert incident["referenced_tx_id"] == "b-voided"
    assert incident["recorded"] == {"text": "bet voided by rollback rb1"}


async def test_rollback_amount_differing_from_the_stake_is_conflict_and_an_incident(
    provider, admin
):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000))
    rollback_payload = rollback("alice", "rb1", "b1", amount=999)
    status, body = await provider.post("/deposit", rollback_payload)
    assert_error(status, body, 409)
    assert await admin.balance("alice") == 9_000
    [incident] = await incidents(admin)
    assert incident["kind"] == "AMOUNT_MISMATCH"
    assert incident["request"] == rollback_payload
    assert incident["recorded"] == recorded_bet("b1", 1_000, "open")
    # the bet is still open: the right rollback refunds it
    status, body = await provider.post("/deposit", rollback("alice", "rb2", "b1", amount=1_000))
    assert_ok(status, body, "alice", "rb2", 10_000)


async def test_incident_records_the_largest_stake_to_the_milli(provider, admin):
    # a Lua number would print 10**15 as 1e+15
    session = await player_with_session(admin, "alice", 10_000)
    stake = 10**15
    await provider.post("/withdraw", bet("alice", session, "fb1", stake, action="FREE_BET"))
    status, body = await provider.post("/deposit", rollback("alice", "rb1", "fb1", amount=1))
    assert_error(status, body, 409)
    [incident] = await incidents(admin)
    assert incident["kind"] == "AMOUNT_MISMATCH"
    assert type(incident["recorded"]["stake"]) is int  # 1e+15 would read as a float
    assert incident["recorded"] == recorded_bet("fb1", stake, "open", action="FREE_BET")


SHARD_LAYOUTS = {
    "same_shard": (3, 3),
    "different_shards": (3, 11),
}


@pytest.fixture(params=sorted(SHARD_LAYOUTS))
def two_players(request: pytest.FixtureRequest) -> tuple[str, str]:
    owner_shard, other_shard = SHARD_LAYOUTS[request.param]
    owner = user_in_shard("owner", owner_shard)
    other = user_in_shard("other", other_shard)
    assert (shard_of(owner, 16) == shard_of(other, 16)) == (owner_shard == other_shard)
    return owner, other


async def test_win_for_another_players_bet_is_conflict_and_an_incident(
    provider, admin, two_players
):
    owner, other = two_players
    session = await player_with_session(admin, owner, 10_000)
    await admin.create_player(other, 10_000)
    await provider.post("/withdraw", bet(owner, session, "b1", 1_000))
    win_payload = win(other, "w1", "b1", 5_000)
    status, body = await provider.post("/deposit", win_payload)
    assert_error(status, body, 409)
    assert await admin.balance(owner) == 9_000
    assert await admin.balance(other) == 10_000
    [incident] = await incidents(admin)
    assert incident["kind"] == "CROSS_PLAYER"
    assert incident["user_id"] == other
    assert incident["referenced_tx_id"] == "b1"
    assert incident["request"] == win_payload
    assert incident["recorded"] == {"text": f"bet belongs to {owner}"}
    # the bet itself is untouched: its owner's win still pays
    status, body = await provider.post("/deposit", win(owner, "w2", "b1", 2_000))
    assert_ok(status, body, owner, "w2", 11_000)


async def test_rollback_for_another_players_bet_is_conflict_and_an_incident(
    provider, admin, two_players
):
    owner, other = two_players
    session = await player_with_session(admin, owner, 10_000)
    await admin.create_player(other, 10_000)
    await provider.post("/withdraw", bet(owner, session, "b1", 1_000))
    rollback_payload = rollback(other, "rb1", "b1")
    status, body = await provider.post("/deposit", rollback_payload)
    assert_error(status, body, 409)
    assert await admin.balance(owner) == 9_000
    assert await admin.balance(other) == 10_000
    [incident] = await incidents(admin)
    assert incident["kind"] == "CROSS_PLAYER"
    assert incident["request"] == rollback_payload
    # the owner's own rollback still refunds
    status, body = await provider.post("/deposit", rollback(owner, "rb2", "b1"))
    assert_ok(status, body, owner, "rb2", 10_000)


async def test_rollback_for_another_players_tombstoned_bet_is_conflict(
    provider, admin, two_players
):
    owner, other = two_players
    await admin.create_player(owner, 10_000)
    await admin.create_player(other, 10_000)
    await provider.post("/deposit", rollback(owner, "rb1", "b-late"))
    status, body = await provider.post("/deposit", rollback(other, "rb2", "b-late"))
    assert_error(status, body, 409)
    assert await admin.balance(other) == 10_000


async def test_every_incident_kind_is_stored_and_counted_in_a_metric(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await admin.create_player("bob", 10_000)
    for n in range(4):
        await provider.post("/withdraw", bet("alice", session, f"b{n}", 1_000))
    await provider.post("/deposit", win("alice", "w0", "b0", 2_000))
    await provider.post("/deposit", rollback("alice", "rb1", "b1"))
    calls = {
        "ROLLBACK_OF_WON_BET": rollback("alice", "rb0", "b0"),
        "WIN_AFTER_ROLLBACK": win("alice", "w1", "b1", 2_000),
        "AMOUNT_MISMATCH": rollback("alice", "rb2", "b2", amount=1),
        "CROSS_PLAYER": win("bob", "w3", "b3", 2_000),
    }
    for kind, payload in calls.items():
        assert await incident_metric(admin, kind) == 0
        status, body = await provider.post("/deposit", payload)
        assert status == 409, body
        assert await incident_metric(admin, kind) == 1
    stored = {(i["kind"], i["provider_tx_id"]) for i in await incidents(admin)}
    assert stored == {(kind, payload["provider_tx_id"]) for kind, payload in calls.items()}
    assert await admin.balance("alice") == 10_000 - 4_000 + 2_000 + 1_000
    assert await admin.balance("bob") == 10_000


@pytest.mark.parametrize(
    "path, payload",
    [
        ("/deposit", win("nobody", "w1", None, 1_000)),
        ("/deposit", win("nobody", "w1", "b1", 1_000)),
        ("/deposit", rollback("nobody", "rb1", "b1")),
        ("/balance", {"user_id": "nobody"}),
    ],
)
async def test_money_call_for_unknown_user_is_404(provider, admin, path, payload):
    await admin.create_player("alice", 10_000)
    status, body = await provider.post(path, payload)
    assert_error(status, body, 404)
    assert await admin.balance("alice") == 10_000
    assert await incidents(admin) == []


async def test_balance_reports_the_wallet(provider, admin):
    session = await player_with_session(admin, "alice", 10_000)
    await provider.post("/withdraw", bet("alice", session, "b1", 1_234))
    status, body = await provider.post("/balance", {"user_id": "alice"})
    assert status == 200
    assert body == {"code": 200, "message": "OK", "data": {"currency": "USD", "amount": 8_766}}


async def test_rollback_of_a_bet_whose_win_came_first_is_conflict_and_moves_nothing(
    provider, admin
):
    session = await player_with_session(admin, "early", 10_000)
    status, _ = await provider.post("/deposit", win("early", "w-early", "b-early", 3000))
    assert status == 200
    status, _ = await provider.post("/withdraw", bet("early", session, "b-early", 1000))
    assert status == 200
    assert await admin.balance("early") == 12_000
    status, body = await provider.post("/deposit", rollback("early", "rb-early", "b-early"))
    assert_error(status, body, 409)
    assert await admin.balance("early") == 12_000
    [incident] = [i for i in await incidents(admin) if i["provider_tx_id"] == "rb-early"]
    assert incident["kind"] == "ROLLBACK_OF_WON_BET"
    assert incident["recorded"] == recorded_bet("b-early", 1_000, "won")


async def test_rollback_before_the_bet_of_an_early_win_is_conflict(provider, admin):
    await player_with_session(admin, "early2", 10_000)
    status, _ = await provider.post("/deposit", win("early2", "w-e2", "b-e2", 3000))
    assert status == 200
    status, body = await provider.post("/deposit", rollback("early2", "rb-e2", "b-e2"))
    assert_error(status, body, 409)
    assert await admin.balance("early2") == 13_000
    [incident] = await incidents(admin)
    assert incident["recorded"] == {"text": "bet settled by win w-e2"}


async def test_win_naming_a_refused_bet_is_conflict_and_moves_nothing(provider, admin):
    session = await player_with_session(admin, "refused", 500)
    status, _ = await provider.post("/withdraw", bet("refused", session, "b-big", 1000))
    assert status == 402
    status, body = await provider.post("/deposit", win("refused", "w-big", "b-big", 5000))
    assert_error(status, body, 409)
    assert await admin.balance("refused") == 500


async def test_rollback_naming_a_win_is_conflict_and_moves_nothing(provider, admin):
    session = await player_with_session(admin, "notbet", 10_000)
    await provider.post("/withdraw", bet("notbet", session, "b-nb", 1000))
    await provider.post("/deposit", win("notbet", "w-nb", "b-nb", 2000))
    status, body = await provider.post("/deposit", rollback("notbet", "rb-nb", "w-nb"))
    assert_error(status, body, 409)
    assert body["message"] == "Referenced transaction is not a bet"
    assert await admin.balance("notbet") == 11_000
