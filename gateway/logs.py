"""Structured logs: one JSON object per line. Never a secret, a signature or a whole session
token: callback lines carry ids, status and timing only."""

import logging
import sys
import time
from typing import Any

import orjson

CALLBACK_LOGGER = "gateway.callbacks"


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


_callback_log = logging.getLogger(CALLBACK_LOGGER)


def log_callback(
    request_id: str,
    endpoint: str,
    action: str,
    provider_tx_id: str,
    status: int,
    started: float,
    replayed: bool,
    refusal: tuple[str, str] | None,
) -> None:
    """One line per callback; a refusal's (`refusal`: its outcome and message) says why."""
    if not _callback_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": request_id,
        "endpoint": endpoint,
        "action": action,
        "provider_tx_id": provider_tx_id,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "replayed": replayed,
    }
    if refusal is not None:
        fields["outcome"], fields["reason"] = refusal
    _callback_log.info("callback", extra={"fields": fields})
