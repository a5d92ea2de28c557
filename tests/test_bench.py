"""A few seconds of the real benchmark: every phase runs, the report is written, the money
check passes (issue: a short smoke run of the bench is in the test suite)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_smoke_run_writes_a_report_whose_money_check_passes(tmp_path: Path) -> None:
    out = tmp_path / "report"
    completed = subprocess.run(
        [
            sys.executable, "-m", "gateway.cli", "bench", "--duration-seconds", "2",
            "--users", "2", "--latency-users", "2", "--rounds", "2", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["money_check_passed"] is True
    assert report["reconcile_agrees"] is True
    assert report["balances_redis_total"] == report["balances_history_total"] > 0
    phases = {phase["name"]: phase for phase in report["phases"]}
    assert set(phases) == {
        "ceiling-round-1", "new-bets-1-process-round-1", "ceiling-round-2",
        "new-bets-1-process-round-2", "provider-mix", "new-bets-half-rate", "ceiling-half-rate",
    }  # fmt: skip
    rps = {name: phase["endpoints"]["Aggregated"]["rps"] for name, phase in phases.items()}
    ratios = report["ratios_to_empty_handler"]
    for number in (1, 2):
        ratio = rps[f"new-bets-1-process-round-{number}"] / rps[f"ceiling-round-{number}"]
        assert ratios[f"new-bets-1-process-round-{number}"] == round(ratio, 3)
    assert ratios["median"] == round(
        (ratios["new-bets-1-process-round-1"] + ratios["new-bets-1-process-round-2"]) / 2, 3
    )
    half_rate = phases["new-bets-half-rate"]["target_rps"]
    median_new_bets = (rps["new-bets-1-process-round-1"] + rps["new-bets-1-process-round-2"]) / 2
    assert half_rate == 0.5 * median_new_bets
    assert phases["ceiling-half-rate"]["target_rps"] == half_rate
    for phase in phases.values():
        assert phase["endpoints"]["Aggregated"]["requests"] > 0, phase["name"]
        assert not phase["failures"], phase["failures"]
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")
    markdown = (out / "report.md").read_text()
    assert "Money check: PASSED" in markdown
    assert "Latency at half of the maximum new-bet rate" in markdown
