"""Scripts go out as EVALSHA; when Redis lost its script cache (restart, SCRIPT FLUSH) the
gateway loads them again and the call still applies exactly once."""

import asyncio

from payloads import bet


async def test_bet_after_script_flush_reloads_and_applies_once(provider, admin, services):
    await admin.create_player("flushed", 10_000)
    session = await admin.open_session("flushed")
    await services.redis.script_flush()
    status, body = await provider.post("/withdraw", bet("flushed", session, "after-flush", 1000))
    assert status == 200, body
    assert await admin.balance("flushed") == 9_000
    # the script the bet ran (one Redis: with its claims) is loaded again
    withdraw = services.wallet.scripts.claimed_and_decided["withdraw"]
    assert await services.redis.script_exists(withdraw.sha) == [True]


async def test_concurrent_bets_after_script_flush_each_apply_once(provider, admin, services):
    await admin.create_player("flushed-many", 10_000)
    session = await admin.open_session("flushed-many")
    await services.redis.script_flush()
    answers = await asyncio.gather(
        *(
            provider.post("/withdraw", bet("flushed-many", session, f"many-{n}", 100))
            for n in range(20)
        )
    )
    assert [status for status, _ in answers] == [200] * 20
    assert await admin.balance("flushed-many") == 8_000
