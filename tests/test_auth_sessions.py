"""docs/protocol.md §4 /auth and /balance, §8 sessions: one-time user tokens, session tokens with a
sliding idle expiry, one live session per player; /balance is read-only."""

import logging
from typing import Any

import orjson
import pytest
from conftest import Admin, ManualClock, Provider
from helpers import assert_error_envelope, stream_event_count
from payloads import bet, win

from gateway.app import Services
from gateway.logs import JsonLineFormatter
from gateway.outcomes import OUTCOMES
from gateway.redis_errors import WalletUnavailable

USER = "player-1"
BALANCE = 10_000


async def user_token_for(admin: Admin, user_id: str) -> str:
    """A fresh one-time launch token (POST /admin/sessions issues one with a session)."""
    status, body = await admin.call("POST", "/admin/sessions", {"user_id": user_id})
    assert status == 201, body
    return body["data"]["user_token"]


async def assert_401_and_moves_nothing(
    provider: Provider, admin: Admin, path: str, payload: dict[str, Any]
) -> None:
    status, body = await provider.post(path, payload)
    assert status == 401, body
    assert_error_envelope(body, 401)
    assert await admin.balance(USER) == BALANCE


@pytest.fixture
async def player(admin: Admin) -> dict[str, Any]:
    return await admin.create_player(USER, balance=BALANCE, username="Alice")


# --- /auth of a known session ---------------------------------------------------------------


async def test_auth_of_a_known_session_returns_the_player(
    provider: Provider, admin: Admin, settings: Any, player: Any
) -> None:
    session_token = await admin.open_session(USER)
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 200, body
    assert body == {
        "code": 200,
        "message": "OK",
        "data": {
            "user_id": USER,
            "username": "Alice",
            "currency": "USD",
            "balance": BALANCE,
            "maxbet": settings.default_maxbet_millis,
        },
    }


async def test_auth_reports_the_current_balance(
    provider: Provider, admin: Admin, player: Any
) -> None:
    session_token = await admin.open_session(USER)
    status, body = await provider.post("/withdraw", bet(USER, session_token, "tx-1", amount=2500))
    assert status == 200, body
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 200, body
    assert body["data"]["balance"] == 7_500


async def test_auth_with_optional_fields_of_the_protocol(
    provider: Provider, admin: Admin, player: Any
) -> None:
    session_token = await admin.open_session(USER)
    status, body = await provider.post(
        "/auth",
        {
            "session_token": session_token,
            "platform": "mobile",
            "currency": "USD",
            "game": "aviadrone",
        },
    )
    assert status == 200, body


async def test_auth_in_another_currency_is_400(
    provider: Provider, admin: Admin, player: Any
) -> None:
    session_token = await admin.open_session(USER)
    status, body = await provider.post("/auth", {"session_token": session_token, "currency": "EUR"})
    assert status == 400
    assert_error_envelope(body, 400)


async def test_maxbet_is_the_configured_default_without_a_players_own(
    provider: Provider, admin: Admin, settings: Any
) -> None:
    await admin.create_player("no-limit")
    session_token = await admin.open_session("no-limit")
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 200, body
    assert body["data"]["maxbet"] == settings.default_maxbet_millis
    assert body["data"]["username"] == "no-limit"  # the user_id when none was given


async def test_maxbet_is_the_players_own_limit(provider: Provider, admin: Admin) -> None:
    await admin.create_player("limited", maxbet=5_000)
    session_token = await admin.open_session("limited")
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 200, body
    assert body["data"]["maxbet"] == 5_000


