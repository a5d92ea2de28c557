"""docs/protocol.md §2: every callback is signed with HMAC-SHA256 over the exact raw body, standard
Base64, verified before anything is parsed; a bad signature is a 401 and processes nothing. The
401 says which: no signature, an unknown public key, or a signature that does not match."""

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from conftest import PUBLIC_KEY, SECRET
from helpers import stream_event_count
from payloads import bet

from gateway.logs import JsonLineFormatter
from gateway.outcomes import OUTCOMES
from gateway.signing import (
    BAD_SIGNATURE,
    SIGNATURE_MISSING,
    UNKNOWN_PUBLIC_KEY,
    KeyRing,
    sign_body,
    signed_headers,
)

ROTATED_PUBLIC_KEY = "rotated-public"
ROTATED_SECRET = "rotated-secret"
CALLBACK_PATHS = ("/auth", "/withdraw", "/deposit", "/balance")
# the message of each refusal, as the envelope carries it
MISSING = "Missing X-Signature header"
UNKNOWN_KEY = "Unknown X-Public-Key"
MISMATCH = "Signature does not match the raw body"

VECTOR_BET_BODY = (
    b'{"user_id":"player-1","session_token":"s-1","amount":5440,"currency":"USD",'
    b'"provider_tx_id":"tx-1","round_id":"r-1","game":"aviadrone","action":"BET"}'
)


def assert_envelope(body: dict[str, Any], code: int) -> None:
    assert set(body) == {"code", "message", "data"}, body
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert body["data"] is None


