"""The bench on an embedded Redis Cluster (issue: bench one Redis against the three-master
cluster): the shortest run completes, the money check passes, the CPU table adds up every
node, and the report says what Redis holds per new bet and per idempotency record."""

from pathlib import Path

import pytest
from instances import bench_report

MASTERS = 3
SHARDS = 16  # Settings' default
FILTER_BITS = 2**24  # IDEMPOTENCY_FILTER_BITS' default


@pytest.mark.slow
def test_a_shortest_bench_on_a_three_master_cluster_checks_the_money_and_measures_memory(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report"
    report = bench_report(
        out,
        *("--redis-cluster", str(MASTERS), "--duration-seconds", "1", "--rounds", "1"),
        *("--workers", "1", "--users", "2", "--latency-users", "2", "--connections", "4"),
        timeout=180,
    )
    assert report["money_check_passed"] is True
    assert report["redis_cluster_masters"] == MASTERS
    phases = {phase["name"]: phase for phase in report["phases"]}
    # the ceiling's commands went each to its key's master: every money script said OK
    ceiling = phases["redis-new-bets"]
    assert ceiling["endpoints"]["Aggregated"]["requests"] > 0 and not ceiling["failures"]
    assert ceiling["redis_commands"]["evalsha"]["calls"] >= (
        2 * ceiling["endpoints"]["Aggregated"]["requests"]  # each bet's claim and its withdraw
    )

    # the Redis row is all six nodes; the masters' row is part of it, not added to the total
    for column in report["cpu_seconds_per_1000_requests"].values():
        assert 0 < column["Redis masters"] <= column["Redis"], column

    bytes_per_bet, bets = report["redis_bytes_per_new_bet"], report["redis_memory_new_bets"]
    assert bets >= ceiling["endpoints"]["Aggregated"]["requests"]
    assert 0 < bytes_per_bet < 10_000, bytes_per_bet
    records = report["record_memory"]
    assert records["sampled"] > 0
    assert records["tx_hash_bytes"] > records["owner_key_bytes"] > 0
    assert records["filter_bytes_per_shard"] == FILTER_BITS // 8
    assert records["shards"] == SHARDS

    markdown = (out / "report.md").read_text()
    assert "an embedded Redis Cluster of 3 masters and 3 replicas" in markdown
    assert "| Redis, every node: masters and replicas |" in markdown
    assert "| of which the Redis masters |" in markdown
    assert "## Redis memory" in markdown
    for row in (
        f"| per new bet applied | {bytes_per_bet:.0f} |",
        "| one idempotency record: the tx hash |",
        "| one idempotency record: the owner key |",
        f"| seen-id filter, per shard | {FILTER_BITS // 8} |",
    ):
        assert row in markdown, row
    assert "Money check: PASSED" in markdown
