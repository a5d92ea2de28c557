"""A stack of the suite's own in which every process can be killed by its pid: embedded Redis (or
a Redis Cluster) and PostgreSQL in a temporary folder, `wallet-gateway serve --workers N` and the
history writer as child processes, all on loopback.

The process plumbing (the children's environment, readiness) is the bench's
(loadtests/bench.py): the suite drives the same processes the bench measures.
"""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from gateway.embedded import (
    POSTMASTER_PID_LINE,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedRedisCluster,
    free_port,
)
from gateway.keys import KeySpace
from gateway.metrics import MULTIPROCESS_DIR_ENV
from gateway.settings import Settings
from gateway.signing import KeyRing
from loadtests.bench import LOOPBACK, child_env, stop_process, wait_until_ready
from persistence.schema import migrate

FAULTS_PROVIDER_KEYS = "faults-public:faults-secret"
FAULTS_ADMIN_TOKEN = "faults-admin-token"
STOP_SECONDS_MAX = 15.0
LOG_LINE_CHARS_MAX = 1500
# the last line of a traceback printed to stderr: `redis.exceptions.ReadOnlyError: ...`
UNCAUGHT_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")
# a worker's command line: multiprocessing's spawn (the resource tracker is the other child)
SPAWNED_WORKER_MARK = b"spawn_main"