async def test_auth_balance_is_exact_up_to_the_balance_limit(
    provider: Provider, admin: Admin
) -> None:
    """Money never passes through a float, not even a Lua number: the largest balance,
    2^53 - 1 (odd: a double of it would be rounded by any +1 on the way), comes back exact;
    one milli more is refused (docs/protocol.md §6 BALANCE_LIMIT)."""
    limit = 2**53 - 1
    await admin.create_player("whale", balance=10**15)
    for n in range(8):
        status, body = await admin.call(
            "POST", "/admin/players/whale/adjustments", {"amount": 10**15, "reference": f"r{n}"}
        )
        assert status == 200, body
    status, body = await admin.call(
        "POST",
        "/admin/players/whale/adjustments",
        {"amount": limit - 9 * 10**15, "reference": "to-the-limit"},
    )
    assert status == 200, body
    assert body["data"]["balance"] == limit
    status, body = await admin.call(
        "POST", "/admin/players/whale/adjustments", {"amount": 1, "reference": "past-it"}
    )
    assert status == 409 and body["message"] == OUTCOMES["BALANCE_LIMIT"][1], body
    session_token = await admin.open_session("whale")
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 200, body
    assert body["data"]["balance"] == limit
    status, body = await provider.post("/balance", {"user_id": "whale"})
    assert body["data"]["amount"] == limit


# --- unknown sessions and one-time user tokens ---------------------------------------------


async def test_auth_of_an_unknown_session_is_404(provider: Provider, player: Any) -> None:
    status, body = await provider.post("/auth", {"session_token": "never-issued"})
    assert status == 404
    assert_error_envelope(body, 404)


async def test_auth_of_an_unknown_session_with_an_unknown_user_token_is_404(
    provider: Provider, player: Any
) -> None:
    status, body = await provider.post(
        "/auth", {"session_token": "gp-session-1", "user_token": "never-issued"}
    )
    assert status == 404
    assert_error_envelope(body, 404)


async def test_unknown_session_with_a_valid_user_token_binds_the_session(
    provider: Provider, admin: Admin, player: Any
) -> None:
    user_token = await user_token_for(admin, USER)
    status, body = await provider.post(
        "/auth", {"session_token": "gp-session-1", "user_token": user_token}
    )
    assert status == 200, body
    assert body["data"]["user_id"] == USER
    assert body["data"]["balance"] == BALANCE
    # the bound session is now known by itself, and bets on it
    status, body = await provider.post("/auth", {"session_token": "gp-session-1"})
    assert status == 200, body
    status, body = await provider.post("/withdraw", bet(USER, "gp-session-1", "tx-1"))
    assert status == 200, body
    assert await admin.balance(USER) == 9_000


async def test_retried_auth_with_the_same_pair_works(
    provider: Provider, admin: Admin, player: Any
) -> None:
    user_token = await user_token_for(admin, USER)
    request = {"session_token": "gp-session-1", "user_token": user_token}
    first = await provider.post("/auth", request)
    assert first[0] == 200, first
    assert await provider.post("/auth", request) == first


async def test_used_user_token_with_another_session_token_is_404(
    provider: Provider, admin: Admin, player: Any
) -> None:
    user_token = await user_token_for(admin, USER)
    status, body = await provider.post(
        "/auth", {"session_token": "gp-session-1", "user_token": user_token}
    )
    assert status == 200, body
    status, body = await provider.post(
        "/auth", {"session_token": "gp-session-2", "user_token": user_token}
    )
    assert status == 404
    assert_error_envelope(body, 404)
    # and the refused session was not bound: it is still unknown, the first one still live
    status, body = await provider.post("/auth", {"session_token": "gp-session-2"})
    assert status == 404
    status, body = await provider.post("/auth", {"session_token": "gp-session-1"})
    assert status == 200, body


async def test_user_token_of_another_player_binds_to_that_player(
    provider: Provider, admin: Admin, player: Any
) -> None:
    await admin.create_player("player-2", balance=500)
    user_token = await user_token_for(admin, "player-2")
    status, body = await provider.post(
        "/auth", {"session_token": "gp-session-1", "user_token": user_token}
    )
    assert status == 200, body
    assert body["data"]["user_id"] == "player-2"
    # a bet naming player-1 on player-2's session is refused
    await assert_401_and_moves_nothing(
        provider, admin, "/withdraw", bet(USER, "gp-session-1", "tx-1")
    )


