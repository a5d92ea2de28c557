"""`wallet-gateway bench`: the benchmark an operator runs before trusting a Saturday night to us.

In one run, on one machine, it starts its own stack and measures, saying which load tool
measured each row:
1. the headline, by wrk (loadtests/wrk_bets.lua: pre-signed bets, each a new provider_tx_id):
   the empty aiohttp handler (loadtests/empty_app.py) and new bets on one gateway process,
   same connections, flat out, back to back, `--rounds` times: each round's ratio and their
   median (a noisy machine moves both numbers of a pair alike, not the rounds). Without wrk on
   the PATH the report says so and locust measures these rows, labelled as such: locust is then
   the limit (about 9k req/s on 2 cores), not aiohttp;
2. the provider-shaped mix (bets, wins, rollbacks, duplicates, balances, round closes) flat out,
   by locust;
3. new bets at half of the median maximum rate, and the empty handler at that rate, by locust
   at a fixed rate: the latency an operator will see, and what locust itself adds;
4. new bets by wrk for each further gateway process count (`--workers 1,2`);
5. Redis's own ceiling for new bets: each bet's Redis commands as the gateway sends them (its
   claim, its round's close read, the withdraw script, the session index's refresh; recorded
   by loadtests/wrk_bodies.py), sent straight to Redis on pipelined connections, each command
   to the master serving its key's slot (one Redis: the one master of every slot);
and for every phase the CPU seconds each process used (gateway or empty handler, Redis, writer,
PostgreSQL, load tool; loadtests/process_cpu.py), per 1,000 requests, Redis's INFO
commandstats and its used_memory (both added up over the masters). After the phases it reads
what one idempotency record of a new bet holds (MEMORY USAGE of a sample). Then it waits for
the history writer, runs reconcile, checks the money, and writes `report.json`, `report.md`
and `report.png` (the locust phases' throughput and latency over time).

It starts its own Redis (or, with `--redis-cluster N`, a Redis Cluster of N masters and N
replicas, as `up --redis-cluster N` does) and PostgreSQL, unless given URLs, and only ever
sends traffic to 127.0.0.1. The CPU table's Redis row is every Redis process: a cluster's
replicas included, its masters alone in a row of their own.
"""

import argparse
import asyncio
import csv
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from gateway.embedded import POSTMASTER_PID_LINE, EmbeddedRedisCluster, free_port
from gateway.keys import PREFIX as KEY_PREFIX
from gateway.keys import KeySpace
from gateway.redis_connection import (
    client_for_url,
    connect_background_redis,
    is_cluster_url,
    run_with_redis,
)
from gateway.settings import Settings
from gateway.signing import KeyRing
from gateway.stack import EmbeddedStack
from loadtests.process_cpu import CpuMeter, reap
from loadtests.wrk_bodies import TX_ID_PREFIX, Command, NewBets, bet_commands, new_players
from persistence.reconcile import reconcile
from persistence.schema import migrate
from persistence.streams import WriterLag, read_lag
from provider.client import WITHDRAW_PATH

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
WRK_SCRIPT = Path(__file__).with_name("wrk_bets.lua")
WRK_SUMMARY_PREFIX = "WRK_SUMMARY "
WRK_TIMEOUT_SECONDS = 10
# One wrk thread: it sends 25k req/s on a third of a core, far above the gateway. With more,
# each thread loads its bets while the threads before it already run: they start early.
WRK_THREADS = 1
CONNECTIONS_DEFAULT = 32
LOOPBACK = "127.0.0.1"
READY_SECONDS_MAX = 60.0
TCP_LISTEN = "0A"
PROCESS_STOP_SECONDS_MAX = 15.0
LAG_SAMPLE_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 5.0
REAP_POLL_SECONDS = 0.1
LOAD_TOOL_EXTRA_SECONDS = 30.0  # start-up and shutdown on top of the run time
HALF_RATE_FRACTION = 0.5
CEILING_CLASS = "EmptyHandlerCeiling"
NEW_BETS_CLASS = "NewBets"
# At a fixed rate, fewer users keep locust's own queueing out of the latencies it reports:
# against the empty handler at 1,700 req/s, p99 was 10 ms with 32 users, 3 ms with 8.
LATENCY_USERS_DEFAULT = 8
ROUNDS_DEFAULT = 3
WRITER_CATCH_UP_SECONDS_MAX = 120.0
BENCH_PROVIDER_KEYS = "bench-public:bench-secret"
BENCH_ADMIN_TOKEN = "bench-admin-token"
BENCH_PLAYERS = 64
# Pre-signed bets for a wrk phase: the rate it may reach times the run time, with this margin
# (rounds on this kind of machine differ by up to a third). A phase that still runs out says so
# as a failure; it never replays a bet.
BETS_MARGIN = 2.0
BETS_MIN = 1_000
CEILING_BETS = 20_000  # the empty handler's pool, sent round and round (a replay costs it the same)
# Redis's own ceiling: the calls prepared for it (about 40 us each, before the timing) are
# the best new-bet rate times the run time times this, at most REDIS_CALLS_MAX.
REDIS_HEADROOM = 3.0
REDIS_CALLS_MAX = 300_000
REDIS_CONNECTIONS = 2
REDIS_PIPELINE_DEPTH = 64
SCRIPT_OK = b"OK"
# MEMORY USAGE of this many of the bench's idempotency records (tx hash and owner key each)
MEMORY_SAMPLE_RECORDS = 200
SCAN_COUNT = 1000
TX_KEY_INFIX = ":tx:"  # KeySpace.tx: w:{shard}:tx:ID, the first ":tx:" in the key
T = TypeVar("T")
REDIS_COMMAND_SHARE_MIN = 0.01  # the Redis commands table leaves out the smaller ones

EMPTY_HANDLER, GATEWAY, REDIS = "empty handler", "gateway", "Redis"
WRK, LOCUST, PIPELINED_COMMANDS = "wrk", "locust", "pipelined commands"
WRK_LOAD = "pre-signed new bets"  # loadtests/wrk_bets.lua
WITHDRAW_LOAD = "new bets' Redis commands"
# the CPU table's rows: the server (gateway or empty handler), the stack, the load tool
SERVER, WRITER, POSTGRES, LOAD_TOOL = "server", "writer", "PostgreSQL", "load tool"
CPU_ROWS = (SERVER, REDIS, WRITER, POSTGRES, LOAD_TOOL)
# a cluster's masters alone: part of the Redis row, so never added to a column's total
REDIS_MASTERS = "Redis masters"
# the loads of new bets only (to the gateway, or straight to Redis: not the empty handler's
# wrk phases, which send the same bets): what Redis memory per new bet is measured over
NEW_BET_LOADS = (WRK_LOAD, NEW_BETS_CLASS, WITHDRAW_LOAD)
# Redis memory readings: used_memory, and in it what is not per bet: the seen-id filters
# (allocated whole by a shard's first id), the event streams (drained by the writer) and
# buffers (clients', replicas' and the AOF's, INFO memory's fields of BUFFER_FIELDS)
USED_MEMORY, SEEN_FILTERS, EVENT_STREAMS = "used_memory", "seen-id filters", "event streams"
BUFFERS = "buffers"
BUFFER_FIELDS = ("mem_clients_normal", "mem_clients_slaves", "mem_aof_buffer")
NOT_PER_BET = (SEEN_FILTERS, EVENT_STREAMS, BUFFERS)


