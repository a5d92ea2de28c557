"""`wallet-gateway faults`: the re-runnable proof, in figures, that money survives crashes, lost
answers and a failing Redis.

Each scenario starts a stack of its own (embedded Redis and PostgreSQL in a temporary folder,
`wallet-gateway serve`, the history writer, all on 127.0.0.1), drives provider-shaped traffic
with the provider's retries, injects its faults while the traffic runs, settles every call left
unanswered by retrying it, checks every acknowledged call against Redis and the history, and runs
`reconcile`. The figures go to RELIABILITY.md and reliability.json; the exit code is 1 when a
scenario broke its guarantee.

    wallet-gateway faults                      # every scenario, full scale (< 15 min)
    wallet-gateway faults --short              # CI scale: seconds each
    wallet-gateway faults --scenario soak --soak-seconds 600
"""

import argparse
import asyncio
import datetime
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from loadtests.faults.hostile import hostile_input, hostile_scales
from loadtests.faults.report import ScenarioResult, SuiteReport, write_report
from loadtests.faults.scenarios import FAULT_SCENARIOS, Scale, Scenario

# name -> (scenario, full scale, short scale), in the order they run
SCENARIOS: dict[str, tuple[Scenario, Scale, Scale]] = {
    **FAULT_SCENARIOS,
    "hostile-input": (hostile_input, *hostile_scales()),
}

REPO_ROOT = Path(__file__).resolve().parents[2]
# RELIABILITY.md belongs at the repository's root; installed elsewhere, the current folder
OUT_DIR_DEFAULT = REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run this scenario (repeatable; default: all, in the order listed)",
    )
    parser.add_argument(
        "--short", action="store_true", help="CI scale: a few seconds of load per scenario"
    )
    parser.add_argument(
        "--seconds", type=float, help="seconds of load per scenario (default: its own)"
    )
    parser.add_argument("--calls-max", type=int, help="calls per scenario at most")
    parser.add_argument("--soak-seconds", type=float, help="seconds of the soak's steady load")
    parser.add_argument(
        "--out-dir",
        default=str(OUT_DIR_DEFAULT),
        help="where RELIABILITY.md and reliability.json go (default: the repository root)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the stacks' folders (logs, data) afterwards"
    )


def scale_of(name: str, args: argparse.Namespace) -> Scale:
    _, full, short = SCENARIOS[name]
    scale = short if args.short else full
    if args.seconds and name != "soak":
        scale = replace(scale, seconds=args.seconds)
    if args.soak_seconds and name == "soak":
        scale = replace(scale, seconds=args.soak_seconds)
    if args.calls_max:
        scale = replace(scale, calls_max=args.calls_max)
    return scale


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (the output folder aside)."""
    words = ["wallet-gateway", "faults"]
    for name in args.scenario or []:
        words += ["--scenario", name]
    if args.short:
        words.append("--short")
    for flag in ("seconds", "calls_max", "soak_seconds"):
        if getattr(args, flag):
            words += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return shlex.join(words)


def run_suite(args: argparse.Namespace) -> SuiteReport:
    names = args.scenario or list(SCENARIOS)
    report = SuiteReport(
        command=command_line(args),
        machine=f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        started_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    root = Path(tempfile.mkdtemp(prefix="wallet-faults-"))
    # PostgreSQL runs as an unprivileged user when we are root: let it reach its data here, so
    # the data goes with the folder (else it lives in a fallback folder outside it)
    root.chmod(0o755)
    started = time.monotonic()
    try:
        for name in names:
            function, _, _ = SCENARIOS[name]
            scale = scale_of(name, args)
            print(f"[faults] {name}: {scale}", flush=True)
            results: list[ScenarioResult] = asyncio.run(function(root, scale))
            for result in results:
                verdict = "PASS" if result.passed else "FAIL: " + "; ".join(result.failures)
                print(
                    f"[faults]   {result.name}: {result.calls_sent} calls, lost "
                    f"{result.money_lost}, doubled {result.money_doubled}, "
                    f"reconcile {'agrees' if result.reconcile_agrees else 'differs'}, "
                    f"{result.seconds:.0f} s: {verdict}",
                    flush=True,
                )
            report.scenarios += results
    finally:
        report.wall_seconds = time.monotonic() - started
        if args.keep:
            print(f"[faults] stacks kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    write_report(report, Path(args.out_dir))
    return report


def run(args: argparse.Namespace) -> int:
    report = run_suite(args)
    print(f"[faults] {args.out_dir}: {'PASSED' if report.passed else 'FAILED'}", flush=True)
    return 0 if report.passed else 1
