"""The scenarios: each starts its own stack in a folder of its own, drives traffic, injects its
faults on a timeline while the traffic runs, settles, checks, and says which guarantee broke.

Every scenario is bounded by its `Scale` (seconds of load, calls, concurrent players); the
settling and the checks after it are bounded too (SETTLE_SECONDS_MAX, the writer's catch-up).
"""

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from gateway.embedded import EmbeddedRedis
from gateway.redis_connection import connect_background_redis
from loadtests.faults.checks import MoneyCheck, check_money, run_reconcile
from loadtests.faults.proxy import FaultyProxy
from loadtests.faults.report import ScenarioResult
from loadtests.faults.stack import FaultStack
from loadtests.faults.traffic import SLOW_ATTEMPT_MS, Traffic
from persistence.streams import read_lag
from persistence.writer import CLAIM_IDLE_MS

SETTLE_SECONDS_MAX = 60.0
WRITER_CATCH_UP_SECONDS_MAX = 60.0
REPLAYS_MAX = 2_000
REPLAYS_SHORT = 300
CLAIM_IDLE_MS_SHORT = 2_000
ERROR_LINES_MAX = 5
MIB = 1024 * 1024
HOUR_SECONDS = 3600.0
# a 503 is "not confirmed, retry" (docs/protocol.md §3): the faults may cause it; any other 5xx
# is a failure nobody foresaw
EXPECTED_5XX = "503"


@dataclass(frozen=True)
class Scale:
    seconds: float  # of load, the faults inside it
    calls_max: int
    concurrency: int  # players playing at once, one task each
    rounds_per_second: float = 0.0  # > 0: a steady rate (the soak); else flat out
    # acknowledged calls sent once more at the end: each must get its first answer again
    replays: int = REPLAYS_MAX
    # how long a killed writer's pending events wait before another writer claims them
    # (None: the writer's default, persistence.writer.CLAIM_IDLE_MS)
    claim_idle_ms: int | None = None


Scenario = Callable[[Path, Scale], Awaitable[list[ScenarioResult]]]


# --- the common steps ---------------------------------------------------------------------------


async def new_traffic(stack: FaultStack, url: str, scale: Scale) -> Traffic:
    public_key, secret = stack.provider_key()
    traffic = Traffic(url, public_key, secret)
    await traffic.add_players(stack.admin_url, stack.settings.admin_token, scale.concurrency)
    return traffic


class Timeline:
    """Faults at offsets (seconds) from the load's start, each run in a thread (they block:
    kill, wait for a restart) while the traffic goes on. Logs what happened when."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.log: list[str] = []
        self.spans: dict[str, tuple[float, float]] = {}  # label -> wall clock start, end

    async def at(self, offset: float, label: str, action: Callable[[], object]) -> None:
        await asyncio.sleep(max(0.0, self.started + offset - time.monotonic()))
        began, began_at = time.monotonic(), time.time()
        await asyncio.to_thread(action)
        self.spans[label] = (began_at, time.time())
        self.log.append(
            f"{began - self.started:5.1f} s: {label} ({(time.monotonic() - began) * 1000:.0f} ms)"
        )


async def drive(
    traffic: Traffic,
    scale: Scale,
    faults: Callable[[Timeline], Awaitable[None]],
    during: Callable[[], Awaitable[None]] | None = None,
) -> Timeline:
    """The load for `scale.seconds`, and the faults meanwhile (and `during`, a sampler)."""
    timeline = Timeline()
    load = asyncio.create_task(
        traffic.run(
            seconds=scale.seconds,
            calls_max=scale.calls_max,
            concurrency=scale.concurrency,
            rounds_per_second=scale.rounds_per_second,
        )
    )
    sampler = asyncio.create_task(during()) if during else None
    try:
        await faults(timeline)
        await load
    finally:
        load.cancel()
        if sampler:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    return timeline


async def wait_for_writer(stack: FaultStack, seconds_max: float) -> float | None:
    """Until the stack's own writer has written every event: -> seconds it took, None if not."""
    started = time.monotonic()
    async with connect_background_redis(stack.settings.redis_url) as client:
        while time.monotonic() - started < seconds_max:
            if (await read_lag(client, stack.settings.shards)).retained_events == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
    return None