@dataclass
class PhaseResult:
    name: str
    tool: str  # WRK, LOCUST or PIPELINED_COMMANDS
    load: str  # what was sent: a locust class, WRK_LOAD or WITHDRAW_LOAD
    server: str  # EMPTY_HANDLER, GATEWAY or REDIS
    workers: int
    users: int  # locust users, wrk connections, Redis connections
    seconds: int
    target_rps: float | None = None
    round_number: int | None = None  # the ceiling / new-bets pairs, measured back to back
    endpoints: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    # CPU seconds by CPU_ROWS, from the phase's start until the writer caught up after it
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    # Redis INFO commandstats over the same span: command -> calls and microseconds
    redis_commands: dict[str, dict[str, int]] = field(default_factory=dict)
    # what the Redis memory readings grew by over the same span, bytes (masters)
    redis_memory: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> dict[str, float]:
        return self.endpoints.get("Aggregated", {})

    @property
    def answered(self) -> float:
        """Requests answered with success: what the CPU is shared over."""
        return self.total.get("requests", 0.0) - self.total.get("failures", 0.0)

    @property
    def group(self) -> str:
        """The CPU table's column: the rounds of one kind are one column."""
        return self.name.split("-round-")[0]


@dataclass
class RecordMemory:
    """What one idempotency record of a new bet holds in Redis (MEMORY USAGE of a sample of
    the bench's own bets' records, on the masters), and the seen-id filters, fixed per shard."""

    sampled: int = 0
    tx_hash_bytes: float = 0.0  # w:{shard}:tx:ID, in the player's slot
    owner_key_bytes: float = 0.0  # w:{shard}:owner:ID, in the tx id's slot
    filter_bytes_per_shard: int = 0  # IDEMPOTENCY_FILTER_BITS / 8
    shards: int = 0
    filters_measured_bytes: int = 0  # MEMORY USAGE of every shard's filter
    used_memory_end_bytes: int = 0  # the masters' used_memory after the phases


