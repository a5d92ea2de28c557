"""Each scenario's figures, and RELIABILITY.md / reliability.json from them."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARKDOWN_NAME = "RELIABILITY.md"
JSON_NAME = "reliability.json"


@dataclass
class ScenarioResult:
    name: str
    title: str
    guarantee: str
    calls_sent: int = 0
    acknowledged: int = 0  # calls with a definitive answer (2xx or 4xx), settling included
    retried: int = 0  # attempts after a call's first
    money_lost: int = 0  # millis acknowledged but not in the wallet
    money_doubled: int = 0  # millis applied more than once (or applied though refused)
    five_xx: dict[str, int] = field(default_factory=dict)  # attempts answered 5xx, by status
    undelivered: int = 0  # attempts without any answer (cut, dropped, refused, timed out)
    slowest_ms: float = 0.0  # the slowest attempt
    reconcile_agrees: bool = False
    seconds: float = 0.0
    # what the scenario measured besides (the loss window, memory, the fault's counters)
    measured: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # the guarantees it broke

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def five_xx_total(self) -> int:
        return sum(self.five_xx.values())

    def require(self, holds: bool, guarantee: str) -> None:
        if not holds:
            self.failures.append(guarantee)


@dataclass
class SuiteReport:
    command: str
    machine: str
    started_at: str
    wall_seconds: float = 0.0
    scenarios: list[ScenarioResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(scenario.passed for scenario in self.scenarios)


def _five_xx(result: ScenarioResult) -> str:
    if not result.five_xx:
        return "0"
    kinds = ", ".join(f"{count}x{status}" for status, count in sorted(result.five_xx.items()))
    return f"{result.five_xx_total} ({kinds})"


def render_markdown(report: SuiteReport) -> str:
    lines = [
        "# Reliability: money under faults",
        "",
        "The latest output of `wallet-gateway faults`, which starts a stack of its own (embedded "
        "Redis and PostgreSQL, `wallet-gateway serve`, the history writer; loopback only), sends "
        "provider-shaped traffic with the provider's retries (5xx and timeouts retried with "
        "backoff, the same bytes each time), injects each fault, settles every unanswered call "
        "by retrying it, then checks every acknowledged call against Redis and the history and "
        "runs `reconcile`.",
        "",
        "Reproduce (from the repository, in a venv with the project installed; loopback only, "
        "under 15 minutes on 2 cores):",
        "",
        "```",
        report.command,
        "```",
        "",
        "CI runs every scenario at `--short` scale: `pytest tests/test_faults.py`.",
        "",
        f"Machine: {report.machine}. Started {report.started_at}; wall time "
        f"{report.wall_seconds:.0f} s. Result: **{'PASSED' if report.passed else 'FAILED'}**.",
        "",
        "| scenario | calls sent | acknowledged | retried | money lost (millis) "
        "| money doubled (millis) | 5xx seen | slowest attempt ms | reconcile agrees | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report.scenarios:
        lines.append(
            f"| {result.name} | {result.calls_sent} | {result.acknowledged} | {result.retried} "
            f"| {result.money_lost} | {result.money_doubled} | {_five_xx(result)} "
            f"| {result.slowest_ms:.0f} | {'yes' if result.reconcile_agrees else 'no'} "
            f"| {'PASS' if result.passed else 'FAIL'} |"
        )
    broken = [
        f"- {result.name}: {failure}" for result in report.scenarios for failure in result.failures
    ]
    if broken:
        lines += ["", "Guarantees broken in this run (details in the scenario's section):", ""]
        lines += broken
    lines += [
        "",
        "Calls sent count every callback the provider sent (duplicates included, balance "
        "queries too); acknowledged, the money calls with a definitive answer (2xx or 4xx), "
        "after settling; retried, attempts after a call's first; 5xx seen, attempts answered "
        '5xx (503: the wallet said "not confirmed", the retry settles it). Money lost: '
        "answered 200 but missing from Redis or the history; money doubled: the Redis balance "
        "beyond what the acknowledged calls explain (applied twice, or applied though refused).",
        "",
    ]
    for result in report.scenarios:
        lines += [
            f"## {result.name}: {result.title}",
            "",
            f"Guarantee: {result.guarantee}",
            "",
            f"Verdict: **{'PASS' if result.passed else 'FAIL'}** ({result.seconds:.0f} s); "
            f"attempts without an answer: {result.undelivered}.",
        ]
        lines += [f"- broken: {failure}" for failure in result.failures]
        if result.measured:
            lines += ["", "Measured:", ""]
            lines += [f"- {key}: {value}" for key, value in result.measured.items()]
        if result.notes:
            lines += ["", *[f"- {note}" for note in result.notes]]
        lines.append("")
    return "\n".join(lines)


def write_report(report: SuiteReport, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(report)
    data["passed"] = report.passed
    for scenario, result in zip(data["scenarios"], report.scenarios, strict=True):
        scenario["passed"] = result.passed
    (out_dir / JSON_NAME).write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / MARKDOWN_NAME).write_text(render_markdown(report))
