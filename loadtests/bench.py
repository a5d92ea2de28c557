"""`wallet-gateway bench`: the benchmark an operator runs before trusting a Saturday night to us.

In one run, on one machine, with one load tool (locust, headless):
1. the ceiling, an empty aiohttp handler (loadtests/empty_app.py), and new bets only on one
   gateway process, both flat out, back to back, `--rounds` times: the ratio of each pair and
   their median (a noisy machine moves both numbers of a pair alike, not the rounds);
2. for each further gateway process count N (`--workers 1,2`): new bets only, flat out;
3. the provider-shaped mix (bets, wins, rollbacks, duplicates, balances, round closes) flat out;
4. new bets at half of the measured maximum rate: the latency an operator will see, and the
   same rate against the empty handler: what the load tool itself adds to every latency;
then it waits for the history writer, runs reconcile, checks the money, and writes
`report.json`, `report.md` and `report.png` (throughput and latency over time).

It starts its own Redis and PostgreSQL (the embedded servers of `up`) unless given URLs, and
only ever sends traffic to 127.0.0.1.
"""

import argparse
import asyncio
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway.embedded import free_port
from gateway.redis_connection import connect_background_redis, run_with_redis
from gateway.settings import Settings
from gateway.stack import EmbeddedStack
from persistence.reconcile import reconcile
from persistence.schema import migrate
from persistence.streams import WriterLag, read_lag

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LOOPBACK = "127.0.0.1"
READY_SECONDS_MAX = 60.0
PROCESS_STOP_SECONDS_MAX = 15.0
LAG_SAMPLE_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 5.0
LOCUST_EXTRA_SECONDS = 30.0  # start-up and shutdown on top of the run time
HALF_RATE_FRACTION = 0.5
CEILING_CLASS = "EmptyHandlerCeiling"
NEW_BETS_CLASS = "NewBets"
# At a fixed rate, fewer users keep locust's own queueing out of the latencies it reports:
# against the empty handler at 1,700 req/s, p99 was 10 ms with 32 users, 3 ms with 8.
LATENCY_USERS_DEFAULT = 8
ROUNDS_DEFAULT = 3
WRITER_CATCH_UP_SECONDS_MAX = 120.0
BENCH_PROVIDER_KEYS = "bench-public:bench-secret"
BENCH_ADMIN_TOKEN = "bench-admin-token"


@dataclass
class PhaseResult:
    name: str
    locust_class: str
    workers: int
    users: int
    seconds: int
    target_rps: float | None
    round_number: int | None = None  # the ceiling / new-bets pairs, measured back to back
    endpoints: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def total(self) -> dict[str, float]:
        return self.endpoints.get("Aggregated", {})


@dataclass
class BenchReport:
    machine: str
    phases: list[PhaseResult] = field(default_factory=list)
    duplicates_replayed: int = 0
    writer_lag_max_events: int = 0
    writer_lag_max_seconds: float = 0.0
    writer_lag_end_events: int = 0
    reconcile_agrees: bool = False
    reconcile_text: str = ""
    balances_redis_total: int = 0
    balances_history_total: int = 0
    lag_timeline: list[dict[str, float]] = field(default_factory=list)

    @property
    def money_check_passed(self) -> bool:
        return self.reconcile_agrees and self.balances_redis_total == self.balances_history_total

    def phase(self, name: str) -> PhaseResult | None:
        return next((phase for phase in self.phases if phase.name == name), None)

    def rounds(self) -> list[tuple[PhaseResult, PhaseResult]]:
        """(ceiling, new bets) of each round, measured back to back."""
        by_round: dict[int, dict[str, PhaseResult]] = {}
        for phase in self.phases:
            if phase.round_number is not None and phase.total.get("rps"):
                by_round.setdefault(phase.round_number, {})[phase.locust_class] = phase
        return [
            (pair[CEILING_CLASS], pair[NEW_BETS_CLASS])
            for pair in by_round.values()
            if CEILING_CLASS in pair and NEW_BETS_CLASS in pair
        ]

    def ratios(self) -> dict[str, float]:
        """New-bet throughput as a fraction of the empty handler's: each round's, their median
        (`median`), and each further process count's against the median ceiling."""
        pairs = self.rounds()
        if not pairs:
            return {}
        ratios = {
            new_bets.name: round(new_bets.total["rps"] / ceiling.total["rps"], 3)
            for ceiling, new_bets in pairs
        }
        ratios["median"] = round(statistics.median(ratios.values()), 3)
        ceiling_rps = statistics.median(ceiling.total["rps"] for ceiling, _ in pairs)
        for phase in self.phases:
            if phase.name.endswith("-process") and phase.total.get("rps"):
                ratios[phase.name] = round(phase.total["rps"] / ceiling_rps, 3)
        return ratios

    def median_new_bets_rps(self) -> float:
        return statistics.median(new_bets.total["rps"] for _, new_bets in self.rounds())


