"""`wallet-gateway admin`: one call of the admin API with the stack's bearer token, the answer
printed. The admin API's curl, without copying the token:

    wallet-gateway admin post /admin/players '{"user_id":"p1","currency":"USD","balance":100000}'
    wallet-gateway admin get /admin/players/player-1
"""

import argparse
import asyncio
import sys

import aiohttp

from gateway.recorded_stack import nothing_running_from
from provider.client import add_admin_arguments, add_data_dir_argument, print_answer

METHODS = ("get", "post")
TIMEOUT_SECONDS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("path", help="e.g. /admin/players/player-1")
    parser.add_argument("body", nargs="?", help="the JSON body of a post")
    add_admin_arguments(parser)
    add_data_dir_argument(parser)


async def call(args: argparse.Namespace) -> int:
    if not args.admin_url or not args.admin_token:
        missing = "needs --admin-url and --admin-token"
        raise ValueError(f"{missing}: {nothing_running_from(args.data_dir)}")
    url = args.admin_url.rstrip("/") + "/" + args.path.lstrip("/")
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    ) as session:
        async with session.request(
            args.method.upper(),
            url,
            data=(args.body or "").encode(),
            headers={"Authorization": f"Bearer {args.admin_token}"},
        ) as response:
            return print_answer(response.status, await response.read())


def run(args: argparse.Namespace) -> int:
    """0 on a 2xx answer, 1 on any other, 2 when the admin API could not be asked."""
    try:
        return asyncio.run(call(args))
    except (ValueError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        print(f"admin: error: {exc}", file=sys.stderr)
        return 2
