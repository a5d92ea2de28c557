"""A few seconds of the real benchmark: every phase runs, the report is written, the money
check passes (issue: a short smoke run of the bench is in the test suite). With wrk on the PATH
(.ci/run installs it) the headline is wrk's; without it the report says so."""

import shutil
from pathlib import Path

import pytest
from instances import bench_report

from loadtests.bench import parse_wrk_summary, wrk_failures, wrk_missing, wrk_stats

CPU_ROWS = ("server", "Redis", "writer", "PostgreSQL", "load tool")


@pytest.mark.slow
def test_bench_smoke_run_writes_a_report_whose_money_check_passes(tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = bench_report(
        out,
        *("--duration-seconds", "3", "--users", "2", "--latency-users", "2"),
        *("--connections", "4", "--rounds", "2", "--workers", "1,2"),
        timeout=400,
    )
    assert report["money_check_passed"] is True
    assert report["reconcile_agrees"] is True
    assert report["balances_redis_total"] == report["balances_history_total"] > 0
    phases = {phase["name"]: phase for phase in report["phases"]}
    assert set(phases) == {
        "ceiling-round-1", "new-bets-1-process-round-1", "ceiling-round-2",
        "new-bets-1-process-round-2", "provider-mix", "new-bets-half-rate", "ceiling-half-rate",
        "new-bets-2-process", "redis-new-bets",
    }  # fmt: skip
    for phase in phases.values():
        assert phase["endpoints"]["Aggregated"]["requests"] > 0, phase["name"]
        assert not phase["failures"], (phase["name"], phase["failures"])

    headline_tool = "wrk" if shutil.which("wrk") else "locust"
    for name in ("ceiling-round-1", "new-bets-1-process-round-2", "new-bets-2-process"):
        assert phases[name]["tool"] == headline_tool
    assert phases["provider-mix"]["tool"] == "locust"
    assert phases["redis-new-bets"]["tool"] == "pipelined commands"
    markdown = (out / "report.md").read_text()
    median = report["ratios_to_empty_handler"]["median"]
    assert (
        f"Headline: new bets at **{median:.2f}x** the empty aiohttp handler (median of 2 rounds, "
        f"1 gateway process, measured by {headline_tool}"
    ) in markdown
    assert ("wrk not installed" in markdown) == (headline_tool == "locust")

    rps = {name: phase["endpoints"]["Aggregated"]["rps"] for name, phase in phases.items()}
    ratios = report["ratios_to_empty_handler"]
    for number in (1, 2):
        ratio = rps[f"new-bets-1-process-round-{number}"] / rps[f"ceiling-round-{number}"]
        assert ratios[f"new-bets-1-process-round-{number}"] == round(ratio, 3)
    assert median == round(
        (ratios["new-bets-1-process-round-1"] + ratios["new-bets-1-process-round-2"]) / 2, 3
    )
    half_rate = phases["new-bets-half-rate"]["target_rps"]
    median_new_bets = (rps["new-bets-1-process-round-1"] + rps["new-bets-1-process-round-2"]) / 2
    assert half_rate == 0.5 * median_new_bets
    assert phases["ceiling-half-rate"]["target_rps"] == half_rate
    assert "Redis's own ceiling for new bets: **" in markdown

    cpu = report["cpu_seconds_per_1000_requests"]
    for column in ("new-bets-1-process", "new-bets-2-process", "provider-mix"):
        assert set(cpu[column]) == set(CPU_ROWS), column
        assert all(seconds >= 0 for seconds in cpu[column].values()), cpu[column]
        assert cpu[column]["server"] > 0 and cpu[column]["Redis"] > 0, cpu[column]
    assert cpu["ceiling"]["server"] > 0
    assert "server" not in cpu["redis-new-bets"] and cpu["redis-new-bets"]["Redis"] > 0
    for label in (
        "| server: the gateway",
        "| Redis |",
        "| writer |",
        "| PostgreSQL",
        "| load tool",
    ):
        assert label in markdown

    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")
    assert "Money check: PASSED" in markdown
    assert "Latency at half of the median maximum new-bet rate" in markdown

    # one Redis: the memory table, no masters' row (the one process is the Redis row)
    assert report["redis_cluster_masters"] == 0
    assert "| of which the Redis masters |" not in markdown
    assert "## Redis memory" in markdown and "| per new bet applied |" in markdown
    assert report["redis_memory_new_bets"] > 0 and report["redis_bytes_per_new_bet"] > 0
    assert report["record_memory"]["tx_hash_bytes"] > report["record_memory"]["owner_key_bytes"]


def test_without_wrk_on_the_path_the_bench_says_wrk_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "wrk not installed" in wrk_missing()


def test_wrk_summary_is_read_from_the_line_wrk_bets_lua_prints() -> None:
    output = (
        "Running 2s test @ http://127.0.0.1:1/withdraw\n"
        'WRK_SUMMARY {"requests": 2000, "duration_us": 2000000, "errors": {"connect": 0, '
        '"read": 0, "write": 0, "status": 3, "timeout": 1}, "latency_us": {"p50": 1500, '
        '"p95": 4000, "p99": 9000, "max": 12000}, "exhausted_threads": 1, '
        '"init_cpu_seconds": 0.5}\n'
    )
    summary = parse_wrk_summary(output)
    assert wrk_stats(summary) == {
        "requests": 2000, "failures": 3, "rps": 1000.0, "p50_ms": 1.5, "p95_ms": 4.0,
        "p99_ms": 9.0, "max_ms": 12.0,
    }  # fmt: skip
    assert wrk_failures(summary) == {
        "status errors": 3, "timeout errors": 1, "ran out of pre-signed bets (threads)": 1,
    }  # fmt: skip
