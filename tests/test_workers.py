"""`serve --workers 2`: two processes share the callback port (SO_REUSEPORT), the admin
listener shares its port with nobody, and its /metrics counts the callbacks of both."""

import errno
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from conftest import ADMIN_TOKEN, PUBLIC_KEY, SECRET
from instances import shared_bind_error
from prometheus_client.parser import text_string_to_metric_families

from gateway.embedded import EmbeddedRedis, free_port
from gateway.signing import signed_headers

READY_SECONDS_MAX = 30.0
CALLBACKS = 60


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read()
    except urllib.error.HTTPError as error:  # an envelope error is an answer too
        return error.read()


def test_two_workers_share_the_port_and_metrics_count_both(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    gateway_port, admin_port = free_port(), free_port()
    env = dict(
        os.environ,
        REDIS_URL=redis_server.url,
        PROVIDER_KEYS=f"{PUBLIC_KEY}:{SECRET}",
        ADMIN_TOKEN=ADMIN_TOKEN,
        GATEWAY_PORT=str(gateway_port),
        ADMIN_PORT=str(admin_port),
        LOG_LEVEL="WARNING",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_SECONDS_MAX
        while time.monotonic() < deadline:
            try:
                http(f"http://127.0.0.1:{admin_port}/readyz")
                http(f"http://127.0.0.1:{gateway_port}/balance", b"{}")
                break
            except OSError:
                time.sleep(0.2)
        assert shared_bind_error(admin_port) == errno.EADDRINUSE
        for _ in range(CALLBACKS):
            body = orjson.dumps({"user_id": "nobody"})
            answer = orjson.loads(
                http(
                    f"http://127.0.0.1:{gateway_port}/balance",
                    body,
                    signed_headers(PUBLIC_KEY, SECRET, body),
                )
            )
            assert answer["code"] == 404
        metrics = http(f"http://127.0.0.1:{admin_port}/metrics").decode()
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        answered = sum(
            sample.value
            for sample in families["wallet_requests"].samples
            if sample.name == "wallet_requests_total" and sample.labels["endpoint"] == "balance"
            and sample.labels["status"] == "404"
        )  # fmt: skip
        assert answered == CALLBACKS
        redis_up = [s for s in families["wallet_redis_up"].samples]
        assert len(redis_up) == 1  # the admin process's gauge, once
        pids = {sample.labels.get("pid") for sample in families["wallet_requests"].samples}
        assert pids == {None}  # summed across the workers, not one series per process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()