async def finish(
    result: ScenarioResult,
    traffic: Traffic,
    stack: FaultStack,
    *,
    replays: int,
    money_safe: bool = True,
) -> MoneyCheck:
    """Settle the unknown calls, check the money, replay acknowledged calls, reconcile; fill
    the result and check the guarantees every scenario keeps (`money_safe`: also nothing lost
    and reconcile agrees)."""
    unsettled = await traffic.settle(SETTLE_SECONDS_MAX)
    first = await run_reconcile(stack.settings)  # drains the streams: the history is complete
    money = await check_money(traffic, stack.settings)
    replayed = await traffic.replay_acknowledged(stack.gateway_url, replays) if replays else 0
    final = await run_reconcile(stack.settings) if replayed else first
    stats = traffic.stats
    result.calls_sent = stats.calls
    result.acknowledged = money.acknowledged
    result.retried = stats.retried
    result.money_lost = money.money_lost
    result.money_doubled = money.money_doubled
    result.five_xx = {str(status): count for status, count in sorted(stats.five_xx.items())}
    result.undelivered = stats.undelivered
    result.slowest_ms = stats.slowest_ms
    result.reconcile_agrees = final.agrees
    result.measured.update(
        {
            "money calls lost": len(money.lost_calls),
            "duplicates sent (same bytes)": stats.duplicates,
            "acknowledged calls replayed after the run": replayed,
            "replays answered differently": len(stats.replay_mismatches),
            "history rows quarantined": money.quarantined,
            "rounds closed (CLOSE_ROUND) by comparison": money.rounds,
        }
    )
    result.notes += money.details
    if not final.agrees:
        result.notes.append("reconcile: " + final.render().replace("\n", "; "))
    result.require(unsettled == 0, f"every call settles by retries ({unsettled} never did)")
    result.require(money.money_doubled == 0, "no money applied twice or applied though refused")
    result.require(
        not money.rounds.get("mismatch"), "every closed round matches the provider's aggregate"
    )
    result.require(
        not stats.replay_mismatches,
        f"a retry gets the original answer ({len(stats.replay_mismatches)} did not)",
    )
    unexpected = {status: n for status, n in result.five_xx.items() if status != EXPECTED_5XX}
    result.require(not unexpected, f"no 5xx but 503 (saw {unexpected})")
    result.require(
        stack.writer is not None and stack.writer.poll() is None,
        "the history writer outlives the faults",
    )
    if money_safe:
        result.require(money.money_lost == 0, "every call answered 200 is in the wallet")
        result.require(final.agrees, "reconcile agrees")
    return money


async def run_scenario(
    result: ScenarioResult,
    stack: FaultStack,
    scenario: Callable[[], Awaitable[None]],
) -> ScenarioResult:
    """Start the stack, run `scenario`, stop everything whatever happened."""
    started = time.monotonic()
    try:
        await asyncio.to_thread(stack.start)
        await scenario()
    except Exception as exc:  # a crashed scenario is a failed one, with its reason
        result.failures.append(f"the scenario crashed: {type(exc).__name__}: {exc}")
    finally:
        await asyncio.to_thread(stack.close)
        result.seconds = time.monotonic() - started
        if not result.passed:  # the processes' own account of what went wrong
            result.notes += stack.error_lines(ERROR_LINES_MAX)
    return result


# --- 1. lost responses --------------------------------------------------------------------------

DROP_SHARE = 0.1
CUT_SHARE = 0.1


