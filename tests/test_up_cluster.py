"""`wallet-gateway up --redis-cluster 3`: the whole stack on an embedded Redis Cluster of three
masters and three replicas, found by the other commands as the single-Redis stack is."""

from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest
from instances import (
    RunningUp,
    answer_printed,
    assert_kit_and_reconcile_agree,
    run_in_another_shell,
    served,
)
from redis.crc import key_slot

from gateway.keys import KeySpace
from gateway.recorded_stack import recorded_stack
from gateway.redis_connection import CLUSTER_SCHEME

pytestmark = pytest.mark.slow  # `up` itself, and a child process per command

MASTERS = 3


@pytest.fixture(scope="module")
def cluster_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUp]:
    yield from served(
        RunningUp(tmp_path_factory.mktemp("up-cluster") / "data", REDIS_CLUSTER_MASTERS="3")
    )


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
        created = run_in_another_shell(
            cluster_up,
            *("admin", "post", "/admin/players"),
            orjson.dumps({"user_id": user, "currency": "USD", "balance": 10_000}).decode(),
        )
        assert answer_printed(created)["code"] == 201, created.stdout + created.stderr
        bet = ("call", "withdraw", "--user", user, "--amount", "1000", "--tx", f"b-{user}")
        first, replay = (
            run_in_another_shell(cluster_up, *bet),
            run_in_another_shell(cluster_up, *bet),
        )
        assert first.returncode == replay.returncode == 0, first.stderr + replay.stderr
        assert answer_printed(first) == answer_printed(replay)  # the money moved once
        win = run_in_another_shell(
            cluster_up,
            *("call", "deposit", "--user", user, "--amount", "2500"),
            *("--tx", f"w-{user}", "--bet-tx", f"b-{user}"),
        )
        assert answer_printed(win)["data"]["new_balance"] == 11_500, win.stdout  # type: ignore[index]

    assert_kit_and_reconcile_agree(cluster_up)
