"""Ids unique across processes and restarts without a round trip: our operator_tx_id, the logs'
request id."""

import itertools
import secrets


class ProcessUniqueIds:
    """A random per-process prefix and a counter (cheaper than a uuid per call)."""

    def __init__(self, prefix_bytes: int) -> None:
        self._prefix = secrets.token_hex(prefix_bytes)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"