async def lost_responses(root: Path, scale: Scale) -> list[ScenarioResult]:
    result = ScenarioResult(
        "lost-responses",
        "answers lost after the gateway applied the call, requests cut half-way",
        "each retry gets the original response, and money moves once.",
    )
    stack = FaultStack(root / "lost-responses")

    async def scenario() -> None:
        proxy = FaultyProxy(stack.settings.gateway_port, drop_share=DROP_SHARE, cut_share=CUT_SHARE)
        await proxy.start()
        traffic = await new_traffic(stack, proxy.url, scale)
        try:
            await drive(traffic, scale, lambda timeline: asyncio.sleep(0))
            # the provider's later retries go through the same broken network
            await finish(result, traffic, stack, replays=scale.replays)
        finally:
            await traffic.close()
            await proxy.close()
        result.measured.update(
            {
                "proxy: connections": proxy.stats.connections,
                "proxy: answers dropped after the call was forwarded": (
                    proxy.stats.responses_dropped
                ),
                "proxy: requests cut part-way": proxy.stats.requests_cut,
            }
        )
        result.require(proxy.stats.responses_dropped > 0, "the proxy dropped answers")
        result.require(proxy.stats.requests_cut > 0, "the proxy cut requests")

    return [await run_scenario(result, stack, scenario)]


# --- 2. Redis SIGKILL, restarted from its AOF ---------------------------------------------------

REDIS_KILLS = (0.3, 0.65)  # fractions of the load's time


async def redis_kill(root: Path, scale: Scale) -> list[ScenarioResult]:
    return [
        await redis_kill_with(root, scale, "always"),
        await redis_kill_with(root, scale, "everysec"),
    ]


async def redis_kill_with(root: Path, scale: Scale, appendfsync: str) -> ScenarioResult:
    always = appendfsync == "always"
    result = ScenarioResult(
        f"redis-kill-{appendfsync}",
        f"Redis SIGKILL under load, restarted from its AOF (appendfsync {appendfsync})",
        "every call answered 200 is in the balance after the restart (lost: 0)."
        if always
        else "nothing applied twice, every call settles; the calls and milliseconds acknowledged "
        "but lost are measured and reported, not asserted. everysec fsyncs once a second, but "
        "Redis writes the AOF to the kernel before it answers, so a kill of the process alone "
        "loses only what a slow disk made it postpone; an OS crash or power cut (not injected "
        "here) loses up to about a second.",
    )
    stack = FaultStack(root / f"redis-kill-{appendfsync}", appendfsync=appendfsync)
    kills: list[float] = []

    def kill_and_restart() -> None:
        kills.append(time.time())
        stack.kill_redis()
        stack.start_redis()

    async def faults(timeline: Timeline) -> None:
        for number, share in enumerate(REDIS_KILLS, 1):
            await timeline.at(
                share * scale.seconds,
                f"kill -9 Redis (#{number}), restart it from its AOF",
                kill_and_restart,
            )
        result.notes += timeline.log

    async def scenario() -> None:
        traffic = await new_traffic(stack, stack.gateway_url, scale)
        try:
            await drive(traffic, scale, faults)
            money = await finish(result, traffic, stack, replays=0, money_safe=always)
            result.measured["kills"] = len(kills)
            result.measured["window: calls acknowledged then lost"] = len(money.lost_calls)
            result.measured["window: ms before the kill"] = loss_window_ms(
                [call.acknowledged_at for call in money.lost_calls], kills
            )
        finally:
            await traffic.close()

    return await run_scenario(result, stack, scenario)


def loss_window_ms(acknowledged_at: list[float], kills: list[float]) -> float:
    """How far before a kill the earliest acknowledged-then-lost call was answered."""
    window = 0.0
    for kill in kills:
        before = [moment for moment in acknowledged_at if moment <= kill]
        earlier_kills = [k for k in kills if k < kill]
        if earlier_kills:
            before = [moment for moment in before if moment > max(earlier_kills)]
        if before:
            window = max(window, (kill - min(before)) * 1000)
    return round(window, 1)


# --- 3. a gateway process killed ------------------------------------------------------------------