# --- processes ------------------------------------------------------------------------------


@contextmanager
def running(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[None]:
    """A child process for the length of the block, stopped with SIGTERM (then SIGKILL)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(PROCESS_STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ready(url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS_MAX
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {READY_SECONDS_MAX} s; see {log_path}")


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        PROVIDER_KEYS=settings.provider_keys,
        ADMIN_TOKEN=settings.admin_token,
        GATEWAY_HOST=LOOPBACK,
        ADMIN_HOST=LOOPBACK,
        GATEWAY_PORT=str(settings.gateway_port),
        ADMIN_PORT=str(settings.admin_port),
        LOG_LEVEL="WARNING",  # one JSON line per callback would measure the log, not the wallet
    )
    env.update(extra)
    return env


# --- locust ---------------------------------------------------------------------------------


def run_locust(
    phase: PhaseResult, host: str, env: dict[str, str], out_dir: Path, lag: "LagSampler"
) -> PhaseResult:
    prefix = out_dir / phase.name
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), phase.locust_class,
        "--headless", "--users", str(phase.users), "--spawn-rate", str(phase.users),
        "--run-time", f"{phase.seconds}s", "--host", host, "--csv", str(prefix),
        "--csv-full-history", "--only-summary", "--stop-timeout", "5",
    ]  # fmt: skip
    if phase.target_rps:
        env = {**env, "LOAD_THROUGHPUT_PER_USER": str(phase.target_rps / phase.users)}
    started = time.monotonic()
    print(
        f"[bench] {phase.name}: {phase.locust_class}, {phase.users} users, {phase.seconds} s"
        + (f", {phase.target_rps:.0f} req/s" if phase.target_rps else ""),
        flush=True,
    )
    with (out_dir / f"{phase.name}.locust.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            try:
                process.wait(PROGRESS_EVERY_SECONDS)
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > phase.seconds + LOCUST_EXTRA_SECONDS:
                    process.kill()
                    raise RuntimeError(f"locust did not stop after {elapsed:.0f} s") from None
                print(
                    f"[bench]   {min(elapsed, phase.seconds):4.0f}/{phase.seconds} s  "
                    f"{lag.latest()}",
                    flush=True,
                )
    phase.endpoints = _read_stats(prefix.with_name(prefix.name + "_stats.csv"))
    phase.failures = _read_failures(prefix.with_name(prefix.name + "_failures.csv"))
    phase.history = _read_history(prefix.with_name(prefix.name + "_stats_history.csv"))
    total = phase.total
    print(
        f"[bench]   {total.get('rps', 0):.0f} req/s, p50 {total.get('p50_ms', 0):.0f} ms, "
        f"p99 {total.get('p99_ms', 0):.0f} ms, failures {sum(phase.failures.values())}",
        flush=True,
    )
    return phase


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # locust writes N/A for percentiles without samples
        return 0.0


def _read_stats(path: Path) -> dict[str, dict[str, float]]:
    with path.open() as file:
        return {
            row["Name"]: {
                "requests": _number(row["Request Count"]),
                "failures": _number(row["Failure Count"]),
                "rps": _number(row["Requests/s"]),
                "p50_ms": _number(row["50%"]),
                "p95_ms": _number(row["95%"]),
                "p99_ms": _number(row["99%"]),
                "max_ms": _number(row["Max Response Time"]),
            }
            for row in csv.DictReader(file)
        }


def _read_failures(path: Path) -> dict[str, int]:
    """Errors by what locust saw (the locustfile names them `status NNN`)."""
    failures: dict[str, int] = {}
    if path.exists():
        with path.open() as file:
            for row in csv.DictReader(file):
                failures[row["Error"]] = failures.get(row["Error"], 0) + int(row["Occurrences"])
    return failures


def _read_history(path: Path) -> list[dict[str, float]]:
    with path.open() as file:
        return [
            {
                "t": _number(row["Timestamp"]),
                "rps": _number(row["Requests/s"]),
                "p50_ms": _number(row["50%"]),
                "p99_ms": _number(row["99%"]),
            }
            for row in csv.DictReader(file)
            if row["Name"] == "Aggregated"
        ]


# --- the writer's lag -----------------------------------------------------------------------


class LagSampler:
    """Samples the history writer's lag once a second from Redis, in a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeline: list[dict[str, float]] = []
        self._stop = False

    def latest(self) -> str:
        if not self.timeline:
            return ""
        last = self.timeline[-1]
        return f"writer lag {last['events']:.0f} events, {last['seconds']:.1f} s"

    async def sample(self) -> WriterLag:
        async with connect_background_redis(self.settings.redis_url) as redis:
            return await read_lag(redis, self.settings.shards)

    def run(self) -> None:
        while not self._stop:
            try:
                lag = asyncio.run(self.sample())
                self.timeline.append(
                    {"t": time.time(), "events": lag.retained_events, "seconds": lag.seconds_behind}
                )
            except Exception as exc:  # a sample may fail while Redis is busy; the next one counts
                print(f"[bench] lag sample failed: {exc}", file=sys.stderr)
            time.sleep(LAG_SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop = True

    def wait_until_caught_up(self, seconds_max: float) -> None:
        """Until the history holds everything the streams do (or `seconds_max` passed)."""
        deadline = time.monotonic() + seconds_max
        while time.monotonic() < deadline:
            if asyncio.run(self.sample()).retained_events == 0:
                return
            time.sleep(LAG_SAMPLE_SECONDS)
        print(f"[bench] the writer did not catch up in {seconds_max:.0f} s", flush=True)


# --- the run --------------------------------------------------------------------------------


def scrape_replays(admin_url: str) -> int:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("wallet_idempotent_replays_total")
        )
    )


