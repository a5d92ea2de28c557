"""docs/protocol.md §1, §3: strict validation of signed callbacks. Bad input is a 400 in the
envelope `{"code": 400, "message": ..., "data": null}` and changes nothing.

The fields each request requires, its identifiers and the limits come from the request models
(gateway/schemas.py); the ill-typed values are the protocol's own examples."""

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import orjson
import pytest
from conftest import PUBLIC_KEY, SECRET
from helpers import assert_error_envelope, stream_event_count
from payloads import bet, close_round, rollback, win

from gateway.callbacks import BODY_BYTES_MAX
from gateway.schemas import (
    AMOUNT_MILLIS_MAX,
    IDENTIFIER_CHARS_MAX,
    BetRequest,
    CloseRoundRequest,
    RollbackRequest,
    WinRequest,
    identifier_fields,
)
from gateway.signing import signed_headers

USER = "player-1"
BALANCE = 10_000


@pytest.fixture
async def session_token(admin: Any) -> str:
    await admin.create_player(USER, balance=BALANCE)
    return await admin.open_session(USER)


@pytest.fixture
async def settled_bet(provider: Any, session_token: str) -> str:
    """A bet of 1000 on the player's session: balance 9000 afterwards."""
    status, body = await provider.post("/withdraw", bet(USER, session_token, "bet-0"))
    assert status == 200, body
    return "bet-0"


class Unchanged:
    """Snapshot of what a refused call must not touch: balance, stream, key count."""

    def __init__(self, services: Any, admin: Any) -> None:
        self.services = services
        self.admin = admin

    async def take(self) -> tuple[int, int, int]:
        return (
            await self.admin.balance(USER),
            await stream_event_count(self.services),
            await self.services.redis.dbsize(),
        )


@pytest.fixture
def unchanged(services: Any, admin: Any) -> Unchanged:
    return Unchanged(services, admin)


async def assert_bad_request(
    provider: Any, unchanged: Unchanged, path: str, payload: Any, code: int = 400
) -> dict[str, Any]:
    before = await unchanged.take()
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    status, raw = await provider.post_raw(path, body)
    envelope = orjson.loads(raw)
    assert status == code, envelope
    assert_error_envelope(envelope, code)
    assert await unchanged.take() == before
    return envelope


# --- money fields -------------------------------------------------------------------------