async def gateway_kill(root: Path, scale: Scale) -> list[ScenarioResult]:
    result = ScenarioResult(
        "gateway-kill",
        "kill -9 of one of `--workers 2` (twice), then of a single worker mid-load",
        "the surviving worker serves meanwhile; every in-flight call is applied once or not at "
        "all, and the retries settle.",
    )
    stack = FaultStack(root / "gateway-kill", workers=2)
    one_down: list[tuple[float, float]] = []  # wall clock: a worker killed, its successor up

    def kill_one_of_two() -> None:
        killed_at = time.time()
        stack.wait_for_workers(replacing=stack.kill_worker(0))  # the supervisor starts one
        one_down.append((killed_at, time.time()))

    def single_worker() -> None:
        stack.stop_gateway()  # SIGTERM: the in-flight calls finish
        stack.start_gateway(1)

    def kill_single_worker() -> None:
        stack.kill_worker(0)  # nobody restarts it but us, as an orchestrator would
        stack.start_gateway()

    async def faults(timeline: Timeline) -> None:
        seconds = scale.seconds
        await timeline.at(0.15 * seconds, "kill -9 worker 1 of 2", kill_one_of_two)
        await timeline.at(0.35 * seconds, "kill -9 worker 1 of 2 again", kill_one_of_two)
        await timeline.at(0.5 * seconds, "restart as `serve --workers 1`", single_worker)
        await timeline.at(0.7 * seconds, "kill -9 the single worker, start it", kill_single_worker)
        result.notes += timeline.log

    async def scenario() -> None:
        traffic = await new_traffic(stack, stack.gateway_url, scale)
        try:
            await drive(traffic, scale, faults)
            served = [
                sum(down < call.acknowledged_at <= up for call in traffic.calls)
                for down, up in one_down
            ]
            await finish(result, traffic, stack, replays=scale.replays)
        finally:
            await traffic.close()
        result.measured["calls acknowledged while 1 of 2 workers was down"] = served
        result.require(
            len(served) == 2 and min(served) > 0,
            "the surviving worker serves while the other is down",
        )

    return [await run_scenario(result, stack, scenario)]


# --- 4. the writer and PostgreSQL killed --------------------------------------------------------


async def writer_postgres_kill(root: Path, scale: Scale) -> list[ScenarioResult]:
    result = ScenarioResult(
        "writer-postgres-kill",
        "the history writer, PostgreSQL, and both with a gateway worker, killed under load",
        "after recovery the history is complete (every acknowledged call is in it) and "
        "`reconcile` agrees; the callbacks never needed PostgreSQL.",
    )
    claim = ("--claim-idle-ms", str(scale.claim_idle_ms)) if scale.claim_idle_ms else ()
    stack = FaultStack(root / "writer-postgres-kill", workers=2, writer_args=claim)
    killed: list[int] = []

    def kill_all() -> None:
        stack.kill_writer()
        stack.kill_postgres()
        killed.append(stack.kill_worker(0))

    def start_all() -> None:
        stack.start_postgres()
        stack.start_writer()
        stack.wait_for_workers(replacing=killed[-1])

    async def faults(timeline: Timeline) -> None:
        seconds = scale.seconds
        await timeline.at(0.1 * seconds, "kill -9 the writer", stack.kill_writer)
        await timeline.at(0.2 * seconds, "start the writer", stack.start_writer)
        await timeline.at(0.3 * seconds, "kill -9 PostgreSQL (every backend)", stack.kill_postgres)
        await timeline.at(0.45 * seconds, "start PostgreSQL (crash recovery)", stack.start_postgres)
        await timeline.at(0.6 * seconds, "kill -9 writer, PostgreSQL and a worker", kill_all)
        await timeline.at(0.75 * seconds, "start PostgreSQL and the writer", start_all)
        result.notes += timeline.log

    async def scenario() -> None:
        traffic = await new_traffic(stack, stack.gateway_url, scale)
        try:
            await drive(traffic, scale, faults)
            # the stack's own writer catches up before reconcile drains anything itself
            caught_up = await wait_for_writer(stack, WRITER_CATCH_UP_SECONDS_MAX)
            result.measured["writer catch-up after the load, s"] = (
                round(caught_up, 1) if caught_up is not None else "not caught up"
            )
            result.measured["a killed writer's events are claimed after, ms"] = (
                scale.claim_idle_ms or CLAIM_IDLE_MS
            )
            result.require(caught_up is not None, "the restarted writer catches up")
            await finish(result, traffic, stack, replays=scale.replays)
        finally:
            await traffic.close()

    return [await run_scenario(result, stack, scenario)]


