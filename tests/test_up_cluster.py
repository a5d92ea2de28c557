"""`wallet-gateway up --redis-cluster 3`: the whole stack on an embedded Redis Cluster of three
masters and three replicas, found by the other commands as the single-Redis stack is."""

import re
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest
from instances import RunningUp, cli, cli_env
from redis.crc import key_slot

from gateway.keys import KeySpace
from gateway.recorded_stack import recorded_stack
from gateway.redis_connection import CLUSTER_SCHEME

pytestmark = pytest.mark.slow  # `up` itself, and a child process per command

COMMAND_SECONDS_MAX = 120
MASTERS = 3


@pytest.fixture(scope="module")
def cluster_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUp]:
    up = RunningUp(tmp_path_factory.mktemp("up-cluster") / "data", REDIS_CLUSTER_MASTERS="3")
    try:
        up.wait_until_up()
        yield up
    finally:
        assert up.stop() == 0


def run(up: RunningUp, *args: str) -> subprocess.CompletedProcess[str]:
    """A command from another shell, which knows only DATA_DIR."""
    env = cli_env(DATA_DIR=str(up.data_dir))
    for name in ("REDIS_URL", "DATABASE_URL", "ADMIN_TOKEN", "PROVIDER_KEYS"):
        env.pop(name, None)
    return subprocess.run(
        cli(*args), env=env, capture_output=True, text=True, timeout=COMMAND_SECONDS_MAX
    )


def answer(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    _, _, printed = ("\n" + done.stdout).partition("\n< ")
    return orjson.loads(printed.partition("\n")[2])


def test_up_records_a_cluster_url_of_its_masters(cluster_up: RunningUp) -> None:
    stack = recorded_stack(str(cluster_up.data_dir))
    assert stack is not None
    url = urlsplit(stack.redis_url)
    assert url.scheme == CLUSTER_SCHEME
    assert len(url.netloc.rpartition("@")[2].split(",")) == MASTERS
    assert url.password  # the embedded cluster asks for one, as the single Redis does


def test_money_moves_once_on_players_of_every_master_and_reconcile_agrees(
    cluster_up: RunningUp,
) -> None:
    # players whose shards fall on each third of the slots: each master serves some of them
    keys = KeySpace(16)
    players: dict[int, str] = {}
    for n in range(200):
        user = f"p-{n}"
        third = key_slot(keys.player(keys.shard(user), user).encode()) * MASTERS // 16384
        players.setdefault(third, user)
    assert len(players) == MASTERS
    for user in players.values():
        created = run(
            cluster_up,
            *("admin", "post", "/admin/players"),
            orjson.dumps({"user_id": user, "currency": "USD", "balance": 10_000}).decode(),
        )
        assert answer(created)["code"] == 201, created.stdout + created.stderr
        bet = ("call", "withdraw", "--user", user, "--amount", "1000", "--tx", f"b-{user}")
        first, replay = run(cluster_up, *bet), run(cluster_up, *bet)
        assert first.returncode == replay.returncode == 0, first.stderr + replay.stderr
        assert answer(first) == answer(replay)  # the money moved once
        win = run(
            cluster_up,
            *("call", "deposit", "--user", user, "--amount", "2500"),
            *("--tx", f"w-{user}", "--bet-tx", f"b-{user}"),
        )
        assert answer(win)["data"]["new_balance"] == 11_500, win.stdout  # type: ignore[index]

    kit = run(cluster_up, "conformance", "--rule", "*replay*")
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert re.search(r"\b[1-9]\d* passed, 0 failed", kit.stdout), kit.stdout
    reconciled = run(cluster_up, "reconcile")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "Reconciliation: AGREES" in reconciled.stdout
