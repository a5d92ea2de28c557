"""The child processes of `up` and `serve --workers N` (gateway workers, the history writer)
kept running: one that dies is said loudly and started again after a backoff, so a crashed
writer does not leave the history silently behind."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from gateway.backoff import Backoff

log = logging.getLogger("gateway.supervisor")

POLL_SECONDS = 0.5
RESTART_DELAY_SECONDS_MIN = 0.5
RESTART_DELAY_SECONDS_MAX = 30.0
# A child that ran this long before it died was healthy: its restarts back off from the start.
STABLE_RUN_SECONDS = 60.0


class Child:
    """One supervised process; `make` builds a fresh (unstarted) Process each time."""

    def __init__(self, make: Callable[[], BaseProcess]) -> None:
        self.make = make
        self.process = make()
        self.started_at = 0.0
        # the wait before a restart grows with the deaths in a row, each within
        # STABLE_RUN_SECONDS of its start
        self.restarts = Backoff(RESTART_DELAY_SECONDS_MIN, RESTART_DELAY_SECONDS_MAX)
        self.restart_at: float | None = None

    def start(self) -> None:
        self.process.start()
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %s)", self.process.name, self.process.pid)

    def check(self, now: float) -> None:
        """Notice a death and schedule the restart; restart when it is due."""
        if self.restart_at is None:
            if self.process.is_alive():
                return
            ran_seconds = now - self.started_at
            if ran_seconds >= STABLE_RUN_SECONDS:
                self.restarts.reset()
            delay = self.restarts.next_seconds()
            self.restart_at = now + delay
            log.error(
                "%s (pid %s) exited with code %s after %.1f s; restarting it in %.1f s",
                self.process.name,
                self.process.pid,
                self.process.exitcode,
                ran_seconds,
                delay,
            )
        elif now >= self.restart_at:
            self.process.close()  # a Process starts once: the restart is a new one
            self.process = self.make()
            self.start()


class Supervisor:
    def __init__(self, makers: list[Callable[[], BaseProcess]]) -> None:
        self.children = [Child(make) for make in makers]

    def start(self) -> None:
        for child in self.children:
            child.start()

    async def watch(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: once it is, nothing is restarted (a due restart is dropped)."""
        while not stop.is_set():
            now = time.monotonic()
            for child in self.children:
                child.check(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM every child, then wait for each up to `grace_seconds`."""
        for child in self.children:
            child.process.terminate()
        for child in self.children:
            child.process.join(grace_seconds)