class FaultStack:
    """Start it, hurt it (kill -9 a gateway worker, the writer, Redis, a cluster master,
    PostgreSQL), start the part again, and stop it all at the end (`close`)."""

    def __init__(
        self,
        root: Path,
        *,
        workers: int = 1,
        appendfsync: str = "always",
        redis_timeout_ms: int = 1000,
        client_timeout_seconds: int = 15,
        writer_args: tuple[str, ...] = (),
        cluster_masters: int = 0,
        wait_replicas: int = 0,
    ) -> None:
        """`cluster_masters` > 0: a Redis Cluster of that many masters, one replica each,
        instead of the one Redis; `wait_replicas`: the gateway's REDIS_WAIT_REPLICAS."""
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.cluster = (
            EmbeddedRedisCluster(
                root / "redis-cluster", masters=cluster_masters, appendfsync=appendfsync
            )
            if cluster_masters
            else None
        )
        self._redis = (
            None if self.cluster else EmbeddedRedis(root / "redis", appendfsync=appendfsync)
        )
        # durable as in production: with fast_unsafe (synchronous_commit off) a kill -9 of
        # PostgreSQL lost the last commits the writer had already acknowledged in Redis
        self.postgres = EmbeddedPostgres(root / "postgres")
        self.settings = Settings(
            redis_url=self.redis_server.url,
            database_url=self.postgres.url,
            data_dir=str(root),
            provider_keys=FAULTS_PROVIDER_KEYS,
            admin_token=FAULTS_ADMIN_TOKEN,
            gateway_port=free_port(),
            admin_port=free_port(),
            redis_timeout_ms=redis_timeout_ms,
            client_timeout_seconds=client_timeout_seconds,
            redis_appendfsync=appendfsync,
            redis_wait_replicas=wait_replicas,
        )
        self.writer_args = writer_args
        self.keys = KeySpace(self.settings.shards)
        self.gateway: subprocess.Popen[bytes] | None = None
        self.writer: subprocess.Popen[bytes] | None = None

    # --- addresses and credentials --------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://{LOOPBACK}:{self.settings.gateway_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.settings.admin_port}"

    def provider_key(self) -> tuple[str, str]:
        ring = KeyRing.parse(self.settings.provider_keys)
        public = ring.public_keys()[0]
        return public, ring.secret(public)

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=10)

    # below redis_client: in the class body from here on, `redis` names this property
    @property
    def redis(self) -> EmbeddedRedis:
        """The one Redis (the scenarios that kill, pause or replicate it run no cluster)."""
        assert self._redis is not None, "this stack runs a Redis Cluster"
        return self._redis

    @property
    def redis_server(self) -> EmbeddedRedis | EmbeddedRedisCluster:
        return self.cluster or self.redis

    # --- the whole stack ------------------------------------------------------------------------

    def start(self) -> None:
        self.redis_server.start()
        self.postgres.start()
        asyncio.run(migrate(self.postgres.url))
        self.start_writer()
        self.start_gateway()

    def close(self) -> None:
        """Stop whatever runs, children first; safe after any fault."""
        for process in (self.gateway, self.writer):
            if process is not None:
                stop_process(process, STOP_SECONDS_MAX)
        self.kill_orphaned_workers()
        self.gateway = self.writer = None
        self.postgres.stop()
        self.redis_server.stop()

    def redis_pids(self) -> list[int]:
        if self.cluster is not None:
            return self.cluster.pids
        return [self.redis.pid] if self.redis.running else []

    # --- the gateway ----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # the deadline the scenarios hold the answers to is the gateway's own
        env = child_env(
            self.settings,
            REDIS_TIMEOUT_MS=str(self.settings.redis_timeout_ms),
            REDIS_WAIT_REPLICAS=str(self.settings.redis_wait_replicas),
            CLIENT_TIMEOUT_SECONDS=str(self.settings.client_timeout_seconds),
        )
        env.pop(MULTIPROCESS_DIR_ENV, None)  # the serve process makes its own
        return env

    def start_gateway(self, workers: int | None = None) -> None:
        """`serve --workers N`, ready: the admin API answers and N sockets listen."""
        assert self.gateway is None, "the gateway runs already"
        self.workers = workers or self.workers
        command = [sys.executable, "-m", "gateway.cli", "serve", "--workers", str(self.workers)]
        log_path = self.logs / "gateway.log"
        with log_path.open("ab") as log:
            self.gateway = subprocess.Popen(
                command, env=self._env(), stdout=log, stderr=subprocess.STDOUT
            )
        wait_until_ready(
            self.admin_url + "/readyz", self.settings.gateway_port, self.workers, log_path
        )

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            stop_process(self.gateway, STOP_SECONDS_MAX)
            self.gateway = None

    def worker_pids(self) -> list[int]:
        """The processes serving callbacks: the workers of `--workers N` (N > 1), else the
        serve process itself."""
        assert self.gateway is not None, "the gateway is not running"
        if self.workers == 1:
            return [self.gateway.pid]
        return [pid for pid in _children(self.gateway.pid) if _is_spawned_worker(pid)]

    def kill_worker(self, index: int = 0) -> int:
        """kill -9 one gateway process; with N > 1 the supervisor starts a new one. -> its pid."""
        pid = self.worker_pids()[index]
        os.kill(pid, signal.SIGKILL)
        _wait_until_dead(pid)  # its sockets are closed only then
        if self.workers == 1:
            assert self.gateway is not None
            self.gateway.wait()
            self.gateway = None
        return pid

    def wait_for_workers(self, replacing: int | None = None) -> None:
        """Until the gateway has its N workers listening again; `replacing`: a killed worker's
        pid, which the supervisor must have replaced first."""
        deadline = time.monotonic() + STOP_SECONDS_MAX * 2
        while replacing is not None and time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == self.workers and replacing not in pids:
                break
            time.sleep(0.05)
        wait_until_ready(
            self.admin_url + "/readyz",
            self.settings.gateway_port,
            self.workers,
            self.logs / "gateway.log",
        )

    def kill_orphaned_workers(self) -> None:
        """Workers whose serve process was killed keep the port: end them (ours by command line
        and environment: they carry this stack's gateway port)."""
        mark = f"GATEWAY_PORT={self.settings.gateway_port}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or not _is_spawned_worker(int(entry.name)):
                continue
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue

    # --- the history writer -----------------------------------------------------------------------

    def start_writer(self) -> None:
        assert self.writer is None, "the writer runs already"
        with (self.logs / "writer.log").open("ab") as log:
            self.writer = subprocess.Popen(
                [sys.executable, "-m", "persistence.writer", *self.writer_args],
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill_writer(self) -> None:
        assert self.writer is not None, "the writer is not running"
        self.writer.kill()
        self.writer.wait()
        self.writer = None

    # --- Redis and PostgreSQL -------------------------------------------------------------------

    def kill_redis(self, node: EmbeddedRedis | None = None) -> None:
        """SIGKILL the one Redis, or `node` of the cluster: no shutdown, no last fsync; only
        what the AOF holds survives."""
        node = node or self.redis
        os.kill(node.pid, signal.SIGKILL)
        node.stop()  # reaps the dead process; nothing to signal any more

    def start_redis(self, node: EmbeddedRedis | None = None) -> None:
        """Same port and folder: Redis replays its AOF before it answers. A cluster node
        rejoins its cluster (a killed master, failed over meanwhile, as a replica)."""
        (node or self.redis).start()
        if self.cluster is not None:
            self.cluster.wait_until_healthy()

    def kill_cluster_master(self, key: str) -> tuple[EmbeddedRedis, list[EmbeddedRedis]]:
        """SIGKILL the master serving `key`. -> it, and the replicas one of which takes over."""
        assert self.cluster is not None, "this stack runs no Redis Cluster"
        master, replicas = self.cluster.serving(key)
        self.kill_redis(master)
        return master, replicas

    def wait_for_promotion(
        self, key: str, killed: EmbeddedRedis, seconds_max: float = STOP_SECONDS_MAX * 2
    ) -> EmbeddedRedis:
        """Until a node other than `killed` serves `key` (its replica, promoted). -> that node."""
        assert self.cluster is not None, "this stack runs no Redis Cluster"
        deadline = time.monotonic() + seconds_max
        while time.monotonic() < deadline:
            master, _ = self.cluster.serving(key)
            if master is not killed:
                return master
            time.sleep(0.05)
        raise RuntimeError(f"no replica took over {key} in {seconds_max:.0f} s")

    def postmaster_pid(self) -> int:
        lines = (self.postgres.pgdata_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[POSTMASTER_PID_LINE])

    def kill_postgres(self) -> None:
        """SIGKILL the postmaster and every backend (its own session: the process group)."""
        os.killpg(self.postmaster_pid(), signal.SIGKILL)
        self.postgres.stop()  # reaps

    def start_postgres(self) -> None:
        self.postgres.start()  # crash recovery from the WAL, then ready

    def error_lines(self, count_max: int) -> list[str]:
        """The gateway's and the writer's ERROR log lines (a 500 logs its traceback), and the
        last line of an uncaught exception's traceback (a process that died of it)."""
        lines: list[str] = []
        for name in ("gateway.log", "writer.log"):
            path = self.logs / name
            if path.exists():
                lines += [
                    f"{name}: ...{line[-LOG_LINE_CHARS_MAX:]}"
                    for line in path.read_text(errors="replace").splitlines()
                    if '"level":"ERROR"' in line or UNCAUGHT_EXCEPTION.match(line)
                ]
        return lines[:count_max]

    # --- what the scenarios sample --------------------------------------------------------------

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of the gateway (its workers included), Redis and the writer."""
        sizes = {"redis": sum(_rss(pid) for pid in self.redis_pids())}
        if self.gateway is not None:
            pids = [self.gateway.pid, *_children(self.gateway.pid)]
            sizes["gateway"] = sum(_rss(pid) for pid in pids)
        if self.writer is not None:
            sizes["writer"] = _rss(self.writer.pid)
        return sizes


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _is_spawned_worker(pid: int) -> bool:
    try:
        return SPAWNED_WORKER_MARK in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _wait_until_dead(pid: int) -> None:
    """Until `pid` exited (a zombie holds no sockets any more)."""
    deadline = time.monotonic() + STOP_SECONDS_MAX
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise RuntimeError(f"process {pid} still alive {STOP_SECONDS_MAX:.0f} s after SIGKILL")


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