# --- one live session per player ------------------------------------------------------------


async def test_a_new_session_closes_the_old_one(
    provider: Provider, admin: Admin, player: Any
) -> None:
    old = await admin.open_session(USER)
    new = await admin.open_session(USER)
    await assert_401_and_moves_nothing(provider, admin, "/auth", {"session_token": old})
    await assert_401_and_moves_nothing(provider, admin, "/withdraw", bet(USER, old, "tx-1"))
    status, body = await provider.post("/auth", {"session_token": new})
    assert status == 200, body
    status, body = await provider.post("/withdraw", bet(USER, new, "tx-2"))
    assert status == 200, body


async def test_binding_a_user_token_closes_the_players_previous_session(
    provider: Provider, admin: Admin, player: Any
) -> None:
    status, body = await admin.call("POST", "/admin/sessions", {"user_id": USER})
    assert status == 201, body
    old, user_token = body["data"]["session_token"], body["data"]["user_token"]
    status, body = await provider.post(
        "/auth", {"session_token": "gp-session-1", "user_token": user_token}
    )
    assert status == 200, body
    await assert_401_and_moves_nothing(provider, admin, "/auth", {"session_token": old})


async def test_bet_on_another_players_session_is_401(
    provider: Provider, admin: Admin, player: Any
) -> None:
    await admin.create_player("player-2")
    others_session = await admin.open_session("player-2")
    await assert_401_and_moves_nothing(
        provider, admin, "/withdraw", bet(USER, others_session, "tx-1")
    )


async def test_bet_on_an_unknown_session_is_401(
    provider: Provider, admin: Admin, player: Any
) -> None:
    await assert_401_and_moves_nothing(
        provider, admin, "/withdraw", bet(USER, "never-issued", "tx-1")
    )


# --- idle expiry (the wallet's clock is the test's: `clock.advance`) ------------------------


def session_callback(path: str, session_token: str) -> dict[str, Any]:
    if path == "/auth":
        return {"session_token": session_token}
    return bet(USER, session_token, "tx-1")


@pytest.mark.parametrize("path", ["/auth", "/withdraw"])
async def test_a_session_idle_one_millisecond_past_its_limit_is_401_and_moves_nothing(
    provider: Provider,
    admin: Admin,
    services: Services,
    clock: ManualClock,
    player: Any,
    path: str,
) -> None:
    session_token = await admin.open_session(USER)
    clock.advance(services.wallet.session_idle_ms + 1)
    await assert_401_and_moves_nothing(provider, admin, path, session_callback(path, session_token))


async def test_each_callback_slides_the_idle_expiry(
    provider: Provider, admin: Admin, services: Services, clock: ManualClock, player: Any
) -> None:
    """Each callback comes exactly the idle limit after the one before: live (the limit is
    inclusive), and one millisecond more after the last is too late."""
    idle_ms = services.wallet.session_idle_ms
    session_token = await admin.open_session(USER)
    clock.advance(idle_ms)
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 200, body
    clock.advance(idle_ms)  # twice the limit after opening, the limit after the last callback
    status, body = await provider.post("/withdraw", bet(USER, session_token, "tx-1"))
    assert status == 200, body
    clock.advance(idle_ms)
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 200, body
    clock.advance(idle_ms + 1)  # the last callback slid it to its own time, not further
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 401, body


async def test_settlement_is_never_refused_for_an_expired_session(
    provider: Provider, admin: Admin, services: Services, clock: ManualClock, player: Any
) -> None:
    session_token = await admin.open_session(USER)
    status, body = await provider.post("/withdraw", bet(USER, session_token, "tx-1"))
    assert status == 200, body
    clock.advance(services.wallet.session_idle_ms + 1)
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 401, body  # expired indeed
    status, body = await provider.post(
        "/deposit", win(USER, "win-1", "tx-1", session_token=session_token)
    )
    assert status == 200, body
    assert await admin.balance(USER) == 11_000


