"""The `--player-hook` player source, for wallets whose back office is not our admin API."""

import asyncio
import os

from provider.client import PlayerSession, parse_json
from provider.conformance.probe import excerpt

HOOK_TIMEOUT_SECONDS = 30.0
HOOK_OUTPUT_BYTES_MAX = 64 * 1024


class PlayerHook:
    """Test players from the operator's own command (any wallet, any back office).

    The command runs in a shell with the currency and the balance in millis appended as two
    arguments and also set as CONFORMANCE_CURRENCY and CONFORMANCE_BALANCE_MILLIS; it must print
    `{"user_id": "...", "session_token": "..."}` on stdout: a new player with a live session.
    """

    def __init__(self, command: str, timeout_seconds: float = HOOK_TIMEOUT_SECONDS) -> None:
        self.command = command
        self.timeout_seconds = timeout_seconds

    async def new_player(self, currency: str, balance_millis: int) -> PlayerSession:
        environment = {
            **os.environ,
            "CONFORMANCE_CURRENCY": currency,
            "CONFORMANCE_BALANCE_MILLIS": str(balance_millis),
        }
        process = await asyncio.create_subprocess_shell(
            f"{self.command} {currency} {balance_millis}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), self.timeout_seconds)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"player hook ran over {self.timeout_seconds}s") from None
        if process.returncode != 0:
            raise RuntimeError(f"player hook exited {process.returncode}: {excerpt(stderr)}")
        parsed = parse_json(stdout.strip()) if len(stdout) <= HOOK_OUTPUT_BYTES_MAX else None
        if not (
            isinstance(parsed, dict)
            and isinstance(parsed.get("user_id"), str)
            and isinstance(parsed.get("session_token"), str)
        ):
            raise RuntimeError(
                f'player hook must print {{"user_id", "session_token"}}, printed {excerpt(stdout)}'
            )
        return PlayerSession(parsed["user_id"], parsed["session_token"], currency)
