"""§6 money rules: rollbacks of unknown, won, rolled-back or foreign bets, second wins, and
unknown players."""

from provider.client import DEPOSIT_PATH, WITHDRAW_PATH
from provider.conformance.probe import PLAYER_BALANCE_MILLIS, STAKE_MILLIS, Probe, rule


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
