"""Real servers for the whole session (the embedded Redis of `wallet-gateway up`), clean state
for every test, and a signed provider client."""

import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from helpers import running

from gateway import clock as wall_clock
from gateway.app import Services, create_admin_app, create_gateway_app
from gateway.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster
from gateway.settings import Settings
from gateway.signing import signed_headers

PUBLIC_KEY = "test-public"
SECRET = "test-secret"
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs a command in-process (gateway.cli.main) configures the root logger
    onto that test's captured stderr, which pytest then closes: every later log line would
    fail and print a traceback, slow enough to miss a deadline. Put it back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmbeddedRedis | EmbeddedRedisCluster]:
    """Asks for a password, as `up`'s does (this session's own): every test that reaches it
    does so through its URL, which carries the password. With WALLET_GATEWAY_TEST_REDIS=cluster
    a Redis Cluster of 3 masters and 3 replicas, its URL a `redis+cluster://` one."""
    folder = tmp_path_factory.mktemp("redis")
    password = secrets.token_urlsafe(24)
    if os.environ.get("WALLET_GATEWAY_TEST_REDIS") == "cluster":
        yield from running(
            EmbeddedRedisCluster(folder, masters=3, replicas_per_master=1, password=password)
        )
    else:
        yield from running(EmbeddedRedis(folder, password=password))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """Started only by the tests that ask for it (the durable history); it asks for a password
    (this session's own) as `up`'s does."""
    yield from running(
        EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), password=secrets.token_urlsafe(24))
    )


@pytest.fixture
def settings(redis_server: EmbeddedRedis) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        provider_keys=f"{PUBLIC_KEY}:{SECRET},rotated-public:rotated-secret",
        admin_token=ADMIN_TOKEN,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """As the gateway starts them: with a DATABASE_URL in `settings` (a module's override), the
    wallet brings expired records back from the history."""
    services = Services.create(settings)
    await services.redis.flushall()
    await services.start()
    yield services
    await services.close()


class ManualClock:
    """The wallet's clock, moved only by the test: idle expiry is exact to the millisecond."""

    def __init__(self, start_ms: int) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """Replaces `now_ms` in gateway.clock and in every module of ours that imported the name
    (wallet, sessions, ...): listed by hand, a new importer would slip past."""
    manual = ManualClock(wall_clock.now_ms())
    real_now_ms = wall_clock.now_ms
    for name, module in list(sys.modules.items()):
        ours = name.partition(".")[0] in ("gateway", "persistence")
        if ours and getattr(module, "now_ms", None) is real_now_ms:
            monkeypatch.setattr(module, "now_ms", manual)
    return manual


class Provider:
    """Plays the game provider: signs and posts callbacks, returns (status, body)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    async def post_raw(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        response = await self.client.post(
            path, data=body, headers=headers or signed_headers(PUBLIC_KEY, SECRET, body)
        )
        return response.status, await response.read()

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, body = await self.post_raw(path, orjson.dumps(payload))
        return status, orjson.loads(body)


class Admin:
    """The operator's admin API, with the bearer token."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(
        self, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        response = await self.client.request(method, path, json=payload, headers=self.headers)
        return response.status, orjson.loads(await response.read())

    async def create_player(
        self, user_id: str, balance: int = 10_000, currency: str = "USD", **extra: Any
    ) -> dict[str, Any]:
        status, body = await self.call(
            "POST",
            "/admin/players",
            {"user_id": user_id, "currency": currency, "balance": balance, **extra},
        )
        assert status == 201, body
        return body["data"]

    async def open_session(self, user_id: str) -> str:
        status, body = await self.call("POST", "/admin/sessions", {"user_id": user_id})
        assert status == 201, body
        return body["data"]["session_token"]

    async def balance(self, user_id: str) -> int:
        status, body = await self.call("GET", f"/admin/players/{user_id}")
        assert status == 200, body
        return body["data"]["balance"]


@pytest.fixture
async def provider(services: Services, aiohttp_client: Any) -> Provider:
    return Provider(await aiohttp_client(create_gateway_app(services)))


@pytest.fixture
async def admin(services: Services, aiohttp_client: Any) -> Admin:
    return Admin(await aiohttp_client(create_admin_app(services)))
