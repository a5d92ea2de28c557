"""Waits between attempts while something keeps failing (a restarted child process, a batch
PostgreSQL refused, an unreachable Redis): doubling with each failure in a row up to a cap,
jittered into the upper half so that clients that failed together (the server went away) do
not all come back at the same instant."""

import random

# Past this many doublings any cap in seconds is reached; it bounds the power, not the wait.
DOUBLINGS_MAX = 16


class Backoff:
    def __init__(self, first_seconds: float, max_seconds: float) -> None:
        assert 0 < first_seconds <= max_seconds
        self.first_seconds = first_seconds
        self.max_seconds = max_seconds
        self.failures = 0  # in a row

    def next_seconds(self) -> float:
        """Count one more failure -> how long to wait before the next attempt."""
        ceiling = min(
            self.max_seconds, self.first_seconds * 2 ** min(self.failures, DOUBLINGS_MAX)
        )
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """It worked (or ran long enough): the next failure waits first_seconds again."""
        self.failures = 0