# --- the session index (session token -> player, for /auth which names no player) ----------


def index_and_session_keys(services: Services, session_token: str) -> tuple[str, str]:
    keys = services.wallet.keys
    return (
        keys.session_index(keys.shard(session_token), session_token),
        keys.session(keys.shard(USER), session_token),
    )


async def redis_keys(services: Services) -> list[str]:
    return sorted([key async for key in services.redis.scan_iter()])


async def pass_time(services: Services, clock: ManualClock, ms: int) -> None:
    """The wallet's clock moves by `ms`, and Redis' own by hand (it cannot be set): every TTL
    shrinks by `ms`, and a key whose TTL runs out is deleted (PEXPIRE <= 0)."""
    clock.advance(ms)
    for key in await redis_keys(services):
        ttl_ms = await services.redis.pttl(key)
        if ttl_ms > 0:
            await services.redis.pexpire(key, ttl_ms - ms)


@pytest.mark.parametrize("path", ["/withdraw", "/auth"])
async def test_a_session_kept_alive_past_a_day_still_authenticates(
    provider: Provider,
    admin: Admin,
    services: Services,
    clock: ManualClock,
    player: Any,
    path: str,
) -> None:
    """Issue 16: the index was written once, to live the idle limit plus a day, while each
    callback refreshed the session record: after ~24.5 h of play /auth answered 404 while bets
    went on. Each callback now refreshes both."""
    wallet = services.wallet
    session_token = await admin.open_session(USER)
    index, session = index_and_session_keys(services, session_token)
    step_ms = wallet.session_idle_ms - 60_000
    played_ms, callbacks = 0, 0
    while played_ms <= wallet.session_ttl_ms:  # until the index's first TTL is long past
        await pass_time(services, clock, step_ms)
        played_ms += step_ms
        callbacks += 1
        payload = (
            {"session_token": session_token}
            if path == "/auth"
            else bet(USER, session_token, f"tx-{callbacks}", amount=1)
        )
        status, body = await provider.post(path, payload)
        assert status == 200, body
        # the index first: read later, the session's TTL can only be lower
        index_ttl_ms = await services.redis.pttl(index)
        session_ttl_ms = await services.redis.pttl(session)
        assert session_ttl_ms > wallet.session_ttl_ms - step_ms  # refreshed by this callback
        # (on a Redis Cluster both are refreshed at once on two nodes: a millisecond apart)
        assert index_ttl_ms >= session_ttl_ms - 2, (callbacks, index_ttl_ms, session_ttl_ms)
    status, body = await provider.post("/auth", {"session_token": session_token})
    assert status == 200, body
    status, body = await provider.post("/withdraw", bet(USER, session_token, "tx-last", amount=1))
    assert status == 200, body


async def test_a_session_opened_without_its_index_gets_it_from_the_providers_retry(
    provider: Provider, admin: Admin, services: Services, player: Any, monkeypatch: Any
) -> None:
    """The index is in the token's slot, the session in the player's: two steps, the index
    second. A crash between them (here: the index's write fails once) answers 503 and leaves a
    session /auth cannot find by its token; the provider's retry with the user token reopens
    it, which writes the index, as long-lived as the session."""
    wallet = services.wallet
    run_command = wallet.run_command
    failures = []

    async def index_write_fails_once(*command: Any) -> Any:
        if command[0] == "SET" and ":sidx:" in command[1] and not failures:
            failures.append(command[1])
            raise WalletUnavailable("the process died between the two steps")
        return await run_command(*command)

    request = {"session_token": "gp-session-1", "user_token": await user_token_for(admin, USER)}
    monkeypatch.setattr(wallet, "run_command", index_write_fails_once)
    status, body = await provider.post("/auth", request)
    assert status == 503, body
    index, session = index_and_session_keys(services, "gp-session-1")
    assert failures == [index]
    assert await services.redis.exists(session) and not await services.redis.exists(index)
    status, body = await provider.post("/auth", {"session_token": "gp-session-1"})
    assert status == 404, body  # not found by its token alone, until the retry

    status, body = await provider.post("/auth", request)
    assert status == 200, body
    assert body["data"]["user_id"] == USER
    assert await services.redis.get(index) == USER
    assert await services.redis.pttl(index) >= await services.redis.pttl(session) > 0
    status, body = await provider.post("/withdraw", bet(USER, "gp-session-1", "tx-1", amount=1))
    assert status == 200, body