@dataclass
class BenchReport:
    machine: str
    redis_cluster_masters: int = 0  # 0: one Redis
    # why wrk did not measure the headline ("" when it did)
    wrk_missing: str = ""
    phases: list[PhaseResult] = field(default_factory=list)
    duplicates_replayed: int = 0
    writer_lag_max_events: int = 0
    writer_lag_max_seconds: float = 0.0
    writer_lag_end_events: int = 0
    reconcile_agrees: bool = False
    reconcile_text: str = ""
    balances_redis_total: int = 0
    balances_history_total: int = 0
    lag_timeline: list[dict[str, float]] = field(default_factory=list)
    record_memory: RecordMemory = field(default_factory=RecordMemory)

    @property
    def money_check_passed(self) -> bool:
        return self.reconcile_agrees and self.balances_redis_total == self.balances_history_total

    def phase(self, name: str) -> PhaseResult | None:
        return next((phase for phase in self.phases if phase.name == name), None)

    def rounds(self) -> list[tuple[PhaseResult, PhaseResult]]:
        """(ceiling, new bets) of each round, measured back to back."""
        by_round: dict[int, dict[str, PhaseResult]] = {}
        for phase in self.phases:
            if phase.round_number is not None and phase.total.get("rps"):
                by_round.setdefault(phase.round_number, {})[phase.server] = phase
        return [
            (pair[EMPTY_HANDLER], pair[GATEWAY])
            for pair in by_round.values()
            if EMPTY_HANDLER in pair and GATEWAY in pair
        ]

    def ratios(self) -> dict[str, float]:
        """New-bet throughput as a fraction of the empty handler's: each round's, their median
        (`median`), and each further process count's against the median ceiling."""
        pairs = self.rounds()
        if not pairs:
            return {}
        ratios = {
            new_bets.name: round(new_bets.total["rps"] / ceiling.total["rps"], 3)
            for ceiling, new_bets in pairs
        }
        ratios["median"] = round(statistics.median(ratios.values()), 3)
        ceiling_rps = statistics.median(ceiling.total["rps"] for ceiling, _ in pairs)
        for phase in self.process_counts()[1:]:
            ratios[phase.name] = round(phase.total["rps"] / ceiling_rps, 3)
        return ratios

    def median_new_bets_rps(self) -> float:
        return statistics.median(new_bets.total["rps"] for _, new_bets in self.rounds())

    def process_counts(self) -> list[PhaseResult]:
        """New bets flat out by gateway process count: the rounds' median phase for the first
        count, then each further count's phase."""
        pairs = self.rounds()
        if not pairs:
            return []
        by_rps = sorted((new_bets for _, new_bets in pairs), key=lambda p: p.total["rps"])
        further = [phase for phase in self.phases if phase.name.endswith("-process")]
        return [by_rps[(len(by_rps) - 1) // 2], *further]

    def redis_ceiling(self) -> PhaseResult | None:
        return next((phase for phase in self.phases if phase.server == REDIS), None)

    def memory_per_new_bet(self) -> tuple[float, int]:
        """(bytes, new bets): what the masters' used_memory grew by per new bet applied, over
        the phases that apply only new bets, less what grew that is not per bet (NOT_PER_BET)."""
        phases = [
            p
            for p in self.phases
            if p.load in NEW_BET_LOADS and p.server != EMPTY_HANDLER and p.redis_memory
        ]
        bets = sum(phase.answered for phase in phases)
        grown = sum(
            phase.redis_memory[USED_MEMORY] - sum(phase.redis_memory[key] for key in NOT_PER_BET)
            for phase in phases
        )
        return (grown / bets if bets else 0.0), int(bets)

    def per_thousand(
        self, amounts: Callable[[PhaseResult], dict[str, float]]
    ) -> dict[str, dict[str, float]]:
        """Column (phase group) -> key -> the `amounts` of its phases, added up, per 1,000
        answered requests; a key a group never had is absent."""
        sums: dict[str, tuple[Counter[str], float]] = {}
        for phase in self.phases:
            added, answered = sums.get(phase.group, (Counter(), 0.0))
            added.update(amounts(phase))
            sums[phase.group] = (added, answered + phase.answered)
        return {
            group: {key: amount / answered * 1000 for key, amount in added.items()}
            for group, (added, answered) in sums.items()
            if answered
        }

    def cpu_per_thousand(self) -> dict[str, dict[str, float]]:
        """CPU seconds by CPU_ROWS per 1,000 answered requests, by phase group; a process
        that was not measured (an external server) is absent."""
        return self.per_thousand(lambda phase: phase.cpu_seconds)

    def redis_usec_per_thousand(self) -> dict[str, dict[str, float]]:
        """Microseconds inside Redis by command (INFO commandstats) per 1,000 answered
        requests, by phase group."""
        return self.per_thousand(
            lambda phase: {
                command: stats["usec"] for command, stats in phase.redis_commands.items()
            }
        )


# --- processes ------------------------------------------------------------------------------


@contextmanager
def running(
    command: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the length of the block, stopped with SIGTERM (then SIGKILL)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(
    process: subprocess.Popen[bytes], seconds_max: float = PROCESS_STOP_SECONDS_MAX
) -> None:
    """SIGTERM, then SIGKILL after `seconds_max`."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(seconds_max)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_ready(url: str, port: int, listeners: int, log_path: Path) -> None:
    """Until `url` answers 200 and `listeners` sockets listen on the port (each gateway worker
    binds its own, SO_REUSEPORT: the admin API is up before all of them are)."""
    deadline = time.monotonic() + READY_SECONDS_MAX
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200 and listening_sockets(port) >= listeners:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {READY_SECONDS_MAX} s; see {log_path}")


def listening_sockets(port: int) -> int:
    """IPv4 TCP sockets listening on `port`, from /proc/net/tcp (state 0A: LISTEN)."""
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        return sum(
            1
            for line in table
            if (fields := line.split())[3] == TCP_LISTEN
            and int(fields[1].rsplit(":", 1)[1], 16) == port
        )


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        PROVIDER_KEYS=settings.provider_keys,
        ADMIN_TOKEN=settings.admin_token,
        GATEWAY_HOST=LOOPBACK,
        ADMIN_HOST=LOOPBACK,
        GATEWAY_PORT=str(settings.gateway_port),
        ADMIN_PORT=str(settings.admin_port),
        LOG_LEVEL="WARNING",  # one JSON line per callback would measure the log, not the wallet
    )
    env.update(extra)
    return env


def stack_roots(stack: EmbeddedStack, writer_pid: int) -> dict[str, tuple[int, ...]]:
    """The processes measured in every phase besides the server: the embedded servers (an
    external one is not measured) and the history writer. A cluster's Redis is every node
    (a replica applies every write and appends it to its own AOF too), and its masters alone
    are a row of their own."""
    roots = {WRITER: (writer_pid,)}
    if isinstance(stack.redis, EmbeddedRedisCluster):
        roots[REDIS] = tuple(stack.redis.pids)
        roots[REDIS_MASTERS] = tuple(node.pid for node in stack.redis.nodes[: stack.redis.masters])
    elif stack.redis is not None:
        roots[REDIS] = (stack.redis.pid,)
    if stack.postgres is not None:
        postmaster_pid = (stack.postgres.pgdata_dir / "postmaster.pid").read_text().splitlines()
        roots[POSTGRES] = (int(postmaster_pid[POSTMASTER_PID_LINE]),)
    return roots


@dataclass(frozen=True)
class RedisMasters:
    """The masters the bench reads and sends to, and which serves each slot: one Redis is the
    one master of every slot, so both run the same code."""

    urls: tuple[str, ...]  # redis:// of each master alone
    slot_master: tuple[int, ...]  # slot -> index in `urls`

    def master_of(self, key: str | bytes) -> int:
        return self.slot_master[key_slot(key.encode() if isinstance(key, str) else key)]

    def clients(self) -> list[redis.Redis]:
        return [redis.Redis.from_url(url) for url in self.urls]

    def each(self, work: Callable[[redis.Redis], T]) -> list[T]:
        """`work(client)` on every master, in turn. -> its results, master by master."""
        results: list[T] = []
        for client in self.clients():
            try:
                results.append(work(client))
            finally:
                client.close()
        return results


def redis_masters(redis_url: str) -> RedisMasters:
    """One Redis, or the masters of the cluster `redis_url` names and their slots, as the
    gateway's own cluster client discovers them (the bench starts no failover: they stay)."""
    if not is_cluster_url(redis_url):
        return RedisMasters((redis_url,), (0,) * REDIS_CLUSTER_HASH_SLOTS)

    async def discover() -> RedisMasters:
        async with client_for_url(redis_url) as cluster:
            await cluster.initialize()
            masters = cluster.get_primaries()
            index = {node.name: number for number, node in enumerate(masters)}
            slots = cluster.nodes_manager.slots_cache
            # the cluster URL's credentials are every node's
            credentials = redis_url.partition("://")[2].rpartition("@")[0]
            return RedisMasters(
                tuple(f"redis://{credentials}@{node.host}:{node.port}/0" for node in masters),
                tuple(index[slots[slot][0].name] for slot in range(REDIS_CLUSTER_HASH_SLOTS)),
            )

    return asyncio.run(discover())


def redis_command_stats(masters: RedisMasters) -> dict[str, dict[str, int]]:
    """INFO commandstats, added up over the masters: command -> calls and microseconds so far."""
    summed: dict[str, Counter[str]] = {}
    for stats in masters.each(lambda client: client.info("commandstats")):
        for name, entry in stats.items():
            summed.setdefault(name.removeprefix("cmdstat_"), Counter()).update(
                calls=int(entry["calls"]), usec=int(entry["usec"])
            )
    return {command: dict(stats) for command, stats in summed.items()}


def memory_usage(masters: RedisMasters, keys: Sequence[str]) -> list[int]:
    """MEMORY USAGE (every element counted) of each key, on the master serving it; 0 for a key
    that does not exist."""
    clients = masters.clients()
    try:
        return [clients[masters.master_of(key)].memory_usage(key, samples=0) or 0 for key in keys]
    finally:
        for client in clients:
            client.close()


def redis_memory(masters: RedisMasters, shards: int) -> dict[str, int]:
    """used_memory added up over the masters, and in it the buffers, the seen-id filters and
    the event streams, bytes."""
    key_space = KeySpace(shards)
    infos = masters.each(lambda client: client.info("memory"))
    return {
        USED_MEMORY: sum(info["used_memory"] for info in infos),
        BUFFERS: sum(info[field] for info in infos for field in BUFFER_FIELDS),
        SEEN_FILTERS: sum(memory_usage(masters, [key_space.seen_filter(s) for s in range(shards)])),
        EVENT_STREAMS: sum(memory_usage(masters, key_space.all_streams())),
    }


def record_memory(masters: RedisMasters, settings: Settings) -> RecordMemory:
    """MEMORY USAGE of up to MEMORY_SAMPLE_RECORDS of the bench's new bets' records (tx ids
    `wrk-...`, loadtests/wrk_bodies.py), spread over the masters: each tx hash and the owner
    key of the same id (in the id's own slot, maybe on another master)."""
    per_master = math.ceil(MEMORY_SAMPLE_RECORDS / len(masters.urls))
    pattern = f"{KEY_PREFIX}:*{TX_KEY_INFIX}{TX_ID_PREFIX}*"  # KeySpace.tx of any shard
    tx_keys = [
        key.decode()
        for keys in masters.each(
            lambda client: list(
                itertools.islice(client.scan_iter(match=pattern, count=SCAN_COUNT), per_master)
            )
        )
        for key in keys
    ]
    key_space = KeySpace(settings.shards)
    tx_ids = [key.partition(TX_KEY_INFIX)[2] for key in tx_keys]
    owner_keys = [key_space.tx_owner(key_space.shard(tx_id), tx_id) for tx_id in tx_ids]
    filters = [key_space.seen_filter(shard) for shard in range(settings.shards)]
    tx_bytes, owner_bytes = memory_usage(masters, tx_keys), memory_usage(masters, owner_keys)
    return RecordMemory(
        sampled=len(tx_keys),
        tx_hash_bytes=statistics.fmean(tx_bytes) if tx_bytes else 0.0,
        owner_key_bytes=statistics.fmean(owner_bytes) if owner_bytes else 0.0,
        filter_bytes_per_shard=settings.idempotency_filter_bits // 8,
        shards=settings.shards,
        filters_measured_bytes=sum(memory_usage(masters, filters)),
        used_memory_end_bytes=redis_memory(masters, settings.shards)[USED_MEMORY],
    )


def command_stats_delta(
    started: dict[str, dict[str, int]], ended: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    zero = {"calls": 0, "usec": 0}
    delta = {
        command: {key: stats[key] - started.get(command, zero)[key] for key in zero}
        for command, stats in ended.items()
    }
    return {command: stats for command, stats in delta.items() if stats["calls"]}


def run_load_tool(
    phase: PhaseResult, command: list[str], env: dict[str, str], log_path: Path, lag: "LagSampler"
) -> float:
    """Run a load tool for the phase, with progress lines; -> the CPU seconds it used."""
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_SECONDS
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    while (cpu_seconds := reap(process)) is None:
        time.sleep(REAP_POLL_SECONDS)
        now = time.monotonic()
        if now - started > phase.seconds + LOAD_TOOL_EXTRA_SECONDS:
            process.kill()
            process.wait()
            raise RuntimeError(f"{command[0]} did not stop after {now - started:.0f} s")
        if now >= next_progress:
            next_progress += PROGRESS_EVERY_SECONDS
            print(
                f"[bench]   {min(now - started, phase.seconds):4.0f}/{phase.seconds} s  "
                f"{lag.latest()}",
                flush=True,
            )
    return cpu_seconds


def announce(phase: PhaseResult) -> None:
    print(
        f"[bench] {phase.name}: {phase.tool}, {phase.load} to the {phase.server}, "
        f"{phase.users} {'users' if phase.tool == LOCUST else 'connections'}, {phase.seconds} s"
        + (f", {phase.target_rps:.0f} req/s" if phase.target_rps else ""),
        flush=True,
    )


def print_outcome(phase: PhaseResult) -> None:
    total = phase.total
    print(
        f"[bench]   {total.get('rps', 0):.0f} req/s, p50 {total.get('p50_ms', 0):.1f} ms, "
        f"p99 {total.get('p99_ms', 0):.1f} ms, failures {sum(phase.failures.values())}",
        flush=True,
    )


# --- wrk ------------------------------------------------------------------------------------


def run_wrk(phase: PhaseResult, url: str, bets: Path, out_dir: Path, lag: "LagSampler") -> float:
    """wrk with loadtests/wrk_bets.lua: the bets of the files `bets.0`, ..., each once to the
    gateway, round and round to the empty handler. -> wrk's CPU seconds, without the loading
    of the bets (it loads them all, however few it gets to send)."""
    command = [
        "wrk", "-t", str(WRK_THREADS), "-c", str(phase.users), "-d", f"{phase.seconds}s",
        "--timeout", f"{WRK_TIMEOUT_SECONDS}s", "-s", str(WRK_SCRIPT), url + WITHDRAW_PATH,
        "--", str(bets), "repeat" if phase.server == EMPTY_HANDLER else "once",
    ]  # fmt: skip
    log_path = out_dir / f"{phase.name}.wrk.log"
    cpu_seconds = run_load_tool(phase, command, dict(os.environ), log_path, lag)
    summary = parse_wrk_summary(log_path.read_text())
    phase.endpoints = {"Aggregated": wrk_stats(summary)}
    phase.failures = wrk_failures(summary)
    return cpu_seconds - summary["init_cpu_seconds"]


def parse_wrk_summary(output: str) -> dict:
    """The JSON line wrk_bets.lua's done() prints."""
    for line in output.splitlines():
        if line.startswith(WRK_SUMMARY_PREFIX):
            return json.loads(line.removeprefix(WRK_SUMMARY_PREFIX))
    raise RuntimeError(f"no {WRK_SUMMARY_PREFIX.strip()} line in wrk's output:\n{output[-2000:]}")


def wrk_stats(summary: dict) -> dict[str, float]:
    latency_us = summary["latency_us"]
    return {
        "requests": summary["requests"],
        # an answer other than 2xx; socket errors and timeouts are not among the requests
        "failures": summary["errors"]["status"],
        "rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": latency_us["p50"] / 1000,
        "p95_ms": latency_us["p95"] / 1000,
        "p99_ms": latency_us["p99"] / 1000,
        "max_ms": latency_us["max"] / 1000,
    }


def wrk_failures(summary: dict) -> dict[str, int]:
    failures = {f"{kind} errors": count for kind, count in summary["errors"].items() if count}
    if summary["exhausted_threads"]:
        failures["ran out of pre-signed bets (threads)"] = summary["exhausted_threads"]
    return failures


# --- locust ---------------------------------------------------------------------------------


def run_locust(
    phase: PhaseResult, host: str, env: dict[str, str], out_dir: Path, lag: "LagSampler"
) -> float:
    """-> locust's CPU seconds, start-up included."""
    prefix = out_dir / phase.name
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), phase.load,
        "--headless", "--users", str(phase.users), "--spawn-rate", str(phase.users),
        "--run-time", f"{phase.seconds}s", "--host", host, "--csv", str(prefix),
        "--csv-full-history", "--only-summary", "--stop-timeout", "5",
    ]  # fmt: skip
    if phase.target_rps:
        env = {**env, "LOAD_THROUGHPUT_PER_USER": str(phase.target_rps / phase.users)}
    cpu_seconds = run_load_tool(phase, command, env, out_dir / f"{phase.name}.locust.log", lag)
    phase.endpoints = _read_stats(prefix.with_name(prefix.name + "_stats.csv"))
    phase.failures = _read_failures(prefix.with_name(prefix.name + "_failures.csv"))
    phase.history = _read_history(prefix.with_name(prefix.name + "_stats_history.csv"))
    return cpu_seconds


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # locust writes N/A for percentiles without samples
        return 0.0


def _read_stats(path: Path) -> dict[str, dict[str, float]]:
    with path.open() as file:
        return {
            row["Name"]: {
                "requests": _number(row["Request Count"]),
                "failures": _number(row["Failure Count"]),
                "rps": _number(row["Requests/s"]),
                "p50_ms": _number(row["50%"]),
                "p95_ms": _number(row["95%"]),
                "p99_ms": _number(row["99%"]),
                "max_ms": _number(row["Max Response Time"]),
            }
            for row in csv.DictReader(file)
        }


def _read_failures(path: Path) -> dict[str, int]:
    """Errors by what locust saw (the locustfile names them `status NNN`)."""
    failures: dict[str, int] = {}
    if path.exists():
        with path.open() as file:
            for row in csv.DictReader(file):
                failures[row["Error"]] = failures.get(row["Error"], 0) + int(row["Occurrences"])
    return failures


def _read_history(path: Path) -> list[dict[str, float]]:
    with path.open() as file:
        return [
            {
                "t": _number(row["Timestamp"]),
                "rps": _number(row["Requests/s"]),
                "p50_ms": _number(row["50%"]),
                "p99_ms": _number(row["99%"]),
            }
            for row in csv.DictReader(file)
            if row["Name"] == "Aggregated"
        ]


# --- Redis's own ceiling --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeCommands:
    """A bet's commands for one master, packed together, and what to read back."""

    packed: bytes
    replies: int
    money_reply: int | None  # which of the replies is the money script's, if it went here


# a bet's commands by master (the index of RedisMasters.urls)
PackedBet = tuple[NodeCommands, ...]


def command_key(command: tuple[Any, ...]) -> str:
    """The key a command is routed by: EVALSHA sha numkeys KEY ... (every key of a script is
    in one slot), or GET / PEXPIRE KEY ...."""
    return command[3] if command[0] == "EVALSHA" else command[1]


def pack_bet(bet: list[Command], packer: redis.Connection, masters: RedisMasters) -> PackedBet:
    """One bet's commands, each packed for the master serving its key, in the gateway's order."""
    money = max(n for n, (script, _) in enumerate(bet) if script)  # a claim comes first
    commands: list[list[bytes]] = [[] for _ in masters.urls]
    money_reply: list[int | None] = [None] * len(masters.urls)
    for number, (_, command) in enumerate(bet):
        node = masters.master_of(command_key(command))
        if number == money:
            money_reply[node] = len(commands[node])
        commands[node].append(b"".join(packer.pack_command(*command)))
    return tuple(
        NodeCommands(b"".join(packed), len(packed), money)
        for packed, money in zip(commands, money_reply, strict=True)
    )


def packed_bets(
    bets: NewBets, count: int, settings: Settings, masters: RedisMasters
) -> list[PackedBet]:
    """`count` new bets as the gateway's own Redis commands, packed by master; the scripts
    are loaded into every master here (the sources may have changed since the gateway
    started)."""
    packer = redis.Connection()  # packs only; never connects
    per_bet = asyncio.run(bet_commands(bets.bodies(count), settings))
    sources = {script.script for bet in per_bet for script, _ in bet if script}
    masters.each(lambda client: [client.script_load(source) for source in sources])
    return [pack_bet(bet, packer, masters) for bet in per_bet]


def send_pipelined(node_urls: Sequence[str], bets: list[PackedBet]) -> Counter[str]:
    """Send `bets` REDIS_PIPELINE_DEPTH at a time on one connection per master, each its
    share of the batch (the masters work on theirs side by side), then read each master's
    replies. -> the money scripts' outcomes other than OK."""
    failures: Counter[str] = Counter()
    clients = [redis.Redis.from_url(url) for url in node_urls]
    connections = [client.connection_pool.get_connection() for client in clients]
    try:
        for start in range(0, len(bets), REDIS_PIPELINE_DEPTH):
            batch = bets[start : start + REDIS_PIPELINE_DEPTH]
            for node, connection in enumerate(connections):
                packed = b"".join(bet[node].packed for bet in batch)
                if packed:
                    connection.send_packed_command([packed])
            for node, connection in enumerate(connections):
                for bet in batch:
                    for reply in range(bet[node].replies):
                        try:
                            answer = connection.read_response()
                        except redis.ResponseError as exc:
                            answer = [type(exc).__name__.encode()]
                        if reply == bet[node].money_reply and answer[0] != SCRIPT_OK:
                            failures[f"outcome {answer[0].decode()}"] += 1
    finally:
        for client, connection in zip(clients, connections, strict=True):
            client.connection_pool.release(connection)
            client.close()
    return failures


def run_redis_ceiling(phase: PhaseResult, masters: RedisMasters, bets: list[PackedBet]) -> float:
    """The bets' commands from `phase.users` threads of this process, each with a connection
    per master, flat out. -> the CPU seconds this process used meanwhile (the load tool's)."""
    shares = [bets[n :: phase.users] for n in range(phase.users)]
    cpu_started, started = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(phase.users) as senders:
        failures = sum(
            senders.map(lambda share: send_pipelined(masters.urls, share), shares), Counter()
        )
    elapsed = time.monotonic() - started
    phase.endpoints = {
        "Aggregated": {
            "requests": len(bets),
            "failures": failures.total(),
            "rps": len(bets) / elapsed,
        }
    }
    phase.failures = dict(failures)
    return time.process_time() - cpu_started


# --- the writer's lag -----------------------------------------------------------------------


class LagSampler:
    """Samples the history writer's lag once a second from Redis, in a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeline: list[dict[str, float]] = []
        self._stop = False

    def latest(self) -> str:
        if not self.timeline:
            return ""
        last = self.timeline[-1]
        return f"writer lag {last['events']:.0f} events, {last['seconds']:.1f} s"

    async def sample(self) -> WriterLag:
        async with connect_background_redis(self.settings.redis_url) as redis:
            return await read_lag(redis, self.settings.shards)

    def run(self) -> None:
        while not self._stop:
            try:
                lag = asyncio.run(self.sample())
                self.timeline.append(
                    {"t": time.time(), "events": lag.retained_events, "seconds": lag.seconds_behind}
                )
            except Exception as exc:  # a sample may fail while Redis is busy; the next one counts
                print(f"[bench] lag sample failed: {exc}", file=sys.stderr)
            time.sleep(LAG_SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop = True

    def wait_until_caught_up(self, seconds_max: float) -> None:
        """Until the history holds everything the streams do (or `seconds_max` passed)."""
        deadline = time.monotonic() + seconds_max
        while time.monotonic() < deadline:
            if asyncio.run(self.sample()).retained_events == 0:
                return
            time.sleep(LAG_SAMPLE_SECONDS)
        print(f"[bench] the writer did not catch up in {seconds_max:.0f} s", flush=True)


# --- the run --------------------------------------------------------------------------------


def scrape_replays(admin_url: str) -> int:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("wallet_idempotent_replays_total")
        )
    )


def wrk_missing() -> str:
    """Why wrk cannot measure the headline here ("" when it can)."""
    if shutil.which("wrk") is None:
        return "wrk not installed (no `wrk` on the PATH; `apt-get install wrk`)"
    return ""


def new_bets(admin_url: str, settings: Settings) -> NewBets:
    """The bench's players, created through the admin API, and their bets to come."""
    players = asyncio.run(new_players(admin_url, settings.admin_token, BENCH_PLAYERS))
    key_ring = KeyRing.parse(settings.provider_keys)
    public_key = key_ring.public_keys()[0]
    return NewBets(players, public_key, key_ring.secret(public_key))


@dataclass(frozen=True)
class Server:
    """Where a phase's requests go, and the process whose CPU is the table's server row."""

    url: str
    pid: int


class Bench:
    """The phases of one run, on a started stack, writer and empty handler."""

    def __init__(
        self,
        args: argparse.Namespace,
        settings: Settings,
        report: BenchReport,
        lag: "LagSampler",
        roots: dict[str, tuple[int, ...]],
        empty_handler: Server,
    ) -> None:
        self.args = args
        self.settings = settings
        self.report = report
        self.lag = lag
        self.roots = roots  # the processes measured besides the server
        self.masters = redis_masters(settings.redis_url)
        self.servers = {EMPTY_HANDLER: empty_handler}
        self.out_dir = Path(args.out).absolute()
        self.admin_url = f"http://{LOOPBACK}:{settings.admin_port}"
        self.load_env = child_env(settings, ADMIN_URL=self.admin_url)
        self._bets: NewBets | None = None

    @contextmanager
    def gateway(self, workers: int) -> Iterator[None]:
        """The gateway with `workers` processes, ready, for the length of the block."""
        command = [sys.executable, "-m", "gateway.cli", "serve", "--workers", str(workers)]
        log_path = self.out_dir / f"gateway-{workers}.log"
        with running(command, child_env(self.settings), log_path) as process:
            wait_until_ready(
                self.admin_url + "/readyz", self.settings.gateway_port, workers, log_path
            )
            if self._bets is None:
                self._bets = new_bets(self.admin_url, self.settings)
            self.servers[GATEWAY] = Server(
                f"http://{LOOPBACK}:{self.settings.gateway_port}", process.pid
            )
            yield

    @property
    def bets(self) -> NewBets:
        assert self._bets is not None, "the players are created once a gateway is up"
        return self._bets

    def measure(self, phase: PhaseResult, drive: Callable[[PhaseResult], float]) -> None:
        """Drive the phase's load (`drive` returns the load tool's CPU seconds), with every
        process's CPU from the phase's start until the writer caught up after it. Every phase
        starts with the writer caught up, so none pays for the last one's lag."""
        self.lag.wait_until_caught_up(WRITER_CATCH_UP_SECONDS_MAX)
        server = self.servers.get(phase.server)
        meter = CpuMeter(self.roots if server is None else {SERVER: server.pid, **self.roots})
        announce(phase)
        commands_started = redis_command_stats(self.masters)
        memory_started = redis_memory(self.masters, self.settings.shards)
        meter.start()
        load_tool_seconds = drive(phase)
        self.lag.wait_until_caught_up(WRITER_CATCH_UP_SECONDS_MAX)
        phase.cpu_seconds = {**meter.stop(), LOAD_TOOL: load_tool_seconds}
        phase.redis_commands = command_stats_delta(
            commands_started, redis_command_stats(self.masters)
        )
        memory_ended = redis_memory(self.masters, self.settings.shards)
        phase.redis_memory = {key: memory_ended[key] - memory_started[key] for key in memory_ended}
        self.report.phases.append(phase)
        print_outcome(phase)

    def locust(self, phase: PhaseResult) -> None:
        url = self.servers[phase.server].url
        self.measure(
            phase, lambda phase: run_locust(phase, url, self.load_env, self.out_dir, self.lag)
        )

    def flat_out(
        self, name: str, server: str, workers: int, round_number: int | None = None
    ) -> None:
        """New bets to the gateway, or the same requests to the empty handler, flat out: by
        wrk, else by locust."""
        args = self.args
        if self.report.wrk_missing:
            load = CEILING_CLASS if server == EMPTY_HANDLER else NEW_BETS_CLASS
            tool, users = LOCUST, args.users
        else:
            load, tool, users = WRK_LOAD, WRK, args.connections
        phase = PhaseResult(
            name, tool, load, server, workers, users, args.duration_seconds, None, round_number
        )
        if tool == LOCUST:
            self.locust(phase)
            return
        count = CEILING_BETS if server == EMPTY_HANDLER else self.bets_needed(workers)
        prefix = self.out_dir / f"{name}.bets"
        self.bets.write_wrk_files(count, WRK_THREADS, prefix)
        url = self.servers[server].url
        try:
            self.measure(
                phase,
                lambda phase: run_wrk(phase, url, prefix, self.out_dir, self.lag),
            )
        finally:
            for thread in range(WRK_THREADS):
                Path(f"{prefix}.{thread}").unlink()

    def bets_needed(self, workers: int) -> int:
        """Enough bets for new bets flat out on `workers` processes: BETS_MARGIN times the run
        time at the best rate per process so far times `workers` (before any, the empty
        handler's). Fewer bets to load keep wrk's start-up out of its CPU per request."""
        per_process = [
            p.total["rps"] / p.workers
            for p in self.report.phases
            if p.load == WRK_LOAD and p.server == GATEWAY
        ] or [p.total["rps"] for p in self.report.phases if p.server == EMPTY_HANDLER]
        return (
            math.ceil(max(per_process) * workers * self.args.duration_seconds * BETS_MARGIN)
            + BETS_MIN
        )

    def at_rate(self, name: str, load: str, server: str, rps: float) -> None:
        self.locust(
            PhaseResult(
                name,
                LOCUST,
                load,
                server,
                1,
                self.args.latency_users,
                self.args.duration_seconds,
                rps,
            )
        )

    def redis_ceiling(self) -> None:
        """New bets' commands straight to Redis, as many as Redis may do in the phase's time
        at REDIS_HEADROOM times the best new-bet rate."""
        best = max(p.total["rps"] for p in self.report.phases if p.server == GATEWAY)
        count = min(REDIS_CALLS_MAX, math.ceil(best * REDIS_HEADROOM * self.args.duration_seconds))
        print(f"[bench] preparing {count} new bets' Redis commands", flush=True)
        commands = packed_bets(self.bets, count, self.settings, self.masters)
        phase = PhaseResult(
            "redis-new-bets",
            PIPELINED_COMMANDS,
            WITHDRAW_LOAD,
            REDIS,
            0,
            REDIS_CONNECTIONS,
            self.args.duration_seconds,
        )
        self.measure(phase, lambda phase: run_redis_ceiling(phase, self.masters, commands))

    def run_phases(self) -> None:
        args = self.args
        first, *further = args.workers
        with self.gateway(first):
            for number in range(1, args.rounds + 1):
                self.flat_out(f"ceiling-round-{number}", EMPTY_HANDLER, 1, number)
                self.flat_out(f"new-bets-{first}-process-round-{number}", GATEWAY, first, number)
            self.locust(
                PhaseResult(
                    "provider-mix",
                    LOCUST,
                    "Provider",
                    GATEWAY,
                    first,
                    args.users,
                    args.duration_seconds,
                )
            )
            half_rate = HALF_RATE_FRACTION * self.report.median_new_bets_rps()
            self.at_rate("new-bets-half-rate", NEW_BETS_CLASS, GATEWAY, half_rate)
            self.at_rate("ceiling-half-rate", CEILING_CLASS, EMPTY_HANDLER, half_rate)
            self.report.duplicates_replayed = scrape_replays(self.admin_url)
        for workers in further:
            with self.gateway(workers):
                self.flat_out(f"new-bets-{workers}-process", GATEWAY, workers)
        self.redis_ceiling()


def run_bench(args: argparse.Namespace) -> BenchReport:
    out_dir = Path(args.out).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="wallet-bench-"))
    settings = Settings(
        redis_url=args.redis_url,
        database_url=args.database_url,
        data_dir=str(data_dir),
        provider_keys=BENCH_PROVIDER_KEYS,
        admin_token=BENCH_ADMIN_TOKEN,
        gateway_port=free_port(),
        admin_port=free_port(),
        redis_cluster_masters=args.redis_cluster,
    )
    stack = EmbeddedStack(settings)
    report = BenchReport(
        machine=f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{redis_described(settings, os.cpu_count() or 1)}, Redis AOF appendfsync "
        f"{settings.redis_appendfsync}",
        redis_cluster_masters=settings.redis_cluster_masters if not args.redis_url else 0,
        wrk_missing=wrk_missing(),
    )
    settings = stack.start(settings)
    lag = LagSampler(settings)
    sampler = threading.Thread(target=lag.run, daemon=True)
    try:
        asyncio.run(migrate(settings.database_url))
        sampler.start()
        port = free_port()
        empty_handler = [sys.executable, "-m", "loadtests.empty_app", str(port)]
        writer = [sys.executable, "-m", "persistence.writer"]
        with (
            running(writer, child_env(settings), out_dir / "writer.log") as writer_process,
            running(empty_handler, os.environ.copy(), out_dir / "empty_app.log") as empty_process,
        ):
            time.sleep(1.0)  # the empty handler's start-up (it has no readiness route)
            bench = Bench(
                args,
                settings,
                report,
                lag,
                stack_roots(stack, writer_process.pid),
                Server(f"http://{LOOPBACK}:{port}", empty_process.pid),
            )
            bench.run_phases()
            report.record_memory = record_memory(bench.masters, settings)
            print("[bench] waiting for the history writer, then reconciling", flush=True)
            outcome = asyncio.run(run_with_redis(settings, reconcile))
        report.reconcile_agrees = outcome.agrees
        report.reconcile_text = outcome.render()
        report.balances_redis_total = outcome.redis_balance_total
        report.balances_history_total = outcome.history_balance_total
    finally:
        lag.stop()
        stack.stop()
    report.lag_timeline = lag.timeline
    report.writer_lag_max_events = int(max((s["events"] for s in lag.timeline), default=0))
    report.writer_lag_max_seconds = max((s["seconds"] for s in lag.timeline), default=0.0)
    report.writer_lag_end_events = int(lag.timeline[-1]["events"]) if lag.timeline else 0
    write_report(report, out_dir)
    return report


