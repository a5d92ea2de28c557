"""The provider simulator against our gateway: game launch end to end, rounds of both kinds,
balances as the simulator's ledger predicts, and the provider's retries through a flaky network."""

import argparse
import asyncio
import socket
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import ADMIN_TOKEN, PUBLIC_KEY, SECRET
from helpers import base_url

from gateway.app import Services, create_admin_app, create_gateway_app
from gateway.launch import LaunchClient
from gateway.schemas import CloseRoundRequest
from gateway.settings import Settings
from provider import simulator as simulate_command
from provider.client import (
    WITHDRAW_PATH,
    CallbackUndelivered,
    OperatorAdmin,
    ProviderClient,
    RetryPolicy,
    bet_body,
    paid_millis,
)
from provider.launch_api import GAMES
from provider.simulator import ProviderSimulator, SimulatorConfig

FAST_RETRY = RetryPolicy(attempts_max=5, backoff_first_seconds=0.01, backoff_max_seconds=0.05)
CALL_TIMEOUT_SECONDS_SHORT = 0.2
PLAYER_BALANCE_MILLIS = 20_000


@dataclass
class Stack:
    simulator: ProviderSimulator
    admin: OperatorAdmin


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def gateway_url(services: Services, aiohttp_server: Any) -> str:
    return base_url(await aiohttp_server(create_gateway_app(services)))


@pytest.fixture
async def start_stack(
    services: Services, settings: Settings, aiohttp_server: Any
) -> AsyncIterator[StartStack]:
    """A simulator posting to `wallet_url`, and our admin API launching games at it."""
    opened: list[tuple[ProviderSimulator, OperatorAdmin, Services]] = []

    async def start(wallet_url: str, **config: Any) -> Stack:
        config = {"retry": FAST_RETRY, "seed": 7, **config}
        simulator = ProviderSimulator(SimulatorConfig(wallet_url, PUBLIC_KEY, SECRET, **config))
        provider_url = await simulator.launch_api.start_server("127.0.0.1", 0)
        launching = Services.create(
            settings.replace(provider_base_url=provider_url, provider_public_key=PUBLIC_KEY)
        )
        await launching.wallet.start()
        admin_server = await aiohttp_server(create_admin_app(launching))
        admin = OperatorAdmin(base_url(admin_server), ADMIN_TOKEN, "player")
        opened.append((simulator, admin, launching))
        return Stack(simulator, admin)

    yield start
    for simulator, admin, launching in opened:
        await simulator.close()
        await admin.close()
        await launching.close()


async def assert_wallet_matches_the_ledger(stack: Stack) -> None:
    expected = stack.simulator.expected_balances()
    actual = {user_id: await stack.admin.balance_millis(user_id) for user_id in expected}
    assert actual == expected


# --- launch -------------------------------------------------------------------------------------


async def test_admin_launch_reaches_the_simulator_which_authenticates_the_player(
    gateway_url: str, start_stack: StartStack
) -> None:
    stack = await start_stack(gateway_url)
    await stack.admin.create_player("alice", "USD", 50_000)
    launch = await stack.admin.launch("alice", "aviadrone")
    assert launch["launch_url"].startswith(stack.simulator.launch_api.base_url + "/play/aviadrone")
    account = stack.simulator.launch_api.players["alice"]
    assert (account.session_token, account.currency) == (launch["session_token"], "USD")
    assert account.balance_millis == 50_000
    # the session the provider got at launch is the one the wallet takes bets on
    reply = await stack.simulator.client.post(
        WITHDRAW_PATH,
        bet_body(
            user_id="alice",
            session_token=launch["session_token"],
            amount_millis=1_000,
            currency="USD",
            provider_tx_id="launch-bet",
            round_id="launch-round",
            game="aviadrone",
        ),
    )
    assert reply.status == 200, reply.body
    assert await stack.admin.balance_millis("alice") == 49_000


async def test_launch_api_lists_games_and_refuses_bad_launches(
    gateway_url: str, start_stack: StartStack
) -> None:
    stack = await start_stack(gateway_url)
    url = stack.simulator.launch_api.base_url
    assert await LaunchClient(url, PUBLIC_KEY, "operator").list_games() == list(GAMES)
    query = {
        "userToken": "t",
        "currency": "USD",
        "platform": "desktop",
        "portalMode": "real",
        "returnUrl": "https://operator.example",
        "language": "en",
    }
    async with aiohttp.ClientSession() as session:
        for path, headers, params, status in [
            ("/api/v1/launch/aviadrone", {"X-Public-Key": "stranger"}, query, 401),
            ("/api/v1/launch/poker", {"X-Public-Key": PUBLIC_KEY}, query, 404),
            ("/api/v1/launch/aviadrone", {"X-Public-Key": PUBLIC_KEY}, {"currency": "USD"}, 400),
            # an unknown one-time token: the wallet's /auth refuses, so does the launch
            ("/api/v1/launch/aviadrone", {"X-Public-Key": PUBLIC_KEY}, query, 502),
            ("/api/v1/games", {}, {"operatorId": "someone-else"}, 404),
        ]:
            async with session.get(url + path, headers=headers, params=params) as response:
                assert response.status == status, (path, params, await response.text())
    assert stack.simulator.launch_api.players == {}


