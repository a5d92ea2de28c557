"""§4 endpoints: what /auth, /withdraw, /deposit and /balance answer and move, CLOSE_ROUND in
its four attribute formats, and the CLOSE_ROUND bodies refused."""

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from gateway.schemas import COEFFICIENTS_ATTRIBUTE, STAKES_ATTRIBUTE
from provider.client import (
    AUTH_PATH,
    BALANCE_PATH,
    DEPOSIT_PATH,
    WITHDRAW_PATH,
    PlayerSession,
    auth_body,
    balance_body,
    close_round_body,
)
from provider.conformance.probe import (
    GAME,
    PLAYER_BALANCE_MILLIS,
    RULES,
    STAKE_MILLIS,
    Probe,
    Rule,
    require,
    rule,
)


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
