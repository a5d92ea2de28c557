"""On one Redis a money call's two steps go as one script (lua/claim_and_decide.lua); a cluster
sends them apart (docs/design.md, "A money call in two steps"). The same calls must get the
same answers and leave the same Redis either way, refusals and incidents included."""

import hashlib
import itertools
import re
from typing import Any

import orjson
import pytest
from conftest import Admin, ManualClock, Provider
from helpers import player_with_session, user_in_shard
from payloads import bet, close_round, rollback, win

from gateway import admin as admin_module
from gateway import sessions as sessions_module
from gateway.app import Services
from gateway.redis_connection import client_for_url

# players and ids of different shards: on a cluster each step would run on a slot of its own
ALICE, BOB = user_in_shard("alice", 1), user_in_shard("bob", 2)
MINUTE_MS = 60_000


def tx(prefix: str, shard: int) -> str:
    return user_in_shard(prefix, shard)


async def provider_calls(services: Services, provider: Provider, admin: Admin) -> list[Any]:
    """Every answer of a game's worth of calls that exercise both steps."""
    alice_session = await player_with_session(admin, ALICE, 10_000)
    bob_session = await player_with_session(admin, BOB, 10_000)
    keys = services.wallet.keys
    for token in (alice_session, bob_session):  # a bet makes it live as long as its session
        await services.redis.pexpire(keys.session_index(keys.shard(token), token), MINUTE_MS)
    b1, b2, b3, b4 = tx("b1", 3), tx("b2", 4), tx("b3", 5), tx("b4", 6)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/withdraw", bet(ALICE, alice_session, b1, 1_000)),
        ("/withdraw", bet(ALICE, alice_session, b1, 1_000)),  # replayed
        ("/withdraw", bet(ALICE, alice_session, b1, 2_000)),  # same id, other content
        ("/withdraw", bet(BOB, bob_session, b1, 1_000)),  # alice's id: TX_CONFLICT
        ("/deposit", win(ALICE, tx("w1", 7), b1, 3_000)),
        ("/deposit", win(ALICE, tx("w2", 8), b1, 3_000)),  # DOUBLE_WIN
        ("/deposit", win(BOB, tx("w3", 9), b1, 3_000)),  # alice's bet: CROSS_PLAYER
        ("/deposit", rollback(ALICE, tx("r1", 10), b2)),  # before its bet: a tombstone
        ("/withdraw", bet(ALICE, alice_session, b2, 1_000)),  # voided
        ("/withdraw", bet(ALICE, alice_session, b3, 50_000)),  # INSUFFICIENT_FUNDS
        ("/withdraw", bet("nobody", alice_session, tx("b5", 11), 1_000)),  # UNKNOWN_USER
        ("/withdraw", bet(BOB, bob_session, b4, 1_000)),
        ("/deposit", close_round(f"round-{b4}", [1_000], ["2.00"])),
        ("/deposit", win(BOB, tx("w4", 12), b4, 2_000)),  # after its round closed
        ("/deposit", close_round(f"round-{b4}", [1_000], ["2.00"])),  # replayed
        ("/withdraw", bet(BOB, bob_session, tx("b6", 13), 500, round_id=f"round-{b4}")),  # late
        ("/deposit", rollback(BOB, tx("r2", 14), b3)),  # alice's bet: CROSS_PLAYER
    ]
    answers = [await provider.post(path, payload) for path, payload in calls]
    # b1's owner gone (as past its retention): the filter has seen it, so its replay asks the
    # history, and there is none here (503)
    await services.redis.delete(keys.tx_owner(keys.shard(b1), b1))
    answers.append(await provider.post("/withdraw", bet(ALICE, alice_session, b1, 1_000)))
    return answers


async def readable_state(redis_url: str) -> str:
    """Every key and value, streams by their entries' fields (their ids are times)."""
    state = []
    async with client_for_url(redis_url) as redis:  # bytes: the seen filters are not text
        for key in sorted(await redis.keys("*")):
            kind = (await redis.type(key)).decode()
            if kind == "stream":
                read: Any = [fields for _, fields in await redis.xrange(key)]
            elif kind == "hash":
                read = sorted((await redis.hgetall(key)).items())
            elif kind == "list":
                read = await redis.lrange(key, 0, -1)
            else:  # a string: a seen filter's 2 MiB of bits, told by their digest
                read = hashlib.sha256(await redis.get(key)).hexdigest()
            ttl_ms = await redis.pttl(key)
            lives = "for ever" if ttl_ms < 0 else "a minute" if ttl_ms <= MINUTE_MS else "longer"
            state.append(f"{key!r} {kind} lives {lives} {read!r}")
    return "\n".join(state)


async def one_run(
    services: Services,
    provider: Provider,
    admin: Admin,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    in_one: bool,
) -> tuple[list[Any], str]:
    await services.redis.flushall()
    await services.wallet.start()
    clock.ms = 1_800_000_000_000
    services.wallet.claims_in_the_script = in_one
    # the same session tokens each run
    tokens = (f"session-{n}" for n in itertools.count())
    for module in (admin_module, sessions_module):
        monkeypatch.setattr(module, "new_token", lambda: next(tokens))
    answers = await provider_calls(services, provider, admin)
    state = await readable_state(services.settings.redis_url)
    # operator tx ids are unique, not numbered alike: one script takes one for a call it then
    # finds conflicting, two steps do not get that far
    operator_tx_id = re.compile(re.escape(services.wallet._operator_tx_ids._prefix) + r"-\d+")
    return orjson.loads(operator_tx_id.sub("OP", orjson.dumps(answers).decode())), (
        operator_tx_id.sub("OP", state)
    )


async def test_both_steps_in_one_script_answer_and_write_as_the_two_steps_do(
    services: Services,
    provider: Provider,
    admin: Admin,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert services.wallet.claims_in_the_script  # one Redis: its default
    run = (services, provider, admin, clock, monkeypatch)
    apart_answers, apart_state = await one_run(*run, in_one=False)
    together_answers, together_state = await one_run(*run, in_one=True)

    statuses = [status for status, _ in together_answers]
    assert statuses == [
        200, 200, 409, 409, 200, 409, 409, 200, 409, 402, 404, 200, 200, 200, 200, 200, 409, 503
    ]  # fmt: skip
    assert together_answers == apart_answers
    assert together_state == apart_state