# --- rounds -------------------------------------------------------------------------------------


async def test_rounds_of_both_kinds_leave_the_balances_the_ledger_predicts(
    gateway_url: str, start_stack: StartStack
) -> None:
    stack = await start_stack(gateway_url)
    players = await stack.simulator.launch_api.launch_players(
        stack.admin, 3, "USD", PLAYER_BALANCE_MILLIS
    )
    assert len(players) == 3
    summary = await stack.simulator.play(rounds=40, duration_seconds=20, concurrency=4)
    assert summary.clean, summary.report()
    assert summary.rounds_classic + summary.rounds_server_driven + summary.rounds_skipped == 40
    assert summary.rounds_server_driven > 0 and summary.rounds_classic > 0
    assert summary.rounds_closed == summary.rounds_server_driven
    assert summary.bets_rolled_back > 0
    assert summary.balances_matching == 3
    assert summary.retries == 0
    assert summary.statuses["/deposit 200"] > 0
    await assert_wallet_matches_the_ledger(stack)


@dataclass
class FlakyRelay:
    """In front of the wallet, fails the first attempt of some calls like a bad network:
    a 503 before the wallet saw it, a 503 after the wallet applied it, or no answer in time."""

    wallet_url: str
    session: aiohttp.ClientSession
    attempts: dict[str, list[tuple[bytes, str]]] = field(default_factory=lambda: defaultdict(list))
    # per round: when each callback first got a definitive answer, and when CLOSE_ROUND arrived
    acknowledged_at: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    close_arrived_at: dict[str, float] = field(default_factory=dict)
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fault(self, key: str) -> str:
        if len(self.attempts[key]) > 1:
            return "none"
        return {0: "503-before", 1: "503-before", 2: "503-after", 3: "503-after", 4: "timeout"}.get(
            zlib.crc32(key.encode()) % 10, "none"
        )

    async def forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = orjson.loads(body)
        key = payload.get("provider_tx_id") or f"{request.path} {body!r}"
        self.attempts[key].append((body, request.headers["X-Signature"]))
        self.payloads[key] = payload
        loop = asyncio.get_running_loop()
        round_id = payload.get("round_id")
        closing = payload.get("action") == "CLOSE_ROUND"
        if closing:
            self.close_arrived_at.setdefault(round_id, loop.time())
        fault = self.fault(key)
        if fault == "503-before":
            return web.json_response({"code": 503, "message": "flaky", "data": None}, status=503)
        if fault == "timeout":
            await asyncio.sleep(CALL_TIMEOUT_SECONDS_SHORT * 2)  # the provider gave up already
        async with self.session.post(
            self.wallet_url + request.path, data=body, headers=dict(request.headers)
        ) as answer:
            status, answer_body = answer.status, await answer.read()
        if fault == "503-after":
            return web.json_response({"code": 503, "message": "lost", "data": None}, status=503)
        if fault == "none" and status < 500 and round_id is not None and not closing:
            self.acknowledged_at[round_id].setdefault(key, loop.time())
        return web.Response(status=status, body=answer_body, content_type="application/json")


@pytest.fixture
async def flaky_relay(
    gateway_url: str, aiohttp_server: Any
) -> AsyncIterator[tuple[str, FlakyRelay]]:
    async with aiohttp.ClientSession() as session:
        relay = FlakyRelay(gateway_url, session)
        app = web.Application()
        app.router.add_post("/{path:.*}", relay.forward)
        yield base_url(await aiohttp_server(app)), relay


async def test_retries_through_5xx_and_timeouts_keep_the_balances_the_ledger_predicts(
    flaky_relay: tuple[str, FlakyRelay], start_stack: StartStack
) -> None:
    relay_url, relay = flaky_relay
    stack = await start_stack(relay_url, timeout_seconds=CALL_TIMEOUT_SECONDS_SHORT)
    await stack.simulator.launch_api.launch_players(stack.admin, 3, "USD", PLAYER_BALANCE_MILLIS)
    summary = await stack.simulator.play(rounds=30, duration_seconds=20, concurrency=4)
    assert summary.clean, summary.report()
    assert summary.retries > 0 and summary.undelivered == 0
    await assert_wallet_matches_the_ledger(stack)
    # every retry re-sent the same bytes with the same signature
    retried = [key for key, attempts in relay.attempts.items() if len(attempts) > 1]
    assert retried
    for key in retried:
        assert len(set(relay.attempts[key])) == 1, key
    # CLOSE_ROUND came only after every other callback of its round was acknowledged
    assert relay.close_arrived_at
    for round_id, arrived_at in relay.close_arrived_at.items():
        assert max(relay.acknowledged_at[round_id].values()) < arrived_at, round_id


