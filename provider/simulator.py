"""Provider simulator (`wallet-gateway simulate`): plays the game provider against any wallet.

Players arrive through the provider's launch API (`provider.launch_api`). The simulator then
plays classic rounds (BET, then WIN or a loss) and server-driven rounds (several bets, a WIN or
ROLL_BACK per bet, then one CLOSE_ROUND) with the real provider's retries, and keeps its own
ledger of what each player's balance must be, checked against the wallet at the end.
"""

import argparse
import asyncio
import itertools
import random
import secrets
import sys
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp

from provider.client import (
    BALANCE_PATH,
    CALLBACK_TIMEOUT_SECONDS,
    DEPOSIT_PATH,
    PROVIDER_RETRY,
    WITHDRAW_PATH,
    OperatorAdmin,
    ProviderClient,
    RetryPolicy,
    add_admin_arguments,
    add_wallet_arguments,
    balance_body,
    bet_body,
    close_round_body,
    paid_millis,
    require_wallet_arguments,
    rollback_body,
    win_body,
)
from provider.launch_api import (
    CLASSIC_GAME,
    LAUNCH_API_PORT_DEFAULT,
    PLAYERS_MAX,
    SERVER_DRIVEN_GAME,
    LaunchApi,
    PlayerAccount,
    check_within,
)

STAKES_MILLIS = (100, 200, 500, 1_000, 2_000, 5_000)
COEFFICIENT_HUNDREDTHS_MIN = 101  # a cash-out pays at least 1.01 times the stake
COEFFICIENT_HUNDREDTHS_MAX = 1_000
ROUNDS_MAX = 1_000_000
CONCURRENCY_MAX = 256
DURATION_SECONDS_MAX = 24 * 3600
BALANCE_MILLIS_MAX = 10**15
SERVER_ROUND_PLAYERS_MAX = 5
BETS_PER_PLAYER_MAX = 2  # aviadrone's two bet panels
CASH_OUT_SHARE = 0.5
ROLLBACK_SHARE = 0.1
FREE_BET_SHARE = 0.1
SILENT_LOSS_SHARE = 0.5  # a lost classic round: half report WIN 0, half report nothing
# CLOSE_ROUND attribute formats, (as_list, as_text), taken in turn so a run exercises all four
CLOSE_ROUND_FORMATS = ((False, False), (True, True), (False, True), (True, False))


@dataclass(frozen=True, slots=True)
class PlacedBet:
    account: PlayerAccount
    round_id: str
    game: str
    number: int  # the bet's position in its round; names its tx ids
    stake_millis: int
    action: str  # BET | FREE_BET

    @property
    def tx_id(self) -> str:
        return f"{self.round_id}-bet-{self.number}"


@dataclass
class SimulatorConfig:
    wallet_url: str
    public_key: str
    secret: str
    operator_id: str = "operator"
    retry: RetryPolicy = PROVIDER_RETRY
    timeout_seconds: float = CALLBACK_TIMEOUT_SECONDS
    seed: int | None = None


@dataclass
class SimulationSummary:
    players: int = 0
    rounds_classic: int = 0
    rounds_server_driven: int = 0
    rounds_closed: int = 0
    rounds_left_open: int = 0  # a callback was never acknowledged, so no CLOSE_ROUND was sent
    rounds_skipped: int = 0  # nobody could afford a stake
    bets_taken: int = 0
    bets_refused: int = 0
    bets_voided: int = 0  # never confirmed, so rolled back
    bets_rolled_back: int = 0  # voided by the round (server-driven games)
    settlements_refused: int = 0
    calls: int = 0
    attempts: int = 0
    undelivered: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    balances_matching: int = 0
    # user_id -> (the ledger's balance, the wallet's; None when it did not say)
    balance_mismatches: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    uncertain_players: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return self.attempts - self.calls

    @property
    def clean(self) -> bool:
        return not (self.balance_mismatches or self.uncertain_players or self.rounds_left_open)

    def report(self) -> str:
        statuses = "  ".join(f"{key}={count}" for key, count in sorted(self.statuses.items()))
        lines = [
            f"players  {self.players}",
            f"rounds   {self.rounds_classic} classic, {self.rounds_server_driven} server-driven"
            f" ({self.rounds_closed} closed, {self.rounds_left_open} left open,"
            f" {self.rounds_skipped} skipped)",
            f"bets     {self.bets_taken} taken, {self.bets_refused} refused,"
            f" {self.bets_voided} voided unconfirmed, {self.bets_rolled_back} rolled back;"
            f" {self.settlements_refused} settlements refused",
            f"calls    {self.calls} ({self.attempts} attempts, {self.retries} retries,"
            f" {self.undelivered} undelivered)",
            f"statuses {statuses}",
            f"balances {self.balances_matching} match the ledger,"
            f" {len(self.balance_mismatches)} differ, {len(self.uncertain_players)} unknown",
        ]
        lines += [
            f"  {user_id}: ledger {expected}, wallet {actual}"
            for user_id, (expected, actual) in sorted(self.balance_mismatches.items())
        ]
        lines.append("result   " + ("OK" if self.clean else "NOT CLEAN"))
        return "\n".join(lines)