# --- 5. a slow and failing Redis ----------------------------------------------------------------

SLOW_REDIS_TIMEOUT_MS = 500
DEADLINE_MARGIN_MS = 250  # loopback, the client, a busy 2-core machine
FAULT_HOLD_SECONDS = 1.5
GATEWAY_GROWTH_MIB_MAX = 100
SAMPLE_SECONDS = 0.25


async def slow_redis(root: Path, scale: Scale) -> list[ScenarioResult]:
    result = ScenarioResult(
        "slow-redis",
        "CLIENT PAUSE, DEBUG SLEEP, maxmemory reached (OOM), a replica promoted (READONLY)",
        f"every attempt is answered within the deadline (REDIS_TIMEOUT_MS "
        f"{SLOW_REDIS_TIMEOUT_MS} + {DEADLINE_MARGIN_MS} ms), the gateway's memory stays "
        f"bounded (< {GATEWAY_GROWTH_MIB_MAX} MiB of growth), and every call applies exactly "
        "once after the retries.",
    )
    stack = FaultStack(root / "slow-redis", redis_timeout_ms=SLOW_REDIS_TIMEOUT_MS)
    replica = EmbeddedRedis(root / "slow-redis" / "replica", replica_of=stack.redis)
    rss: list[int] = []
    spans: dict[str, tuple[float, float]] = {}

    def admin() -> redis.Redis:
        return stack.redis_client()

    def pause() -> None:
        with admin() as client:
            client.execute_command("CLIENT", "PAUSE", int(FAULT_HOLD_SECONDS * 1000), "WRITE")
            time.sleep(FAULT_HOLD_SECONDS)

    def sleep() -> None:
        with admin() as client:
            client.execute_command("DEBUG", "SLEEP", FAULT_HOLD_SECONDS)

    def out_of_memory() -> None:
        with admin() as client:
            client.config_set("maxmemory", 1)
            time.sleep(FAULT_HOLD_SECONDS)
            client.config_set("maxmemory", 0)

    def promote_replica() -> None:
        """FAILOVER: the primary pauses writes until the replica caught up, then they swap
        roles; the gateway, still pointed at the old primary, meets READONLY. Then back."""
        primary_client = admin()
        replica_client = redis.Redis.from_url(replica.url, decode_responses=True)
        try:
            wait_for_role(replica_client, "slave", link_up=True)
            # as a replica of its replica, the old primary must authenticate to it
            primary_client.config_set("masterauth", stack.redis.password)
            primary_client.execute_command("FAILOVER")
            wait_for_role(primary_client, "slave")
            time.sleep(FAULT_HOLD_SECONDS)
            wait_for_role(primary_client, "slave", link_up=True)
            replica_client.execute_command("FAILOVER")
            wait_for_role(primary_client, "master")
        finally:
            primary_client.close()
            replica_client.close()

    def stop_replica() -> None:
        # a SIGTERM that lands during the AOF rewrite after a sync is lost: stop() would wait
        # its 30 s out
        with redis.Redis.from_url(replica.url) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                aof = client.info("persistence")
                if not (aof["aof_rewrite_in_progress"] or aof["aof_rewrite_scheduled"]):
                    break
                time.sleep(0.05)
        replica.stop()

    async def faults(timeline: Timeline) -> None:
        seconds = scale.seconds
        await timeline.at(0.1 * seconds, "CLIENT PAUSE WRITE", pause)
        await timeline.at(0.3 * seconds, "DEBUG SLEEP", sleep)
        await timeline.at(0.5 * seconds, "maxmemory 1 (OOM), then unlimited", out_of_memory)
        await timeline.at(0.7 * seconds, "replica promoted by FAILOVER, then back", promote_replica)
        result.notes += timeline.log
        spans.update(timeline.spans)

    async def sample_memory() -> None:
        while True:
            rss.append(stack.rss_bytes().get("gateway", 0))
            await asyncio.sleep(SAMPLE_SECONDS)

    async def scenario() -> None:
        await asyncio.to_thread(replica.start)
        traffic = await new_traffic(stack, stack.gateway_url, scale)
        try:
            await drive(traffic, scale, faults, sample_memory)
            await finish(result, traffic, stack, replays=scale.replays)
        finally:
            await traffic.close()
            await asyncio.to_thread(stop_replica)
        growth_mib = (max(rss) - rss[0]) / MIB if rss else 0.0
        for label, (began, ended) in spans.items():
            during = [
                ms
                for at, ms, _, _ in traffic.stats.slow_attempts
                if began <= at <= ended + SLOW_REDIS_TIMEOUT_MS / 1000
            ]
            result.measured[f"slowest attempt during '{label}', ms"] = (
                round(max(during)) if during else f"< {SLOW_ATTEMPT_MS:.0f}"
            )
        result.measured["gateway RSS at the start, MiB"] = round(rss[0] / MIB, 1) if rss else 0
        result.measured["gateway RSS growth (peak - start), MiB"] = round(growth_mib, 1)
        require_deadline(result, SLOW_REDIS_TIMEOUT_MS)
        result.require(growth_mib < GATEWAY_GROWTH_MIB_MAX, "the gateway's memory stays bounded")
        result.require(result.five_xx_total > 0, "the faults were felt (503s seen)")

    return [await run_scenario(result, stack, scenario)]


