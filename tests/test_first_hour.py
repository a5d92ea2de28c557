"""A newcomer's first hour, as the README tells it: `up` in one shell; in another, with nothing
exported but DATA_DIR (the shell's working folder would do), a signed bet, its replay, a win, a
rollback, the simulator, the conformance kit and reconcile, each finding the stack by itself."""

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from instances import (
    COMMAND_SECONDS_MAX,
    RunningUp,
    another_shell,
    answer_printed,
    assert_kit_and_reconcile_agree,
    run_in_another_shell,
    served,
)

from gateway.embedded import free_port
from gateway.recorded_stack import recorded_stack

pytestmark = pytest.mark.slow  # `up` itself, and a child process per command

PLAYER = "newcomer-1"
OPENING_BALANCE = 100_000


@pytest.fixture(scope="module")
def launch_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def running_up(tmp_path_factory: pytest.TempPathFactory, launch_port: int) -> Iterator[RunningUp]:
    # Only the launch API's address is given, so that the simulator can listen on a port free
    # here; PROVIDER_PUBLIC_KEY is left to `up`, which must default it to the stack's key.
    yield from served(
        RunningUp(
            tmp_path_factory.mktemp("first-hour") / "data",
            PROVIDER_BASE_URL=f"http://127.0.0.1:{launch_port}",
        )
    )


def callbacks_served(up: RunningUp) -> int:
    return sum(1 for line in up.log() if line.get("message") == "callback")


@pytest.fixture(scope="module")
def player(running_up: RunningUp) -> str:
    """Created as the README does: `wallet-gateway admin`, with the stack's token."""
    created = run_in_another_shell(
        running_up,
        *("admin", "post", "/admin/players"),
        orjson.dumps({"user_id": PLAYER, "currency": "USD", "balance": OPENING_BALANCE}).decode(),
    )
    assert created.returncode == 0, created.stdout + created.stderr
    assert answer_printed(created)["code"] == 201
    return PLAYER


def test_the_admin_command_reads_with_the_stacks_token(running_up: RunningUp, player: str) -> None:
    done = run_in_another_shell(running_up, "admin", "get", f"/admin/players/{player}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert answer_printed(done)["data"]["user_id"] == player  # type: ignore[index]

    refused = run_in_another_shell(
        running_up, "admin", "get", f"/admin/players/{player}", "--admin-token", "x"
    )
    assert refused.returncode == 1
    assert answer_printed(refused)["code"] == 401


def test_up_records_its_stack_and_prints_a_paste_ready_export(running_up: RunningUp) -> None:
    stack = recorded_stack(str(running_up.data_dir))
    assert stack is not None
    assert stack.callbacks_url == f"http://127.0.0.1:{running_up.gateway_port}"
    assert stack.admin_url == f"http://127.0.0.1:{running_up.admin_port}"
    assert (running_up.data_dir / "stack.json").stat().st_mode & 0o077 == 0  # holds secrets
    export = next(line for line in running_up.banner if line.startswith("export "))
    exported = dict(word.split("=", 1) for word in shlex.split(export)[1:])
    assert exported == {
        "WALLET_URL": stack.callbacks_url,
        "ADMIN_URL": stack.admin_url,
        "ADMIN_TOKEN": stack.admin_token,
        "PUBLIC_KEY": stack.public_key,
        "SECRET": stack.secret,
        "PROVIDER_KEYS": stack.provider_keys,
    }


def test_a_signed_bet_its_replay_a_win_and_a_rollback_from_another_shell(
    running_up: RunningUp, player: str
) -> None:
    bet_args = ("call", "withdraw", "--user", player, "--amount", "5440", "--tx", "b-1")
    bet = run_in_another_shell(running_up, *bet_args)
    assert bet.returncode == 0, bet.stderr
    assert answer_printed(bet)["data"]["new_balance"] == OPENING_BALANCE - 5440  # type: ignore[index]

    replay = run_in_another_shell(running_up, *bet_args)
    assert replay.returncode == 0, replay.stderr
    assert answer_printed(replay) == answer_printed(bet)  # the same answer; the money moved once

    other = run_in_another_shell(
        running_up, "call", "withdraw", "--user", player, "--amount", "1", "--tx", "b-1"
    )
    assert other.returncode == 1
    assert answer_printed(other)["code"] == 409

    win = run_in_another_shell(
        running_up,
        *("call", "deposit", "--user", player, "--amount", "10880"),
        *("--tx", "w-1", "--bet-tx", "b-1"),
    )
    assert win.returncode == 0, win.stderr
    assert '"round_id":"r-b-1"' in win.stdout  # the bet's round, by default

    run_in_another_shell(
        running_up, "call", "withdraw", "--user", player, "--amount", "1000", "--tx", "b-2"
    )
    rollback = run_in_another_shell(
        running_up,
        *("call", "deposit", "--action", "ROLL_BACK", "--user", player),
        *("--tx", "rb-1", "--bet-tx", "b-2"),
    )
    assert rollback.returncode == 0, rollback.stderr

    balance = run_in_another_shell(running_up, "call", "balance", "--user", player)
    assert answer_printed(balance)["data"] == {  # type: ignore[comparison-overlap]
        "currency": "USD",
        "amount": OPENING_BALANCE - 5440 + 10880,
    }


def test_the_simulator_plays_against_the_default_stack(
    running_up: RunningUp, launch_port: int
) -> None:
    done = run_in_another_shell(
        running_up,
        *("simulate", "--listen-port", str(launch_port), "--players", "2", "--rounds", "6"),
        *("--duration-seconds", "60", "--seed", "7"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"balances 2 match the ledger, 0 differ", done.stdout), done.stdout


def test_the_conformance_kit_and_reconcile_find_the_stack(running_up: RunningUp) -> None:
    assert_kit_and_reconcile_agree(running_up)


def test_a_restarted_up_keeps_its_ports_and_a_stopped_one_is_named(
    running_up: RunningUp, tmp_path: Path
) -> None:
    up = RunningUp(tmp_path / "data")
    up.wait_until_up()
    first = recorded_stack(str(up.data_dir))
    assert up.stop() == 0

    stopped = run_in_another_shell(up, "call", "balance", "--user", PLAYER)
    assert stopped.returncode == 2
    assert stopped.stderr.strip() == (
        "call: error: needs --url, --public-key, --secret: "
        f"no `wallet-gateway up` runs from {up.data_dir} to give a default"
    )

    again = RunningUp(tmp_path / "data")
    again.wait_until_up()
    try:
        second = recorded_stack(str(again.data_dir))
        assert first is not None and second is not None
        assert (second.redis_url, second.database_url) == (first.redis_url, first.database_url)
    finally:
        assert again.stop() == 0


def test_the_load_test_finds_the_stack(running_up: RunningUp) -> None:
    locustfile = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"
    callbacks_before = callbacks_served(running_up)
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(locustfile), "Provider", "--headless"],
        env=dict(another_shell(running_up), LOCUST_USERS="2", LOCUST_RUN_TIME="3s"),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS_MAX,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # none failed, and they went to this stack
    assert callbacks_served(running_up) > callbacks_before
    assert re.search(r"Aggregated\s+[1-9]\d*\s+0\(0\.00%\)", done.stderr), done.stderr[-3000:]
