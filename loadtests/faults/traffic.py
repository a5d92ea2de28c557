"""Provider-shaped traffic with the provider's retry policy, and the ledger of what it was told.

Each player plays rounds one after the other, as a game does, in the locust mix's proportions
(loadtests/locustfile.py): classic rounds (a BET, then a WIN naming it, 0 for a lost round, or a
ROLL_BACK) and server-driven ones (several bets, per-bet cash-outs or rollbacks, one CLOSE_ROUND
whose aggregates match them); now and then a money call sent twice (the second answer must be
the first, byte for byte) and a balance query. Every attempt is timed; 5xx answers and
attempts without an answer (timeouts, cut connections) are retried with the provider's backoff
(provider.client.PROVIDER_RETRY), re-sending the very same bytes.

The ledger keeps, per money call, the definitive answer (2xx or 4xx: acknowledged) or nothing
(every attempt got a 5xx or no answer: the provider does not know whether it ran). `settle`
replays those unknown calls until each is definitive, as the provider's later retries would:
only then is the money checked (loadtests/faults/checks.py).
"""

import asyncio
import itertools
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from gateway.settings import Settings
from provider.client import (
    BALANCE_PATH,
    CALLBACK_TIMEOUT_SECONDS,
    DEPOSIT_PATH,
    NO_RETRY,
    PROVIDER_RETRY,
    WITHDRAW_PATH,
    CallbackUndelivered,
    OperatorAdmin,
    PlayerSession,
    ProviderClient,
    RetryPolicy,
    balance_body,
    bet_body,
    close_round_body,
    close_round_tx_id,
    encode,
    paid_millis,
    rollback_body,
    win_body,
)

CURRENCY = "USD"
GAME = "aviadrone"
OPENING_BALANCE_MILLIS = 10**12  # no bet is ever refused for want of funds
STAKE_MILLIS_MIN, STAKE_MILLIS_MAX = 100, 5_000
WIN_SHARE = 0.45  # rounds won (the rest lost: a 0 WIN), of those not rolled back
ROLLBACK_SHARE = 0.05
DUPLICATE_SHARE = 0.03  # money calls the provider sends twice
BALANCE_EVERY_ROUNDS = 5
SETTLE_CONCURRENCY = 16
SLOW_ATTEMPT_MS = 100.0  # attempts slower than this are kept with their time, to place them

SERVER_DRIVEN_SHARE = 0.3  # rounds of several bets closed by a CLOSE_ROUND, as in the locust mix
SERVER_DRIVEN_BETS_MAX = 3
COEFFICIENTS = tuple(Decimal(text) for text in ("1.25", "1.5", "2", "2.35", "3.1", "5"))
OPERATOR_ID = Settings().operator_id  # the gateway's default: the suite's stacks keep it

BET, WIN, ROLL_BACK, CLOSE_ROUND, BALANCE = "BET", "WIN", "ROLL_BACK", "CLOSE_ROUND", "BALANCE"


@dataclass
class Call:
    """One logical callback and what the provider learnt of it."""

    kind: str
    path: str
    user_id: str
    body: bytes
    tx: str = ""  # provider_tx_id; "" for a balance query
    effect: int = 0  # millis the balance moves by if it is applied
    round_id: str = ""
    status: int | None = None  # the definitive answer (< 500); None: not acknowledged
    answer: bytes = b""
    acknowledged_at: float = 0.0  # wall clock, seconds
    attempts: int = 0

    @property
    def acknowledged(self) -> bool:
        return self.status is not None

    @property
    def money(self) -> bool:
        return bool(self.tx)

    @property
    def owner(self) -> str:
        """Whose shard holds its record: the player's, or a CLOSE_ROUND's round's."""
        return self.user_id or self.round_id


@dataclass
class TrafficStats:
    calls: int = 0  # logical calls, duplicates included (each is a call the provider sends)
    attempts: int = 0
    retried: int = 0  # attempts after a call's first one
    undelivered: int = 0  # attempts without any HTTP answer
    five_xx: Counter[int] = field(default_factory=Counter)  # attempts answered 5xx, by status
    statuses: Counter[int] = field(default_factory=Counter)  # definitive answers
    slowest_ms: float = 0.0  # the slowest attempt, answered or not
    # attempts slower than SLOW_ATTEMPT_MS: (wall clock at its end, ms, path, status or None)
    slow_attempts: list[tuple[float, float, str, int | None]] = field(default_factory=list)
    duplicates: int = 0
    # money calls whose later answer differed from their first definitive one
    replay_mismatches: list[str] = field(default_factory=list)

    @property
    def five_xx_total(self) -> int:
        return sum(self.five_xx.values())


