"""Player sessions: one-time launch tokens, session tokens with a sliding idle expiry, one live
session per player (docs/protocol.md §4 /auth, §8)."""

import secrets
from typing import Any

from gateway.clock import now_ms
from gateway.outcomes import OK
from gateway.schemas import AuthRequest
from gateway.wallet import Wallet

TOKEN_BYTES = 24


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


class Sessions:
    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet
        self.keys = wallet.keys

    async def issue_user_token(self, user_id: str) -> str:
        """A one-time token for a game launch; the provider's first /auth redeems it."""
        token = new_token()
        key = self.keys.user_token(self.keys.shard(token), token)
        async with self.wallet.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "user", user_id)
            pipe.pexpire(key, self.wallet.session_ttl_ms)
            await pipe.execute()
        return token

    async def redeem_user_token(self, user_token: str, session_token: str) -> tuple[str, str]:
        """-> (outcome, user_id)."""
        outcome, user_id = await self.wallet.run_script(
            self.wallet.scripts.redeem_user_token,
            [self.keys.user_token(self.keys.shard(user_token), user_token)],
            (session_token,),
        )
        return outcome, user_id

    async def open_session(self, user_id: str, session_token: str, source: str) -> str:
        """Make `session_token` the player's live session (closing the old one) -> outcome."""
        shard = self.keys.shard(user_id)
        outcome = await self.wallet.run_script(
            self.wallet.scripts.open_session,
            [
                self.keys.player(shard, user_id),
                self.keys.session(shard, session_token),
                self.keys.live_session(shard, user_id),
                self.keys.events(shard),
            ],
            (session_token, user_id, now_ms(), self.wallet.session_ttl_ms, source),
        )
        if outcome == OK:
            # The index is in the token's slot, so it is written after the session: a crash in
            # between leaves a session /auth cannot find by its token until the provider's
            # retry with the user token reopens it, which writes the index again.
            await self.wallet.run_command(
                "SET",
                self.keys.session_index(self.keys.shard(session_token), session_token),
                user_id,
                "PX",
                self.wallet.session_ttl_ms,
            )
        return outcome

    async def authenticate(self, request: AuthRequest) -> tuple[str, dict[str, Any] | None]:
        """/auth -> (outcome, data)."""
        keys = self.keys
        index = keys.session_index(keys.shard(request.session_token), request.session_token)
        user_id = await self.wallet.redis.get(index)
        if user_id is None:
            if request.user_token is None:
                return "UNKNOWN_SESSION", None
            outcome, user_id = await self.redeem_user_token(
                request.user_token, request.session_token
            )
            if outcome != OK:
                return outcome, None
            outcome = await self.open_session(user_id, request.session_token, "auth")
            if outcome != OK:
                return outcome, None
        shard = keys.shard(user_id)
        outcome, username, currency, balance, maxbet = await self.wallet.run_script(
            self.wallet.scripts.authenticate,
            [
                keys.player(shard, user_id),
                keys.session(shard, request.session_token),
                keys.live_session(shard, user_id),
            ],
            (
                request.session_token,
                now_ms(),
                self.wallet.session_idle_ms,
                self.wallet.session_ttl_ms,
            ),
            # the index lives as long as the session, or a long session would lose /auth
            ("PEXPIRE", index, self.wallet.session_ttl_ms),
        )
        if outcome != OK:
            return outcome, None
        if request.currency is not None and request.currency != currency:
            return "CURRENCY_MISMATCH", None
        return OK, {
            "user_id": user_id,
            "username": username,
            "currency": currency,
            "balance": int(balance),
            "maxbet": int(maxbet) if maxbet else self.wallet.settings.default_maxbet_millis,
        }
