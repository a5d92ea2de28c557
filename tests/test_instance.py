"""One wallet per port and per data folder: a second `up` or `serve` next to a running `up`
refuses in one line, before it starts any server; a single-process listener shares its port
with nobody."""

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, PUBLIC_KEY, SECRET
from instances import RunningUp, cli, cli_env, refusal, served, shared_bind_error

from gateway.embedded import EmbeddedRedis, free_port


@pytest.fixture(scope="module")
def running_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUp]:
    yield from served(RunningUp(tmp_path_factory.mktemp("running") / "data"))


def redis_servers_on(data_dir: Path) -> list[int]:
    """The pids of the redis-servers keeping their AOF below `data_dir` (it runs in its --dir;
    its command line it rewrites)."""
    pids = []
    for process_dir in Path("/proc").glob("[0-9]*"):
        try:
            if (process_dir / "comm").read_text().strip() != "redis-server":
                continue
            if (process_dir / "cwd").resolve(strict=True) == (data_dir / "redis").resolve():
                pids.append(int(process_dir.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def test_a_second_up_on_the_same_data_dir_is_refused_naming_the_first(
    running_up: RunningUp,
) -> None:
    other_ports = ("--gateway-port", str(free_port()), "--admin-port", str(free_port()))
    code, stderr = refusal(
        cli("up", "--data-dir", str(running_up.data_dir), *other_ports), cli_env()
    )

    assert code == 2
    assert stderr.splitlines() == [
        f"wallet-gateway: error: DATA_DIR {running_up.data_dir} is in use by another "
        f"`wallet-gateway up` (pid {running_up.pid})"
    ]
    assert len(redis_servers_on(running_up.data_dir)) == 1  # the first one's only


@pytest.mark.parametrize("command", ["up", "serve"])
@pytest.mark.parametrize("busy", ["GATEWAY_PORT", "ADMIN_PORT"])
def test_a_busy_port_is_refused_before_anything_starts(
    running_up: RunningUp, redis_server: EmbeddedRedis, tmp_path: Path, command: str, busy: str
) -> None:
    ports = {name: port if name == busy else free_port() for name, port in running_up.ports.items()}
    data_dir = tmp_path / "data"
    env = cli_env(DATA_DIR=str(data_dir), **{name: str(port) for name, port in ports.items()})
    if command == "serve":
        env.update(
            REDIS_URL=redis_server.url,
            PROVIDER_KEYS=f"{PUBLIC_KEY}:{SECRET}",
            ADMIN_TOKEN=ADMIN_TOKEN,
        )
    code, stderr = refusal(cli(command), env)

    assert code == 2
    assert stderr.splitlines() == [
        f"wallet-gateway: error: {busy} {ports[busy]} on 127.0.0.1 is in use "
        "(another wallet-gateway?)"
    ]
    assert not (data_dir / "redis").exists() and not (data_dir / "postgres").exists()
    assert redis_servers_on(data_dir) == []


def test_one_process_shares_neither_listener_port(running_up: RunningUp) -> None:
    assert shared_bind_error(running_up.gateway_port) == errno.EADDRINUSE
    assert shared_bind_error(running_up.admin_port) == errno.EADDRINUSE
