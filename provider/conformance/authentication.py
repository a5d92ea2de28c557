"""§2 authentication: a valid bet that any lax wallet would take, sent with broken credentials,
is a 401 and moves nothing; the signature covers the raw bytes, whatever their layout."""

import base64
import json
from collections.abc import Callable

from gateway.signing import sign_body, signed_headers
from provider.client import WITHDRAW_PATH, encode
from provider.conformance.probe import (
    JSON_CONTENT,
    PLAYER_BALANCE_MILLIS,
    STAKE_MILLIS,
    Probe,
    rule,
)


async def bet_refused_for_signature(
    probe: Probe,
    headers_for: Callable[[bytes], dict[str, str]],
    tamper: Callable[[bytes], bytes] = lambda body: body,
) -> None:
    player = await probe.player()
    body = encode(probe.bet(player))
    await probe.expect(WITHDRAW_PATH, tamper(body), 401, headers=headers_for(body))
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§2")
async def missing_signature_is_401(probe: Probe) -> None:
    await bet_refused_for_signature(
        probe, lambda body: {**JSON_CONTENT, "X-Public-Key": probe.public_key}
    )


@rule("§2")
async def missing_public_key_is_401(probe: Probe) -> None:
    await bet_refused_for_signature(
        probe, lambda body: {**JSON_CONTENT, "X-Signature": sign_body(probe.secret, body)}
    )


@rule("§2")
async def wrong_secret_is_401(probe: Probe) -> None:
    await bet_refused_for_signature(
        probe, lambda body: signed_headers(probe.public_key, probe.secret + "-wrong", body)
    )


@rule("§2")
async def unknown_public_key_is_401(probe: Probe) -> None:
    await bet_refused_for_signature(
        probe, lambda body: signed_headers(f"unknown-{probe.public_key}", probe.secret, body)
    )


@rule("§2")
async def hex_encoded_signature_is_401(probe: Probe) -> None:
    def hex_headers(body: bytes) -> dict[str, str]:
        digest = base64.b64decode(sign_body(probe.secret, body))
        return {**signed_headers(probe.public_key, probe.secret, body), "X-Signature": digest.hex()}

    await bet_refused_for_signature(probe, hex_headers)


@rule("§2")
async def signature_of_other_bytes_is_401(probe: Probe) -> None:
    # the same JSON with one more space: the signature covers bytes, not the JSON they encode
    await bet_refused_for_signature(
        probe,
        lambda body: signed_headers(probe.public_key, probe.secret, body),
        tamper=lambda body: body.replace(b",", b", ", 1),
    )


@rule("§2")
async def signature_is_checked_before_parsing(probe: Probe) -> None:
    body = b'{"user_id": '  # malformed: a wallet that parses first answers 400
    headers = signed_headers(probe.public_key, probe.secret + "-wrong", body)
    await probe.expect(WITHDRAW_PATH, body, 401, headers=headers)


@rule("§2")
async def signature_over_raw_bytes_accepts_any_layout(probe: Probe) -> None:
    player = await probe.player()
    bet = probe.bet(player)
    # indented, keys reversed: a wallet that re-serialises before verifying fails here
    body = json.dumps(dict(reversed(bet.items())), indent=2).encode()
    await probe.expect_money(
        WITHDRAW_PATH, bet, player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS, body=body
    )
