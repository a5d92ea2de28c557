"""Conformance kit (`wallet-gateway conformance`): checks any operator wallet against the callback
protocol (PROTOCOL.md), one rule at a time, and names every rule it breaks.

Each rule runs on fresh players from a `PlayerSource` (this project's admin API, or a hook command
of the operator's own) and fresh ids, so rules never depend on one another.
"""

import argparse
import asyncio
import base64
import fnmatch
import itertools
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gateway.provider_client import (
    AUTH_PATH,
    BALANCE_PATH,
    CALLBACK_TIMEOUT_SECONDS,
    DEPOSIT_PATH,
    NO_RETRY,
    WITHDRAW_PATH,
    CallbackReply,
    CallbackUndelivered,
    OperatorAdmin,
    PlayerSession,
    PlayerSource,
    ProviderClient,
    add_admin_arguments,
    add_wallet_arguments,
    auth_body,
    balance_body,
    bet_body,
    close_round_body,
    encode,
    parse_json,
    rollback_body,
    win_body,
)
from gateway.schemas import COEFFICIENTS_ATTRIBUTE, STAKES_ATTRIBUTE
from gateway.signing import sign_body, signed_headers

PLAYER_BALANCE_MILLIS = 100_000
STAKE_MILLIS = 1_000
# The protocol's limits (PROTOCOL.md §1), stated here rather than imported from our gateway:
# the kit judges any wallet, ours included, against the contract.
BODY_BYTES_LIMIT = 64 * 1024
AMOUNT_MILLIS_LIMIT = 10**15
IDENTIFIER_CHARS_LIMIT = 128
DUPLICATE_COPIES_DEFAULT = 10
DUPLICATE_COPIES_MAX = 100
RULE_TIMEOUT_SECONDS = 30.0
HOOK_TIMEOUT_SECONDS = 30.0
HOOK_OUTPUT_BYTES_MAX = 64 * 1024
EXCERPT_BYTES_MAX = 160
GAME = "aviadrone"
JSON_CONTENT = {"Content-Type": "application/json"}


class RuleFailed(Exception):
    """The wallet broke the rule; the message says how."""


def excerpt(body: bytes) -> str:
    text = body[:EXCERPT_BYTES_MAX].decode("utf-8", "replace")
    return text + ("..." if len(body) > EXCERPT_BYTES_MAX else "")


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise RuleFailed(reason)


def envelope_problem(reply: CallbackReply) -> str | None:
    """What is wrong with the answer's envelope (PROTOCOL.md §3); None when it is right."""
    payload = reply.payload
    if not isinstance(payload, dict):
        return f"HTTP {reply.status} body is not a JSON object: {excerpt(reply.body)}"
    if set(payload) != {"code", "message", "data"}:
        return f"envelope keys are {sorted(payload)}, not code, message, data"
    code = payload["code"]
    if type(code) is not int or code != reply.status:
        return f"envelope code {code!r} differs from HTTP status {reply.status}"
    if not isinstance(payload["message"], str):
        return "envelope message is not a string"
    if reply.status >= 400 and payload["data"] is not None:
        return f"error {reply.status} carries data {payload['data']!r}, not null"
    if reply.status < 300 and not isinstance(payload["data"], dict):
        return f"success carries data {payload['data']!r}, not an object"
    return None


# --- player sources -----------------------------------------------------------------------------


