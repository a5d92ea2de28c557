"""A money call in two steps (docs/design.md, "A money call in two steps"): lua/claim.lua claims
its ids in their own slots, then its script runs in its player's slot. The process can die
between the two: the provider's retry must then be decided exactly once, and the cross-player
guards of docs/protocol.md §6 must hold although each script sees one slot only."""

from typing import Any

import pytest
from helpers import incidents, player_with_session, user_in_shard
from payloads import bet, rollback, win

from gateway.app import Services
from gateway.keys import shard_of
from gateway.redis_errors import WalletUnavailable

# Two players of different shards, and ids of two more: each step of these calls runs in a
# slot of its own, as it would on a cluster.
ALICE, BOB = user_in_shard("alice", 1), user_in_shard("bob", 2)


def tx_in_shard(prefix: str, shard: int) -> str:
    return user_in_shard(prefix, shard)


class CrashBetweenSteps:
    """While armed, the next money script is never sent, as if the gateway died once its
    claims were made (the callback answers 503); then it disarms."""

    def __init__(self) -> None:
        self.armed = True
        self.crashes = 0


@pytest.fixture
def crash(services: Services, monkeypatch: pytest.MonkeyPatch) -> CrashBetweenSteps:
    wallet = services.wallet
    run_script = wallet.run_script
    money_scripts = {wallet.scripts.withdraw, wallet.scripts.credit, wallet.scripts.rollback}
    crash = CrashBetweenSteps()
    # one Redis sends both steps as one script (lua/claim_and_decide.lua): these tests die
    # between them, as a cluster's gateway can
    monkeypatch.setattr(wallet, "claims_in_the_script", False)

    async def run_script_unless_crashing(script: Any, *rest: Any) -> Any:
        if script in money_scripts and crash.armed:
            crash.armed = False
            crash.crashes += 1
            raise WalletUnavailable("the gateway died between the two steps")
        return await run_script(script, *rest)

    monkeypatch.setattr(wallet, "run_script", run_script_unless_crashing)
    return crash


async def owner_of(services: Services, tx_id: str) -> str | None:
    keys = services.wallet.keys
    return await services.redis.get(keys.tx_owner(shard_of(tx_id, keys.shards), tx_id))


async def test_a_bet_whose_script_never_ran_is_debited_once_by_its_retry(
    provider: Any, admin: Any, services: Services, crash: CrashBetweenSteps
) -> None:
    session = await player_with_session(admin, ALICE, 10_000)
    tx = tx_in_shard("b", 5)
    status, body = await provider.post("/withdraw", bet(ALICE, session, tx, 1_000))
    assert status == 503, body
    assert crash.crashes == 1 and await owner_of(services, tx) == ALICE
    assert await admin.balance(ALICE) == 10_000  # claimed, not applied

    first = await provider.post("/withdraw", bet(ALICE, session, tx, 1_000))
    again = await provider.post("/withdraw", bet(ALICE, session, tx, 1_000))
    assert first[0] == again[0] == 200, (first, again)
    assert first[1]["data"] == again[1]["data"]
    assert await admin.balance(ALICE) == 9_000


async def test_a_win_whose_script_never_ran_pays_once_and_settles_its_bet(
    provider: Any, admin: Any, services: Services, crash: CrashBetweenSteps
) -> None:
    session = await player_with_session(admin, ALICE, 10_000)
    bet_tx, win_tx = tx_in_shard("b", 5), tx_in_shard("w", 6)
    crash.armed = False  # the bet goes through
    assert (await provider.post("/withdraw", bet(ALICE, session, bet_tx, 1_000)))[0] == 200
    crash.armed = True
    status, body = await provider.post("/deposit", win(ALICE, win_tx, bet_tx, 3_000))
    assert status == 503, body
    assert await owner_of(services, win_tx) == ALICE

    for _ in range(2):
        status, body = await provider.post("/deposit", win(ALICE, win_tx, bet_tx, 3_000))
        assert status == 200, body
        assert body["data"]["new_balance"] == 12_000
    status, body = await provider.post("/deposit", win(ALICE, tx_in_shard("w2", 7), bet_tx, 3_000))
    assert status == 409, body  # the bet is settled: a second win would pay twice
    assert await admin.balance(ALICE) == 12_000


async def test_a_rollback_before_its_bet_whose_script_never_ran_still_voids_the_bet(
    provider: Any, admin: Any, services: Services, crash: CrashBetweenSteps
) -> None:
    """The rollback overtook its bet and died after claiming the bet's id: its retry leaves
    the tombstone, and the bet, when it comes, is voided (never charged)."""
    session = await player_with_session(admin, ALICE, 10_000)
    bet_tx, rollback_tx = tx_in_shard("b", 8), tx_in_shard("rb", 9)
    status, body = await provider.post("/deposit", rollback(ALICE, rollback_tx, bet_tx))
    assert status == 503, body
    assert await owner_of(services, bet_tx) == ALICE  # claimed for the player naming it

    assert (await provider.post("/deposit", rollback(ALICE, rollback_tx, bet_tx)))[0] == 200
    status, body = await provider.post("/withdraw", bet(ALICE, session, bet_tx, 1_000))
    assert status == 409, body
    assert await admin.balance(ALICE) == 10_000


async def test_a_claimed_id_is_a_conflict_for_another_player_though_never_applied(
    provider: Any, admin: Any, services: Services, crash: CrashBetweenSteps
) -> None:
    """An id claimed for alice by a call that died before its script is hers: bob's call with
    it is TX_CONFLICT and changes nothing, and alice's retry still applies."""
    alice_session = await player_with_session(admin, ALICE, 10_000)
    bob_session = await player_with_session(admin, BOB, 10_000)
    tx = tx_in_shard("b", 5)
    assert (await provider.post("/withdraw", bet(ALICE, alice_session, tx, 1_000)))[0] == 503

    status, body = await provider.post("/withdraw", bet(BOB, bob_session, tx, 1_000))
    assert status == 409, body
    assert await admin.balance(BOB) == 10_000
    assert (await provider.post("/withdraw", bet(ALICE, alice_session, tx, 1_000)))[0] == 200
    assert await admin.balance(ALICE) == 9_000


async def test_a_win_naming_another_players_bet_is_refused_across_slots(
    provider: Any, admin: Any, services: Services
) -> None:
    """bob's bet id lives in its own slot, alice's script in hers: the claim reads who owns the
    bet and alice's script refuses as CROSS_PLAYER, with nothing paid."""
    await player_with_session(admin, ALICE, 10_000)
    bob_session = await player_with_session(admin, BOB, 10_000)
    bet_tx = tx_in_shard("b", 5)
    assert (await provider.post("/withdraw", bet(BOB, bob_session, bet_tx, 1_000)))[0] == 200

    status, body = await provider.post("/deposit", win(ALICE, tx_in_shard("w", 6), bet_tx, 5_000))
    assert status == 409, body
    assert await admin.balance(ALICE) == 10_000
    assert [i["kind"] for i in await incidents(admin)] == ["CROSS_PLAYER"]
    assert await owner_of(services, bet_tx) == BOB