def require_deadline(result: ScenarioResult, redis_timeout_ms: int) -> None:
    """A Redis in trouble costs an attempt REDIS_TIMEOUT_MS at most (then 503), never a hang."""
    result.require(
        result.slowest_ms <= redis_timeout_ms + DEADLINE_MARGIN_MS,
        "every answer within the deadline",
    )


def wait_for_role(
    client: redis.Redis, role: str, *, link_up: bool = False, seconds_max: float = 30.0
) -> None:
    deadline = time.monotonic() + seconds_max
    while time.monotonic() < deadline:
        info = client.info("replication")
        linked = info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")
        if info["role"] == role and (linked or not link_up):
            return
        time.sleep(0.05)
    raise RuntimeError(f"Redis did not become {role} in {seconds_max:.0f} s")


# --- 6. a Redis Cluster master killed, its replica promoted -------------------------------------

CLUSTER_MASTERS = 3
CLUSTER_WAIT_REPLICAS = 1
CLUSTER_REDIS_TIMEOUT_MS = 1000
CLUSTER_KILL_SHARE = 0.25  # of the load's time
# the killed node is started again no earlier than this: until then the promoted master has no
# replica, so with WAIT 1 its money calls answer 503 (applied, not confirmed) and are retried
CLUSTER_REJOIN_SHARE = 0.45
CLUSTER_KILL = "kill -9 the master serving player 1, until its replica serves"
CLUSTER_REJOIN = "start the killed node: it rejoins as a replica"