def run_bench(args: argparse.Namespace) -> BenchReport:
    out_dir = Path(args.out).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="wallet-bench-"))
    settings = Settings(
        redis_url=args.redis_url,
        database_url=args.database_url,
        data_dir=str(data_dir),
        provider_keys=BENCH_PROVIDER_KEYS,
        admin_token=BENCH_ADMIN_TOKEN,
        gateway_port=free_port(),
        admin_port=free_port(),
    )
    stack = EmbeddedStack(settings)
    report = BenchReport(machine=f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    settings = stack.start(settings)
    lag = LagSampler(settings)
    sampler = threading.Thread(target=lag.run, daemon=True)
    try:
        asyncio.run(migrate(settings.database_url))
        host = f"http://{LOOPBACK}:{settings.gateway_port}"
        admin_url = f"http://{LOOPBACK}:{settings.admin_port}"
        load_env = child_env(settings, ADMIN_URL=admin_url)
        sampler.start()

        def measure(
            name: str,
            locust_class: str,
            workers: int,
            target: str,
            rps: float | None = None,
            round_number: int | None = None,
        ) -> PhaseResult:
            # every phase starts with the writer caught up, so none pays for the last one's lag
            lag.wait_until_caught_up(WRITER_CATCH_UP_SECONDS_MAX)
            users = args.latency_users if rps else args.users
            phase = PhaseResult(
                name, locust_class, workers, users, args.duration_seconds, rps, round_number
            )
            report.phases.append(run_locust(phase, target, load_env, out_dir, lag))
            return phase

        ceiling_port = free_port()
        ceiling_url = f"http://{LOOPBACK}:{ceiling_port}"
        ceiling = [sys.executable, "-m", "loadtests.empty_app", str(ceiling_port)]
        writer = [sys.executable, "-m", "persistence.writer"]
        with (
            running(writer, child_env(settings), out_dir / "writer.log"),
            running(ceiling, load_env, out_dir / "empty_app.log"),
        ):
            time.sleep(1.0)  # the empty handler's start-up (it has no readiness route)
            for workers in args.workers:
                gateway = [sys.executable, "-m", "gateway.cli", "serve", "--workers", str(workers)]
                with running(gateway, child_env(settings), out_dir / f"gateway-{workers}.log"):
                    wait_until_ready(admin_url + "/readyz", out_dir / f"gateway-{workers}.log")
                    if workers != args.workers[0]:
                        measure(f"new-bets-{workers}-process", NEW_BETS_CLASS, workers, host)
                        continue
                    for number in range(1, args.rounds + 1):
                        measure(
                            f"ceiling-round-{number}", CEILING_CLASS, 1, ceiling_url, None, number
                        )
                        measure(
                            f"new-bets-{workers}-process-round-{number}",
                            NEW_BETS_CLASS,
                            workers,
                            host,
                            None,
                            number,
                        )
                    measure("provider-mix", "Provider", workers, host)
                    half_rate = HALF_RATE_FRACTION * report.median_new_bets_rps()
                    measure("new-bets-half-rate", NEW_BETS_CLASS, workers, host, half_rate)
                    measure("ceiling-half-rate", CEILING_CLASS, 1, ceiling_url, half_rate)
                    report.duplicates_replayed = scrape_replays(admin_url)
            print("[bench] waiting for the history writer, then reconciling", flush=True)
            outcome = asyncio.run(run_with_redis(settings, reconcile))
        report.reconcile_agrees = outcome.agrees
        report.reconcile_text = outcome.render()
        report.balances_redis_total = outcome.redis_balance_total
        report.balances_history_total = outcome.history_balance_total
    finally:
        lag.stop()
        stack.stop()
    report.lag_timeline = lag.timeline
    report.writer_lag_max_events = int(max((s["events"] for s in lag.timeline), default=0))
    report.writer_lag_max_seconds = max((s["seconds"] for s in lag.timeline), default=0.0)
    report.writer_lag_end_events = int(lag.timeline[-1]["events"]) if lag.timeline else 0
    write_report(report, out_dir)
    return report


# --- the report -----------------------------------------------------------------------------


def write_report(report: BenchReport, out_dir: Path) -> None:
    data = asdict(report)
    data["ratios_to_empty_handler"] = report.ratios()
    data["money_check_passed"] = report.money_check_passed
    (out_dir / "report.json").write_text(json.dumps(data, indent=2))
    (out_dir / "report.md").write_text(render_markdown(report))
    draw_chart(report, out_dir / "report.png")
    print((out_dir / "report.md").read_text(), flush=True)


def render_markdown(report: BenchReport) -> str:
    lines = [
        "# wallet-gateway bench",
        "",
        f"Machine: {report.machine}. Load tool: locust (FastHttpUser), headless, on the same "
        "machine. All phases in one run.",
        "",
        "| phase | processes | users | endpoint | req/s | p50 ms | p95 ms | p99 ms | max ms "
        "| failures |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in report.phases:
        for name, stats in phase.endpoints.items():
            lines.append(
                f"| {phase.name} | {phase.workers} | {phase.users} | {name} | "
                f"{stats['rps']:.0f} | {stats['p50_ms']:.0f} | {stats['p95_ms']:.0f} | "
                f"{stats['p99_ms']:.0f} | {stats['max_ms']:.0f} | {stats['failures']:.0f} |"
            )
    lines += ["", "Errors by status:", ""]
    errors = {
        f"{phase.name}: {error}": count
        for phase in report.phases
        for error, count in phase.failures.items()
    }
    lines += [f"- {error}: {count}" for error, count in errors.items()] or ["- none"]
    lines += [
        "",
        "New-bet throughput as a fraction of the empty handler's (same tool, same run; each "
        "round's pair back to back):",
        "",
    ]
    lines += [f"- {name}: {ratio:.2f}x" for name, ratio in report.ratios().items()]
    gateway, floor = report.phase("new-bets-half-rate"), report.phase("ceiling-half-rate")
    if gateway and floor:
        lines += [
            "",
            f"Latency at half of the maximum new-bet rate ({gateway.target_rps:.0f} req/s, "
            f"{gateway.users} users), next to the empty handler at the same rate: what the load "
            "tool itself adds:",
            "",
            f"- gateway: p50 {gateway.total.get('p50_ms', 0):.0f} ms, "
            f"p99 {gateway.total.get('p99_ms', 0):.0f} ms",
            f"- empty handler: p50 {floor.total.get('p50_ms', 0):.0f} ms, "
            f"p99 {floor.total.get('p99_ms', 0):.0f} ms",
        ]
    lines += [
        "",
        f"Duplicates replayed (idempotent answers): {report.duplicates_replayed}",
        f"Writer lag: max {report.writer_lag_max_events} events / "
        f"{report.writer_lag_max_seconds:.1f} s; at the end {report.writer_lag_end_events} events",
        "",
        f"Money check: {'PASSED' if report.money_check_passed else 'FAILED'} (sum of balances: "
        f"Redis {report.balances_redis_total}, history {report.balances_history_total} millis "
        "= opening balances + adjustments - stakes + wins + refunds)",
        "",
        "```",
        report.reconcile_text,
        "```",
        "",
    ]
    return "\n".join(lines)


def draw_chart(report: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    start = min((p.history[0]["t"] for p in report.phases if p.history), default=0.0)
    for phase in report.phases:
        seconds = [sample["t"] - start for sample in phase.history]
        throughput.plot(seconds, [s["rps"] for s in phase.history], label=phase.name)
        latency.plot(seconds, [s["p99_ms"] for s in phase.history], label=f"{phase.name} p99")
        latency.plot(
            seconds, [s["p50_ms"] for s in phase.history], linestyle=":", label=f"{phase.name} p50"
        )
    throughput.set_ylabel("requests / s")
    latency.set_ylabel("latency, ms")
    latency.set_xlabel("seconds since the first phase")
    throughput.legend(fontsize="small")
    latency.legend(fontsize="x-small", ncol=2)
    figure.suptitle("wallet-gateway bench")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# --- command line ---------------------------------------------------------------------------


def _process_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--workers takes process counts like 1 or 1,2")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration-seconds", type=int, default=20, help="per phase (default 20)")
    parser.add_argument("--users", type=int, default=32, help="locust users (default 32)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS_DEFAULT,
        help=f"ceiling / new-bets pairs, back to back (default {ROUNDS_DEFAULT})",
    )
    parser.add_argument(
        "--latency-users",
        type=int,
        default=LATENCY_USERS_DEFAULT,
        help=f"locust users of the fixed-rate phases (default {LATENCY_USERS_DEFAULT})",
    )
    parser.add_argument(
        "--workers",
        type=_process_counts,
        default=[1],
        help="gateway process counts to sweep, e.g. 1,2 (default 1)",
    )
    parser.add_argument("--out", default="bench-report", help="report folder")
    parser.add_argument("--redis-url", default="", help="use this Redis instead of embedded")
    parser.add_argument("--database-url", default="", help="use this PostgreSQL, not embedded")


def run(args: argparse.Namespace) -> int:
    report = run_bench(args)
    return 0 if report.money_check_passed else 1