def redis_described(settings: Settings, cores: int) -> str:
    if settings.redis_url:
        return "Redis Cluster (external)" if is_cluster_url(settings.redis_url) else "Redis"
    masters = settings.redis_cluster_masters
    if not masters:
        return "one embedded Redis"
    return (
        f"an embedded Redis Cluster of {masters} masters and {masters} replicas, every node on "
        f"this machine, sharing its {cores} cores with the rest of the stack"
    )


# --- the report -----------------------------------------------------------------------------


def write_report(report: BenchReport, out_dir: Path) -> None:
    data = asdict(report)
    data["ratios_to_empty_handler"] = report.ratios()
    data["cpu_seconds_per_1000_requests"] = report.cpu_per_thousand()
    data["redis_bytes_per_new_bet"], data["redis_memory_new_bets"] = report.memory_per_new_bet()
    data["money_check_passed"] = report.money_check_passed
    (out_dir / "report.json").write_text(json.dumps(data, indent=2))
    (out_dir / "report.md").write_text(render_markdown(report))
    draw_chart(report, out_dir / "report.png")
    print((out_dir / "report.md").read_text(), flush=True)


def _ms(stats: dict[str, float], key: str) -> str:
    """A latency, or '-' where the tool measured none (the pipelined Redis client)."""
    return f"{stats[key]:.1f}" if key in stats else "-"