class PlayerHook:
    """Test players from the operator's own command (any wallet, any back office).

    The command runs in a shell with the currency and the balance in millis appended as two
    arguments and also set as CONFORMANCE_CURRENCY and CONFORMANCE_BALANCE_MILLIS; it must print
    `{"user_id": "...", "session_token": "..."}` on stdout: a new player with a live session.
    """

    def __init__(self, command: str, timeout_seconds: float = HOOK_TIMEOUT_SECONDS) -> None:
        self.command = command
        self.timeout_seconds = timeout_seconds

    async def new_player(self, currency: str, balance_millis: int) -> PlayerSession:
        environment = {
            **os.environ,
            "CONFORMANCE_CURRENCY": currency,
            "CONFORMANCE_BALANCE_MILLIS": str(balance_millis),
        }
        process = await asyncio.create_subprocess_shell(
            f"{self.command} {currency} {balance_millis}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), self.timeout_seconds)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"player hook ran over {self.timeout_seconds}s") from None
        if process.returncode != 0:
            raise RuntimeError(f"player hook exited {process.returncode}: {excerpt(stderr)}")
        parsed = parse_json(stdout.strip()) if len(stdout) <= HOOK_OUTPUT_BYTES_MAX else None
        if not (
            isinstance(parsed, dict)
            and isinstance(parsed.get("user_id"), str)
            and isinstance(parsed.get("session_token"), str)
        ):
            raise RuntimeError(
                f'player hook must print {{"user_id", "session_token"}}, printed {excerpt(stdout)}'
            )
        return PlayerSession(parsed["user_id"], parsed["session_token"], currency)


# --- what rules use -----------------------------------------------------------------------------


@dataclass
class ConformanceConfig:
    wallet_url: str
    public_key: str
    secret: str
    players: PlayerSource
    currency: str = "USD"
    operator_id: str = "operator"
    duplicate_copies: int = DUPLICATE_COPIES_DEFAULT
    timeout_seconds: float = CALLBACK_TIMEOUT_SECONDS
    rule_patterns: tuple[str, ...] = ()  # fnmatch patterns of rule names; empty = every rule


class Probe:
    """What a rule uses: fresh players and ids, signed calls, and checks that fail the rule."""

    def __init__(self, client: ProviderClient, config: ConformanceConfig) -> None:
        self.client = client
        self.config = config
        self.public_key = config.public_key
        self.secret = config.secret
        self._run_id = secrets.token_hex(4)  # ids never collide with an earlier run's
        self._numbers = itertools.count(1)

    def new_id(self, label: str) -> str:
        return f"cf-{self._run_id}-{next(self._numbers)}-{label}"

    async def player(self, balance_millis: int = PLAYER_BALANCE_MILLIS) -> PlayerSession:
        try:
            return await self.config.players.new_player(self.config.currency, balance_millis)
        except Exception as exc:
            raise RuleFailed(f"could not create a test player: {exc}") from exc

    def unknown_player(self) -> PlayerSession:
        return PlayerSession(self.new_id("nobody"), self.new_id("no-session"), self.config.currency)

    def bet(
        self,
        player: PlayerSession,
        amount_millis: int = STAKE_MILLIS,
        action: str = "BET",
        round_id: str | None = None,
    ) -> dict[str, Any]:
        return bet_body(
            user_id=player.user_id,
            session_token=player.session_token,
            amount_millis=amount_millis,
            currency=player.currency,
            provider_tx_id=self.new_id("bet"),
            round_id=round_id or self.new_id("round"),
            game=GAME,
            action=action,
        )

    def win(
        self,
        player: PlayerSession,
        amount_millis: int,
        bet: dict[str, Any] | None = None,
        action: str = "WIN",
    ) -> dict[str, Any]:
        return win_body(
            user_id=player.user_id,
            amount_millis=amount_millis,
            currency=player.currency,
            provider_tx_id=self.new_id("win"),
            round_id=bet["round_id"] if bet else self.new_id("round"),
            game=GAME,
            bet_tx_id=bet["provider_tx_id"] if bet else None,
            action=action,
        )

    def rollback(
        self, player: PlayerSession, bet: dict[str, Any], amount_millis: int | None = None
    ) -> dict[str, Any]:
        return rollback_body(
            user_id=player.user_id,
            provider_tx_id=self.new_id("rollback"),
            bet_tx_id=bet["provider_tx_id"],
            round_id=bet["round_id"],
            game=GAME,
            amount_millis=amount_millis,
            currency=None if amount_millis is None else player.currency,
        )

    async def send(
        self, path: str, payload: dict[str, Any] | bytes, headers: dict[str, str] | None = None
    ) -> CallbackReply:
        """One call, no retry; every answer must be the protocol's envelope."""
        body = payload if isinstance(payload, bytes) else encode(payload)
        try:
            reply = await self.client.post_raw(path, body, headers)
        except CallbackUndelivered as exc:
            raise RuleFailed(f"no answer: {exc}") from exc
        problem = envelope_problem(reply)
        require(problem is None, f"{path}: {problem}")
        return reply

    async def expect(
        self,
        path: str,
        payload: dict[str, Any] | bytes,
        status: int,
        headers: dict[str, str] | None = None,
    ) -> CallbackReply:
        reply = await self.send(path, payload, headers)
        require(
            reply.status == status,
            f"{path}: expected {status}, got {reply.status} {excerpt(reply.body)}",
        )
        return reply

    async def expect_money(
        self,
        path: str,
        payload: dict[str, Any],
        player: PlayerSession,
        new_balance_millis: int,
        body: bytes | None = None,
    ) -> CallbackReply:
        """A 200 money answer (PROTOCOL.md §4) for `payload` (sent as `body` when given)."""
        reply = await self.expect(path, body if body is not None else payload, 200)
        expected = {
            "user_id": player.user_id,
            "currency": player.currency,
            "new_balance": new_balance_millis,
            "provider_tx_id": payload["provider_tx_id"],
        }
        data = reply.data
        for name, value in expected.items():
            require(
                data.get(name) == value, f"{path}: data.{name} is {data.get(name)!r}, not {value!r}"
            )
        operator_tx_id = data.get("operator_tx_id")
        require(
            isinstance(operator_tx_id, str) and operator_tx_id != "",
            f"{path}: data.operator_tx_id is {operator_tx_id!r}, not a non-empty string",
        )
        return reply

    async def expect_balance(self, player: PlayerSession, balance_millis: int) -> None:
        reply = await self.expect(BALANCE_PATH, balance_body(user_id=player.user_id), 200)
        amount = reply.data.get("amount")
        require(
            amount == balance_millis,
            f"balance of {player.user_id} is {amount!r}, expected {balance_millis}",
        )

    async def player_with_bet(
        self, stake_millis: int = STAKE_MILLIS, action: str = "BET"
    ) -> tuple[PlayerSession, dict[str, Any]]:
        """A new player whose bet the wallet took."""
        player = await self.player()
        bet = self.bet(player, stake_millis, action)
        debit = stake_millis if action == "BET" else 0
        await self.expect_money(WITHDRAW_PATH, bet, player, PLAYER_BALANCE_MILLIS - debit)
        return player, bet


def require_replay(first: CallbackReply, again: CallbackReply) -> None:
    require(
        (again.status, again.body) == (first.status, first.body),
        f"replay answered {again.status} {excerpt(again.body)}"
        f" instead of {first.status} {excerpt(first.body)}",
    )


# --- the rules ----------------------------------------------------------------------------------

Check = Callable[[Probe], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    section: str  # of PROTOCOL.md
    check: Check


RULES: list[Rule] = []


def rule(section: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        RULES.append(Rule(check.__name__, section, check))
        return check

    return register


# §2 signatures: a valid bet that any lax wallet would take, sent with broken credentials


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


# §3 the envelope (every call of every rule checks it; this rule covers each kind of answer)


@rule("§3")
async def every_answer_is_the_envelope(probe: Probe) -> None:
    player = await probe.player()
    await probe.expect(AUTH_PATH, auth_body(session_token=player.session_token), 200)
    await probe.expect(WITHDRAW_PATH, b"{", 401, headers=JSON_CONTENT)
    await probe.expect(WITHDRAW_PATH, b"{", 400)
    await probe.expect(BALANCE_PATH, balance_body(user_id=probe.unknown_player().user_id), 404)
    await probe.expect(WITHDRAW_PATH, probe.bet(player, PLAYER_BALANCE_MILLIS + 1), 402)


# §4 endpoints


@rule("§4")
async def auth_answers_the_player(probe: Probe) -> None:
    player = await probe.player()
    reply = await probe.expect(AUTH_PATH, auth_body(session_token=player.session_token), 200)
    data = reply.data
    for name, value in (
        ("user_id", player.user_id),
        ("currency", player.currency),
        ("balance", PLAYER_BALANCE_MILLIS),
    ):
        require(data.get(name) == value, f"/auth data.{name} is {data.get(name)!r}, not {value!r}")
    maxbet = data.get("maxbet")
    require(type(maxbet) is int and maxbet >= 0, f"/auth data.maxbet is {maxbet!r}")


@rule("§4")
async def auth_of_unknown_session_is_404(probe: Probe) -> None:
    await probe.expect(AUTH_PATH, auth_body(session_token=probe.new_id("no-session")), 404)


@rule("§4")
async def balance_answers_currency_and_amount(probe: Probe) -> None:
    player = await probe.player()
    reply = await probe.expect(BALANCE_PATH, balance_body(user_id=player.user_id), 200)
    expected = {"currency": player.currency, "amount": PLAYER_BALANCE_MILLIS}
    require(reply.data == expected, f"/balance data is {reply.data!r}, not {expected!r}")


@rule("§4")
async def balance_of_unknown_user_is_404(probe: Probe) -> None:
    await probe.expect(BALANCE_PATH, balance_body(user_id=probe.unknown_player().user_id), 404)


@rule("§4")
async def bet_debits_the_stake(probe: Probe) -> None:
    player, _ = await probe.player_with_bet()
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)


@rule("§4")
async def bet_over_the_balance_is_402_and_moves_nothing(probe: Probe) -> None:
    player = await probe.player(STAKE_MILLIS - 1)
    await probe.expect(WITHDRAW_PATH, probe.bet(player), 402)
    await probe.expect_balance(player, STAKE_MILLIS - 1)


@rule("§4")
async def bet_with_unknown_session_is_401(probe: Probe) -> None:
    player = await probe.player()
    stranger = PlayerSession(player.user_id, probe.new_id("no-session"), player.currency)
    await probe.expect(WITHDRAW_PATH, probe.bet(stranger), 401)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§4")
async def bet_with_another_players_session_is_401(probe: Probe) -> None:
    player, other = await probe.player(), await probe.player()
    borrowed = PlayerSession(player.user_id, other.session_token, player.currency)
    await probe.expect(WITHDRAW_PATH, probe.bet(borrowed), 401)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)
    await probe.expect_balance(other, PLAYER_BALANCE_MILLIS)


@rule("§4")
async def bet_of_unknown_user_is_404(probe: Probe) -> None:
    await probe.expect(WITHDRAW_PATH, probe.bet(probe.unknown_player()), 404)


@rule("§4")
async def concurrent_bets_never_overdraw(probe: Probe) -> None:
    player = await probe.player(STAKE_MILLIS)
    replies = await asyncio.gather(
        *(
            probe.send(WITHDRAW_PATH, probe.bet(player))
            for _ in range(probe.config.duplicate_copies)
        )
    )
    statuses = sorted(reply.status for reply in replies)
    expected = [200] + [402] * (len(replies) - 1)
    require(statuses == expected, f"{len(replies)} bets of the whole balance answered {statuses}")
    await probe.expect_balance(player, 0)


@rule("§4")
async def win_credits_the_balance(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    balance = PLAYER_BALANCE_MILLIS - STAKE_MILLIS + 2_350
    await probe.expect_money(DEPOSIT_PATH, probe.win(player, 2_350, bet), player, balance)
    await probe.expect_balance(player, balance)


@rule("§4")
async def win_of_zero_is_accepted(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    balance = PLAYER_BALANCE_MILLIS - STAKE_MILLIS
    await probe.expect_money(DEPOSIT_PATH, probe.win(player, 0, bet), player, balance)


@rule("§4")
async def free_bet_does_not_move_the_balance(probe: Probe) -> None:
    player, _ = await probe.player_with_bet(action="FREE_BET")
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§4")
async def free_bet_win_credits_the_balance(probe: Probe) -> None:
    player, bet = await probe.player_with_bet(action="FREE_BET")
    win = probe.win(player, 4_000, bet, action="FREE_BET_WIN")
    await probe.expect_money(DEPOSIT_PATH, win, player, PLAYER_BALANCE_MILLIS + 4_000)


@rule("§4")
async def rollback_of_a_free_bet_refunds_nothing(probe: Probe) -> None:
    player, bet = await probe.player_with_bet(action="FREE_BET")
    await probe.expect_money(
        DEPOSIT_PATH, probe.rollback(player, bet), player, PLAYER_BALANCE_MILLIS
    )


@rule("§4")
async def deposit_with_unknown_action_is_400(probe: Probe) -> None:
    player = await probe.player()
    await probe.expect(DEPOSIT_PATH, {**probe.win(player, 1_000), "action": "JACKPOT"}, 400)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


async def round_closed(probe: Probe, as_list: bool, as_text: bool) -> None:
    """Two bets, one cashed out at 2.35 and one lost, then CLOSE_ROUND: no money moves."""
    player = await probe.player()
    round_id = probe.new_id("round")
    balance = PLAYER_BALANCE_MILLIS
    bets = [probe.bet(player, STAKE_MILLIS, round_id=round_id) for _ in range(2)]
    for bet in bets:
        balance -= STAKE_MILLIS
        await probe.expect_money(WITHDRAW_PATH, bet, player, balance)
    balance += 2_350
    await probe.expect_money(DEPOSIT_PATH, probe.win(player, 2_350, bets[0]), player, balance)
    await probe.expect_money(DEPOSIT_PATH, probe.win(player, 0, bets[1]), player, balance)
    close = close_round_body(
        round_id=round_id,
        operator_id=probe.config.operator_id,
        game=GAME,
        stakes_millis=[STAKE_MILLIS, STAKE_MILLIS],
        coefficients=[Decimal("2.35"), Decimal(0)],
        as_list=as_list,
        as_text=as_text,
    )
    reply = await probe.expect(DEPOSIT_PATH, close, 200)
    expected = {"provider_tx_id": close["provider_tx_id"], "round_id": round_id}
    require(reply.data == expected, f"CLOSE_ROUND data is {reply.data!r}, not {expected!r}")
    await probe.expect_balance(player, balance)


def close_round_rule(as_list: bool, as_text: bool) -> Rule:
    shape = "list" if as_list else "object"
    values = "json_text" if as_text else "arrays"

    async def check(probe: Probe) -> None:
        await round_closed(probe, as_list, as_text)

    return Rule(f"close_round_with_attributes_{shape}_of_{values}_is_accepted", "§4", check)


RULES.extend(
    close_round_rule(as_list, as_text) for as_list in (False, True) for as_text in (False, True)
)


def bad_close_round_rule(name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Rule:
    async def check(probe: Probe) -> None:
        close = close_round_body(
            round_id=probe.new_id("round"),
            operator_id=probe.config.operator_id,
            game=GAME,
            stakes_millis=[STAKE_MILLIS],
            coefficients=[Decimal("2.35")],
        )
        await probe.expect(DEPOSIT_PATH, change(close), 400)

    return Rule(name, "§4", check)


def with_attributes(
    close: dict[str, Any], stakes: list[Any], multipliers: list[Any]
) -> dict[str, Any]:
    return {
        **close,
        "attributes": {STAKES_ATTRIBUTE: stakes, COEFFICIENTS_ATTRIBUTE: multipliers},
    }


RULES.extend(
    [
        bad_close_round_rule(
            "close_round_with_nonzero_amount_is_400", lambda close: {**close, "amount": 1}
        ),
        bad_close_round_rule(
            "close_round_with_unequal_lengths_is_400",
            lambda close: with_attributes(close, [STAKE_MILLIS], [2.35, 0]),
        ),
        bad_close_round_rule(
            "close_round_with_negative_multiplier_is_400",
            lambda close: with_attributes(close, [STAKE_MILLIS], [-1]),
        ),
        bad_close_round_rule(
            "close_round_with_negative_stake_is_400",
            lambda close: with_attributes(close, [-STAKE_MILLIS], [2.35]),
        ),
        bad_close_round_rule(
            "close_round_with_fractional_stake_is_400",
            lambda close: with_attributes(close, [1000.5], [2.35]),
        ),
    ]
)


# §5 idempotency


@rule("§5")
async def bet_replay_is_identical_and_debits_once(probe: Probe) -> None:
    player = await probe.player()
    bet = probe.bet(player)
    first = await probe.expect_money(
        WITHDRAW_PATH, bet, player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS
    )
    # the balance moves in between: the replay still answers as the first time
    balance = PLAYER_BALANCE_MILLIS - STAKE_MILLIS - 500
    await probe.expect_money(WITHDRAW_PATH, probe.bet(player, 500), player, balance)
    require_replay(first, await probe.send(WITHDRAW_PATH, bet))
    await probe.expect_balance(player, balance)


@rule("§5")
async def refused_bet_replay_is_identical(probe: Probe) -> None:
    player = await probe.player(STAKE_MILLIS - 1)
    bet = probe.bet(player)
    first = await probe.expect(WITHDRAW_PATH, bet, 402)
    # now the player could afford it: a retry must still get the stored 402
    balance = STAKE_MILLIS - 1 + 5_000
    await probe.expect_money(DEPOSIT_PATH, probe.win(player, 5_000), player, balance)
    require_replay(first, await probe.send(WITHDRAW_PATH, bet))
    await probe.expect_balance(player, balance)


@rule("§5")
async def win_replay_is_identical_and_credits_once(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    win = probe.win(player, 2_000, bet)
    balance = PLAYER_BALANCE_MILLIS - STAKE_MILLIS + 2_000
    first = await probe.expect_money(DEPOSIT_PATH, win, player, balance)
    require_replay(first, await probe.send(DEPOSIT_PATH, win))
    await probe.expect_balance(player, balance)


@rule("§5")
async def rollback_replay_is_identical_and_refunds_once(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    rollback = probe.rollback(player, bet)
    first = await probe.expect_money(DEPOSIT_PATH, rollback, player, PLAYER_BALANCE_MILLIS)
    require_replay(first, await probe.send(DEPOSIT_PATH, rollback))
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§5")
async def close_round_replay_is_identical(probe: Probe) -> None:
    close = close_round_body(
        round_id=probe.new_id("round"),
        operator_id=probe.config.operator_id,
        game=GAME,
        stakes_millis=[],
        coefficients=[],
    )
    first = await probe.expect(DEPOSIT_PATH, close, 200)
    require_replay(first, await probe.send(DEPOSIT_PATH, close))


@rule("§5")
async def bet_id_reused_with_another_amount_is_409(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    await probe.expect(WITHDRAW_PATH, {**bet, "amount": STAKE_MILLIS * 2}, 409)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)


@rule("§5")
async def win_id_reused_with_another_amount_is_409(probe: Probe) -> None:
    # a WIN naming no bet: only its id can make the second one a 409 (not DOUBLE_WIN)
    player = await probe.player()
    win = probe.win(player, 2_000)
    balance = PLAYER_BALANCE_MILLIS + 2_000
    await probe.expect_money(DEPOSIT_PATH, win, player, balance)
    await probe.expect(DEPOSIT_PATH, {**win, "amount": 20_000}, 409)
    await probe.expect_balance(player, balance)


@rule("§5")
async def bet_id_reused_by_another_player_is_409(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    other = await probe.player()
    reused = {**probe.bet(other), "provider_tx_id": bet["provider_tx_id"]}
    await probe.expect(WITHDRAW_PATH, reused, 409)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)
    await probe.expect_balance(other, PLAYER_BALANCE_MILLIS)


@rule("§5")
async def concurrent_duplicates_debit_once(probe: Probe) -> None:
    player = await probe.player()
    body = encode(probe.bet(player))
    copies = probe.config.duplicate_copies
    replies = await asyncio.gather(*(probe.send(WITHDRAW_PATH, body) for _ in range(copies)))
    answers = {(reply.status, reply.body) for reply in replies}
    require(
        len(answers) == 1,
        f"{copies} copies got {len(answers)} different answers, e.g. "
        + " / ".join(f"{status} {excerpt(body)}" for status, body in list(answers)[:2]),
    )
    require(replies[0].status == 200, f"the copies answered {replies[0].status}")
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)


# §6 money rules of rollbacks


@rule("§6")
async def rollback_refunds_the_recorded_stake(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    rollback = probe.rollback(player, bet, amount_millis=STAKE_MILLIS)
    await probe.expect_money(DEPOSIT_PATH, rollback, player, PLAYER_BALANCE_MILLIS)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§6")
async def rollback_of_unknown_bet_is_ok_and_moves_nothing(probe: Probe) -> None:
    player = await probe.player()
    never_sent = probe.bet(player)
    rollback = probe.rollback(player, never_sent)
    await probe.expect_money(DEPOSIT_PATH, rollback, player, PLAYER_BALANCE_MILLIS)


@rule("§6")
async def bet_after_its_rollback_is_409_and_moves_nothing(probe: Probe) -> None:
    player = await probe.player()
    late = probe.bet(player)
    rollback = probe.rollback(player, late)
    await probe.expect_money(DEPOSIT_PATH, rollback, player, PLAYER_BALANCE_MILLIS)
    await probe.expect(WITHDRAW_PATH, late, 409)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§6")
async def second_rollback_of_a_bet_moves_nothing(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    for _ in range(2):  # two provider_tx_ids voiding the same bet
        rollback = probe.rollback(player, bet)
        await probe.expect_money(DEPOSIT_PATH, rollback, player, PLAYER_BALANCE_MILLIS)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§6")
async def rollback_of_a_won_bet_is_409_and_moves_nothing(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    balance = PLAYER_BALANCE_MILLIS - STAKE_MILLIS + 2_000
    await probe.expect_money(DEPOSIT_PATH, probe.win(player, 2_000, bet), player, balance)
    await probe.expect(DEPOSIT_PATH, probe.rollback(player, bet), 409)
    await probe.expect_balance(player, balance)


@rule("§6")
async def second_win_of_a_bet_is_409_and_moves_nothing(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    balance = PLAYER_BALANCE_MILLIS - STAKE_MILLIS + 2_000
    await probe.expect_money(DEPOSIT_PATH, probe.win(player, 2_000, bet), player, balance)
    await probe.expect(DEPOSIT_PATH, probe.win(player, 2_000, bet), 409)  # another tx id
    await probe.expect_balance(player, balance)


@rule("§6")
async def win_of_a_rolled_back_bet_is_409_and_moves_nothing(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    await probe.expect_money(
        DEPOSIT_PATH, probe.rollback(player, bet), player, PLAYER_BALANCE_MILLIS
    )
    await probe.expect(DEPOSIT_PATH, probe.win(player, 5_000, bet), 409)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§6")
async def win_of_a_bet_voided_before_it_arrived_is_409(probe: Probe) -> None:
    player = await probe.player()
    never_sent = probe.bet(player)
    rollback = probe.rollback(player, never_sent)
    await probe.expect_money(DEPOSIT_PATH, rollback, player, PLAYER_BALANCE_MILLIS)
    await probe.expect(DEPOSIT_PATH, probe.win(player, 5_000, never_sent), 409)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)


@rule("§6")
async def rollback_of_another_amount_is_409_and_moves_nothing(probe: Probe) -> None:
    player, bet = await probe.player_with_bet()
    rollback = probe.rollback(player, bet, amount_millis=STAKE_MILLIS - 1)
    await probe.expect(DEPOSIT_PATH, rollback, 409)
    await probe.expect_balance(player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)


@rule("§6")
async def win_for_another_players_bet_is_409(probe: Probe) -> None:
    owner, bet = await probe.player_with_bet()
    other = await probe.player()
    await probe.expect(DEPOSIT_PATH, probe.win(other, 5_000, bet), 409)
    await probe.expect_balance(owner, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)
    await probe.expect_balance(other, PLAYER_BALANCE_MILLIS)


@rule("§6")
async def rollback_for_another_players_bet_is_409(probe: Probe) -> None:
    owner, bet = await probe.player_with_bet()
    other = await probe.player()
    await probe.expect(DEPOSIT_PATH, probe.rollback(other, bet), 409)
    await probe.expect_balance(owner, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)
    await probe.expect_balance(other, PLAYER_BALANCE_MILLIS)


@rule("§6")
async def win_for_unknown_user_is_404(probe: Probe) -> None:
    await probe.expect(DEPOSIT_PATH, probe.win(probe.unknown_player(), 1_000), 404)


@rule("§6")
async def rollback_for_unknown_user_is_404(probe: Probe) -> None:
    nobody = probe.unknown_player()
    await probe.expect(DEPOSIT_PATH, probe.rollback(nobody, probe.bet(nobody)), 404)


# §1 bad input: each is a 400 (413 for size) and moves nothing

BuildBody = Callable[[Probe, PlayerSession], dict[str, Any] | bytes]


def bad_input_rule(name: str, path: str, build: BuildBody, status: int = 400) -> Rule:
    async def check(probe: Probe) -> None:
        player = await probe.player()
        await probe.expect(path, build(probe, player), status)
        await probe.expect_balance(player, PLAYER_BALANCE_MILLIS)

    return Rule(name, "§1", check)


def bet_with(**fields: Any) -> BuildBody:
    return lambda probe, player: {**probe.bet(player), **fields}


def other_currency(probe: Probe, player: PlayerSession) -> dict[str, Any]:
    return {**probe.bet(player), "currency": "EUR" if player.currency != "EUR" else "USD"}


def lowercase_currency(probe: Probe, player: PlayerSession) -> dict[str, Any]:
    return {**probe.bet(player), "currency": player.currency.lower()}


def without_tx_id(probe: Probe, player: PlayerSession) -> dict[str, Any]:
    bet = probe.bet(player)
    del bet["provider_tx_id"]
    return bet


def oversized(probe: Probe, player: PlayerSession) -> dict[str, Any]:
    # an unknown field is ignored (§1), so only the size is wrong
    return {**probe.bet(player), "padding": "x" * BODY_BYTES_LIMIT}


def win_with(**fields: Any) -> BuildBody:
    return lambda probe, player: {**probe.win(player, 1_000), **fields}


RULES.extend(
    [
        bad_input_rule("bet_with_float_amount_is_400", WITHDRAW_PATH, bet_with(amount=10.0)),
        bad_input_rule("bet_with_string_amount_is_400", WITHDRAW_PATH, bet_with(amount="1000")),
        bad_input_rule("bet_with_boolean_amount_is_400", WITHDRAW_PATH, bet_with(amount=True)),
        bad_input_rule("bet_with_negative_amount_is_400", WITHDRAW_PATH, bet_with(amount=-1_000)),
        bad_input_rule(
            "bet_with_amount_over_10_pow_15_is_400",
            WITHDRAW_PATH,
            bet_with(amount=AMOUNT_MILLIS_LIMIT + 1),
        ),
        bad_input_rule("bet_with_lowercase_currency_is_400", WITHDRAW_PATH, lowercase_currency),
        bad_input_rule("bet_in_another_currency_is_400", WITHDRAW_PATH, other_currency),
        bad_input_rule("bet_without_provider_tx_id_is_400", WITHDRAW_PATH, without_tx_id),
        bad_input_rule(
            "bet_with_empty_provider_tx_id_is_400", WITHDRAW_PATH, bet_with(provider_tx_id="")
        ),
        bad_input_rule(
            "bet_with_overlong_round_id_is_400",
            WITHDRAW_PATH,
            bet_with(round_id="r" * (IDENTIFIER_CHARS_LIMIT + 1)),
        ),
        bad_input_rule(
            "malformed_json_is_400", WITHDRAW_PATH, lambda probe, player: b'{"user_id": "x",'
        ),
        bad_input_rule("json_array_body_is_400", WITHDRAW_PATH, lambda probe, player: b"[]"),
        bad_input_rule("win_with_float_amount_is_400", DEPOSIT_PATH, win_with(amount=1_000.0)),
        bad_input_rule("win_with_negative_amount_is_400", DEPOSIT_PATH, win_with(amount=-1)),
        bad_input_rule("body_over_64_kib_is_413", WITHDRAW_PATH, oversized, status=413),
    ]
)


@rule("§1")
async def unknown_fields_are_ignored(probe: Probe) -> None:
    player = await probe.player()
    bet = {**probe.bet(player), "provider_extension": {"jackpot": [1, 2]}}
    await probe.expect_money(WITHDRAW_PATH, bet, player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)


@rule("§1")
async def integer_round_id_is_accepted(probe: Probe) -> None:
    player = await probe.player()
    bet = {**probe.bet(player), "round_id": 4242}
    await probe.expect_money(WITHDRAW_PATH, bet, player, PLAYER_BALANCE_MILLIS - STAKE_MILLIS)


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleResult:
    name: str
    section: str
    passed: bool
    reason: str = ""

    def line(self) -> str:
        verdict = f"PASS  {self.section:<3} {self.name}"
        return verdict if self.passed else f"FAIL  {self.section:<3} {self.name}: {self.reason}"


@dataclass
class ConformanceReport:
    results: list[RuleResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failed(self) -> list[RuleResult]:
        return [result for result in self.results if not result.passed]

    def summary(self) -> str:
        failed = len(self.failed)
        return f"{len(self.results) - failed} passed, {failed} failed, {len(self.results)} rules"


def select_rules(patterns: tuple[str, ...] = ()) -> list[Rule]:
    """The rules whose name matches a pattern (all without patterns), in protocol order."""
    in_order = sorted(RULES, key=lambda r: r.section)  # stable: file order within a section
    if not patterns:
        return in_order
    return [r for r in in_order if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


async def run_rule(target: Rule, probe: Probe) -> RuleResult:
    try:
        await asyncio.wait_for(target.check(probe), RULE_TIMEOUT_SECONDS)
    except RuleFailed as exc:
        return RuleResult(target.name, target.section, False, str(exc))
    except TimeoutError:
        return RuleResult(target.name, target.section, False, f"ran over {RULE_TIMEOUT_SECONDS}s")
    except Exception as exc:  # a rule reports; it never ends the run
        return RuleResult(target.name, target.section, False, f"{type(exc).__name__}: {exc}")
    return RuleResult(target.name, target.section, True)


async def run_conformance(
    config: ConformanceConfig, on_result: Callable[[RuleResult], None] | None = None
) -> ConformanceReport:
    """Run the selected rules one after another; `on_result` sees each result as it comes."""
    if not 1 <= config.duplicate_copies <= DUPLICATE_COPIES_MAX:
        raise ValueError(f"duplicate_copies must be within 1..{DUPLICATE_COPIES_MAX}")
    report = ConformanceReport()
    async with ProviderClient(
        config.wallet_url,
        config.public_key,
        config.secret,
        retry=NO_RETRY,  # a 5xx is an answer to judge, not to hide behind a retry
        timeout_seconds=config.timeout_seconds,
    ) as client:
        probe = Probe(client, config)
        for selected in select_rules(config.rule_patterns):
            result = await run_rule(selected, probe)
            report.results.append(result)
            if on_result is not None:
                on_result(result)
    return report


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_wallet_arguments(parser)
    add_admin_arguments(parser)
    parser.add_argument(
        "--player-hook",
        help="command creating a test player instead of the admin API: gets currency and balance"
        " (millis) as arguments and as CONFORMANCE_CURRENCY / CONFORMANCE_BALANCE_MILLIS, prints"
        ' {"user_id": ..., "session_token": ...}',
    )
    parser.add_argument("--currency", default="USD", help="test players' currency (default USD)")
    parser.add_argument("--operator-id", default="operator", help="our operator id (CLOSE_ROUND)")
    parser.add_argument(
        "--copies",
        type=int,
        default=DUPLICATE_COPIES_DEFAULT,
        help=f"concurrent copies of one call (default {DUPLICATE_COPIES_DEFAULT})",
    )
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only the rules whose name matches (shell pattern; repeatable)",
    )


def player_source(args: argparse.Namespace) -> PlayerSource:
    if bool(args.player_hook) == bool(args.admin_url):
        raise ValueError("give exactly one of --admin-url and --player-hook")
    if args.player_hook:
        return PlayerHook(args.player_hook)
    return OperatorAdmin(args.admin_url, args.admin_token, f"cf-{secrets.token_hex(4)}")


async def check_wallet(args: argparse.Namespace) -> int:
    currency = args.currency
    if not (len(currency) == 3 and currency.isascii() and currency.isupper()):
        raise ValueError("--currency must be 3 upper-case letters")
    patterns = tuple(args.rule)
    if not select_rules(patterns):
        raise ValueError(f"no rule matches {', '.join(patterns)}")
    players = player_source(args)
    config = ConformanceConfig(
        wallet_url=args.url,
        public_key=args.public_key,
        secret=args.secret,
        players=players,
        currency=currency,
        operator_id=args.operator_id,
        duplicate_copies=args.copies,
        timeout_seconds=args.timeout_seconds,
        rule_patterns=patterns,
    )
    try:
        report = await run_conformance(config, on_result=lambda r: print(r.line(), flush=True))
    finally:
        if isinstance(players, OperatorAdmin):
            await players.close()
    print(report.summary())
    return 0 if report.passed else 1


def run(args: argparse.Namespace) -> int:
    """`wallet-gateway conformance`: 0 when every rule passes, 1 on any failure, 2 on bad usage."""
    try:
        return asyncio.run(check_wallet(args))
    except ValueError as exc:
        print(f"conformance: error: {exc}", file=sys.stderr)
        return 2
