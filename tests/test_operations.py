"""What operations tooling reads: Prometheus metrics (parsed as Prometheus parses them),
liveness and readiness, and the JSON log line of every callback."""

import logging
from typing import Any

import orjson
import pytest
from conftest import PUBLIC_KEY, SECRET
from payloads import bet, rollback, win
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Services, create_admin_app, operations_api
from gateway.logs import CALLBACK_LOGGER, JsonLineFormatter
from gateway.signing import sign_body


async def scrape(admin: Any) -> dict[str, Any]:
    """The admin listener's /metrics, fetched without a token and parsed into samples."""
    response = await admin.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        family.name: family.samples
        for family in text_string_to_metric_families(await response.text())
    }


def sample_value(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
    for sample in families.get(family, []):
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


async def test_metrics_count_requests_latency_replays_conflicts_and_incidents(provider, admin):
    await admin.create_player("metered", 10_000)
    session = await admin.open_session("metered")
    payload = bet("metered", session, "m-bet", 1000)
    await provider.post("/withdraw", payload)
    await provider.post("/withdraw", payload)  # a replay
    await provider.post("/withdraw", bet("metered", session, "m-big", 50_000))  # 402
    await provider.post("/deposit", win("metered", "m-win", "m-bet", 10))
    await provider.post("/deposit", rollback("metered", "m-rb", "m-bet"))  # 409 incident

    families = await scrape(admin)
    requests = "wallet_requests_total"
    assert sample_value(families, "wallet_requests", requests, endpoint="withdraw",
                        action="BET", status="200") == 2  # fmt: skip
    assert sample_value(families, "wallet_requests", requests, endpoint="withdraw",
                        action="BET", status="402") == 1  # fmt: skip
    assert sample_value(families, "wallet_request_seconds", "wallet_request_seconds_count",
                        endpoint="withdraw") == 3  # fmt: skip
    batches = sample_value(families, "wallet_redis_batch_seconds",
                           "wallet_redis_batch_seconds_count")  # fmt: skip
    # at most two per money call (its claim, its script), + the player's, + the session's two
    # (its script, its index)
    assert 1 <= batches <= 2 * 5 + 1 + 2
    assert sample_value(families, "wallet_idempotent_replays",
                        "wallet_idempotent_replays_total", endpoint="withdraw") == 1  # fmt: skip
    assert sample_value(families, "wallet_conflicts", "wallet_conflicts_total",
                        kind="ROLLBACK_OF_WON_BET") == 1  # fmt: skip
    assert sample_value(families, "wallet_incidents", "wallet_incidents_total",
                        kind="ROLLBACK_OF_WON_BET") == 1  # fmt: skip


async def test_gauges_report_reachability_and_the_streams(provider, admin, services: Services):
    await admin.create_player("gauged", 10_000)
    for probe in operations_api(services).probes():
        await probe()
    families = await scrape(admin)
    assert sample_value(families, "wallet_redis_up", "wallet_redis_up") == 1
    # player + session events, none written by a history writer in this test
    assert sample_value(families, "wallet_stream_entries", "wallet_stream_entries") >= 1
    assert sample_value(families, "wallet_writer_lag_entries", "wallet_writer_lag_entries") >= 1


async def test_healthz_and_readyz_answer_without_the_admin_token(admin):
    for path in ("/healthz", "/readyz"):
        response = await admin.client.get(path)
        body = orjson.loads(await response.read())
        assert response.status == 200 and body["code"] == 200, body
    response = await admin.client.get("/readyz")
    assert orjson.loads(await response.read())["data"]["redis"] is True


async def test_readyz_is_503_when_redis_lost_the_scripts_then_ready_again(admin, services):
    await services.redis.script_flush()
    response = await admin.client.get("/readyz")
    assert response.status == 503
    await services.wallet.start()
    assert (await admin.client.get("/readyz")).status == 200


async def test_every_callback_logs_one_json_line_without_secrets(
    provider, admin, caplog: pytest.LogCaptureFixture
):
    await admin.create_player("logged", 10_000)
    session = await admin.open_session("logged")
    payload = bet("logged", session, "logged-bet", 1000)
    body = orjson.dumps(payload)
    with caplog.at_level(logging.INFO, logger=CALLBACK_LOGGER):
        status, _ = await provider.post_raw("/withdraw", body)
    assert status == 200
    lines = [JsonLineFormatter().format(r) for r in caplog.records if r.name == CALLBACK_LOGGER]
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert line["endpoint"] == "withdraw" and line["action"] == "BET"
    assert line["provider_tx_id"] == "logged-bet" and line["status"] == 200
    assert line["request_id"] and line["duration_ms"] >= 0 and line["replayed"] is False
    for secret in (SECRET, sign_body(SECRET, body), session):
        assert secret not in lines[0]
    assert PUBLIC_KEY not in lines[0]


async def test_admin_app_is_not_public_beyond_the_operations_paths(
    services: Services, aiohttp_client
):
    client = await aiohttp_client(create_admin_app(services))
    assert (await client.get("/admin/incidents")).status == 401
    assert (await client.get("/metrics")).status == 200