async def redis_cluster_failover(root: Path, scale: Scale) -> list[ScenarioResult]:
    result = ScenarioResult(
        "redis-cluster-failover",
        f"kill -9 of the Redis Cluster master ({CLUSTER_MASTERS} masters, 1 replica each) "
        f"serving a player, its replica promoted, the node started again as a replica; "
        f"REDIS_WAIT_REPLICAS={CLUSTER_WAIT_REPLICAS}",
        f"no 5xx but 503, every attempt answered within the deadline (REDIS_TIMEOUT_MS "
        f"{CLUSTER_REDIS_TIMEOUT_MS} + {DEADLINE_MARGIN_MS} ms), every retry applied exactly "
        "once, every call answered 200 in the wallet and the history (WAIT 1: a replica had "
        "it before the answer), the writer drains, reconcile agrees.",
    )
    stack = FaultStack(
        root / "redis-cluster-failover",
        redis_timeout_ms=CLUSTER_REDIS_TIMEOUT_MS,
        cluster_masters=CLUSTER_MASTERS,
        wait_replicas=CLUSTER_WAIT_REPLICAS,
    )
    victim: list[str] = []  # the key whose master is killed
    killed: list[EmbeddedRedis] = []
    promoted: list[EmbeddedRedis] = []
    spans: dict[str, tuple[float, float]] = {}

    def kill_master() -> None:
        master, replicas = stack.kill_cluster_master(victim[0])
        killed.append(master)
        promoted.append(stack.wait_for_promotion(victim[0], master))
        result.require(promoted[0] in replicas, "the killed master's own replica takes over")

    def rejoin() -> None:
        stack.start_redis(killed[0])  # as an operator brings it back: same folder and port
        assert stack.cluster is not None
        master, replicas = stack.cluster.serving(victim[0])
        result.require(
            master is promoted[0] and replicas == killed,
            "the killed node rejoins as the promoted master's replica",
        )

    async def faults(timeline: Timeline) -> None:
        seconds = scale.seconds
        await timeline.at(CLUSTER_KILL_SHARE * seconds, CLUSTER_KILL, kill_master)
        await timeline.at(CLUSTER_REJOIN_SHARE * seconds, CLUSTER_REJOIN, rejoin)
        result.notes += timeline.log
        spans.update(timeline.spans)

    async def scenario() -> None:
        traffic = await new_traffic(stack, stack.gateway_url, scale)
        user = traffic.players[0].user_id
        victim.append(stack.keys.player(stack.keys.shard(user), user))
        try:
            await drive(traffic, scale, faults)
            caught_up = await wait_for_writer(stack, WRITER_CATCH_UP_SECONDS_MAX)
            result.require(caught_up is not None, "the writer drains the history after failover")
            await finish(result, traffic, stack, replays=scale.replays)
        finally:
            await traffic.close()
        kill_began, kill_ended = spans[CLUSTER_KILL]
        rejoin_ended = spans[CLUSTER_REJOIN][1]
        result.measured["kill -9 to the replica serving, ms"] = round(
            (kill_ended - kill_began) * 1000
        )
        result.measured["kill -9 to the killed node back as a replica, s"] = round(
            rejoin_ended - kill_began, 1
        )
        # the other masters serve meanwhile (few calls: a player's rounds also touch other
        # shards, so each soon waits on a call to the dead master's slots)
        result.measured["calls acknowledged while the master was down"] = sum(
            kill_began < call.acknowledged_at <= kill_ended for call in traffic.calls
        )
        require_deadline(result, CLUSTER_REDIS_TIMEOUT_MS)
        result.require(
            result.five_xx_total + result.undelivered > 0, "the failover was felt (503s seen)"
        )

    return [await run_scenario(result, stack, scenario)]


# --- 7. soak ------------------------------------------------------------------------------------

SOAK_SAMPLE_SECONDS = 2.0
SOAK_WARM_UP_SHARE = 0.2  # the first samples (imports, pools, caches filling) are not growth


