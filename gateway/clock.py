"""Wall-clock time as the wallet stores it: whole milliseconds since the epoch (the `ts` of
records and stream events, the retention arithmetic of the history)."""

import time


def now_ms() -> int:
    return int(time.time() * 1000)
