"""Script calls of one moment go to Redis together, in a bounded number of batches."""

import asyncio

from helpers import pause_scripts, unpause
from redis.asyncio import Redis

from gateway.coalesced_scripts import FLUSHES_IN_FLIGHT_MAX, CoalescedScriptCalls
from gateway.embedded import EmbeddedRedis

CLIENT_NAME = "coalesced-calls-test"
# Each call appends its argument to one list and answers the list's length then.
APPEND = "return redis.call('RPUSH', KEYS[1], ARGV[1])"
CALLS = 300


async def test_calls_made_while_batches_are_in_flight_share_the_next_batch_and_run_once(
    redis_server: EmbeddedRedis,
) -> None:
    redis = Redis.from_url(redis_server.url, decode_responses=True, client_name=CLIENT_NAME)
    try:
        await redis.delete("order")
        calls = CoalescedScriptCalls(redis)
        append = redis.register_script(APPEND)
        await redis.script_load(APPEND)
        # Redis holds every script unanswered while calls keep coming, one per event-loop tick:
        # without a bound, each tick would send a batch of its own on a connection of its own.
        pauser = await pause_scripts(redis_server.url)
        try:
            pending = []
            for n in range(CALLS):
                pending.append(calls.call(append, ["order"], (str(n),)))
                await asyncio.sleep(0)
            assert await pauser.llen("order") == 0  # nothing ran yet: every batch is held
        finally:
            await unpause(pauser)
        replies = await asyncio.gather(*pending)
        # every call ran once (batches on two connections may run in either order)
        assert sorted(replies) == list(range(1, CALLS + 1))
        ran = await redis.lrange("order", 0, -1)
        assert sorted(ran) == sorted(map(str, range(CALLS)))
        clients = await redis.client_list()
        used = [client for client in clients if client["name"] == CLIENT_NAME]
        assert 1 <= len(used) <= FLUSHES_IN_FLIGHT_MAX + 1  # + the connection of this test
    finally:
        await redis.aclose()
