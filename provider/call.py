"""`wallet-gateway call`: sign one callback with the stack's key pair, send it, print the
exchange. Trying the API then needs no openssl:

    wallet-gateway call withdraw --user player-1 --amount 5440 --tx bet-1
    wallet-gateway call deposit --user player-1 --amount 10880 --tx win-1 --bet-tx bet-1
    wallet-gateway call deposit --action ROLL_BACK --user player-1 --tx rb-1 --bet-tx bet-2
    wallet-gateway call balance --user player-1
"""

import argparse
import asyncio
import secrets
import sys
from typing import Any

import aiohttp

from provider.client import (
    AUTH_PATH,
    BALANCE_PATH,
    DEPOSIT_PATH,
    WITHDRAW_PATH,
    CallbackUndelivered,
    OperatorAdmin,
    ProviderClient,
    add_admin_arguments,
    add_wallet_arguments,
    auth_body,
    balance_body,
    bet_body,
    encode,
    print_answer,
    require_wallet_arguments,
    rollback_body,
    win_body,
)

PATHS = {
    "auth": AUTH_PATH,
    "balance": BALANCE_PATH,
    "withdraw": WITHDRAW_PATH,
    "deposit": DEPOSIT_PATH,
}
DEPOSIT_ACTIONS = ("WIN", "ROLL_BACK")
GAME_DEFAULT = "aviadrone"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", choices=sorted(PATHS), help="the callback to send")
    add_wallet_arguments(parser)
    add_admin_arguments(parser)
    parser.add_argument("--user", help="user_id (every endpoint but auth)")
    parser.add_argument(
        "--session",
        help="session_token (auth; withdraw: default a new session opened on the admin API)",
    )
    parser.add_argument(
        "--amount", type=int, help="in millis, 1/1000 of the currency unit: 5440 is 5.44"
    )
    parser.add_argument("--currency", default="USD", help="the player's currency (default USD)")
    parser.add_argument(
        "--tx", help="provider_tx_id (default: a new one; send one again to see its replay)"
    )
    parser.add_argument(
        "--bet-tx", help="withdraw_provider_tx_id: the bet a WIN settles or a ROLL_BACK voids"
    )
    parser.add_argument(
        "--round", help="round_id (default: r-<the bet's tx>, so a bet and its WIN share one)"
    )
    parser.add_argument("--game", default=GAME_DEFAULT, help=f"game (default {GAME_DEFAULT})")
    parser.add_argument(
        "--action", choices=DEPOSIT_ACTIONS, default="WIN", help="deposit's action (default WIN)"
    )
    parser.add_argument("--user-token", help="auth: the one-time token issued at launch")
    parser.add_argument(
        "--body", help="send this JSON as it is (signed over these exact bytes) instead"
    )


def _required(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is None]
    if missing:
        raise ValueError(f"{args.endpoint} needs {' and '.join(missing)}")


async def _session_for(args: argparse.Namespace) -> str:
    if args.session:
        return str(args.session)
    if not args.admin_url:
        raise ValueError("withdraw needs --session, or --admin-url to open one")
    async with OperatorAdmin(args.admin_url, args.admin_token) as admin:
        return await admin.open_session(args.user)


async def callback_body(args: argparse.Namespace) -> bytes:
    """The body the options describe, encoded once: these bytes are signed and sent."""
    if args.body is not None:
        return str(args.body).encode()
    if args.endpoint == "auth":
        _required(args, "session")
        return encode(auth_body(session_token=args.session, user_token=args.user_token))
    _required(args, "user")
    if args.endpoint == "balance":
        return encode(balance_body(user_id=args.user, currency=args.currency))
    tx = args.tx or f"tx-{secrets.token_hex(6)}"
    round_id = args.round or f"r-{args.bet_tx or tx}"
    payload: dict[str, Any]
    if args.endpoint == "withdraw":
        _required(args, "amount")
        payload = bet_body(
            user_id=args.user,
            session_token=await _session_for(args),
            amount_millis=args.amount,
            currency=args.currency,
            provider_tx_id=tx,
            round_id=round_id,
            game=args.game,
        )
    elif args.action == "ROLL_BACK":
        _required(args, "bet_tx")
        payload = rollback_body(
            user_id=args.user,
            provider_tx_id=tx,
            bet_tx_id=args.bet_tx,
            round_id=round_id,
            game=args.game,
            amount_millis=args.amount,
            currency=args.currency if args.amount is not None else None,
        )
    else:
        _required(args, "amount")
        payload = win_body(
            user_id=args.user,
            amount_millis=args.amount,
            currency=args.currency,
            provider_tx_id=tx,
            round_id=round_id,
            game=args.game,
            bet_tx_id=args.bet_tx,
        )
    return encode(payload)


async def call(args: argparse.Namespace) -> int:
    require_wallet_arguments(args)
    body = await callback_body(args)
    path = PATHS[args.endpoint]
    print(f"> POST {args.url.rstrip('/')}{path}\n> {body.decode(errors='replace')}", flush=True)
    async with ProviderClient(
        args.url, args.public_key, args.secret, timeout_seconds=args.timeout_seconds
    ) as client:
        reply = await client.post_raw(path, body)
    return print_answer(reply.status, reply.body)


def run(args: argparse.Namespace) -> int:
    """0 when the wallet answered 2xx, 1 on any other answer, 2 when it could not be asked."""
    try:
        return asyncio.run(call(args))
    except (ValueError, OSError, aiohttp.ClientError, CallbackUndelivered) as exc:
        print(f"call: error: {exc}", file=sys.stderr)
        return 2
