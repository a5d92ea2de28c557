"""Conformance kit (`wallet-gateway conformance`): checks any operator wallet against the callback
protocol (docs/protocol.md), one rule at a time, and names every rule it breaks.

The rules live in one module per protocol section; importing them here registers them, so the
registry holds every rule whatever module of the kit is imported first.
"""

import argparse
import asyncio
import secrets
import sys

from provider.client import (
    OperatorAdmin,
    PlayerSource,
    add_admin_arguments,
    add_wallet_arguments,
    require_wallet_arguments,
)
from provider.conformance import (  # noqa: F401  (imported to register their rules)
    authentication,
    endpoints,
    envelope,
    idempotency,
    money_rules,
    transport,
)
from provider.conformance.player_hook import PlayerHook
from provider.conformance.probe import (
    DUPLICATE_COPIES_DEFAULT,
    RULES,
    ConformanceConfig,
    run_conformance,
    select_rules,
)
from provider.conformance.report import ConformanceReport

__all__ = [
    "RULES",
    "ConformanceConfig",
    "ConformanceReport",
    "add_arguments",
    "run",
    "run_conformance",
]


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
    if args.player_hook:  # chosen over an --admin-url, given or taken from the stack
        return PlayerHook(args.player_hook)
    if not args.admin_url:
        raise ValueError("needs --admin-url or --player-hook to create its test players")
    return OperatorAdmin(args.admin_url, args.admin_token, f"cf-{secrets.token_hex(4)}")


async def check_wallet(args: argparse.Namespace) -> int:
    require_wallet_arguments(args)
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