class Traffic:
    """The provider: players, their rounds, and the ledger (`calls`)."""

    def __init__(
        self,
        url: str,
        public_key: str,
        secret: str,
        *,
        retry: RetryPolicy = PROVIDER_RETRY,
        timeout_seconds: float = CALLBACK_TIMEOUT_SECONDS,
    ) -> None:
        self.public_key, self.secret = public_key, secret
        self.retry = retry
        self.timeout_seconds = timeout_seconds
        self.client = self._client(url)
        self.calls: list[Call] = []
        self.players: list[PlayerSession] = []
        self.opening: dict[str, int] = {}
        self.stats = TrafficStats()
        self.run_id = secrets.token_hex(3)
        self._rounds = itertools.count(1)
        self.operator_id = OPERATOR_ID

    def _client(self, url: str) -> ProviderClient:
        # one attempt per post: the retries are ours, so each attempt is timed and counted
        return ProviderClient(url, self.public_key, self.secret, NO_RETRY, self.timeout_seconds)

    async def close(self) -> None:
        await self.client.close()

    async def add_players(self, admin_url: str, admin_token: str, count: int) -> None:
        async with OperatorAdmin(admin_url, admin_token, f"f-{self.run_id}") as admin:
            for _ in range(count):
                player = await admin.new_player(CURRENCY, OPENING_BALANCE_MILLIS)
                self.players.append(player)
                self.opening[player.user_id] = OPENING_BALANCE_MILLIS

    # --- sending, with the provider's retries ---------------------------------------------------

    async def send(self, call: Call, *, resumed: bool = False) -> None:
        """Until a definitive answer or the policy's last attempt. `resumed`: the call's
        earlier attempts went unanswered, so even the first one here is a retry."""
        for attempt in range(1, self.retry.attempts_max + 1):
            if attempt > 1 or resumed:
                self.stats.retried += 1
            if attempt > 1:
                await asyncio.sleep(self.retry.backoff_seconds(attempt - 1))
            call.attempts += 1
            self.stats.attempts += 1
            started = time.perf_counter()
            try:
                reply = await self.client.post_raw(call.path, call.body, retry=NO_RETRY)
                status, answer = reply.status, reply.body
            except CallbackUndelivered:
                status, answer = None, b""
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.stats.slowest_ms = max(self.stats.slowest_ms, elapsed_ms)
            if elapsed_ms > SLOW_ATTEMPT_MS:
                self.stats.slow_attempts.append((time.time(), elapsed_ms, call.path, status))
            if status is None:
                self.stats.undelivered += 1
            elif status >= 500:
                self.stats.five_xx[status] += 1
            else:
                self._acknowledge(call, status, answer)
                return

    def _acknowledge(self, call: Call, status: int, answer: bytes) -> None:
        if call.acknowledged:
            # a duplicate or a replay: the wallet must answer what it answered first
            if call.money and (status, answer) != (call.status, call.answer):
                self.stats.replay_mismatches.append(call.tx)
            return
        call.status, call.answer = status, answer
        call.acknowledged_at = time.time()
        self.stats.statuses[status] += 1

    async def _new_call(self, call: Call) -> Call:
        self.calls.append(call)
        self.stats.calls += 1
        await self.send(call)
        if call.money and call.acknowledged and random.random() < DUPLICATE_SHARE:
            self.stats.calls += 1
            self.stats.duplicates += 1
            await self.send(call)
        return call

    # --- rounds ---------------------------------------------------------------------------------

    async def play_round(self, player: PlayerSession) -> None:
        """A classic round (a BET, then its WIN, a 0 WIN or a ROLL_BACK) or, as often as the
        locust mix (loadtests/locustfile.py), a server-driven one: several bets, per-bet
        cash-outs or rollbacks, then one CLOSE_ROUND whose aggregates match them."""
        number = next(self._rounds)
        round_id = f"r-{self.run_id}-{number}"
        if random.random() < SERVER_DRIVEN_SHARE:
            await self._server_driven_round(player, number, round_id)
        else:
            await self._classic_round(player, number, round_id)
        if number % BALANCE_EVERY_ROUNDS == 0:
            body = encode(balance_body(user_id=player.user_id, currency=CURRENCY))
            await self._new_call(Call(BALANCE, BALANCE_PATH, player.user_id, body))

    async def _classic_round(self, player: PlayerSession, number: int, round_id: str) -> None:
        bet_tx = f"b-{self.run_id}-{number}"
        stake = random.randint(STAKE_MILLIS_MIN, STAKE_MILLIS_MAX)
        bet = await self._bet(player, bet_tx, round_id, stake)
        if bet.status != 200:  # unknown (settled later) or refused: nothing to settle
            return
        draw = random.random()
        if draw < ROLLBACK_SHARE:
            await self._roll_back(player, f"rb-{self.run_id}-{number}", bet_tx, round_id, stake)
        else:
            won = draw < ROLLBACK_SHARE + WIN_SHARE
            amount = random.randint(stake, 3 * stake) if won else 0
            await self._win(player, f"w-{self.run_id}-{number}", bet_tx, round_id, amount)

    async def _server_driven_round(self, player: PlayerSession, number: int, round_id: str) -> None:
        stakes: list[int] = []
        coefficients: list[Decimal] = []
        for index in range(random.randint(1, SERVER_DRIVEN_BETS_MAX)):
            bet_tx = f"b-{self.run_id}-{number}-{index}"
            stake = random.randint(STAKE_MILLIS_MIN, STAKE_MILLIS_MAX)
            if (await self._bet(player, bet_tx, round_id, stake)).status != 200:
                return  # the provider closes a round once every callback of it is settled
            if random.random() < ROLLBACK_SHARE:
                tx = f"rb-{self.run_id}-{number}-{index}"
                settled = await self._roll_back(player, tx, bet_tx, round_id, stake)
                if settled.status != 200:
                    return
                continue  # a voided bet is not in the provider's aggregate
            coefficient = Decimal(0)
            if random.random() < WIN_SHARE:
                coefficient = random.choice(COEFFICIENTS)
                tx = f"w-{self.run_id}-{number}-{index}"
                paid = paid_millis(stake, coefficient)
                if (await self._win(player, tx, bet_tx, round_id, paid)).status != 200:
                    return
            stakes.append(stake)
            coefficients.append(coefficient)
        body = close_round_body(
            round_id=round_id,
            operator_id=self.operator_id,
            game=GAME,
            stakes_millis=stakes,
            coefficients=coefficients,
        )
        tx = close_round_tx_id(round_id, self.operator_id)
        # no player: its record lives in the shard of its round
        await self._new_call(Call(CLOSE_ROUND, DEPOSIT_PATH, "", encode(body), tx, 0, round_id))

    async def _bet(self, player: PlayerSession, tx: str, round_id: str, stake: int) -> Call:
        body = bet_body(
            user_id=player.user_id,
            session_token=player.session_token,
            amount_millis=stake,
            currency=CURRENCY,
            provider_tx_id=tx,
            round_id=round_id,
            game=GAME,
        )
        return await self._new_call(
            Call(BET, WITHDRAW_PATH, player.user_id, encode(body), tx, -stake, round_id)
        )

    async def _win(
        self, player: PlayerSession, tx: str, bet_tx: str, round_id: str, amount: int
    ) -> Call:
        body = win_body(
            user_id=player.user_id,
            amount_millis=amount,
            currency=CURRENCY,
            provider_tx_id=tx,
            round_id=round_id,
            game=GAME,
            bet_tx_id=bet_tx,
        )
        return await self._new_call(
            Call(WIN, DEPOSIT_PATH, player.user_id, encode(body), tx, amount, round_id)
        )

    async def _roll_back(
        self, player: PlayerSession, tx: str, bet_tx: str, round_id: str, stake: int
    ) -> Call:
        body = rollback_body(
            user_id=player.user_id,
            provider_tx_id=tx,
            bet_tx_id=bet_tx,
            round_id=round_id,
            game=GAME,
        )
        return await self._new_call(
            Call(ROLL_BACK, DEPOSIT_PATH, player.user_id, encode(body), tx, stake, round_id)
        )

    async def run(
        self,
        *,
        seconds: float,
        calls_max: int,
        concurrency: int,
        rounds_per_second: float = 0.0,
    ) -> None:
        """Each player (one per concurrent task) plays rounds until `seconds` passed or
        `calls_max` calls were sent; `rounds_per_second` > 0 paces the whole at that rate."""
        assert len(self.players) >= concurrency, "one player per concurrent task"
        stop_at = time.monotonic() + seconds
        interval = concurrency / rounds_per_second if rounds_per_second > 0 else 0.0

        async def play(player: PlayerSession) -> None:
            next_round = time.monotonic() + random.uniform(0, interval)
            while time.monotonic() < stop_at and self.stats.calls < calls_max:
                if interval:
                    await asyncio.sleep(max(0.0, next_round - time.monotonic()))
                    next_round += interval
                await self.play_round(player)

        await asyncio.gather(*(play(player) for player in self.players[:concurrency]))

    # --- after the faults -----------------------------------------------------------------------

    def unknown(self) -> list[Call]:
        return [call for call in self.calls if call.money and not call.acknowledged]

    async def settle(self, seconds_max: float) -> int:
        """Replay every money call still unknown until it is acknowledged (or `seconds_max`
        passed): the provider's retries go on until the wallet answers. -> calls still unknown."""
        deadline = time.monotonic() + seconds_max
        gate = asyncio.Semaphore(SETTLE_CONCURRENCY)

        async def settle_one(call: Call) -> None:
            async with gate:
                await self.send(call, resumed=True)

        while (pending := self.unknown()) and time.monotonic() < deadline:
            await asyncio.gather(*(settle_one(call) for call in pending))
        return len(self.unknown())

    async def replay_acknowledged(self, url: str, count_max: int) -> int:
        """Send up to `count_max` acknowledged money calls once more, straight to `url`: each
        must get its first answer again, byte for byte (a mismatch is counted in the stats).
        -> the calls replayed."""
        acknowledged = [call for call in self.calls if call.money and call.acknowledged]
        chosen = random.sample(acknowledged, min(count_max, len(acknowledged)))
        direct = Traffic(url, self.public_key, self.secret, retry=self.retry)
        direct.stats = self.stats  # the mismatches (and attempts) count in this run's figures
        gate = asyncio.Semaphore(SETTLE_CONCURRENCY)

        async def replay(call: Call) -> None:
            async with gate:
                await direct.send(call)

        try:
            await asyncio.gather(*(replay(call) for call in chosen))
        finally:
            await direct.close()
        return len(chosen)
