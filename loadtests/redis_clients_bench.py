"""The EVALSHA path of the maintained asyncio Redis clients, side by side in one run.

    python -m loadtests.redis_clients_bench [--calls 30000] [--concurrency 32]

Starts the embedded Redis (or uses --redis-url) and, for each client that is installed
(redis-py with hiredis always; `pip install coredis valkey-glide` for the others), runs the same
small script `--calls` times from `--concurrency` tasks. It prints calls per second and, the
number that decides on a shared 2-core machine, the client process's CPU per call (glide's
Rust core runs in a thread of the process, so it is counted too).
"""

import argparse
import asyncio
import importlib.util
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from gateway.coalesced_scripts import CoalescedScriptCalls
from gateway.embedded import EmbeddedRedis

SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); return {'OK', 1, 'op-1', 'USD', 0}"
Call = Callable[[str, str], Awaitable[Any]]


async def measure(name: str, call: Call, calls: int, concurrency: int) -> None:
    async def worker(number: int) -> None:
        for n in range(calls // concurrency):
            await call(f"bench:{number}", str(n))

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(number) for number in range(concurrency)))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(
        f"{name:40s} {calls / seconds:8.0f} calls/s  {cpu_seconds / calls * 1e6:6.1f} us CPU/call",
        flush=True,
    )


async def compare(
    host: str, port: int, calls: int, concurrency: int, password: str | None = None
) -> None:
    redis = Redis(host=host, port=port, password=password, decode_responses=True)
    script: AsyncScript = redis.register_script(SCRIPT)
    await redis.script_load(SCRIPT)
    coalesced = CoalescedScriptCalls(redis)

    async def redis_py(key: str, value: str) -> Any:
        return await redis.evalsha(script.sha, 1, key, value)

    async def redis_py_coalesced(key: str, value: str) -> Any:
        return await coalesced.call(script, [key], (value,))

    await measure("redis-py + hiredis", redis_py, calls, concurrency)
    await measure("redis-py + hiredis, coalesced pipeline", redis_py_coalesced, calls, concurrency)
    if importlib.util.find_spec("coredis"):
        import coredis

        async with coredis.Redis(
            host=host, port=port, password=password, decode_responses=True
        ) as client:

            async def coredis_call(key: str, value: str) -> Any:
                return await client.evalsha(script.sha, [key], [value])

            await measure("coredis", coredis_call, calls, concurrency)
    else:
        print("coredis: not installed (pip install coredis)")
    if importlib.util.find_spec("glide"):
        from glide import (
            GlideClient,
            GlideClientConfiguration,
            NodeAddress,
            Script,
            ServerCredentials,
        )

        credentials = ServerCredentials(password) if password else None
        glide = await GlideClient.create(
            GlideClientConfiguration([NodeAddress(host, port)], credentials=credentials)
        )
        glide_script = Script(SCRIPT)

        async def glide_call(key: str, value: str) -> Any:
            return await glide.invoke_script(glide_script, keys=[key], args=[value])

        await measure("valkey-glide", glide_call, calls, concurrency)
        await glide.close()
    else:
        print("valkey-glide: not installed (pip install valkey-glide)")
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--redis-url", default="", help="redis://host:port (default: embedded)")
    args = parser.parse_args()
    if args.redis_url:
        host, port = args.redis_url.removeprefix("redis://").split("/")[0].split(":")
        uvloop.run(compare(host, int(port), args.calls, args.concurrency))
        return
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="clients-bench-")))
    server.start()
    try:
        uvloop.run(compare("127.0.0.1", server.port, args.calls, args.concurrency, server.password))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
