"""`up` keeps its children running: a killed history writer is said loudly at ERROR and
started again after a backoff; the backoff grows while a child keeps dying and starts over
once it ran a while; nothing is restarted while `up` stops."""

import functools
import logging
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from instances import RunningUp

from gateway.supervisor import RESTART_DELAY_SECONDS_MIN, STABLE_RUN_SECONDS, Child

RESTART_SECONDS_MAX = 15.0
STARTED = re.compile(r"started history-writer \(pid (\d+)\)")


def parent_pid(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ...", comm in parentheses may hold spaces
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def writer_pids(up: RunningUp) -> list[int]:
    """The writers `up` started, in order, from its log."""
    return [int(match[1]) for line in up.log() if (match := STARTED.fullmatch(line["message"]))]


def eventually(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + RESTART_SECONDS_MAX
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_a_killed_writer_is_restarted_and_said_loudly(tmp_path: Path) -> None:
    up = RunningUp(tmp_path / "data")
    try:
        up.wait_until_up()
        [first] = writer_pids(up)
        assert parent_pid(first) == up.pid

        os.kill(first, signal.SIGKILL)

        assert eventually(lambda: len(writer_pids(up)) == 2), up.log_path
        second = writer_pids(up)[1]
        assert parent_pid(second) == up.pid
        # and it works: the writer in it started its consumer (named host-pid-random)
        consumer_started = re.compile(rf"history writer \S+-{second}-\w+ started on 16 streams")
        assert eventually(
            lambda: any(consumer_started.fullmatch(line["message"]) for line in up.log())
        ), up.log_path
    finally:
        assert up.stop() == 0

    errors = [line for line in up.log() if line["level"] == "ERROR"]
    assert [line["logger"] for line in errors] == ["gateway.supervisor"]  # none at the stop
    assert re.fullmatch(
        rf"history-writer \(pid {first}\) exited with code -9 after [\d.]+ s; "
        r"restarting it in [\d.]+ s",
        errors[0]["message"],
    ), errors
    assert len(writer_pids(up)) == 2  # not restarted while `up` stopped


def test_a_child_that_keeps_dying_backs_off_more_each_time_until_it_ran_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = multiprocessing.get_context("fork")
    child = Child(functools.partial(context.Process, target=sys.exit, args=(3,), name="doomed"))
    child.start()
    delays = []
    for _ in range(4):
        child.process.join(RESTART_SECONDS_MAX)
        now = time.monotonic()
        child.check(now)  # notices the death, schedules the restart
        assert child.restart_at is not None
        delays.append(child.restart_at - now)
        child.check(child.restart_at)  # restarts
    child.process.join(RESTART_SECONDS_MAX)
    # died again, but after a stable run: the backoff starts over
    child.check(child.started_at + STABLE_RUN_SECONDS)
    assert child.restart_at is not None
    delays.append(child.restart_at - child.started_at - STABLE_RUN_SECONDS)

    ceilings = [RESTART_DELAY_SECONDS_MIN * 2**n for n in (0, 1, 2, 3, 0)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 5
    assert all(re.match(r"doomed \(pid \d+\) exited with code 3 ", e) for e in errors), errors
