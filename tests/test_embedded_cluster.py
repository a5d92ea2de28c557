"""The embedded Redis Cluster of `wallet-gateway up --redis-cluster N` and of
WALLET_GATEWAY_TEST_REDIS=cluster (gateway/embedded.py EmbeddedRedisCluster): it forms with a
replica per master, asks for its password, comes back whole from its folder, and a killed
master's replica takes over within seconds. One small cluster of its own for the module."""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from helpers import running
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from gateway.embedded import EmbeddedRedis, EmbeddedRedisCluster, EmbeddedServerError

# quotes, a space, URL delimiters: the password reaches the nodes, the URL and redis-cli as is
PASSWORD = 'cluster "pass" word:@/,'
MASTERS = 3
SLOTS = 16384
FAILOVER_SECONDS_MAX = 10.0  # node timeout 1.5 s, then the election: ~3 s here
POLL_SECONDS = 0.05
NO_RETRY = Retry(NoBackoff(), retries=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    yield from running(
        EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster"), masters=MASTERS, password=PASSWORD)
    )


@pytest.fixture
async def client(cluster: EmbeddedRedisCluster) -> AsyncIterator[RedisCluster]:
    """Through any one node, as the gateway's client starts: it discovers the others."""
    async with RedisCluster(
        host="127.0.0.1", port=cluster.nodes[0].port, password=PASSWORD, decode_responses=True
    ) as client:
        yield client


def node_ids(cluster: EmbeddedRedisCluster) -> dict[int, str]:
    ids = {}
    for node in cluster.nodes:
        with node.client(decode_responses=True) as client:
            ids[node.port] = client.execute_command("CLUSTER", "MYID")
    return ids


def role(node: EmbeddedRedis) -> str:
    with node.client(decode_responses=True) as client:
        return client.info("replication")["role"]


async def test_it_forms_three_masters_each_with_one_replica(
    cluster: EmbeddedRedisCluster, client: RedisCluster
) -> None:
    nodes = await client.cluster_nodes()
    masters = {
        view["node_id"]: address for address, view in nodes.items() if "master" in view["flags"]
    }
    replicas = [view for view in nodes.values() if "slave" in view["flags"]]
    assert len(masters) == MASTERS and len(cluster.nodes) == 2 * MASTERS == len(nodes)
    assert sorted(view["master_id"] for view in replicas) == sorted(masters)  # one each
    covered = sum(
        int(last) - int(first) + 1 for view in nodes.values() for first, last in view["slots"]
    )
    assert covered == SLOTS
    # the URL names the masters, in the form gateway/redis_connection.py parses
    prefix = f"redis+cluster://:{quote(PASSWORD, safe='')}@"
    assert cluster.url.startswith(prefix)
    assert sorted(cluster.url.removeprefix(prefix).split(",")) == sorted(masters.values())
    assert len(set(cluster.pids)) == 2 * MASTERS
    for n in range(30):  # keys of every master
        await client.set(f"spread-{n}", n)
        assert await client.get(f"spread-{n}") == str(n)


async def test_it_refuses_a_client_without_the_password(cluster: EmbeddedRedisCluster) -> None:
    for password in (None, "not-the-password"):
        with pytest.raises(RedisClusterException, match=r"authenticat|username-password"):
            async with RedisCluster(
                host="127.0.0.1", port=cluster.nodes[0].port, password=password
            ) as anonymous:
                await anonymous.ping()


def test_every_node_asks_for_the_password_none_shows_it(cluster: EmbeddedRedisCluster) -> None:
    for node in cluster.nodes:
        # no retries: redis-py's default retries a refusal for seconds
        with redis.Redis(host="127.0.0.1", port=node.port, retry=NO_RETRY) as anonymous:
            with pytest.raises(redis.AuthenticationError):
                anonymous.ping()
        # /proc/PID/cmdline is readable by every local user (ps)
        assert PASSWORD not in Path(f"/proc/{node.pid}/cmdline").read_bytes().decode()


async def test_it_comes_back_from_its_folder_with_the_same_nodes_and_ports(
    cluster: EmbeddedRedisCluster, client: RedisCluster
) -> None:
    await client.set("kept", "across restarts")
    before = node_ids(cluster)
    await asyncio.to_thread(cluster.stop)
    assert not cluster.pids
    # a new object on the folder, as a restarted `up` makes: the ports from each nodes.conf
    again = EmbeddedRedisCluster(cluster._data_dir, masters=MASTERS, password=PASSWORD)
    assert again.url == cluster.url
    with pytest.raises(EmbeddedServerError, match="of 6 nodes, not 8"):
        EmbeddedRedisCluster(cluster._data_dir, masters=4, password=PASSWORD)
    await asyncio.to_thread(again.start)
    try:
        assert node_ids(again) == before  # not formed anew
        async with RedisCluster(
            host="127.0.0.1", port=again.nodes[1].port, password=PASSWORD, decode_responses=True
        ) as fresh:
            assert await fresh.get("kept") == "across restarts"  # from the AOF
    finally:
        await asyncio.to_thread(again.stop)
    await asyncio.to_thread(cluster.start)  # and the same object again, for the next tests
    assert node_ids(cluster) == before


async def test_a_killed_masters_replica_takes_over_within_seconds(
    cluster: EmbeddedRedisCluster,
) -> None:
    key = "failover-probe"
    master, replicas = cluster.serving(key)
    assert len(replicas) == 1
    (replica,) = replicas
    with master.client(decode_responses=True) as direct:
        direct.set(key, "before")
        assert direct.wait(1, 2000) == 1  # on the replica before the kill

    os.kill(master.pid, signal.SIGKILL)
    killed = time.monotonic()
    while await asyncio.to_thread(role, replica) != "master":
        assert time.monotonic() - killed < FAILOVER_SECONDS_MAX, "no failover"
        await asyncio.sleep(POLL_SECONDS)
    took = time.monotonic() - killed
    assert took < FAILOVER_SECONDS_MAX

    async with RedisCluster(
        host="127.0.0.1", port=replica.port, password=PASSWORD, decode_responses=True
    ) as client:
        assert await client.get(key) == "before"
        await client.set(key, "after")  # the promoted replica takes writes

    # the old master, restarted from its folder, rejoins as its replica's replica
    await asyncio.to_thread(master.stop)  # reaps the killed process
    assert not master.running
    await asyncio.to_thread(master.start)
    await asyncio.to_thread(cluster.wait_until_healthy)
    assert cluster.serving(key) == (replica, [master])
    assert role(master) == "slave"