def attributes_format(close_round: dict[str, Any]) -> tuple[bool, bool]:
    """(attributes as a list of {name, value}, values as JSON text)."""
    attributes = close_round["attributes"]
    as_list = isinstance(attributes, list)
    values = [item["value"] for item in attributes] if as_list else list(attributes.values())
    return as_list, all(isinstance(value, str) for value in values)


async def test_close_round_aggregates_match_the_rounds_wins(
    flaky_relay: tuple[str, FlakyRelay], start_stack: StartStack
) -> None:
    relay_url, relay = flaky_relay
    stack = await start_stack(relay_url, timeout_seconds=CALL_TIMEOUT_SECONDS_SHORT)
    await stack.simulator.launch_api.launch_players(stack.admin, 4, "USD", PLAYER_BALANCE_MILLIS)
    await stack.simulator.play(rounds=16, duration_seconds=20, concurrency=4)
    wins_by_round: dict[str, list[int]] = defaultdict(list)
    for payload in relay.payloads.values():
        if payload.get("action") == "WIN" and payload["game"] == "aviadrone":
            wins_by_round[payload["round_id"]].append(payload["amount"])
    closes = [p for p in relay.payloads.values() if p.get("action") == "CLOSE_ROUND"]
    assert len(closes) == len(relay.close_arrived_at) > 0
    assert {attributes_format(payload) for payload in closes} == {
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    }
    for payload in closes:
        close = CloseRoundRequest.parse(payload)  # the gateway's parser: all four formats
        assert payload["provider_tx_id"] == f"{close.round_id}-operator-close-round"
        assert "user_id" not in payload and "session_token" not in payload
        paid = [
            paid_millis(stake, Decimal(coefficient))
            for stake, coefficient in zip(
                close.stakes_millis, close.cash_out_coefficients, strict=True
            )
        ]
        assert sorted(paid) == sorted(wins_by_round[close.round_id])


# --- the provider's retry policy ----------------------------------------------------------------


async def test_provider_client_retries_5xx_with_the_same_bytes_and_never_retries_4xx(
    aiohttp_server: Any,
) -> None:
    received: list[tuple[str, bytes, str]] = []

    async def answer(request: web.Request) -> web.Response:
        received.append((request.path, await request.read(), request.headers["X-Signature"]))
        if request.path == "/slow":
            await asyncio.sleep(CALL_TIMEOUT_SECONDS_SHORT * 3)
        status = 503 if request.path in ("/busy", "/slow") else 400
        return web.json_response({"code": status, "message": "no", "data": None}, status=status)

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    url = base_url(await aiohttp_server(app))
    policy = RetryPolicy(attempts_max=3, backoff_first_seconds=0.01, backoff_max_seconds=0.02)
    async with ProviderClient(
        url, PUBLIC_KEY, SECRET, retry=policy, timeout_seconds=CALL_TIMEOUT_SECONDS_SHORT
    ) as client:
        busy = await client.post("/busy", {"provider_tx_id": "tx-1"})
        assert (busy.status, busy.attempts) == (503, 3)
        assert len({(body, signature) for path, body, signature in received}) == 1
        refused = await client.post("/refused", {"provider_tx_id": "tx-2"})
        assert (refused.status, refused.attempts, refused.payload["code"]) == (400, 1, 400)
        with pytest.raises(CallbackUndelivered):
            await client.post("/slow", {"provider_tx_id": "tx-3"})
        assert client.stats.calls == 3
        assert client.stats.attempts == 3 + 1 + 3
        assert client.stats.undelivered == 1
    assert [path for path, _, _ in received].count("/refused") == 1


# --- the command --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_simulate_command_launches_plays_and_reports_a_clean_run(
    services: Services,
    settings: Settings,
    gateway_url: str,
    aiohttp_server: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    launching = Services.create(
        settings.replace(
            provider_base_url=f"http://127.0.0.1:{port}", provider_public_key=PUBLIC_KEY
        )
    )
    await launching.wallet.start()
    admin_url = base_url(await aiohttp_server(create_admin_app(launching)))
    parser = argparse.ArgumentParser()
    simulate_command.add_arguments(parser)
    args = parser.parse_args(
        [
            "--url", gateway_url, "--public-key", PUBLIC_KEY, "--secret", SECRET,
            "--admin-url", admin_url, "--admin-token", ADMIN_TOKEN,
            "--listen-port", str(port), "--players", "2", "--rounds", "12",
            "--duration-seconds", "20", "--seed", "3", "--backoff-first-seconds", "0.01",
        ]
    )  # fmt: skip
    try:
        # run() owns its event loop; the gateway keeps serving on this one meanwhile
        assert await asyncio.to_thread(simulate_command.run, args) == 0
    finally:
        await launching.close()
    out = capsys.readouterr().out
    assert f"provider launch API on http://127.0.0.1:{port}" in out
    assert "balances 2 match the ledger, 0 differ, 0 unknown" in out
    assert out.rstrip().endswith("result   OK")