async def soak(root: Path, scale: Scale) -> list[ScenarioResult]:
    result = ScenarioResult(
        "soak",
        f"a steady {scale.rounds_per_second:.0f} rounds/s of the provider mix, memory sampled",
        "nothing lost, nothing doubled, reconcile agrees; the memory growth per hour of the "
        "gateway, Redis and the writer is measured and reported.",
    )
    stack = FaultStack(root / "soak", workers=2)
    samples: list[tuple[float, dict[str, int]]] = []

    async def sample_memory() -> None:
        while True:
            samples.append((time.monotonic(), stack.rss_bytes()))
            await asyncio.sleep(SOAK_SAMPLE_SECONDS)

    async def scenario() -> None:
        traffic = await new_traffic(stack, stack.gateway_url, scale)
        started = time.monotonic()
        try:
            await drive(traffic, scale, lambda timeline: asyncio.sleep(0), sample_memory)
            elapsed = time.monotonic() - started
            caught_up = await wait_for_writer(stack, WRITER_CATCH_UP_SECONDS_MAX)
            result.require(caught_up is not None, "the writer keeps up")
            await finish(result, traffic, stack, replays=scale.replays)
        finally:
            await traffic.close()
        result.measured["calls per second achieved"] = round(traffic.stats.calls / elapsed, 1)
        redis_sizes = [sizes["redis"] for _, sizes in samples if sizes.get("redis")]
        if len(redis_sizes) > 1 and result.acknowledged:
            # Redis keeps every record for RECORD_RETENTION_SECONDS: it grows with the calls
            result.measured["Redis RSS growth per acknowledged money call, bytes"] = round(
                (redis_sizes[-1] - redis_sizes[0]) / result.acknowledged
            )
        for process in ("gateway", "redis", "writer"):
            result.measured[f"{process} RSS, MiB: start / end / growth per hour"] = memory_trend(
                samples, process
            )

    return [await run_scenario(result, stack, scenario)]


def memory_trend(samples: list[tuple[float, dict[str, int]]], process: str) -> str:
    """The first and last RSS after the warm-up, and the least-squares slope per hour."""
    points = [(moment, sizes[process]) for moment, sizes in samples if sizes.get(process)]
    points = points[int(len(points) * SOAK_WARM_UP_SHARE) :]
    if len(points) < 2:
        return "too few samples"
    slope = statistics.linear_regression(
        [moment for moment, _ in points], [size for _, size in points]
    ).slope
    return (
        f"{points[0][1] / MIB:.1f} / {points[-1][1] / MIB:.1f} / {slope * HOUR_SECONDS / MIB:+.1f}"
    )


# name -> (the scenario, its full scale, its CI scale), in the order `faults` runs them
# the fault scenarios; loadtests/faults/__init__.py adds hostile input (which imports this)
FAULT_SCENARIOS: dict[str, tuple[Scenario, Scale, Scale]] = {
    "lost-responses": (
        lost_responses,
        Scale(40, 100_000, 16),
        Scale(6, 20_000, 8, replays=REPLAYS_SHORT),
    ),
    "redis-kill": (redis_kill, Scale(30, 100_000, 16), Scale(6, 20_000, 8)),
    "gateway-kill": (
        gateway_kill,
        Scale(40, 100_000, 16),
        Scale(14, 20_000, 8, replays=REPLAYS_SHORT),
    ),
    "writer-postgres-kill": (
        writer_postgres_kill,
        Scale(40, 100_000, 16),
        Scale(12, 20_000, 8, replays=REPLAYS_SHORT, claim_idle_ms=CLAIM_IDLE_MS_SHORT),
    ),
    "slow-redis": (
        slow_redis,
        Scale(30, 100_000, 16),
        Scale(12, 20_000, 8, replays=REPLAYS_SHORT),
    ),
    "redis-cluster-failover": (
        redis_cluster_failover,
        Scale(30, 100_000, 16),
        Scale(12, 20_000, 8, replays=REPLAYS_SHORT),
    ),
    "soak": (
        soak,
        Scale(180, 500_000, 16, 60.0),
        Scale(10, 20_000, 8, 30.0, replays=REPLAYS_SHORT),
    ),
}
