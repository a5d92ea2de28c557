"""What idempotency without expiry costs: the seen-id filter's CPU per call and memory per id.

    python -m loadtests.seen_filter_cost [--calls 50000] [--filter-bits 1048576]

Starts the embedded Redis (or uses --redis-url) and measures, side by side in one run:
- Redis CPU per claim of a new id (lua/claim.lua, the first step of every money call, which
  checks and marks the filter) and of that the filter's BITFIELD, from INFO commandstats
  (which counts a script's commands under their own names too);
- the gateway's CPU per call to compute an id's offsets (gateway/seen_filter.py);
- memory: the bitmap's bytes, and the false-positive rate (calls that pay a PostgreSQL lookup)
  measured with fresh ids after filling a filter to 10 bits per id, 1% in theory.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import uvloop
from redis.asyncio import Redis

from gateway.embedded import EmbeddedRedis
from gateway.scripts import script_source
from gateway.seen_filter import FILTER_HASHES, filter_offsets

CLAIM = script_source("claim")
BITS_PER_ID = 10
FALSE_POSITIVE_PROBES = 100_000
PIPELINE_CALLS = 1_000
RETENTION_MS = 3_600_000


async def usec_of(redis: Redis, command: str) -> tuple[int, int]:
    stats = (await redis.info("commandstats")).get(f"cmdstat_{command}", {})
    return stats.get("calls", 0), stats.get("usec", 0)


async def claim_usec_per_call(redis: Redis, calls: int, filter_bits: int) -> tuple[float, float]:
    """-> Redis CPU us per claim of a new id, and of that its BITFIELD's."""
    sha = await redis.script_load(CLAIM)
    before = [await usec_of(redis, command) for command in ("evalsha", "bitfield")]
    for start in range(0, calls, PIPELINE_CALLS):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(calls, start + PIPELINE_CALLS)):
                tx_id = f"claimed-{n}"
                offsets = filter_offsets(tx_id, filter_bits)
                pipe.evalsha(
                    sha, 2, f"cost:owner:{tx_id}", "cost:seen", "p", offsets, RETENTION_MS, ""
                )
            await pipe.execute()
    after = [await usec_of(redis, command) for command in ("evalsha", "bitfield")]
    (claims, claim_usec), (_, bitfield_usec) = (
        (a_calls - b_calls, a_usec - b_usec)
        for (b_calls, b_usec), (a_calls, a_usec) in zip(before, after, strict=True)
    )
    return claim_usec / claims, bitfield_usec / claims


def offsets_usec_per_call(calls: int, filter_bits: int) -> float:
    started = time.process_time()
    for n in range(calls):
        filter_offsets(f"bet-{n}", filter_bits)
    return (time.process_time() - started) / calls * 1e6


async def false_positive_rate(redis: Redis, filter_bits: int) -> tuple[int, float]:
    """Fill a filter with filter_bits / BITS_PER_ID ids, then ask it about fresh ones."""
    key, ids = "cost:fill", filter_bits // BITS_PER_ID
    for start in range(0, ids, PIPELINE_CALLS):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(ids, start + PIPELINE_CALLS)):
                args = [a for o in filter_offsets(f"seen-{n}", filter_bits).split()
                        for a in ("SET", "u1", o, 1)]  # fmt: skip
                pipe.execute_command("BITFIELD", key, *args)
            await pipe.execute()
    positives = 0
    for start in range(0, FALSE_POSITIVE_PROBES, PIPELINE_CALLS):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, start + PIPELINE_CALLS):
                args = [a for o in filter_offsets(f"fresh-{n}", filter_bits).split()
                        for a in ("GET", "u1", o)]  # fmt: skip
                pipe.execute_command("BITFIELD", key, *args)
            positives += sum(all(bits) for bits in await pipe.execute())
    return ids, positives / FALSE_POSITIVE_PROBES


async def report(redis: Redis, calls: int, filter_bits: int) -> None:
    claim, bitfield = await claim_usec_per_call(redis, calls, filter_bits)
    offsets = offsets_usec_per_call(calls, filter_bits)
    ids, rate = await false_positive_rate(redis, filter_bits)
    memory = await redis.memory_usage("cost:fill")
    print(f"Redis CPU per claim of a new id (lua/claim.lua):    {claim:6.2f} us")
    print(f"  of which the filter's check-and-mark (BITFIELD):  {bitfield:6.2f} us "
          f"({FILTER_HASHES} bits)")  # fmt: skip
    print(f"gateway CPU per call, the id's offsets:              {offsets:6.2f} us")
    print(f"filter of {filter_bits} bits: {memory} bytes in Redis, {ids} ids "
          f"({BITS_PER_ID} bits each): false positives {rate:.3%} "
          f"-> {memory / ids * 1e6 / 2**20:.2f} MiB per million ids")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--filter-bits", type=int, default=2**20)
    parser.add_argument("--redis-url", default="", help="redis://host:port (default: embedded)")
    args = parser.parse_args()

    async def run(url: str) -> None:
        async with Redis.from_url(url, decode_responses=True) as redis:
            await report(redis, args.calls, args.filter_bits)

    if args.redis_url:
        uvloop.run(run(args.redis_url))
        return
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="seen-filter-cost-")))
    server.start()
    try:
        asyncio.run(run(server.url))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
