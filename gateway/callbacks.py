"""The four signed callbacks of the provider: /auth, /withdraw, /deposit, /balance.

Each request: size limit, signature on the raw bytes, then decode and validate, then one
wallet call. Every answer, success or error, is the protocol's envelope; every answer is
counted and logged in one place.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.coalesced_scripts import CALL_DEADLINE
from gateway.logs import log_callback
from gateway.metrics import Metrics
from gateway.outcomes import OK, envelope, message_of, status_of
from gateway.redis_errors import REDIS_UNREACHABLE, WalletUnavailable
from gateway.schemas import (
    BET_ACTIONS,
    DEPOSIT_ACTIONS,
    AuthRequest,
    BalanceRequest,
    BetRequest,
    CloseRoundRequest,
    InvalidRequest,
    RollbackRequest,
    WinRequest,
    decode_object,
    deposit_model,
    is_action,
)
from gateway.sessions import Sessions
from gateway.signing import KeyRing
from gateway.unique_ids import ProcessUniqueIds
from gateway.wallet import Wallet, WalletReply

BODY_BYTES_MAX = 64 * 1024
REQUEST_ID_PREFIX_BYTES = 3  # short: a log line's id only needs to be unique for a while
REQUEST_ID_CHARS_MAX = 64  # the longest X-Request-Id a log line takes as the caller's
ACTION_LABELS = BET_ACTIONS | DEPOSIT_ACTIONS

log = logging.getLogger("gateway.callbacks")


@dataclass(slots=True)
class Answer:
    """What a callback decided; the wrapper turns it into the envelope, a metric, a log line."""

    outcome: str
    data: dict[str, Any] | None = None
    message: str | None = None
    action: str = ""
    provider_tx_id: str = ""
    replayed: bool = False


CallbackBody = Callable[[dict[str, Any], bytes], Awaitable[Answer]]


def respond(
    outcome: str, data: dict[str, Any] | None = None, message: str | None = None
) -> web.Response:
    return web.Response(
        body=envelope(outcome, data, message),
        status=status_of(outcome),
        content_type="application/json",
    )


def report_internal_error(metrics: Metrics, listener: str, request: web.Request) -> None:
    """A failure nobody foresaw (docs/protocol.md §3), from inside its `except` block: the traceback
    to the log, one more on the listener's counter; the caller answers INTERNAL_ERROR."""
    logging.getLogger(f"gateway.{listener}").exception(
        "internal error on %s %s", request.method, request.path
    )
    metrics.internal_errors.labels(listener).inc()


def wallet_answer(
    reply: WalletReply,
    request: BetRequest | WinRequest | RollbackRequest | CloseRoundRequest,
    data_if_ok: dict[str, Any],
) -> Answer:
    return Answer(
        reply.outcome,
        data_if_ok if reply.outcome == OK else None,
        action=request.action,
        provider_tx_id=request.provider_tx_id,
        replayed=reply.replayed,
    )


def money_answer(reply: WalletReply, request: BetRequest | WinRequest | RollbackRequest) -> Answer:
    return wallet_answer(
        reply,
        request,
        {
            "user_id": request.user_id,
            "currency": reply.currency,
            "new_balance": reply.balance_millis,
            "provider_tx_id": request.provider_tx_id,
            "operator_tx_id": reply.operator_tx_id,
        },
    )


