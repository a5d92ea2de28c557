"""§1 transport: bad input is a 400 (413 for size) and moves nothing; unknown fields and
integer ids are accepted."""

from collections.abc import Callable
from typing import Any

from provider.client import DEPOSIT_PATH, WITHDRAW_PATH, PlayerSession
from provider.conformance.probe import PLAYER_BALANCE_MILLIS, RULES, STAKE_MILLIS, Probe, Rule, rule

# The protocol's limits (docs/protocol.md §1), stated here rather than imported from our gateway:
# the kit judges any wallet, ours included, against the contract.
BODY_BYTES_LIMIT = 64 * 1024
AMOUNT_MILLIS_LIMIT = 10**15
IDENTIFIER_CHARS_LIMIT = 128

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