class ProviderSimulator:
    """Plays rounds on the accounts its launch API opened, one client for every callback."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.client = ProviderClient(
            config.wallet_url,
            config.public_key,
            config.secret,
            retry=config.retry,
            timeout_seconds=config.timeout_seconds,
        )
        self.launch_api = LaunchApi(self.client, config.operator_id)
        self._random = random.Random(config.seed)
        self._run_id = secrets.token_hex(4)  # round ids never collide across runs
        self._round_numbers = itertools.count(1)
        self._close_round_formats = itertools.cycle(CLOSE_ROUND_FORMATS)

    async def __aenter__(self) -> "ProviderSimulator":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.launch_api.close()
        await self.client.close()

    def expected_balances(self) -> dict[str, int]:
        return {
            user_id: account.balance_millis for user_id, account in self.launch_api.players.items()
        }

    async def play(
        self, rounds: int, duration_seconds: float, concurrency: int = 4, verify: bool = True
    ) -> SimulationSummary:
        """Play up to `rounds` rounds, alternately classic and server-driven, `concurrency` at
        a time, starting none after `duration_seconds`; then check every balance."""
        check_within("rounds", rounds, ROUNDS_MAX)
        check_within("duration_seconds", duration_seconds, DURATION_SECONDS_MAX)
        check_within("concurrency", concurrency, CONCURRENCY_MAX, minimum=1)
        accounts = list(self.launch_api.players.values())
        if not accounts:
            raise ValueError("no player has launched a game yet")
        summary = SimulationSummary(players=len(accounts))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration_seconds
        numbers = iter(range(rounds))

        async def play_rounds() -> None:
            for number in numbers:  # shared by the tasks: each round is played once
                if loop.time() >= deadline:
                    return
                if number % 2 == 0:
                    account = accounts[number // 2 % len(accounts)]
                    await self._play_classic_round(account, summary)
                else:
                    await self._play_server_driven_round(accounts, summary)

        await asyncio.gather(*(play_rounds() for _ in range(concurrency)))
        if verify:
            await self.verify_balances(summary)
        stats = self.client.stats
        summary.calls, summary.attempts = stats.calls, stats.attempts
        summary.undelivered, summary.statuses = stats.undelivered, dict(stats.statuses)
        return summary

    async def verify_balances(self, summary: SimulationSummary) -> None:
        """Ask the wallet (/balance) for every player whose balance the ledger knows."""
        for account in self.launch_api.players.values():
            if account.uncertain:
                summary.uncertain_players.append(account.user_id)
                continue
            reply = await self.client.deliver(BALANCE_PATH, balance_body(user_id=account.user_id))
            data = reply.data if reply is not None else None
            actual = data.get("amount") if isinstance(data, dict) else None
            if actual == account.balance_millis:
                summary.balances_matching += 1
            else:
                summary.balance_mismatches[account.user_id] = (account.balance_millis, actual)

    def _new_round_id(self) -> str:
        return f"sim-{self._run_id}-{next(self._round_numbers)}"

    def _stake_for(self, account: PlayerAccount, free: bool) -> int | None:
        # a free bet is the provider's gift: only the maxbet bounds it, not the balance
        limit = account.maxbet_millis
        if not free:
            limit = min(limit, account.balance_millis)
        affordable = [stake for stake in STAKES_MILLIS if stake <= limit]
        return self._random.choice(affordable) if affordable else None

    def _cash_out_coefficient(self) -> Decimal:
        """The multiplier a bet cashed out at; 0 = lost."""
        if self._random.random() >= CASH_OUT_SHARE:
            return Decimal(0)
        hundredths = self._random.randint(COEFFICIENT_HUNDREDTHS_MIN, COEFFICIENT_HUNDREDTHS_MAX)
        return Decimal(hundredths).scaleb(-2)

    async def _play_classic_round(self, account: PlayerAccount, summary: SimulationSummary) -> None:
        action = "FREE_BET" if self._random.random() < FREE_BET_SHARE else "BET"
        stake = self._stake_for(account, free=action == "FREE_BET")
        if stake is None:
            summary.rounds_skipped += 1
            return
        round_id = self._new_round_id()
        summary.rounds_classic += 1
        bet, _ = await self._place_bet(
            PlacedBet(account, round_id, CLASSIC_GAME, 1, stake, action), summary
        )
        if bet is None:
            return
        coefficient = self._cash_out_coefficient()
        if coefficient == 0 and self._random.random() < SILENT_LOSS_SHARE:
            return  # a loss the provider does not report
        await self._settle(bet, coefficient, summary)

    async def _play_server_driven_round(
        self, accounts: list[PlayerAccount], summary: SimulationSummary
    ) -> None:
        round_id = self._new_round_id()
        seated = self._random.sample(accounts, min(SERVER_ROUND_PLAYERS_MAX, len(accounts)))
        planned = []
        for account in seated:
            for _ in range(self._random.randint(1, BETS_PER_PLAYER_MAX)):
                stake = self._stake_for(account, free=False)
                if stake is not None:
                    bet_number = len(planned) + 1
                    planned.append(
                        PlacedBet(account, round_id, SERVER_DRIVEN_GAME, bet_number, stake, "BET")
                    )
        if not planned:
            summary.rounds_skipped += 1
            return
        summary.rounds_server_driven += 1
        placed = await asyncio.gather(*(self._place_bet(bet, summary) for bet in planned))
        bets = [bet for bet, _ in placed if bet is not None]
        # None = the round voids the bet (ROLL_BACK), else its cash-out multiplier (0 = lost)
        fates = [
            None if self._random.random() < ROLLBACK_SHARE else self._cash_out_coefficient()
            for _ in bets
        ]
        settled = await asyncio.gather(
            *(self._settle(bet, fate, summary) for bet, fate in zip(bets, fates, strict=True))
        )
        if not all(acknowledged for _, acknowledged in placed) or not all(settled):
            # CLOSE_ROUND only after every per-bet callback was acknowledged (docs/protocol.md §4)
            summary.rounds_left_open += 1
            return
        closing = [
            (bet.stake_millis, fate)
            for bet, fate in zip(bets, fates, strict=True)
            if fate is not None
        ]
        as_list, as_text = next(self._close_round_formats)
        reply = await self.client.deliver(
            DEPOSIT_PATH,
            close_round_body(
                round_id=round_id,
                operator_id=self.config.operator_id,
                game=SERVER_DRIVEN_GAME,
                stakes_millis=[stake for stake, _ in closing],
                coefficients=[coefficient for _, coefficient in closing],
                as_list=as_list,
                as_text=as_text,
            ),
        )
        if reply is not None and reply.acknowledged:
            summary.rounds_closed += 1
        else:
            summary.rounds_left_open += 1

    async def _place_bet(
        self, bet: PlacedBet, summary: SimulationSummary
    ) -> tuple[PlacedBet | None, bool]:
        """-> (the bet if the wallet took it, whether its fate got a definitive answer)."""
        account = bet.account
        reply = await self.client.deliver(
            WITHDRAW_PATH,
            bet_body(
                user_id=account.user_id,
                session_token=account.session_token,
                amount_millis=bet.stake_millis,
                currency=account.currency,
                provider_tx_id=bet.tx_id,
                round_id=bet.round_id,
                game=bet.game,
                action=bet.action,
            ),
        )
        if reply is not None and reply.acknowledged:
            if reply.status != 200:
                summary.bets_refused += 1
                return None, True
            if bet.action == "BET":
                account.balance_millis -= bet.stake_millis
            summary.bets_taken += 1
            return bet, True
        # Never confirmed: the provider voids the bet, which refunds it if it did run.
        summary.bets_voided += 1
        void = await self.client.deliver(
            DEPOSIT_PATH,
            rollback_body(
                user_id=account.user_id,
                provider_tx_id=f"{bet.round_id}-void-{bet.number}",
                bet_tx_id=bet.tx_id,
                round_id=bet.round_id,
                game=bet.game,
            ),
        )
        if void is None or void.status != 200:
            account.uncertain = True
        return None, void is not None and void.acknowledged

    async def _settle(
        self, bet: PlacedBet, coefficient: Decimal | None, summary: SimulationSummary
    ) -> bool:
        """A WIN at `coefficient` (0 = lost), or a ROLL_BACK when None; -> acknowledged."""
        account = bet.account
        if coefficient is None:
            credit_millis = bet.stake_millis if bet.action == "BET" else 0
            payload = rollback_body(
                user_id=account.user_id,
                provider_tx_id=f"{bet.round_id}-rb-{bet.number}",
                bet_tx_id=bet.tx_id,
                round_id=bet.round_id,
                game=bet.game,
                amount_millis=bet.stake_millis,
                currency=account.currency,
            )
        else:
            credit_millis = paid_millis(bet.stake_millis, coefficient)
            payload = win_body(
                user_id=account.user_id,
                session_token=account.session_token,
                amount_millis=credit_millis,
                currency=account.currency,
                provider_tx_id=f"{bet.round_id}-win-{bet.number}",
                bet_tx_id=bet.tx_id,
                round_id=bet.round_id,
                game=bet.game,
                action="FREE_BET_WIN" if bet.action == "FREE_BET" else "WIN",
            )
        reply = await self.client.deliver(DEPOSIT_PATH, payload)
        if reply is None or not reply.acknowledged:
            account.uncertain = True
            return False
        if reply.status == 200:
            account.balance_millis += credit_millis
            if coefficient is None:
                summary.bets_rolled_back += 1
        else:
            summary.settlements_refused += 1
        return True


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_wallet_arguments(parser)
    add_admin_arguments(parser)
    parser.add_argument("--operator-id", default="operator", help="our operator id (CLOSE_ROUND)")
    parser.add_argument("--listen-host", default="127.0.0.1", help="launch API address")
    parser.add_argument(
        "--listen-port",
        type=int,
        default=LAUNCH_API_PORT_DEFAULT,
        help="launch API port; the wallet's PROVIDER_BASE_URL must point here"
        f" (default {LAUNCH_API_PORT_DEFAULT}, where `wallet-gateway up` points it)",
    )
    parser.add_argument("--players", type=int, default=4, help="players to launch (default 4)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds to play (default 40)")
    parser.add_argument(
        "--duration-seconds",
        type=float,
        default=60.0,
        help="no launch awaited and no round started after this (default 60)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="rounds at once (default 4)")
    parser.add_argument(
        "--currency", default="USD", help="new players' currency (with --admin-url)"
    )
    parser.add_argument(
        "--balance-millis",
        type=int,
        default=100_000,
        help="new players' balance (with --admin-url; default 100000)",
    )
    retry = PROVIDER_RETRY
    parser.add_argument(
        "--attempts-max",
        type=int,
        default=retry.attempts_max,
        help=f"tries per callback on 5xx or timeout, never on 4xx (default {retry.attempts_max})",
    )
    parser.add_argument(
        "--backoff-first-seconds",
        type=float,
        default=retry.backoff_first_seconds,
        help=f"delay before the first retry, then doubling (default {retry.backoff_first_seconds})",
    )
    parser.add_argument(
        "--backoff-max-seconds",
        type=float,
        default=retry.backoff_max_seconds,
        help=f"longest delay between retries (default {retry.backoff_max_seconds})",
    )
    parser.add_argument("--seed", type=int, help="random seed, for a repeatable run")


async def simulate(args: argparse.Namespace) -> int:
    require_wallet_arguments(args)
    check_within("players", args.players, PLAYERS_MAX, minimum=1)
    check_within("balance_millis", args.balance_millis, BALANCE_MILLIS_MAX)
    config = SimulatorConfig(
        wallet_url=args.url,
        public_key=args.public_key,
        secret=args.secret,
        operator_id=args.operator_id,
        retry=RetryPolicy(args.attempts_max, args.backoff_first_seconds, args.backoff_max_seconds),
        timeout_seconds=args.timeout_seconds,
        seed=args.seed,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.duration_seconds
    async with ProviderSimulator(config) as simulator:
        url = await simulator.launch_api.start_server(args.listen_host, args.listen_port)
        print(f"provider launch API on {url} (the wallet's PROVIDER_BASE_URL)", flush=True)
        if args.admin_url:
            async with OperatorAdmin(
                args.admin_url, args.admin_token, f"sim-{secrets.token_hex(4)}"
            ) as admin:
                await simulator.launch_api.launch_players(
                    admin, args.players, args.currency, args.balance_millis
                )
        else:
            print(f"waiting for {args.players} launches", flush=True)
            await simulator.launch_api.wait_for_players(args.players, args.duration_seconds)
        if not simulator.launch_api.players:
            print("no player launched a game", file=sys.stderr)
            return 1
        remaining_seconds = max(0.0, deadline - loop.time())
        summary = await simulator.play(args.rounds, remaining_seconds, args.concurrency)
    print(summary.report())
    return 0 if summary.clean else 1


def run(args: argparse.Namespace) -> int:
    """`wallet-gateway simulate`: 0 when every balance matches the ledger, 1 otherwise."""
    try:
        return asyncio.run(simulate(args))
    except (ValueError, RuntimeError, OSError, aiohttp.ClientError) as exc:  # AdminError too
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
