"""The four signed callbacks of the provider: /auth, /withdraw, /deposit, /balance.

Each request: size limit, signature on the raw bytes, then decode and validate, then one
wallet call. Every answer, success or error, is the protocol's envelope.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.outcomes import OK, envelope, status_of
from gateway.schemas import (
    CLOSE_ROUND_ACTION,
    ROLLBACK_ACTION,
    WIN_ACTIONS,
    AuthRequest,
    BalanceRequest,
    BetRequest,
    CloseRoundRequest,
    InvalidRequest,
    RollbackRequest,
    WinRequest,
    decode_object,
)
from gateway.sessions import Sessions
from gateway.signing import KeyRing
from gateway.wallet import REDIS_UNREACHABLE, Wallet, WalletReply, WalletUnavailable

BODY_BYTES_MAX = 64 * 1024

log = logging.getLogger("gateway.callbacks")

CallbackBody = Callable[[dict[str, Any], bytes], Awaitable[web.Response]]


def respond(
    outcome: str, data: dict[str, Any] | None = None, message: str | None = None
) -> web.Response:
    return web.Response(
        body=envelope(outcome, data, message),
        status=status_of(outcome),
        content_type="application/json",
    )


def money_response(reply: WalletReply, user_id: str, provider_tx_id: str) -> web.Response:
    if reply.outcome != OK:
        return respond(reply.outcome)
    return respond(
        OK,
        {
            "user_id": user_id,
            "currency": reply.currency,
            "new_balance": reply.balance_millis,
            "provider_tx_id": provider_tx_id,
            "operator_tx_id": reply.operator_tx_id,
        },
    )


class Callbacks:
    def __init__(self, wallet: Wallet, sessions: Sessions, key_ring: KeyRing) -> None:
        self.wallet = wallet
        self.sessions = sessions
        self.key_ring = key_ring

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/auth", self._signed(self.auth)),
            web.post("/withdraw", self._signed(self.withdraw)),
            web.post("/deposit", self._signed(self.deposit)),
            web.post("/balance", self._signed(self.balance)),
        ]

    def _signed(self, callback: CallbackBody) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Limit, verify, then parse: nothing is parsed before the signature holds."""

        async def handler(request: web.Request) -> web.Response:
            if (request.content_length or 0) > BODY_BYTES_MAX:
                return respond("BODY_TOO_LARGE")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return respond("BODY_TOO_LARGE")
            headers = request.headers
            if not self.key_ring.verify_signature(
                headers.get("X-Public-Key"), headers.get("X-Signature"), body
            ):
                return respond("BAD_SIGNATURE")
            try:
                return await callback(decode_object(body), body)
            except InvalidRequest as exc:
                return respond("BAD_REQUEST", message=str(exc))
            except (WalletUnavailable, *REDIS_UNREACHABLE) as exc:
                log.warning("wallet unavailable on %s: %s", request.path, exc)
                return respond("WALLET_UNAVAILABLE")

        return handler

    async def auth(self, payload: dict[str, Any], body: bytes) -> web.Response:
        outcome, data = await self.sessions.authenticate(AuthRequest.parse(payload))
        return respond(outcome, data)

    async def withdraw(self, payload: dict[str, Any], body: bytes) -> web.Response:
        request = BetRequest.parse(payload)
        reply = await self.wallet.debit_bet(request, body)
        return money_response(reply, request.user_id, request.provider_tx_id)

    async def deposit(self, payload: dict[str, Any], body: bytes) -> web.Response:
        action = payload.get("action")
        if action in WIN_ACTIONS:
            win = WinRequest.parse(payload)
            reply = await self.wallet.credit_win(win, body)
            return money_response(reply, win.user_id, win.provider_tx_id)
        if action == ROLLBACK_ACTION:
            rollback = RollbackRequest.parse(payload)
            reply = await self.wallet.roll_back(rollback, body)
            return money_response(reply, rollback.user_id, rollback.provider_tx_id)
        if action == CLOSE_ROUND_ACTION:
            close = CloseRoundRequest.parse(payload)
            reply = await self.wallet.close_round(close, body)
            if reply.outcome != OK:
                return respond(reply.outcome)
            return respond(OK, {"provider_tx_id": close.provider_tx_id, "round_id": close.round_id})
        raise InvalidRequest("action must be one of WIN, FREE_BET_WIN, ROLL_BACK, CLOSE_ROUND")

    async def balance(self, payload: dict[str, Any], body: bytes) -> web.Response:
        request = BalanceRequest.parse(payload)
        player = await self.wallet.get_player(request.user_id)
        if player is None:
            return respond("UNKNOWN_USER")
        if request.currency is not None and request.currency != player.currency:
            return respond("CURRENCY_MISMATCH")
        return respond(OK, {"currency": player.currency, "amount": player.balance_millis})
