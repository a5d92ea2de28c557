"""CPU seconds of running processes, read from /proc (Linux), for the bench's CPU table.

A process tree's CPU is its own (utime + stime of all its threads) plus that of its live
descendants (PostgreSQL's backends under the postmaster, gateway workers under the supervisor),
plus what its children that ended and were reaped used (cutime + cstime). A process that ends
between two readings without being reaped by one in the tree is lost, as it is to `top`.

A load tool runs as the bench's own child: what it used, start-up included, is in the resource
usage its reaping returns (`reap`).
"""

import os
import subprocess
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
# /proc/<pid>/stat fields after "pid (comm) ": state is the first, so field N of proc(5) is at
# N - 3: ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
PPID_INDEX = 4 - 3
TIMES_SLICE = slice(14 - 3, 17 - 3 + 1)


@dataclass(frozen=True, slots=True)
class ProcessStat:
    pid: int
    ppid: int
    ticks: int  # utime + stime + cutime + cstime


def read_stat(pid: int) -> ProcessStat | None:
    """None once the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    fields = text[text.rindex(")") + 2 :].split()
    return ProcessStat(pid, int(fields[PPID_INDEX]), sum(map(int, fields[TIMES_SLICE])))


def all_stats() -> list[ProcessStat]:
    stats = (read_stat(int(entry.name)) for entry in PROC.iterdir() if entry.name.isdigit())
    return [stat for stat in stats if stat is not None]


def tree_seconds(root: int, stats: Iterable[ProcessStat]) -> float:
    """CPU seconds of `root` and its live descendants, from one reading of every process."""
    by_parent: dict[int, list[ProcessStat]] = {}
    own: ProcessStat | None = None
    for stat in stats:
        by_parent.setdefault(stat.ppid, []).append(stat)
        if stat.pid == root:
            own = stat
    if own is None:
        return 0.0
    ticks, pending = 0, [own]
    while pending:
        stat = pending.pop()
        ticks += stat.ticks
        pending += by_parent.get(stat.pid, [])
    return ticks / CLOCK_TICKS_PER_SECOND


class CpuMeter:
    """CPU seconds of named process trees between `start()` and `stop()`; a name may stand
    for several trees (every node of a Redis Cluster), whose seconds it adds up."""

    def __init__(self, roots: Mapping[str, int | Collection[int]]) -> None:
        self.roots = {
            name: (pids,) if isinstance(pids, int) else tuple(pids) for name, pids in roots.items()
        }
        self._started: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        stats = all_stats()  # one reading for every tree: they are compared at one instant
        return {
            name: sum(tree_seconds(pid, stats) for pid in pids) for name, pids in self.roots.items()
        }

    def start(self) -> None:
        self._started = self._read()

    def stop(self) -> dict[str, float]:
        ended = self._read()
        return {name: ended[name] - self._started[name] for name in self.roots}


def reap(process: subprocess.Popen[bytes]) -> float | None:
    """The CPU seconds `process` (a child) used in all, once it has ended; else None. Reaped
    here (with its resource usage), so `process.returncode` is set here too."""
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid == 0:
        return None
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime
