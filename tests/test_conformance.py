"""The conformance kit: our gateway passes every rule; wallets broken on purpose (a relay in
front of ours that changes requests on their way in) fail exactly the rules they break."""

import argparse
import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web
from conftest import ADMIN_TOKEN, PUBLIC_KEY, SECRET
from helpers import base_url

from gateway.app import Services, create_admin_app, create_gateway_app
from gateway.signing import signed_headers
from provider import conformance
from provider.client import OperatorAdmin
from provider.conformance import RULES, ConformanceConfig, ConformanceReport, run_conformance

RELAY_BODY_BYTES_MAX = 1024 * 1024  # above the wallet's limit: the wallet behind decides 413

SIGNATURE_RULES = {
    "missing_signature_is_401",
    "missing_public_key_is_401",
    "wrong_secret_is_401",
    "unknown_public_key_is_401",
    "hex_encoded_signature_is_401",
    "signature_of_other_bytes_is_401",
    "signature_is_checked_before_parsing",
    "every_answer_is_the_envelope",  # expects a 401 for an unsigned body
}
IDEMPOTENCY_RULES = {
    "bet_replay_is_identical_and_debits_once",
    "refused_bet_replay_is_identical",
    "win_replay_is_identical_and_credits_once",
    "rollback_replay_is_identical_and_refunds_once",
    "close_round_replay_is_identical",
    "bet_id_reused_with_another_amount_is_409",
    "win_id_reused_with_another_amount_is_409",
    "bet_id_reused_by_another_player_is_409",
    "concurrent_duplicates_debit_once",
}


@dataclass(frozen=True)
class RunningGateway:
    url: str
    admin_url: str


@pytest.fixture
async def gateway(services: Services, aiohttp_server: Any) -> RunningGateway:
    wallet = await aiohttp_server(create_gateway_app(services))
    admin = await aiohttp_server(create_admin_app(services))
    return RunningGateway(base_url(wallet), base_url(admin))


async def conformance_of(wallet_url: str, gateway: RunningGateway) -> ConformanceReport:
    async with OperatorAdmin(gateway.admin_url, ADMIN_TOKEN) as admin:
        return await run_conformance(ConformanceConfig(wallet_url, PUBLIC_KEY, SECRET, admin))


def failed_names(report: ConformanceReport) -> set[str]:
    return {result.name for result in report.failed}


# A relay's view of one request: (body, headers) in, (body, headers) out.
Rewrite = Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]


@pytest.fixture
async def relay(
    aiohttp_server: Any, gateway: RunningGateway
) -> AsyncIterator[Callable[[Rewrite], Awaitable[str]]]:
    """Starts a wallet that forwards to ours after `rewrite`; -> its URL."""
    session = ClientSession()

    async def start(rewrite: Rewrite) -> str:
        async def forward(request: web.Request) -> web.Response:
            body, headers = rewrite(await request.read(), dict(request.headers))
            headers = {name: value for name, value in headers.items() if name.startswith("X-")}
            async with session.post(
                gateway.url + request.path,
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            ) as answer:
                return web.Response(
                    status=answer.status, body=await answer.read(), content_type="application/json"
                )

        app = web.Application(client_max_size=RELAY_BODY_BYTES_MAX)
        app.router.add_post("/{path:.*}", forward)
        return base_url(await aiohttp_server(app))

    yield start
    await session.close()


def skip_signature_checks(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A wallet that trusts anything: every request reaches ours correctly signed."""
    return body, signed_headers(PUBLIC_KEY, SECRET, body)


def fresh_answers_on_retries() -> Rewrite:
    """A wallet without idempotency: a repeated provider_tx_id is processed as a new call."""
    seen: set[str] = set()
    suffixes = itertools.count(1)

    def rewrite(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, headers
        tx_id = payload.get("provider_tx_id") if isinstance(payload, dict) else None
        if not isinstance(tx_id, str):
            return body, headers
        if tx_id not in seen:
            seen.add(tx_id)
            return body, headers
        payload["provider_tx_id"] = f"{tx_id}-again-{next(suffixes)}"
        body = orjson.dumps(payload)
        return body, signed_headers(PUBLIC_KEY, SECRET, body)

    return rewrite


async def test_our_gateway_passes_every_rule(gateway: RunningGateway) -> None:
    report = await conformance_of(gateway.url, gateway)
    assert report.passed, "\n".join(result.line() for result in report.failed)
    assert len(report.results) == len(RULES)
    assert len({rule.name for rule in RULES}) == len(RULES), "rule names must be unique"


async def test_wallet_skipping_signature_checks_fails_the_signature_rules(
    gateway: RunningGateway, relay: Callable[[Rewrite], Awaitable[str]]
) -> None:
    report = await conformance_of(await relay(skip_signature_checks), gateway)
    assert not report.passed
    assert failed_names(report) == SIGNATURE_RULES
    assert "expected 401, got 200" in next(
        result.reason for result in report.failed if result.name == "wrong_secret_is_401"
    )


async def test_wallet_without_idempotency_fails_the_replay_and_conflict_rules(
    gateway: RunningGateway, relay: Callable[[Rewrite], Awaitable[str]]
) -> None:
    report = await conformance_of(await relay(fresh_answers_on_retries()), gateway)
    assert not report.passed
    assert failed_names(report) == IDEMPOTENCY_RULES


def command_line(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    conformance.add_arguments(parser)
    return parser.parse_args(["--public-key", PUBLIC_KEY, "--secret", SECRET, *argv])


async def test_command_exits_1_and_prints_a_line_per_rule_when_a_rule_fails(
    gateway: RunningGateway,
    relay: Callable[[Rewrite], Awaitable[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = command_line(
        "--url",
        await relay(skip_signature_checks),
        "--admin-url",
        gateway.admin_url,
        "--admin-token",
        ADMIN_TOKEN,
        "--rule",
        "wrong_secret_is_401",
        "--rule",
        "bet_debits_the_stake",
    )
    # run() owns its event loop; the servers keep serving on this one meanwhile
    assert await asyncio.to_thread(conformance.run, args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAIL  §2  wrong_secret_is_401: /withdraw: expected 401, got 200")
    assert lines[1] == "PASS  §4  bet_debits_the_stake"
    assert lines[2] == "1 passed, 1 failed, 2 rules"


HOOK_SCRIPT = """
import json, sys, urllib.request, uuid

admin_url, token, currency, balance = sys.argv[1:5]

def call(path, payload):
    request = urllib.request.Request(
        admin_url + path, data=json.dumps(payload).encode(), method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)["data"]

user_id = "hook-" + uuid.uuid4().hex
call("/admin/players", {"user_id": user_id, "currency": currency, "balance": int(balance)})
session = call("/admin/sessions", {"user_id": user_id})
print(json.dumps({"user_id": user_id, "session_token": session["session_token"]}))
"""


async def test_command_with_a_player_hook_passes_against_our_gateway(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = tmp_path / "new_player.py"
    hook.write_text(HOOK_SCRIPT)
    args = command_line(
        "--url",
        gateway.url,
        "--player-hook",
        f"{sys.executable} {hook} {gateway.admin_url} {ADMIN_TOKEN}",
        "--rule",
        "concurrent_*",
        "--rule",
        "bet_replay_*",
    )
    assert await asyncio.to_thread(conformance.run, args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 passed, 0 failed, 3 rules"


async def test_a_player_hook_printing_nonsense_fails_the_rule_with_the_reason(
    gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    args = command_line(
        "--url", gateway.url, "--player-hook", "echo nonsense", "--rule", "bet_debits_the_stake"
    )
    assert await asyncio.to_thread(conformance.run, args) == 1
    out = capsys.readouterr().out
    assert "FAIL  §4  bet_debits_the_stake: could not create a test player" in out
    assert "printed nonsense" in out


def test_command_needs_a_player_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert conformance.run(command_line("--url", "http://127.0.0.1:9")) == 2
    assert "needs --admin-url or --player-hook" in capsys.readouterr().err