def raw_hmac(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()


async def tx_records(services: Any) -> list[str]:
    return [key async for key in services.redis.scan_iter(match="w:*:tx:*")]


# --- the test vectors, exact strings -----------------------------------------------------------


def test_sign_body_matches_the_first_protocol_vector() -> None:
    assert sign_body("test-secret", VECTOR_BET_BODY) == (
        "ljQnOYxmvEyQ0hMSslRVc4pm3GUiNVrqZRawff25i/E="
    )


def test_sign_body_keys_with_the_utf8_bytes_of_a_non_ascii_secret() -> None:
    body = b'{"user_id": "player-1"}'
    assert sign_body("sécret-ü", body) == "z0Ke0MqjnzpakGcnwUcXiIAx0eP8oKAg/ldkk8HJXSg="


def test_signed_headers_carry_the_public_key_and_the_one_signature() -> None:
    headers = signed_headers("pub", "test-secret", VECTOR_BET_BODY)
    assert headers["X-Public-Key"] == "pub"
    assert headers["X-Signature"] == "ljQnOYxmvEyQ0hMSslRVc4pm3GUiNVrqZRawff25i/E="


def test_key_ring_parses_two_live_pairs_and_verifies_each() -> None:
    ring = KeyRing.parse(f"{PUBLIC_KEY}:{SECRET}, {ROTATED_PUBLIC_KEY}:{ROTATED_SECRET}")
    assert ring.public_keys() == [PUBLIC_KEY, ROTATED_PUBLIC_KEY]
    body = b'{"user_id":"p"}'
    assert ring.signature_refusal(PUBLIC_KEY, sign_body(SECRET, body), body) is None
    assert ring.signature_refusal(ROTATED_PUBLIC_KEY, sign_body(ROTATED_SECRET, body), body) is None
    refusal = ring.signature_refusal(PUBLIC_KEY, sign_body(ROTATED_SECRET, body), body)
    assert refusal == BAD_SIGNATURE
    assert ring.signature_refusal(None, sign_body(SECRET, body), body) == UNKNOWN_PUBLIC_KEY
    assert ring.signature_refusal("", sign_body(SECRET, body), body) == UNKNOWN_PUBLIC_KEY
    assert ring.signature_refusal("other", sign_body(SECRET, body), body) == UNKNOWN_PUBLIC_KEY
    assert ring.signature_refusal(PUBLIC_KEY, None, body) == SIGNATURE_MISSING
    assert ring.signature_refusal(PUBLIC_KEY, "", body) == SIGNATURE_MISSING
    # no signature at all is told first, whatever the key
    assert ring.signature_refusal("other", None, body) == SIGNATURE_MISSING
    # a header that is not ASCII is a mismatch, not a crash
    assert ring.signature_refusal(PUBLIC_KEY, "sïgnature\udcff", body) == BAD_SIGNATURE


def test_the_three_refusals_are_401s_with_their_own_messages() -> None:
    assert {
        outcome: OUTCOMES[outcome]
        for outcome in (SIGNATURE_MISSING, UNKNOWN_PUBLIC_KEY, BAD_SIGNATURE)
    } == {
        SIGNATURE_MISSING: (401, MISSING),
        UNKNOWN_PUBLIC_KEY: (401, UNKNOWN_KEY),
        BAD_SIGNATURE: (401, MISMATCH),
    }


@pytest.mark.parametrize("text", ["", " , ", "no-colon", ":secret", "public:"])
def test_key_ring_refuses_a_malformed_setting(text: str) -> None:
    with pytest.raises(ValueError):
        KeyRing.parse(text)


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def player(admin: Any) -> dict[str, str]:
    await admin.create_player("player-1", balance=10_000)
    return {"user_id": "player-1", "session_token": await admin.open_session("player-1")}


async def assert_refused_and_nothing_moved(
    provider: Any,
    admin: Any,
    services: Any,
    path: str,
    body: bytes,
    headers: dict[str, str],
    message: str = MISMATCH,
) -> None:
    events_before = await stream_event_count(services)
    status, raw = await provider.post_raw(path, body, headers)
    assert status == 401
    answer = orjson.loads(raw)
    assert_envelope(answer, 401)
    assert answer["message"] == message
    assert await admin.balance("player-1") == 10_000
    assert await stream_event_count(services) == events_before
    assert await tx_records(services) == []


def bet_body(player: dict[str, str], tx: str = "tx-1") -> bytes:
    return orjson.dumps(bet(player["user_id"], player["session_token"], tx))


async def test_correctly_signed_bet_is_applied(provider: Any, admin: Any, player: Any) -> None:
    status, raw = await provider.post_raw("/withdraw", bet_body(player))
    assert status == 200, raw
    assert await admin.balance("player-1") == 9_000


async def test_missing_signature_is_401_and_moves_nothing(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = bet_body(player)
    headers = {"X-Public-Key": PUBLIC_KEY, "Content-Type": "application/json"}
    await assert_refused_and_nothing_moved(
        provider, admin, services, "/withdraw", body, headers, MISSING
    )


async def test_missing_public_key_is_401_and_moves_nothing(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = bet_body(player)
    headers = {"X-Signature": sign_body(SECRET, body), "Content-Type": "application/json"}
    await assert_refused_and_nothing_moved(
        provider, admin, services, "/withdraw", body, headers, UNKNOWN_KEY
    )


async def test_empty_signature_header_is_401(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = bet_body(player)
    headers = {**signed_headers(PUBLIC_KEY, SECRET, body), "X-Signature": ""}
    await assert_refused_and_nothing_moved(
        provider, admin, services, "/withdraw", body, headers, MISSING
    )


async def test_unknown_public_key_is_401_even_with_a_known_secret(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = bet_body(player)
    headers = signed_headers("unknown-public", SECRET, body)
    await assert_refused_and_nothing_moved(
        provider, admin, services, "/withdraw", body, headers, UNKNOWN_KEY
    )


async def test_wrong_secret_is_401_and_moves_nothing(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = bet_body(player)
    headers = signed_headers(PUBLIC_KEY, "not-the-secret", body)
    await assert_refused_and_nothing_moved(provider, admin, services, "/withdraw", body, headers)


async def test_other_pairs_secret_under_this_public_key_is_401(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = bet_body(player)
    headers = signed_headers(PUBLIC_KEY, ROTATED_SECRET, body)
    await assert_refused_and_nothing_moved(provider, admin, services, "/withdraw", body, headers)


async def test_signature_of_another_body_is_401(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = bet_body(player, "tx-1")
    headers = signed_headers(PUBLIC_KEY, SECRET, bet_body(player, "tx-2"))
    await assert_refused_and_nothing_moved(provider, admin, services, "/withdraw", body, headers)


def body_whose_base64_signature_is_not_url_safe(player: dict[str, str]) -> bytes:
    """A bet whose standard Base64 signature holds '+' or '/', so URL-safe Base64 differs."""
    for n in range(1000):
        body = bet_body(player, f"tx-{n}")
        if set(sign_body(SECRET, body)) & {"+", "/"}:
            return body
    raise AssertionError("no such body in 1000 tries")


async def test_url_safe_base64_of_the_right_hmac_is_401(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = body_whose_base64_signature_is_not_url_safe(player)
    url_safe = base64.urlsafe_b64encode(raw_hmac(SECRET, body)).decode()
    assert url_safe != sign_body(SECRET, body)
    headers = {**signed_headers(PUBLIC_KEY, SECRET, body), "X-Signature": url_safe}
    await assert_refused_and_nothing_moved(provider, admin, services, "/withdraw", body, headers)


# The right HMAC in an encoding other than padded standard base64.
OTHER_ENCODINGS: dict[str, Callable[[bytes], str]] = {
    "hex": lambda body: raw_hmac(SECRET, body).hex(),
    "unpadded-base64": lambda body: sign_body(SECRET, body).rstrip("="),
}


@pytest.mark.parametrize("encoding", OTHER_ENCODINGS)
async def test_the_right_hmac_in_another_encoding_is_401(
    provider: Any, admin: Any, services: Any, player: Any, encoding: str
) -> None:
    body = bet_body(player)
    headers = {
        **signed_headers(PUBLIC_KEY, SECRET, body),
        "X-Signature": OTHER_ENCODINGS[encoding](body),
    }
    await assert_refused_and_nothing_moved(provider, admin, services, "/withdraw", body, headers)


async def test_signature_over_reserialised_json_is_401(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    """The same JSON value with other whitespace is other bytes: nothing is canonicalised."""
    payload = bet(player["user_id"], player["session_token"], "tx-1")
    signed_bytes = orjson.dumps(payload)
    sent_bytes = json.dumps(payload, indent=2).encode()
    assert orjson.loads(sent_bytes) == orjson.loads(signed_bytes)
    headers = signed_headers(PUBLIC_KEY, SECRET, signed_bytes)
    await assert_refused_and_nothing_moved(
        provider, admin, services, "/withdraw", sent_bytes, headers
    )


async def test_signature_over_reordered_keys_is_401(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    payload = bet(player["user_id"], player["session_token"], "tx-1")
    signed_bytes = orjson.dumps(payload)
    sent_bytes = orjson.dumps(dict(reversed(payload.items())))
    headers = signed_headers(PUBLIC_KEY, SECRET, signed_bytes)
    await assert_refused_and_nothing_moved(
        provider, admin, services, "/withdraw", sent_bytes, headers
    )


async def test_body_with_other_whitespace_is_accepted_when_signed_as_sent(
    provider: Any, admin: Any, player: Any
) -> None:
    """The signature covers the raw bytes as received, whatever their formatting."""
    payload = bet(player["user_id"], player["session_token"], "tx-1")
    body = json.dumps(payload, indent=2).encode()
    status, raw = await provider.post_raw("/withdraw", body)
    assert status == 200, raw
    assert await admin.balance("player-1") == 9_000


async def test_bad_signature_is_checked_before_the_body_is_parsed(
    provider: Any, admin: Any, services: Any, player: Any
) -> None:
    """Malformed JSON with a bad signature is a 401, not a 400: verify first, parse after."""
    body = b'{"user_id": '
    headers = signed_headers(PUBLIC_KEY, "not-the-secret", body)
    await assert_refused_and_nothing_moved(provider, admin, services, "/withdraw", body, headers)


@pytest.mark.parametrize("path", CALLBACK_PATHS)
async def test_every_callback_refuses_an_unsigned_request(
    path: str, provider: Any, admin: Any, services: Any, player: Any
) -> None:
    body = orjson.dumps({"user_id": "player-1", "session_token": player["session_token"]})
    headers = {"Content-Type": "application/json"}
    await assert_refused_and_nothing_moved(provider, admin, services, path, body, headers, MISSING)


async def test_second_key_pair_of_the_ring_is_accepted(
    provider: Any, admin: Any, player: Any
) -> None:
    body = bet_body(player)
    status, raw = await provider.post_raw(
        "/withdraw", body, signed_headers(ROTATED_PUBLIC_KEY, ROTATED_SECRET, body)
    )
    assert status == 200, raw
    assert orjson.loads(raw)["data"]["new_balance"] == 9_000
    body = orjson.dumps({"user_id": "player-1"})
    status, raw = await provider.post_raw(
        "/balance", body, signed_headers(ROTATED_PUBLIC_KEY, ROTATED_SECRET, body)
    )
    assert status == 200, raw
    assert orjson.loads(raw)["data"] == {"currency": "USD", "amount": 9_000}


async def test_refused_bet_leaves_no_record_so_a_correct_retry_is_applied_once(
    provider: Any, admin: Any, player: Any
) -> None:
    body = bet_body(player)
    status, _ = await provider.post_raw(
        "/withdraw", body, signed_headers(PUBLIC_KEY, "not-the-secret", body)
    )
    assert status == 401
    status, raw = await provider.post_raw("/withdraw", body)
    assert status == 200, raw
    status, raw_again = await provider.post_raw("/withdraw", body)
    assert (status, raw_again) == (200, raw)
    assert await admin.balance("player-1") == 9_000


async def test_bad_signature_logs_neither_secret_nor_signature(
    provider: Any, player: Any, caplog: pytest.LogCaptureFixture
) -> None:
    body = bet_body(player)
    wrong_signature = sign_body("not-the-secret", body)
    headers = {**signed_headers(PUBLIC_KEY, SECRET, body), "X-Signature": wrong_signature}
    with caplog.at_level(logging.DEBUG):
        status, _ = await provider.post_raw("/withdraw", body, headers)
    assert status == 401
    assert SECRET not in caplog.text
    assert wrong_signature not in caplog.text
    assert sign_body(SECRET, body) not in caplog.text


@pytest.mark.parametrize(
    ("headers_of", "outcome", "message"),
    [
        pytest.param(
            lambda body: {"X-Public-Key": PUBLIC_KEY}, SIGNATURE_MISSING, MISSING, id="missing"
        ),
        pytest.param(
            lambda body: signed_headers("unknown-public", SECRET, body),
            UNKNOWN_PUBLIC_KEY,
            UNKNOWN_KEY,
            id="unknown-key",
        ),
        pytest.param(
            lambda body: signed_headers(PUBLIC_KEY, "not-the-secret", body),
            BAD_SIGNATURE,
            MISMATCH,
            id="mismatch",
        ),
    ],
)
async def test_a_refused_callback_logs_one_line_with_its_reason(
    provider: Any,
    player: Any,
    caplog: pytest.LogCaptureFixture,
    headers_of: Callable[[bytes], dict[str, str]],
    outcome: str,
    message: str,
) -> None:
    body = bet_body(player)
    with caplog.at_level(logging.INFO, logger="gateway.callbacks"):
        status, _ = await provider.post_raw("/withdraw", body, headers_of(body))
    assert status == 401
    [record] = [r for r in caplog.records if r.name == "gateway.callbacks"]
    line = orjson.loads(JsonLineFormatter().format(record))
    assert (line["status"], line["outcome"], line["reason"]) == (401, outcome, message)


async def test_an_applied_callback_logs_one_line_without_a_reason(
    provider: Any, player: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.callbacks"):
        status, _ = await provider.post_raw("/withdraw", bet_body(player))
    assert status == 200
    [record] = [r for r in caplog.records if r.name == "gateway.callbacks"]
    line = orjson.loads(JsonLineFormatter().format(record))
    assert line["status"] == 200
    assert "outcome" not in line and "reason" not in line
