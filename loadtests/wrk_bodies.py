"""Pre-signed new bets for wrk (loadtests/wrk_bets.lua), a lighter load tool than locust for
cross-checking latency: the requests are built and signed here, so wrk spends nothing on them.

python -m loadtests.wrk_bodies --admin-url http://127.0.0.1:8081 --admin-token T \\
    --public-key PUB --secret SECRET --players 200 --bets 200000 --out bets.tsv
"""

import argparse
import asyncio
import secrets

from gateway.signing import sign_body
from provider.client import OperatorAdmin, PlayerSession, bet_body, encode

BALANCE_MILLIS = 10**14
STAKE_MILLIS = 100


async def new_players(args: argparse.Namespace) -> list[PlayerSession]:
    async with OperatorAdmin(args.admin_url, args.admin_token) as admin:
        return [await admin.new_player("USD", BALANCE_MILLIS) for _ in range(args.players)]


def write_bets(players: list[PlayerSession], args: argparse.Namespace) -> None:
    run = secrets.token_hex(4)
    with open(args.out, "w") as out:
        for n in range(args.bets):
            player = players[n % len(players)]
            body = encode(
                bet_body(
                    user_id=player.user_id,
                    session_token=player.session_token,
                    amount_millis=STAKE_MILLIS,
                    currency="USD",
                    provider_tx_id=f"wrk-{run}-{n}",
                    round_id=f"wrk-{run}-{n}",
                    game="aviadrone",
                )
            )
            out.write(f"{sign_body(args.secret, body)}\t{args.public_key}\t{body.decode()}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--players", type=int, default=200)
    parser.add_argument("--bets", type=int, default=200_000)
    parser.add_argument("--out", default="bets.tsv")
    args = parser.parse_args()
    write_bets(asyncio.run(new_players(args)), args)


if __name__ == "__main__":
    main()