async def test_opening_a_session_of_an_unknown_player_writes_no_session_and_no_index(
    admin: Admin, services: Services, player: Any
) -> None:
    """Checks first, then writes: the refused open leaves every key and the stream as they were."""
    keys_before = await redis_keys(services)
    events_before = await stream_event_count(services)
    status, body = await admin.call("POST", "/admin/sessions", {"user_id": "nobody"})
    assert status == 404, body
    assert await redis_keys(services) == keys_before
    assert await stream_event_count(services) == events_before


# --- /balance -------------------------------------------------------------------------------


async def test_balance_returns_currency_and_amount(provider: Provider, player: Any) -> None:
    status, body = await provider.post("/balance", {"user_id": USER})
    assert (status, body) == (
        200,
        {"code": 200, "message": "OK", "data": {"currency": "USD", "amount": BALANCE}},
    )


async def test_balance_with_the_wallets_currency_and_a_session(
    provider: Provider, admin: Admin, player: Any
) -> None:
    session_token = await admin.open_session(USER)
    status, body = await provider.post(
        "/balance", {"user_id": USER, "currency": "USD", "session_token": session_token}
    )
    assert status == 200, body
    assert body["data"] == {"currency": "USD", "amount": BALANCE}


async def test_balance_of_an_unknown_user_is_404(provider: Provider, player: Any) -> None:
    status, body = await provider.post("/balance", {"user_id": "nobody"})
    assert status == 404
    assert_error_envelope(body, 404)


async def test_balance_in_another_currency_is_400(provider: Provider, player: Any) -> None:
    status, body = await provider.post("/balance", {"user_id": USER, "currency": "EUR"})
    assert status == 400
    assert_error_envelope(body, 400)


async def test_balance_is_read_only(provider: Provider, services: Services, player: Any) -> None:
    """No stream event, no idempotency record, no key of any kind."""
    keys_before = sorted([key async for key in services.redis.scan_iter()])
    events_before = await stream_event_count(services)
    for _ in range(3):
        status, body = await provider.post(
            "/balance", {"user_id": USER, "provider_tx_id": "tx-1", "currency": "USD"}
        )
        assert status == 200, body
    assert sorted([key async for key in services.redis.scan_iter()]) == keys_before
    assert await stream_event_count(services) == events_before


# --- the log line of a refusal ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "payload_of", "outcome"),
    [
        pytest.param(
            "/withdraw",
            lambda session: bet(USER, "never-issued", "tx-1"),
            "SESSION_INVALID",
            id="401-session",
        ),
        pytest.param(
            "/balance", lambda session: {"user_id": "nobody"}, "UNKNOWN_USER", id="404-user"
        ),
        pytest.param(
            "/withdraw",
            lambda session: bet(USER, session, "tx-1", 1.5),
            "BAD_REQUEST",
            id="400-own-message",
        ),
    ],
)
async def test_every_refused_callback_logs_its_outcome_and_the_message_it_answered(
    path: str,
    payload_of: Any,
    outcome: str,
    provider: Provider,
    admin: Admin,
    player: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = await admin.open_session(USER)
    with caplog.at_level(logging.INFO, logger="gateway.callbacks"):
        status, body = await provider.post(path, payload_of(session))
    assert status == OUTCOMES[outcome][0], body
    [record] = [r for r in caplog.records if r.name == "gateway.callbacks"]
    line = orjson.loads(JsonLineFormatter().format(record))
    assert (line["status"], line["outcome"], line["reason"]) == (status, outcome, body["message"])