BAD_AMOUNTS = [
    pytest.param(10.0, id="float-10.0"),
    pytest.param(5.5, id="float-5.5"),
    pytest.param("1000", id="numeric-string"),
    pytest.param(True, id="boolean-true"),
    pytest.param(False, id="boolean-false"),
    pytest.param(-1, id="negative"),
    pytest.param(AMOUNT_MILLIS_MAX + 1, id="above-the-maximum"),
    pytest.param([1000], id="array"),
    pytest.param({"value": 1000}, id="object"),
]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_bet_with_ill_typed_amount_is_400_and_moves_nothing(
    amount: Any, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    envelope = await assert_bad_request(
        provider, unchanged, "/withdraw", bet(USER, session_token, "tx-1", amount=amount)
    )
    assert "amount" in envelope["message"]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_win_with_ill_typed_amount_is_400_and_moves_nothing(
    amount: Any, provider: Any, unchanged: Unchanged, settled_bet: str
) -> None:
    await assert_bad_request(
        provider, unchanged, "/deposit", win(USER, "win-1", settled_bet, amount=amount)
    )


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_rollback_with_ill_typed_amount_is_400_and_moves_nothing(
    amount: Any, provider: Any, unchanged: Unchanged, settled_bet: str
) -> None:
    await assert_bad_request(
        provider, unchanged, "/deposit", rollback(USER, "rb-1", settled_bet, amount=amount)
    )


@pytest.mark.parametrize(
    "raw_amount",
    [b"1e3", b"1000.0", b"-0.0", b"100000000000000000000", b"NaN", b"Infinity"],
)
async def test_amount_written_as_exponent_fraction_or_huge_is_400(
    raw_amount: bytes, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    template = orjson.dumps(bet(USER, session_token, "tx-1", amount=123456789))
    body = template.replace(b"123456789", raw_amount)
    await assert_bad_request(provider, unchanged, "/withdraw", body)


async def test_amount_of_exactly_10_to_15_is_accepted(
    provider: Any, admin: Any, settled_bet: str
) -> None:
    status, body = await provider.post("/deposit", win(USER, "win-1", settled_bet, amount=10**15))
    assert status == 200, body
    assert await admin.balance(USER) == 9_000 + 10**15


async def test_bet_of_zero_is_400(provider: Any, unchanged: Unchanged, session_token: str) -> None:
    await assert_bad_request(
        provider, unchanged, "/withdraw", bet(USER, session_token, "tx-1", amount=0)
    )


async def test_win_of_zero_is_accepted(provider: Any, admin: Any, settled_bet: str) -> None:
    status, body = await provider.post("/deposit", win(USER, "win-1", settled_bet, amount=0))
    assert status == 200, body
    assert body["data"]["new_balance"] == 9_000


async def test_close_round_with_nonzero_amount_is_400(
    provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    await assert_bad_request(
        provider, unchanged, "/deposit", close_round("round-9", [1000], [0], amount=5)
    )


# --- required fields ------------------------------------------------------------------------


def required_fields(model: type[msgspec.Struct]) -> list[str]:
    """As the body names them."""
    return [field.encode_name for field in msgspec.structs.fields(model) if field.required]


BET_REQUIRED = required_fields(BetRequest)
WIN_REQUIRED = required_fields(WinRequest)
ROLLBACK_REQUIRED = required_fields(RollbackRequest)
CLOSE_ROUND_REQUIRED = required_fields(CloseRoundRequest)


@pytest.mark.parametrize("field", BET_REQUIRED)
@pytest.mark.parametrize("how", ["absent", "null"])
async def test_bet_without_a_required_field_is_400(
    field: str, how: str, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    payload = bet(USER, session_token, "tx-1")
    if how == "absent":
        del payload[field]
    else:
        payload[field] = None
    await assert_bad_request(provider, unchanged, "/withdraw", payload)


@pytest.mark.parametrize("field", WIN_REQUIRED)
async def test_win_without_a_required_field_is_400(
    field: str, provider: Any, unchanged: Unchanged, settled_bet: str
) -> None:
    payload = win(USER, "win-1", settled_bet)
    del payload[field]
    await assert_bad_request(provider, unchanged, "/deposit", payload)


@pytest.mark.parametrize("field", ROLLBACK_REQUIRED)
async def test_rollback_without_a_required_field_is_400(
    field: str, provider: Any, unchanged: Unchanged, settled_bet: str
) -> None:
    payload = rollback(USER, "rb-1", settled_bet)
    del payload[field]
    await assert_bad_request(provider, unchanged, "/deposit", payload)


@pytest.mark.parametrize("field", CLOSE_ROUND_REQUIRED)
async def test_close_round_without_a_required_field_is_400(
    field: str, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    payload = close_round("round-9", [1000, 2000], [0, "2.35"])
    del payload[field]
    await assert_bad_request(provider, unchanged, "/deposit", payload)


async def test_auth_without_session_token_is_400(
    provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    await assert_bad_request(provider, unchanged, "/auth", {"user_token": "u"})


async def test_balance_without_user_id_is_400(
    provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    await assert_bad_request(provider, unchanged, "/balance", {"currency": "USD"})


async def test_win_and_rollback_need_no_session_token(
    provider: Any, admin: Any, session_token: str
) -> None:
    for tx in ("bet-a", "bet-b"):
        status, body = await provider.post("/withdraw", bet(USER, session_token, tx))
        assert status == 200, body
    status, body = await provider.post("/deposit", win(USER, "win-a", "bet-a"))
    assert status == 200, body
    status, body = await provider.post("/deposit", rollback(USER, "rb-b", "bet-b"))
    assert status == 200, body
    assert await admin.balance(USER) == 10_000 - 2_000 + 2_000 + 1_000


# --- currency -------------------------------------------------------------------------------

BAD_CURRENCIES = ["usd", "US", "USDD", "", "Usd", "U5D", "U D", "ÜSD", 840, True, ["USD"]]


@pytest.mark.parametrize("currency", BAD_CURRENCIES)
async def test_bet_with_malformed_currency_is_400(
    currency: Any, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    envelope = await assert_bad_request(
        provider, unchanged, "/withdraw", bet(USER, session_token, "tx-1", currency=currency)
    )
    assert "currency" in envelope["message"]


@pytest.mark.parametrize("currency", BAD_CURRENCIES)
async def test_balance_with_malformed_currency_is_400(
    currency: Any, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    await assert_bad_request(
        provider, unchanged, "/balance", {"user_id": USER, "currency": currency}
    )


async def test_bet_in_another_currency_than_the_wallet_is_400_and_moves_nothing(
    provider: Any, admin: Any, session_token: str
) -> None:
    payload = bet(USER, session_token, "tx-1", currency="EUR")
    status, body = await provider.post("/withdraw", payload)
    assert status == 400
    assert_error_envelope(body, 400)
    assert await admin.balance(USER) == BALANCE
    # the refusal is the recorded answer of that provider_tx_id (docs/protocol.md §4 /withdraw)
    assert await provider.post("/withdraw", payload) == (status, body)
    assert await admin.balance(USER) == BALANCE


async def test_win_in_another_currency_than_the_wallet_is_400_and_moves_nothing(
    provider: Any, admin: Any, settled_bet: str
) -> None:
    status, body = await provider.post("/deposit", win(USER, "win-1", settled_bet, currency="EUR"))
    assert status == 400
    assert_error_envelope(body, 400)
    assert await admin.balance(USER) == 9_000


async def test_rollback_in_another_currency_than_the_wallet_is_400_and_moves_nothing(
    provider: Any, admin: Any, settled_bet: str
) -> None:
    status, body = await provider.post(
        "/deposit", rollback(USER, "rb-1", settled_bet, currency="EUR")
    )
    assert status == 400
    assert_error_envelope(body, 400)
    assert await admin.balance(USER) == 9_000


# --- identifiers ----------------------------------------------------------------------------

BAD_IDENTIFIERS = [
    pytest.param("x" * (IDENTIFIER_CHARS_MAX + 1), id="one-char-too-many"),
    pytest.param("", id="empty"),
    pytest.param("tx\x00-1", id="nul"),
    pytest.param("tx\n1", id="newline"),
    pytest.param("tx\x1f1", id="unit-separator"),
    pytest.param("tx\u200b1", id="zero-width-space"),
    pytest.param(1.5, id="float"),
    pytest.param(True, id="boolean"),
    pytest.param(["tx-1"], id="array"),
    pytest.param({"id": "tx-1"}, id="object"),
]
BET_IDENTIFIERS = [wire_name for _, wire_name in identifier_fields(BetRequest)]


@pytest.mark.parametrize("value", BAD_IDENTIFIERS)
@pytest.mark.parametrize("field", BET_IDENTIFIERS)
async def test_bet_with_a_bad_identifier_is_400(
    field: str, value: Any, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    payload = bet(USER, session_token, "tx-1")
    payload[field] = value
    envelope = await assert_bad_request(provider, unchanged, "/withdraw", payload)
    assert field in envelope["message"]


@pytest.mark.parametrize("value", BAD_IDENTIFIERS)
async def test_win_naming_a_bad_bet_identifier_is_400(
    value: Any, provider: Any, unchanged: Unchanged, settled_bet: str
) -> None:
    payload = win(USER, "win-1", settled_bet)
    payload["withdraw_provider_tx_id"] = value
    await assert_bad_request(provider, unchanged, "/deposit", payload)


async def test_identifier_of_128_printable_chars_is_accepted(
    provider: Any, admin: Any, session_token: str
) -> None:
    tx = "é" * 100 + "x" * 28
    status, body = await provider.post("/withdraw", bet(USER, session_token, tx, round_id=tx))
    assert status == 200, body
    assert body["data"]["provider_tx_id"] == tx
    assert await admin.balance(USER) == 9_000


async def test_integer_identifiers_are_accepted_as_their_decimal_string(
    provider: Any, admin: Any
) -> None:
    await admin.create_player("12345", balance=BALANCE)
    session_token = await admin.open_session("12345")
    payload = bet(12345, session_token, 777, round_id=42)
    status, body = await provider.post("/withdraw", payload)
    assert status == 200, body
    assert body["data"]["user_id"] == "12345"
    assert body["data"]["provider_tx_id"] == "777"
    # the string form is the same transaction: replayed, not applied twice
    status, again = await provider.post(
        "/withdraw", {**payload, "user_id": "12345", "provider_tx_id": "777", "round_id": "42"}
    )
    assert (status, again) == (200, body)
    status, body = await provider.post("/balance", {"user_id": 12345})
    assert status == 200, body
    assert body["data"] == {"currency": "USD", "amount": 9_000}
    status, body = await provider.post("/deposit", win(12345, 778, 777, round_id=42))
    assert status == 200, body
    assert body["data"]["user_id"] == "12345"
    assert await admin.balance("12345") == 11_000


async def test_unknown_extra_fields_are_ignored(
    provider: Any, admin: Any, session_token: str
) -> None:
    extra = {
        "platform": "mobile",
        "action_id": "a-1",
        "bonus": {"nested": [1, 2.5, None]},
        "future_field": 3.14,
    }
    status, body = await provider.post("/withdraw", bet(USER, session_token, "tx-1", **extra))
    assert status == 200, body
    status, body = await provider.post("/deposit", win(USER, "win-1", "tx-1", **extra))
    assert status == 200, body
    status, body = await provider.post("/balance", {"user_id": USER, **extra})
    assert status == 200, body
    status, body = await provider.post("/auth", {"session_token": session_token, **extra})
    assert status == 200, body
    assert await admin.balance(USER) == 11_000


# --- the body -------------------------------------------------------------------------------

BAD_BODIES = [
    pytest.param(b'{"user_id": "player-1", ', id="truncated"),
    pytest.param(b"", id="empty"),
    pytest.param(b"not json", id="text"),
    pytest.param(b'{"user_id": "player-1",}', id="trailing-comma"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b'[{"user_id": "player-1"}]', id="array"),
    pytest.param(b'"player-1"', id="string"),
    pytest.param(b"12345", id="number"),
    pytest.param(b"null", id="null"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
@pytest.mark.parametrize("path", ["/auth", "/withdraw", "/deposit", "/balance"])
async def test_body_that_is_not_a_json_object_is_400(
    path: str, body: bytes, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    await assert_bad_request(provider, unchanged, path, body)


@pytest.mark.parametrize(
    "action", ["WIN", "FREE_BET_WIN", "ROLL_BACK", "CLOSE_ROUND", "SPIN", "bet", "", None, 1]
)
async def test_withdraw_with_an_action_other_than_a_bet_is_400(
    action: Any, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    await assert_bad_request(
        provider, unchanged, "/withdraw", bet(USER, session_token, "tx-1", action=action)
    )


@pytest.mark.parametrize("action", ["BET", "FREE_BET", "JACKPOT", "win", "", None, 1])
async def test_deposit_with_an_unknown_action_is_400(
    action: Any, provider: Any, unchanged: Unchanged, settled_bet: str
) -> None:
    envelope = await assert_bad_request(
        provider, unchanged, "/deposit", win(USER, "win-1", settled_bet, action=action)
    )
    assert "action" in envelope["message"]


# --- size limit -----------------------------------------------------------------------------


def padded_bet(session_token: str, size: int) -> bytes:
    """A valid bet of exactly `size` bytes (an ignored extra field pads it)."""
    body = orjson.dumps(bet(USER, session_token, "tx-big", pad=""))
    padded = body.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(body)) + b'"')
    assert len(padded) == size
    return padded


async def test_body_over_64_kib_is_413_and_moves_nothing(
    provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    body = padded_bet(session_token, BODY_BYTES_MAX + 1)
    await assert_bad_request(provider, unchanged, "/withdraw", body, code=413)


async def test_body_of_exactly_64_kib_is_accepted(
    provider: Any, admin: Any, session_token: str
) -> None:
    status, raw = await provider.post_raw("/withdraw", padded_bet(session_token, BODY_BYTES_MAX))
    assert status == 200, raw
    assert await admin.balance(USER) == 9_000


async def test_huge_body_is_413_before_it_is_read_whole(
    provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    await assert_bad_request(provider, unchanged, "/withdraw", b"x" * (8 * BODY_BYTES_MAX), 413)


async def test_chunked_body_over_64_kib_without_content_length_is_413(
    provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    body = padded_bet(session_token, BODY_BYTES_MAX + 1024)
    chunk_bytes = 4096

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk_bytes):
            yield body[start : start + chunk_bytes]

    before = await unchanged.take()
    response = await provider.client.post(
        "/withdraw", data=chunks(), headers=signed_headers(PUBLIC_KEY, SECRET, body)
    )
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request_info.headers
    assert response.status == 413
    assert_error_envelope(orjson.loads(await response.read()), 413)
    assert await unchanged.take() == before


async def test_chunked_body_under_the_limit_is_accepted(
    provider: Any, admin: Any, session_token: str
) -> None:
    body = orjson.dumps(bet(USER, session_token, "tx-1"))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16):
            yield body[start : start + 16]

    response = await provider.client.post(
        "/withdraw", data=chunks(), headers=signed_headers(PUBLIC_KEY, SECRET, body)
    )
    assert response.status == 200, await response.text()
    assert await admin.balance(USER) == 9_000


# --- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/bet", "/auth/extra", "/admin/players", "/v1/withdraw"])
async def test_unknown_path_is_404_envelope(path: str, provider: Any) -> None:
    body = b"{}"
    status, raw = await provider.post_raw(path, body)
    assert status == 404
    assert_error_envelope(orjson.loads(raw), 404)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/withdraw", "/auth"])
async def test_other_method_on_a_callback_is_an_envelope_error(
    method: str, path: str, provider: Any, unchanged: Unchanged, session_token: str
) -> None:
    before = await unchanged.take()
    response = await provider.client.request(method, path)
    envelope = orjson.loads(await response.read())
    assert response.status == 405, envelope
    assert_error_envelope(envelope, 405)
    assert "POST" in response.headers.get("Allow", "")
    assert await unchanged.take() == before
