"""Money never moves twice and never half-way (docs/protocol.md §3, §6): one cash-out per bet
(DOUBLE_WIN), balances bounded by 2^53-1 (BALANCE_LIMIT), and a money script that fails on a
corrupt wallet leaves Redis exactly as it found it."""

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from helpers import (
    assert_error_envelope,
    incident_metric,
    incidents,
    player_with_session,
    redis_dump,
    without_claims,
)
from payloads import bet, rollback, win

from gateway.app import Services
from gateway.outcomes import OUTCOMES
from gateway.schemas import AMOUNT_MILLIS_MAX

BALANCE_MILLIS_MAX = 2**53 - 1


async def post(provider: Any, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    """Signed call -> (status, raw body): replays are compared byte for byte."""
    return await provider.post_raw(path, orjson.dumps(payload))


def assert_refused(status: int, raw: bytes, outcome: str) -> None:
    """The 409 of `outcome`, in the envelope, with that outcome's own message."""
    code, message = OUTCOMES[outcome]
    assert (status, orjson.loads(raw)) == (code, {"code": code, "message": message, "data": None})


async def adjust(
    admin: Any, user_id: str, amount: int, reference: str
) -> tuple[int, dict[str, Any]]:
    return await admin.call(
        "POST", f"/admin/players/{user_id}/adjustments", {"amount": amount, "reference": reference}
    )


async def fund_to(admin: Any, user_id: str, balance: int) -> None:
    """Cashier deposits (each within the API's per-adjustment limit) up to exactly `balance`."""
    for n in range(100):
        missing = balance - await admin.balance(user_id)
        if missing == 0:
            return
        status, body = await adjust(admin, user_id, min(missing, AMOUNT_MILLIS_MAX), f"fund-{n}")
        assert status == 200, body
    raise AssertionError("funding did not converge")


async def the_incident(admin: Any, kind: str, provider_tx_id: str) -> dict[str, Any]:
    [incident] = [i for i in await incidents(admin) if i["provider_tx_id"] == provider_tx_id]
    assert incident["kind"] == kind
    return incident


# --- one cash-out per bet ---------------------------------------------------------------------


@pytest.mark.parametrize("bet_arrives_first", [True, False], ids=["bet-then-wins", "early-wins"])
async def test_a_bet_is_never_paid_twice(
    provider: Any, admin: Any, bet_arrives_first: bool
) -> None:
    """A second WIN naming a bet another WIN settled is DOUBLE_WIN: 409, an incident, nothing
    paid; also when both WINs overtook the bet (the first left an early-win marker)."""
    session = await player_with_session(admin, "alice", 10_000)
    stake = 1_000 if bet_arrives_first else 0
    if bet_arrives_first:
        status, _ = await post(provider, "/withdraw", bet("alice", session, "b1", stake))
        assert status == 200
    status, _ = await post(provider, "/deposit", win("alice", "w1", "b1", 2_000))
    assert status == 200
    second = win("alice", "w2", "b1", 2_000)
    status, raw = await post(provider, "/deposit", second)

    assert_refused(status, raw, "DOUBLE_WIN")
    assert await admin.balance("alice") == 10_000 - stake + 2_000
    incident = await the_incident(admin, "DOUBLE_WIN", "w2")
    assert (incident["user_id"], incident["referenced_tx_id"]) == ("alice", "b1")
    assert incident["request"] == second
    if bet_arrives_first:
        assert incident["recorded"] == {
            "provider_tx_id": "b1", "action": "BET", "stake": stake, "state": "won",
            "outcome": "OK",
        }  # fmt: skip
    else:
        assert incident["recorded"] == {"text": "bet settled by win w1"}
    assert await incident_metric(admin, "DOUBLE_WIN") == 1
    # the retry replays the refusal: no payment, no second incident
    assert await post(provider, "/deposit", second) == (status, raw)
    assert await admin.balance("alice") == 10_000 - stake + 2_000
    assert len(await incidents(admin)) == 1
    assert await incident_metric(admin, "DOUBLE_WIN") == 1


# --- balances stay within 2^53-1 --------------------------------------------------------------


async def assert_refused_at_the_limit(
    admin: Any, status: int, raw: bytes, user_id: str, reference: str, balance: int
) -> dict[str, Any]:
    """BALANCE_LIMIT: a 409, the balance as it was, an incident listed and counted."""
    assert_refused(status, raw, "BALANCE_LIMIT")
    assert await admin.balance(user_id) == balance
    incident = await the_incident(admin, "BALANCE_LIMIT", reference)
    assert (incident["user_id"], incident["recorded"]) == (user_id, {"text": f"balance {balance}"})
    assert await incident_metric(admin, "BALANCE_LIMIT") == 1
    return incident


# After alice's bet b1 of 1,000: a credit (of so many millis) one milli past the limit, then the
# credits that prove it left the bet open, each with the balance it answers (the last lands
# exactly on the limit).
REFUSED_CREDITS = {
    "win": (
        win("alice", "w1", "b1", 2_000),
        2_000,
        [
            # the refused WIN did not settle the bet: its rollback still refunds the stake
            (rollback("alice", "rb1", "b1"), BALANCE_MILLIS_MAX - 999),
            (win("alice", "w2", None, 999), BALANCE_MILLIS_MAX),
        ],
    ),
    "rollback": (
        rollback("alice", "rb1", "b1"),
        1_000,  # the stake
        # the bet was not rolled back (else WIN_AFTER_ROLLBACK): its win is paid
        [(win("alice", "w1", "b1", 999), BALANCE_MILLIS_MAX)],
    ),
}


@pytest.mark.parametrize("kind", REFUSED_CREDITS)
async def test_a_credit_past_the_limit_is_refused_and_leaves_its_bet_open(
    provider: Any, admin: Any, kind: str
) -> None:
    payload, credit_millis, proofs = REFUSED_CREDITS[kind]
    session = await player_with_session(admin, "alice", 10_000)
    assert (await post(provider, "/withdraw", bet("alice", session, "b1", 1_000)))[0] == 200
    near = BALANCE_MILLIS_MAX - credit_millis + 1
    await fund_to(admin, "alice", near)
    status, raw = await post(provider, "/deposit", payload)

    tx = payload["provider_tx_id"]
    incident = await assert_refused_at_the_limit(admin, status, raw, "alice", tx, near)
    assert incident["request"] == payload
    for proof, new_balance in proofs:
        status, raw = await post(provider, "/deposit", proof)
        assert status == 200, raw
        assert orjson.loads(raw)["data"]["new_balance"] == new_balance
    assert await admin.balance("alice") == BALANCE_MILLIS_MAX


async def test_an_adjustment_past_the_limit_is_refused_and_one_onto_it_applies(
    admin: Any,
) -> None:
    await admin.create_player("alice", 0)
    near = BALANCE_MILLIS_MAX - 100
    await fund_to(admin, "alice", near)
    status, body = await adjust(admin, "alice", 101, "deposit-over")

    incident = await assert_refused_at_the_limit(
        admin, status, orjson.dumps(body), "alice", "deposit-over", near
    )
    assert incident["action"] == "ADJUSTMENT"
    status, body = await adjust(admin, "alice", 100, "deposit-exact")
    assert (status, body["data"]) == (200, {"balance": BALANCE_MILLIS_MAX})
    assert await admin.balance("alice") == BALANCE_MILLIS_MAX


# --- all or nothing on a corrupt wallet -------------------------------------------------------


Call = Callable[[Any, Any, str], Awaitable[tuple[int, dict[str, Any]]]]

# One call per money script, each of which would move money on a sane wallet (alice has the
# open bet "b-open" of 1,000).
MONEY_SCRIPT_CALLS: dict[str, Call] = {
    "withdraw": lambda provider, admin, session: provider.post(
        "/withdraw", bet("alice", session, "b-new", 1_000)
    ),
    "credit": lambda provider, admin, session: provider.post(
        "/deposit", win("alice", "w-new", "b-open", 2_000)
    ),
    "rollback": lambda provider, admin, session: provider.post(
        "/deposit", rollback("alice", "rb-new", "b-open")
    ),
    "adjust_balance": lambda provider, admin, session: adjust(admin, "alice", 1_000, "adj-new"),
}
CORRUPT_BALANCES = {
    "not-a-number": "corrupt",
    "past-int64": str(2**63 - 50),  # once: a credit's HINCRBY overflowed after its first writes
    # an integer to Lua's tonumber, not to Redis' HINCRBY ("hash value is not an integer")
    "exponent": "1e4",
    "decimal-point": "10000.0",
}


@pytest.mark.parametrize("corrupt", sorted(CORRUPT_BALANCES))
@pytest.mark.parametrize("script", sorted(MONEY_SCRIPT_CALLS))
async def test_a_money_script_on_a_corrupt_balance_writes_nothing_and_answers_500(
    provider: Any, admin: Any, services: Services, script: str, corrupt: str
) -> None:
    """Redis keeps the writes a script made before a command failed: every check comes first.
    A balance that is not an integer's digits within the limit fails the call before any write:
    no half-settled bet, no refreshed session, no event, no record. Only the claim of its ids
    (the first step, in the ids' own slots: an owner key naming alice, filter bits) stays; it
    moves no money, and the retry once the wallet is repaired is decided as if new."""
    session = await player_with_session(admin, "alice", 10_000)
    assert (await provider.post("/withdraw", bet("alice", session, "b-open", 1_000)))[0] == 200
    keys = services.wallet.keys
    player_key = keys.player(keys.shard("alice"), "alice")
    await services.redis.hset(player_key, "balance", CORRUPT_BALANCES[corrupt])
    before = await redis_dump(services.settings.redis_url)

    status, body = await MONEY_SCRIPT_CALLS[script](provider, admin, session)

    after = await redis_dump(services.settings.redis_url)
    assert without_claims(after) == without_claims(before)
    for key in after.keys() - before.keys():  # the claims of new ids (and maybe a new filter)
        assert key.endswith(b":seen") or await services.redis.get(key) == "alice"
    assert status == 500, body
    assert_error_envelope(body, 500)
