"""wallet-gateway instances as child processes, for the tests of `up` and `serve` as a whole
(imported as `from instances import ...`, like payloads.py)."""

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.embedded import LOOPBACK_HOST, free_port

READY_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 30.0
# A refusal comes before any server starts: far quicker than this.
REFUSAL_SECONDS_MAX = 20.0
BANNER_LAST_LINE = "Ctrl-C stops everything."


def cli_env(**settings: str) -> dict[str, str]:
    env = dict(os.environ, LOG_LEVEL="INFO", **settings)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def bench_report(out: Path, *args: str, timeout: float) -> dict[str, Any]:
    """`wallet-gateway bench ARGS --out OUT` run to its end: the report.json it wrote (its
    report.md and report.png beside it)."""
    completed = subprocess.run(
        cli("bench", *args, "--out", str(out)), capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return orjson.loads((out / "report.json").read_bytes())


class RunningUp:
    """`wallet-gateway up` on free ports and a data folder of its own; its JSON log in a file."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        """`settings`: environment variables of the child, beside the ports and DATA_DIR."""
        self.data_dir = data_dir.absolute()
        self.gateway_port, self.admin_port = free_port(), free_port()
        self.ports = {"GATEWAY_PORT": self.gateway_port, "ADMIN_PORT": self.admin_port}
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.banner: list[str] = []
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                cli(
                    "up",
                    *("--data-dir", str(self.data_dir)),
                    *("--gateway-port", str(self.gateway_port)),
                    *("--admin-port", str(self.admin_port)),
                ),
                env=cli_env(**settings),
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.pid = self.process.pid

    def wait_until_up(self) -> None:
        """Read the banner it prints once it serves; fail the test after READY_SECONDS_MAX."""
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        printed = b""
        deadline = time.monotonic() + READY_SECONDS_MAX
        with selectors.DefaultSelector() as selector:
            selector.register(descriptor, selectors.EVENT_READ)
            while BANNER_LAST_LINE.encode() not in printed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    pytest.fail(f"`up` not up after {READY_SECONDS_MAX} s: {self.log_path}")
                # os.read, not readline: a buffered reader would keep lines the selector
                # then never reports
                chunk = os.read(descriptor, 65536)
                if not chunk:
                    pytest.fail(f"`up` exited with {self.process.wait()}: {self.log_path}")
                printed += chunk
        self.banner = printed.decode().splitlines()

    def log(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.log_path.read_bytes().splitlines()]

    def stop(self) -> int:
        """SIGTERM, as a service manager would; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def served(up: RunningUp) -> Iterator[RunningUp]:
    """A module fixture's body for `up`: `yield from served(RunningUp(...))`; it must have
    stopped cleanly once the module is done."""
    try:
        up.wait_until_up()
        yield up
    finally:
        assert up.stop() == 0


def refusal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a command that must refuse to start: (exit code, stderr). One that starts instead is
    stopped with SIGTERM after REFUSAL_SECONDS_MAX, and the test fails."""
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, stderr = process.communicate(timeout=REFUSAL_SECONDS_MAX)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=STOP_SECONDS_MAX)
        pytest.fail(f"{' '.join(args)} started instead of refusing")
    return process.returncode, stderr.decode()


def shared_bind_error(port: int) -> int | None:
    """Bind the port with SO_REUSEPORT, as another process of this user could to take a share
    of its connections: the errno, or None when the port let it in."""
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            intruder.bind((LOOPBACK_HOST, port))
        except OSError as exc:
            return exc.errno
    return None


# A command run against a running `up`, as from a second shell
COMMAND_SECONDS_MAX = 120


def another_shell(up: "RunningUp") -> dict[str, str]:
    """A second shell's environment: DATA_DIR and nothing of the stack's."""
    env = cli_env(DATA_DIR=str(up.data_dir))
    for name in ("REDIS_URL", "DATABASE_URL", "ADMIN_TOKEN", "PROVIDER_KEYS"):
        env.pop(name, None)
    return env


def run_in_another_shell(up: "RunningUp", *args: str) -> subprocess.CompletedProcess[str]:
    """A wallet-gateway command from a second shell, which finds the stack by DATA_DIR alone."""
    return subprocess.run(
        cli(*args),
        env=another_shell(up),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS_MAX,
        check=False,
    )


def answer_printed(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON `call` or `admin` printed after the status line `< NNN`."""
    _, _, printed = ("\n" + done.stdout).partition("\n< ")
    return orjson.loads(printed.partition("\n")[2])


def assert_kit_and_reconcile_agree(up: RunningUp) -> None:
    """The conformance kit's replay rules pass against `up`, and reconcile finds Redis and the
    history agreeing: both run from another shell, finding the stack on their own."""
    kit = run_in_another_shell(up, "conformance", "--rule", "*replay*")
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert re.search(r"\b[1-9]\d* passed, 0 failed", kit.stdout), kit.stdout
    reconciled = run_in_another_shell(up, "reconcile")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "Reconciliation: AGREES" in reconciled.stdout
