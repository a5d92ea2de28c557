"""The bench's CPU readings from /proc: a child that burns CPU is seen burning it, through its
parent's tree and through its own reaping."""

import os
import subprocess
import sys
import time

from loadtests.process_cpu import CpuMeter, all_stats, read_stat, reap, tree_seconds

BURN_SECONDS = 0.5
# burns CPU, says so, then lives on until told to end (a line on stdin)
BURNER = (
    "import sys, time\n"
    "end = time.process_time() + float(sys.argv[1])\n"
    "while time.process_time() < end:\n"
    "    pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.readline()\n"
)
# starts the burner and reaps it, says so, then lives on until told to end: the CPU is the
# child's, first a live descendant's, then a reaped child's (cutime)
PARENT_OF_A_BURNER = (
    "import subprocess, sys\n"
    "subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]], check=True)\n"
    "print('reaped', flush=True)\n"
    "sys.stdin.readline()\n"
)


def start_parent_of_a_burner() -> subprocess.Popen[str]:
    command = [sys.executable, "-c", PARENT_OF_A_BURNER, BURNER, str(BURN_SECONDS)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def plausible(cpu_seconds: float, started: float) -> bool:
    wall = time.monotonic() - started
    return BURN_SECONDS * 0.5 < cpu_seconds < wall * (os.cpu_count() or 1)


def test_a_busy_child_counts_for_its_parents_tree_alive_and_once_reaped() -> None:
    started = time.monotonic()
    parent = start_parent_of_a_burner()
    assert parent.stdin is not None and parent.stdout is not None
    meter = CpuMeter({"tree": parent.pid})
    meter.start()
    assert parent.stdout.readline() == "burnt\n"
    assert plausible(meter.stop()["tree"], started)
    parent.stdin.write("\n")
    parent.stdin.flush()
    assert parent.stdout.readline() == "reaped\n"
    assert plausible(meter.stop()["tree"], started)
    parent.stdin.write("\n")
    parent.stdin.flush()
    assert parent.wait(30) == 0


def test_reaping_a_child_gives_all_the_cpu_it_used() -> None:
    started = time.monotonic()
    parent = start_parent_of_a_burner()
    assert parent.stdin is not None
    parent.stdin.close()  # both end once they have burnt and reaped
    used = None
    while used is None:
        time.sleep(0.05)
        used = reap(parent)
    assert parent.returncode == 0
    assert plausible(used, started)


def test_a_process_that_is_gone_reads_as_none_and_its_tree_as_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read_stat(child.pid) is None
    assert tree_seconds(child.pid, all_stats()) == 0.0


def test_this_process_reads_its_own_parent() -> None:
    stat = read_stat(os.getpid())
    assert stat is not None
    assert stat.ppid == os.getppid()
