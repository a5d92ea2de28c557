"""Pre-signed new bets, each with a provider_tx_id never used before, built and signed ahead of
the measurement so that the load tool spends nothing on them:
- for wrk (loadtests/wrk_bets.lua): one file per wrk thread, `PREFIX.0`, `PREFIX.1`, ...;
- for Redis directly: each bet's Redis commands (one Redis: its claim-and-withdraw script; a
  cluster: its claim, its round's close read, the withdraw script, the session index's refresh),
  built by the gateway's own `Wallet.debit_bet` (recorded instead of sent), for the bench's
  Redis ceiling.

python -m loadtests.wrk_bodies --admin-url http://127.0.0.1:8081 --admin-token T \\
    --public-key PUB --secret SECRET --players 200 --bets 200000 --threads 2 --out bets
"""

import argparse
import asyncio
import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from gateway.redis_connection import is_cluster_url
from gateway.schemas import BetRequest
from gateway.settings import Settings
from gateway.signing import sign_body
from gateway.wallet import Wallet
from provider.client import OperatorAdmin, PlayerSession, bet_body, encode

# each player can pay 10^12 bets of the stake: no phase runs out of money
BALANCE_MILLIS = 10**14
STAKE_MILLIS = 100
CURRENCY = "USD"
GAME = "aviadrone"
TX_ID_PREFIX = "wrk-"  # every bet's provider_tx_id: the bench finds their records by it
# the answers to a new bet, for the recording wallet: its claim's (the id is new), its script's
# (outcome, balance, operator tx id, currency, replayed) and its plain commands' (an open round)
CLAIMED_REPLY = ["OK", ""]
RECORDED_REPLY = ["OK", 0, "", CURRENCY, 0]
# one command as the wallet sends it: its script (None: a plain command) and its words
Command = tuple[AsyncScript | None, tuple[Any, ...]]


async def new_players(admin_url: str, admin_token: str, count: int) -> list[PlayerSession]:
    """Players with an open session, created through the admin API."""
    async with OperatorAdmin(admin_url, admin_token) as admin:
        return [await admin.new_player(CURRENCY, BALANCE_MILLIS) for _ in range(count)]


class NewBets:
    """Bets of these players, dealt round robin; every one has a tx id of its own."""

    def __init__(self, players: list[PlayerSession], public_key: str, secret: str) -> None:
        self.players = players
        self.public_key = public_key
        self.secret = secret
        self._run = secrets.token_hex(4)
        self._numbers = itertools.count()

    def bodies(self, count: int) -> Iterator[bytes]:
        for number in itertools.islice(self._numbers, count):
            player = self.players[number % len(self.players)]
            tx_id = f"{TX_ID_PREFIX}{self._run}-{number}"
            yield encode(
                bet_body(
                    user_id=player.user_id,
                    session_token=player.session_token,
                    amount_millis=STAKE_MILLIS,
                    currency=CURRENCY,
                    provider_tx_id=tx_id,
                    round_id=tx_id,
                    game=GAME,
                )
            )

    def write_wrk_files(self, count: int, threads: int, prefix: Path) -> None:
        """`count` bets, signed, dealt over `threads` files (thread k reads `prefix.k`)."""
        files = [Path(f"{prefix}.{thread}").open("w") for thread in range(threads)]
        try:
            for number, body in enumerate(self.bodies(count)):
                files[number % threads].write(
                    f"{sign_body(self.secret, body)}\t{self.public_key}\t{body.decode()}\n"
                )
        finally:
            for file in files:
                file.close()


class RecordingCalls:
    """Stands in for the wallet's coalesced calls (gateway/coalesced_scripts.py): records each
    command instead of sending it, and answers as Redis would to a new bet."""

    def __init__(self, claim: AsyncScript) -> None:
        self._claim = claim
        self.recorded: list[Command] = []

    def call(self, script: AsyncScript, keys: list[str], args: tuple[Any, ...]) -> Any:
        self.recorded.append((script, ("EVALSHA", script.sha, len(keys), *keys, *args)))
        return _answered(CLAIMED_REPLY if script is self._claim else RECORDED_REPLY)

    def command(self, *command: Any) -> Any:
        self.recorded.append((None, command))
        return _answered(None)


def _answered(reply: Any) -> "asyncio.Future[Any]":
    future = asyncio.get_running_loop().create_future()
    future.set_result(reply)
    return future


async def bet_commands(bodies: Iterator[bytes], settings: Settings) -> list[list[Command]]:
    """Each body's Redis commands, in the order the gateway sends them."""
    wallet = Wallet(Redis(), settings)  # never connected: nothing is sent
    # as the gateway would on that Redis: one script on one Redis, two steps on a cluster
    wallet.claims_in_the_script = not is_cluster_url(settings.redis_url)
    calls = RecordingCalls(wallet.scripts.claim)
    wallet._script_calls = calls  # type: ignore[assignment]
    per_bet = []
    for body in bodies:
        await wallet.debit_bet(BetRequest.parse(orjson.loads(body)), body)
        per_bet.append(calls.recorded)
        calls.recorded = []
    return per_bet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--players", type=int, default=200)
    parser.add_argument("--bets", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1, help="wrk's -t")
    parser.add_argument("--out", default="bets", help="file prefix: PREFIX.0, PREFIX.1, ...")
    args = parser.parse_args()
    players = asyncio.run(new_players(args.admin_url, args.admin_token, args.players))
    NewBets(players, args.public_key, args.secret).write_wrk_files(
        args.bets, args.threads, Path(args.out)
    )


if __name__ == "__main__":
    main()
