"""What a money call's two steps cost against one script (docs/design.md, "A money call in two
steps"), side by side in one run, without HTTP in between:

    python -m loadtests.money_call_steps [--bets 20000] [--rounds 3] [--concurrency 64]

Starts the embedded Redis (AOF everysec, as `wallet-gateway up`) and sends new bets straight to
the gateway's own `Wallet.debit_bet`, `--concurrency` at a time, alternating rounds of each way:
- two steps, as on a Redis Cluster: the claim and the round's close read, then the withdraw
  script and the session index's refresh;
- one script, as on one Redis: lua/claim_and_decide.lua.
For each: the client's CPU per bet (this process: what the gateway spends on the Redis part of
a bet) and Redis's (INFO cpu), and bets per second.
"""

import argparse
import asyncio
import tempfile
import time
from collections import defaultdict
from itertools import count
from pathlib import Path
from statistics import median

import orjson
import uvloop

from gateway.app import Services
from gateway.embedded import EmbeddedRedis
from gateway.schemas import BetRequest
from gateway.settings import Settings
from provider.client import bet_body

PLAYERS = 64
BALANCE_MILLIS = 10**14
WAYS = {"two steps": False, "one script": True}


async def redis_cpu_seconds(services: Services) -> float:
    cpu = await services.redis.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def new_bet(user_id: str, session_token: str, number: int) -> bytes:
    return orjson.dumps(
        bet_body(
            user_id=user_id,
            session_token=session_token,
            amount_millis=1,
            currency="USD",
            provider_tx_id=f"steps-{number}",
            round_id=f"round-{number}",
            game="bench",
        )
    )


async def one_round(
    services: Services, sessions: list[tuple[str, str]], bets: int, concurrency: int, ids: count
) -> tuple[float, float, float]:
    """-> (client CPU us per bet, Redis CPU us per bet, bets/s)."""
    wallet = services.wallet
    queue = [new_bet(*sessions[n % len(sessions)], next(ids)) for n in range(bets)]

    async def bettor() -> None:
        while queue:
            body = queue.pop()
            reply = await wallet.debit_bet(BetRequest.parse(orjson.loads(body)), body)
            assert reply.outcome == "OK", reply

    redis_before, client_before = await redis_cpu_seconds(services), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(bettor() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    client = time.process_time() - client_before
    redis = await redis_cpu_seconds(services) - redis_before
    return client / bets * 1e6, redis / bets * 1e6, bets / seconds


async def measure(args: argparse.Namespace, redis_url: str) -> None:
    services = Services.create(Settings(redis_url=redis_url))
    await services.redis.flushall()
    await services.start()
    try:
        sessions = []
        for n in range(PLAYERS):
            user_id = f"steps-player-{n}"
            await services.wallet.create_player(user_id, "USD", user_id, BALANCE_MILLIS, None)
            token = f"steps-session-{n}"
            assert await services.sessions.open_session(user_id, token, "bench") == "OK"
            sessions.append((user_id, token))
        results: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        ids = count()
        for _ in range(args.rounds):
            for way, in_one_script in WAYS.items():
                services.wallet.claims_in_the_script = in_one_script
                results[way].append(
                    await one_round(services, sessions, args.bets, args.concurrency, ids)
                )
    finally:
        await services.close()
    print(f"{args.bets} new bets a round, {args.concurrency} at a time, {args.rounds} rounds")
    print("| way | client CPU us per bet | Redis CPU us per bet | bets/s | rounds |")
    print("|---|---|---|---|---|")
    for way, rounds in results.items():
        client, redis, rate = (median(values) for values in zip(*rounds, strict=True))
        detail = "; ".join(f"{c:.0f} / {r:.0f} / {b:.0f}" for c, r, b in rounds)
        print(f"| {way} | {client:.1f} | {redis:.1f} | {rate:.0f} | {detail} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bets", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="money-call-steps-") as data_dir:
        redis = EmbeddedRedis(Path(data_dir))
        redis.start()
        try:
            uvloop.run(measure(args, redis.url))
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
