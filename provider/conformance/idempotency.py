"""§5 idempotency: a replay gets the original answer byte for byte and moves money once; an id
reused with other content is a 409."""

import asyncio

from provider.client import DEPOSIT_PATH, WITHDRAW_PATH, CallbackReply, close_round_body, encode
from provider.conformance.probe import (
    GAME,
    PLAYER_BALANCE_MILLIS,
    STAKE_MILLIS,
    Probe,
    excerpt,
    require,
    rule,
)


def require_replay(first: CallbackReply, again: CallbackReply) -> None:
    require(
        (again.status, again.body) == (first.status, first.body),
        f"replay answered {again.status} {excerpt(again.body)}"
        f" instead of {first.status} {excerpt(first.body)}",
    )


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