class Callbacks:
    def __init__(
        self,
        wallet: Wallet,
        sessions: Sessions,
        key_ring: KeyRing,
        metrics: Metrics,
        body_seconds: float = 15.0,
    ) -> None:
        """`body_seconds`: how long a request's body may take to arrive (a slow sender)."""
        self.body_seconds = body_seconds
        self.wallet = wallet
        self.sessions = sessions
        self.key_ring = key_ring
        self.metrics = metrics
        self._request_ids = ProcessUniqueIds(REQUEST_ID_PREFIX_BYTES)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/auth", self._signed("auth", self.auth)),
            web.post("/withdraw", self._signed("withdraw", self.withdraw)),
            web.post("/deposit", self._signed("deposit", self.deposit)),
            web.post("/balance", self._signed("balance", self.balance)),
        ]

    def _signed(
        self, endpoint: str, callback: CallbackBody
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Limit, verify, then parse: nothing is parsed before the signature holds."""

        async def handler(request: web.Request) -> web.Response:
            started = time.perf_counter()
            # the request's own task: its script calls answer by arrival + REDIS_TIMEOUT_MS
            CALL_DEADLINE.set(asyncio.get_running_loop().time() + self.wallet.deadline_seconds)
            answer = await self._answer(request, callback)
            response = respond(answer.outcome, answer.data, answer.message)
            self.metrics.observe_callback(
                endpoint,
                answer.action,
                answer.outcome,
                time.perf_counter() - started,
                answer.replayed,
            )
            log_callback(
                self._request_id(request),
                endpoint,
                answer.action,
                answer.provider_tx_id,
                response.status,
                started,
                answer.replayed,
                # a refusal's line says why; a 200 builds nothing more
                None
                if response.status < 400
                else (answer.outcome, message_of(answer.outcome, answer.message)),
            )
            return response

        return handler

    def _request_id(self, request: web.Request) -> str:
        """The caller's X-Request-Id if short and printable, else one of ours: anyone can send
        one, a 401 included, and it goes into every log line as sent (one that is not UTF-8,
        aiohttp's surrogate escapes, would make the JSON line fail and vanish)."""
        given = request.headers.get("X-Request-Id")
        if given and len(given) <= REQUEST_ID_CHARS_MAX and given.isprintable():
            return given
        return self._request_ids.next()

    async def _answer(self, request: web.Request, callback: CallbackBody) -> Answer:
        if (request.content_length or 0) > BODY_BYTES_MAX:
            return Answer("BODY_TOO_LARGE")
        # A body that came whole with the head (a provider's call, almost always) needs no
        # timer: asyncio.timeout costs ~8 us a callback. Only one still on its way gets one.
        bounded = nullcontext() if request.content.is_eof() else asyncio.timeout(self.body_seconds)
        try:
            async with bounded:
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return Answer("BODY_TOO_LARGE")
        except TimeoutError:  # a slow sender holds a connection and a task: cut it
            return Answer("BODY_TIMEOUT")
        headers = request.headers
        refusal = self.key_ring.signature_refusal(
            headers.get("X-Public-Key"), headers.get("X-Signature"), body
        )
        if refusal is not None:
            return Answer(refusal)
        payload: dict[str, Any] = {}
        try:
            payload = decode_object(body)
            return await callback(payload, body)
        except InvalidRequest as exc:
            action = _action_label(payload.get("action"))
            return Answer("BAD_REQUEST", message=str(exc), action=action)
        except (WalletUnavailable, TimeoutError, *REDIS_UNREACHABLE) as exc:
            log.warning("wallet unavailable on %s: %r", request.path, exc)
            return Answer("WALLET_UNAVAILABLE", action=_action_label(payload.get("action")))
        except Exception:
            report_internal_error(self.metrics, "callbacks", request)
            return Answer("INTERNAL_ERROR", action=_action_label(payload.get("action")))

    async def auth(self, payload: dict[str, Any], body: bytes) -> Answer:
        request = AuthRequest.parse(payload)
        # its several Redis steps share the callback's deadline (the others are one call each)
        async with asyncio.timeout_at(CALL_DEADLINE.get()):
            outcome, data = await self.sessions.authenticate(request)
        return Answer(outcome, data)

    async def withdraw(self, payload: dict[str, Any], body: bytes) -> Answer:
        request = BetRequest.parse(payload)
        return money_answer(await self.wallet.debit_bet(request, body), request)

    async def deposit(self, payload: dict[str, Any], body: bytes) -> Answer:
        model = deposit_model(payload)
        if model is not CloseRoundRequest:
            settlement = model.parse(payload)
            return money_answer(await self.wallet.settle_bet(settlement, body), settlement)
        close = CloseRoundRequest.parse(decode_object(body, exact_decimals=True))
        reply = await self.wallet.close_round(close, body)
        return wallet_answer(
            reply, close, {"provider_tx_id": close.provider_tx_id, "round_id": close.round_id}
        )

    async def balance(self, payload: dict[str, Any], body: bytes) -> Answer:
        request = BalanceRequest.parse(payload)
        player = await self.wallet.get_player(request.user_id)
        if player is None:
            return Answer("UNKNOWN_USER")
        if request.currency is not None and request.currency != player.currency:
            return Answer("CURRENCY_MISMATCH")
        return Answer(OK, {"currency": player.currency, "amount": player.balance_millis})


def _action_label(value: Any) -> str:
    """A metrics label from an unvalidated field: only known actions, so labels stay few."""
    return value if is_action(value, ACTION_LABELS) else ""