def render_headline(report: BenchReport) -> list[str]:
    pairs = report.rounds()
    if not pairs:
        return ["No ceiling / new-bets round was measured."]
    tool = pairs[0][1].tool
    lines = []
    if report.wrk_missing:
        lines += [
            f"**Not measured by wrk: {report.wrk_missing}.** The rows below were measured by "
            "locust instead, whose own limit (about 9k req/s on 2 cores) caps both numbers: the "
            "ratio understates the gateway.",
            "",
        ]
    lines += [
        f"Headline: new bets at **{report.ratios()['median']:.2f}x** the empty aiohttp handler "
        f"(median of {len(pairs)} round{'s' if len(pairs) > 1 else ''}, 1 gateway process, "
        f"measured by {tool}, "
        f"{pairs[0][1].users} {'users' if tool == LOCUST else 'connections'} for both).",
        "",
        "| round | tool | empty handler req/s | new bets req/s | ratio | new bets p50 ms "
        "| new bets p99 ms | empty handler p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ceiling, new_bets in pairs:
        lines.append(
            f"| {new_bets.round_number} | {tool} | {ceiling.total['rps']:.0f} | "
            f"{new_bets.total['rps']:.0f} | {new_bets.total['rps'] / ceiling.total['rps']:.2f}x | "
            f"{_ms(new_bets.total, 'p50_ms')} | {_ms(new_bets.total, 'p99_ms')} | "
            f"{_ms(ceiling.total, 'p99_ms')} |"
        )
    return lines


def render_scaling(report: BenchReport) -> list[str]:
    """Throughput by gateway process count, next to the empty handler and to Redis's own
    ceiling for new bets."""
    redis_ceiling = report.redis_ceiling()
    ratios = report.ratios()
    lines = [
        "| gateway processes | tool | new bets req/s | p99 ms | to the empty handler "
        "| to Redis's own ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for index, phase in enumerate(report.process_counts()):
        to_ceiling = ratios["median"] if index == 0 else ratios[phase.name]
        to_redis = (
            f"{phase.total['rps'] / redis_ceiling.total['rps']:.2f}x"
            if redis_ceiling and not redis_ceiling.failures
            else "-"
        )
        lines.append(
            f"| {phase.workers} | {phase.tool} | {phase.total['rps']:.0f} | "
            f"{_ms(phase.total, 'p99_ms')} | {to_ceiling:.2f}x | {to_redis} |"
        )
    if redis_ceiling and redis_ceiling.failures:
        lines += [
            "",
            "Redis's own ceiling for new bets: not measured, Redis refused calls: "
            + ", ".join(f"{kind}: {count}" for kind, count in redis_ceiling.failures.items()),
        ]
    elif redis_ceiling:
        lines += [
            "",
            f"Redis's own ceiling for new bets: **{redis_ceiling.total['rps']:.0f} "
            f"bets/s** ({redis_ceiling.total['requests']:.0f} new bets, each the Redis "
            "commands the gateway sends for it (one Redis: its claim-and-withdraw script; a "
            "cluster: its claim, its round's close read, its withdraw script and its session "
            "index's refresh), recorded by loadtests/wrk_bodies.py, sent by the bench on "
            f"{redis_ceiling.users} connections {REDIS_PIPELINE_DEPTH} deep, the writer "
            "draining the streams meanwhile).",
        ]
    return lines


def render_cpu_table(report: BenchReport) -> list[str]:
    per_thousand = report.cpu_per_thousand()
    tools: dict[str, str] = {}
    for phase in report.phases:
        tools.setdefault(phase.group, phase.tool)
    lines = [
        "| process | " + " | ".join(f"{group} ({tools[group]})" for group in per_thousand) + " |",
        "|---|" + "---|" * len(per_thousand),
    ]
    labels = {
        SERVER: "server: the gateway (its workers included), or the empty handler",
        REDIS: "Redis, every node: masters and replicas"
        if report.redis_cluster_masters
        else "Redis",
        REDIS_MASTERS: "of which the Redis masters",
        WRITER: "writer",
        POSTGRES: "PostgreSQL (postmaster and backends)",
        LOAD_TOOL: "load tool (wrk without loading its bets; locust with its start-up; the "
        "bench's client for Redis)",
    }
    measured = {row for column in per_thousand.values() for row in column}
    rows = (SERVER, REDIS, REDIS_MASTERS, WRITER, POSTGRES, LOAD_TOOL)
    for row in (row for row in rows if row in CPU_ROWS or row in measured):
        cells = [f"{column[row]:.3f}" if row in column else "-" for column in per_thousand.values()]
        lines.append(f"| {labels[row]} | " + " | ".join(cells) + " |")
    # the masters are in the Redis row already
    totals = [
        f"{sum(column.get(row, 0.0) for row in CPU_ROWS):.3f}" for column in per_thousand.values()
    ]
    lines.append("| total | " + " | ".join(totals) + " |")
    return lines


def render_redis_commands(report: BenchReport) -> list[str]:
    """Microseconds inside Redis per request, by command (those above REDIS_COMMAND_SHARE_MIN
    of a column's), next to Redis's whole CPU from /proc."""
    per_thousand = report.redis_usec_per_thousand()
    cpu = report.cpu_per_thousand()
    commands = sorted(
        {
            command
            for column in per_thousand.values()
            for command, usec in column.items()
            if usec >= REDIS_COMMAND_SHARE_MIN * sum(column.values())
        },
        key=lambda command: -max(column.get(command, 0.0) for column in per_thousand.values()),
    )
    lines = [
        "| Redis, us per request | " + " | ".join(per_thousand) + " |",
        "|---|" + "---|" * len(per_thousand),
    ]
    for command in commands:
        cells = [f"{column.get(command, 0.0) / 1000:.1f}" for column in per_thousand.values()]
        lines.append(f"| {command} | " + " | ".join(cells) + " |")
    # commandstats are the masters': next to their CPU (one Redis: the one process)
    row = REDIS_MASTERS if report.redis_cluster_masters else REDIS
    whole = [
        f"{cpu[group][row] * 1000:.1f}" if row in cpu.get(group, {}) else "-"
        for group in per_thousand
    ]
    label = "the masters' processes" if report.redis_cluster_masters else "the Redis process"
    lines.append(f"| {label} (/proc) | " + " | ".join(whole) + " |")
    return lines


def render_memory(report: BenchReport) -> list[str]:
    """Redis memory per new bet and per idempotency record, and the seen-id filters."""
    per_bet, bets = report.memory_per_new_bet()
    records = report.record_memory
    where = (
        f"the {report.redis_cluster_masters} masters added up; each replica holds its "
        "master's data again"
        if report.redis_cluster_masters
        else "the one Redis"
    )
    filters_mib = records.filter_bytes_per_shard * records.shards / 2**20
    return [
        f"Bytes of Redis memory ({where}):",
        "",
        "| what | bytes | measured how |",
        "|---|---|---|",
        f"| per new bet applied | {per_bet:.0f} | INFO memory used_memory before and after "
        f"each phase of new bets only ({bets} bets), less what the seen-id filters, event "
        "streams and buffers grew by |",
        f"| one idempotency record: the tx hash | {records.tx_hash_bytes:.0f} | MEMORY USAGE, "
        f"mean of {records.sampled} of the bench's bets |",
        f"| one idempotency record: the owner key | {records.owner_key_bytes:.0f} | the same "
        "bets' |",
        f"| one idempotency record: both | {records.tx_hash_bytes + records.owner_key_bytes:.0f}"
        " | without the key tables' and expiry table's entries, which per bet above includes |",
        f"| seen-id filter, per shard | {records.filter_bytes_per_shard} | "
        f"IDEMPOTENCY_FILTER_BITS / 8, fixed: {records.shards} shards = {filters_mib:.0f} MiB "
        f"(MEMORY USAGE of all: {records.filters_measured_bytes}) |",
        f"| used_memory after the phases | {records.used_memory_end_bytes} | INFO memory |",
    ]


def render_markdown(report: BenchReport) -> str:
    lines = [
        "# wallet-gateway bench",
        "",
        f"Machine: {report.machine}. The load tools run on the same machine; all phases in one "
        "run.",
        "",
        "## New bets against the empty aiohttp handler",
        "",
        *render_headline(report),
        "",
        "## More gateway processes, and Redis's own ceiling",
        "",
        *render_scaling(report),
        "",
        "## Where the CPU goes",
        "",
        "CPU seconds per 1,000 answered requests (= CPU ms per request), by process, from "
        "/proc: from each phase's start until the writer caught up after it, the rounds of a "
        "kind added up. A row a server outside the bench would be is '-'.",
        "",
        *render_cpu_table(report),
        "",
        "Inside Redis: each command's time per request (INFO commandstats over the same span), "
        "next to the Redis process's CPU per request from /proc. `evalsha` includes the "
        "commands its scripts run, which are counted under their own names too; what the "
        "commands leave of the process's CPU is its event loop, sockets and AOF writes.",
        "",
        *render_redis_commands(report),
        "",
        "## Redis memory",
        "",
        *render_memory(report),
        "",
        "## Every phase",
        "",
        "| phase | tool | processes | users / connections | endpoint | req/s | p50 ms | p95 ms "
        "| p99 ms | max ms | failures |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in report.phases:
        for name, stats in phase.endpoints.items():
            lines.append(
                f"| {phase.name} | {phase.tool} | {phase.workers} | {phase.users} | {name} | "
                f"{stats['rps']:.0f} | {_ms(stats, 'p50_ms')} | {_ms(stats, 'p95_ms')} | "
                f"{_ms(stats, 'p99_ms')} | {_ms(stats, 'max_ms')} | {stats['failures']:.0f} |"
            )
    lines += ["", "Errors by kind:", ""]
    errors = {
        f"{phase.name}: {error}": count
        for phase in report.phases
        for error, count in phase.failures.items()
    }
    lines += [f"- {error}: {count}" for error, count in errors.items()] or ["- none"]
    gateway, floor = report.phase("new-bets-half-rate"), report.phase("ceiling-half-rate")
    if gateway and floor:
        lines += [
            "",
            f"Latency at half of the median maximum new-bet rate ({gateway.target_rps:.0f} "
            f"req/s, locust, {gateway.users} users), next to the empty handler at the same rate: "
            "what locust itself adds:",
            "",
            f"- gateway: p50 {_ms(gateway.total, 'p50_ms')} ms, "
            f"p99 {_ms(gateway.total, 'p99_ms')} ms",
            f"- empty handler: p50 {_ms(floor.total, 'p50_ms')} ms, "
            f"p99 {_ms(floor.total, 'p99_ms')} ms",
        ]
    lines += [
        "",
        f"Duplicates replayed (idempotent answers): {report.duplicates_replayed}",
        f"Writer lag: max {report.writer_lag_max_events} events / "
        f"{report.writer_lag_max_seconds:.1f} s; at the end {report.writer_lag_end_events} events",
        "",
        f"Money check: {'PASSED' if report.money_check_passed else 'FAILED'} (sum of balances: "
        f"Redis {report.balances_redis_total}, history {report.balances_history_total} millis "
        "= opening balances + adjustments - stakes + wins + refunds)",
        "",
        "```",
        report.reconcile_text,
        "```",
        "",
    ]
    return "\n".join(lines)


def draw_chart(report: BenchReport, path: Path) -> None:
    """Throughput and latency over time of the phases with a history (locust's)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    start = min((p.history[0]["t"] for p in report.phases if p.history), default=0.0)
    for phase in report.phases:
        if not phase.history:
            continue
        seconds = [sample["t"] - start for sample in phase.history]
        throughput.plot(seconds, [s["rps"] for s in phase.history], label=phase.name)
        latency.plot(seconds, [s["p99_ms"] for s in phase.history], label=f"{phase.name} p99")
        latency.plot(
            seconds, [s["p50_ms"] for s in phase.history], linestyle=":", label=f"{phase.name} p50"
        )
    throughput.set_ylabel("requests / s")
    latency.set_ylabel("latency, ms")
    latency.set_xlabel("seconds since the first locust phase")
    throughput.legend(fontsize="small")
    latency.legend(fontsize="x-small", ncol=2)
    figure.suptitle("wallet-gateway bench: the locust phases")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# --- command line ---------------------------------------------------------------------------


def _process_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--workers takes process counts like 1 or 1,2")
    return counts


def _cluster_masters(text: str) -> int:
    try:
        return Settings(redis_cluster_masters=int(text)).validate().redis_cluster_masters
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration-seconds", type=int, default=20, help="per phase (default 20)")
    parser.add_argument("--users", type=int, default=32, help="locust users (default 32)")
    parser.add_argument(
        "--connections",
        type=int,
        default=CONNECTIONS_DEFAULT,
        help=f"wrk connections of the flat-out phases (default {CONNECTIONS_DEFAULT})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS_DEFAULT,
        help=f"ceiling / new-bets pairs, back to back (default {ROUNDS_DEFAULT})",
    )
    parser.add_argument(
        "--latency-users",
        type=int,
        default=LATENCY_USERS_DEFAULT,
        help=f"locust users of the fixed-rate phases (default {LATENCY_USERS_DEFAULT})",
    )
    parser.add_argument(
        "--workers",
        type=_process_counts,
        default=[1],
        help="gateway process counts to sweep, e.g. 1,2 (default 1)",
    )
    parser.add_argument("--out", default="bench-report", help="report folder")
    parser.add_argument("--redis-url", default="", help="use this Redis instead of embedded")
    parser.add_argument(
        "--redis-cluster",
        type=_cluster_masters,
        default=0,
        metavar="N",
        help="run every phase on an embedded Redis Cluster of N masters (3 or more) and N "
        "replicas, as `up --redis-cluster N` (default 0: one Redis)",
    )
    parser.add_argument("--database-url", default="", help="use this PostgreSQL, not embedded")


def run(args: argparse.Namespace) -> int:
    if args.redis_cluster and args.redis_url:
        raise SystemExit("bench: --redis-cluster starts a cluster; --redis-url names one")
    report = run_bench(args)
    return 0 if report.money_check_passed else 1
