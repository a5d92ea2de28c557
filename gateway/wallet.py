"""The hot wallet: every money operation is one atomic Lua script call.

This module turns validated requests into script calls (keys and arguments) and script replies
into `WalletReply` values. It knows no HTTP.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import BusyLoadingError, ResponseError

from gateway.clock import now_ms
from gateway.coalesced_scripts import CoalescedScriptCalls
from gateway.keys import CLOSE_ROUND_OWNER_PREFIX, KeySpace
from gateway.redis_errors import REDIS_UNREACHABLE, WalletUnavailable, is_not_now
from gateway.schemas import BetRequest, CloseRoundRequest, RollbackRequest, WinRequest
from gateway.script_arguments import (
    BET_OWNER_ARGUMENT,
    claim_and_decide_arguments,
    close_round_arguments,
    close_round_keys,
    money_common_arguments,
    money_common_keys,
    settle_arguments,
    settle_keys,
    withdraw_arguments,
    withdraw_keys,
)
from gateway.scripts import Scripts
from gateway.seen_filter import filter_offsets
from gateway.settings import Settings
from gateway.unique_ids import ProcessUniqueIds

REDIS_LOADING_WAIT_SECONDS_MAX = 600
REDIS_LOADING_POLL_SECONDS = 0.2
OPERATOR_TX_ID_PREFIX_BYTES = 6
SESSION_RECORD_GRACE_MS = 24 * 3600 * 1000
LOOKUP_HISTORY = "LOOKUP_HISTORY"
Attempted = TypeVar("Attempted")


class History(Protocol):
    """Brings back from the durable history what it holds of ids whose records expired
    (persistence/records.py); raises WalletUnavailable when it cannot tell."""

    async def bring_back(self, tx_ids: list[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class WalletReply:
    outcome: str
    balance_millis: int
    operator_tx_id: str
    currency: str
    replayed: bool
    incident: str = ""  # an incident besides the outcome (LATE_AFTER_CLOSE), new calls only

    @classmethod
    def from_script(cls, reply: list[Any]) -> "WalletReply":
        outcome, balance, operator_tx_id, currency, replayed, *incident = reply
        return cls(outcome, int(balance), operator_tx_id, currency, replayed == 1, *incident[:1])


@dataclass(frozen=True, slots=True)
class Player:
    user_id: str
    username: str
    currency: str
    balance_millis: int
    maxbet_millis: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "currency": self.currency,
            "balance": self.balance_millis,
            "maxbet": self.maxbet_millis,
        }


class Wallet:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        observe_batch_seconds: Callable[[float], None] | None = None,
        observe_incident: Callable[[str], None] | None = None,
    ) -> None:
        self.redis = redis
        self._observe_incident = observe_incident
        self.settings = settings
        self.keys = KeySpace(settings.shards)
        self.scripts = Scripts.register(redis)
        # one Redis takes a script of keys in any slots: a money call's two steps go as one
        self.claims_in_the_script = not isinstance(redis, RedisCluster)
        self._script_calls = CoalescedScriptCalls(
            redis,
            observe_batch_seconds,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_timeout_ms,
            deadline_seconds=settings.redis_timeout_ms / 1000,
        )
        self._operator_tx_ids = ProcessUniqueIds(OPERATOR_TX_ID_PREFIX_BYTES)
        self._retention_ms = settings.record_retention_seconds * 1000
        # a script call fails past it (coalesced_scripts.py); /auth's steps share one (callbacks)
        self.deadline_seconds = settings.redis_timeout_ms / 1000
        # None: no PostgreSQL, so an id whose record expired cannot be decided (503)
        self.history: History | None = None
        self.session_idle_ms = settings.session_idle_seconds * 1000
        # a session record outlives its expiry by a day, so a late call is told 'expired'
        self.session_ttl_ms = self.session_idle_ms + SESSION_RECORD_GRACE_MS

    async def start(self) -> None:
        """Load the scripts, once Redis has finished replaying its AOF."""
        deadline = time.monotonic() + REDIS_LOADING_WAIT_SECONDS_MAX
        while True:
            try:
                await self.scripts.load_all(self.redis)
                return
            except BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(REDIS_LOADING_POLL_SECONDS)

    async def _call_money_script(
        self,
        script_name: str,
        keys: list[str],
        request: BetRequest | WinRequest | RollbackRequest | CloseRoundRequest,
        body: bytes,
        own_arguments: Callable[[str], tuple[Any, ...]],
        *,
        owner_id: str,
        user_id: str,
        amount_millis: int | None,
        currency: str | None,
        bet_tx_id: str | None = None,
        round_closed_key: str | None = None,
        session_index: str | None = None,
    ) -> WalletReply:
        """A money call in two steps (docs/design.md, "A money call in two steps"): claim its tx
        id (and the bet it names) in the ids' own slots, then its script in its player's slot;
        on one Redis both in one script. `own_arguments(bet_owner)`: the script's own ARGV,
        given whom the claim found owning the named bet. `session_index`: refreshed with the
        script (it lives in the token's slot)."""
        tx_id = request.provider_tx_id
        fingerprint = request.fingerprint()

        def arguments(round_closed_by: str, bet_owner: str) -> tuple[Any, ...]:
            """The money script's ARGV, the time and operator tx id taken as it goes out (after
            the claims, or a bring-back from the history)."""
            return (
                *money_common_arguments(
                    provider_tx_id=tx_id,
                    user_id=user_id,
                    action=request.action,
                    amount="" if amount_millis is None else str(amount_millis),
                    currency=currency or "",
                    round_id=request.round_id,
                    game=request.game,
                    ref_id=bet_tx_id or "",
                    fingerprint=fingerprint,
                    now_ms=str(now_ms()),
                    operator_tx_id=self._operator_tx_ids.next(),
                    retention_ms=self._retention_ms,
                    request_body=body,
                    round_closed_by=round_closed_by,
                ),
                *own_arguments(bet_owner),
            )

        if self.claims_in_the_script:
            raw_reply = await self._claim_and_decide(
                script_name, keys, arguments, tx_id, owner_id, bet_tx_id, user_id,
                round_closed_key, session_index,
            )  # fmt: skip
        else:
            tx_owner, bet_owner, closed_by = await self._claim(
                tx_id, owner_id, bet_tx_id, user_id, round_closed_key
            )
            if tx_owner not in ("", owner_id):
                return WalletReply("TX_CONFLICT", 0, "", "", False)
            also = (
                () if session_index is None else (("PEXPIRE", session_index, self.session_ttl_ms),)
            )
            raw_reply = await self.run_script(
                getattr(self.scripts, script_name),
                keys,
                arguments(closed_by or "", bet_owner),
                *also,
            )
        reply = WalletReply.from_script(raw_reply)
        # answered as usual, so the callback's outcome does not count it
        if reply.incident and self._observe_incident is not None:
            self._observe_incident(reply.incident)
        return reply

    async def _claim_and_decide(
        self,
        script_name: str,
        keys: list[str],
        arguments: Callable[[str, str], tuple[Any, ...]],
        tx_id: str,
        owner_id: str,
        bet_tx_id: str | None,
        user_id: str,
        round_closed_key: str | None,
        session_index: str | None,
    ) -> list[Any]:
        """One Redis: both steps in one script (lua/claim_and_decide.lua), the same decisions
        in one round trip. A claim that asks (LOOKUP_HISTORY) has the history's records of these
        ids brought back, and the script runs once more."""
        claim_keys = self._claim_keys(tx_id)
        if bet_tx_id:
            claim_keys += self._claim_keys(bet_tx_id)
        if round_closed_key:
            claim_keys.append(round_closed_key)
        if session_index:
            claim_keys.append(session_index)
        bits = self.settings.idempotency_filter_bits
        script = self.scripts.claimed_and_decided[script_name]
        tx_offsets = filter_offsets(tx_id, bits)
        bet_offsets = filter_offsets(bet_tx_id, bits) if bet_tx_id else ""

        async def attempt(history_checked: str) -> list[Any]:
            own = claim_and_decide_arguments(
                money_keys_count=len(keys),
                tx_owner_id=owner_id,
                tx_offsets=tx_offsets,
                bet_claimant=user_id if bet_tx_id else "",
                bet_offsets=bet_offsets,
                retention_ms=self._retention_ms,
                history_checked=history_checked,
                reads_round="1" if round_closed_key else "",
                bet_owner_at=BET_OWNER_ARGUMENT if bet_tx_id else "",
                index_ttl_ms=self.session_ttl_ms if session_index else "",
            )
            # round_closed_by and the bet's owner are filled in by the script
            money_arguments = arguments("", "")
            return await self.run_script(script, [*keys, *claim_keys], (*own, *money_arguments))

        return await self._with_history_checked(
            attempt, lambda reply: reply[0] == LOOKUP_HISTORY, tx_id, bet_tx_id
        )

    async def _claim(
        self,
        tx_id: str,
        owner_id: str,
        bet_tx_id: str | None,
        user_id: str,
        round_closed_key: str | None,
    ) -> tuple[str, str, str | None]:
        """lua/claim.lua of the tx id (for `owner_id`) and of the named bet (for `user_id`),
        with the round's close marker read, all at once: whom each id was
        owned by before ('' = nobody, now claimed), and the close's tx id or None. When a
        claim asks (LOOKUP_HISTORY), the history's records of these ids are brought back and
        the claims run once more."""

        async def claims(history_checked: str) -> tuple[list[list[str]], str | None]:
            """One round of claims, the close marker read with them: [status, owner] of each
            claim, and the close's tx id or None."""
            pending = [self._claim_call(tx_id, owner_id, history_checked)]
            if bet_tx_id:
                pending.append(self._claim_call(bet_tx_id, user_id, history_checked))
            if round_closed_key:
                pending.append(self._script_calls.command("GET", round_closed_key))
            replies = await self._replies(pending)
            claimed = replies[: 2 if bet_tx_id else 1]
            return claimed, replies[len(claimed)] if round_closed_key else None

        claimed, closed_by = await self._with_history_checked(
            claims,
            lambda replies: any(status == LOOKUP_HISTORY for status, _ in replies[0]),
            tx_id,
            bet_tx_id,
        )
        bet_owner = claimed[1][1] if bet_tx_id else ""
        return claimed[0][1], bet_owner, closed_by

    async def _with_history_checked(
        self,
        attempt: Callable[[str], Awaitable[Attempted]],
        asks_history: Callable[[Attempted], bool],
        tx_id: str,
        bet_tx_id: str | None,
    ) -> Attempted:
        """`attempt(history_checked)`; when a claim asks (LOOKUP_HISTORY), the history's
        records of the ids are brought back and it is attempted once more, saying so."""
        attempted = await attempt("")
        if not asks_history(attempted):
            return attempted
        if self.history is None:
            raise WalletUnavailable("a record left Redis and there is no history")
        await self.history.bring_back([tx_id, bet_tx_id] if bet_tx_id else [tx_id])
        attempted = await attempt("1")
        if asks_history(attempted):
            raise AssertionError("a claim asked for the history twice")
        return attempted

    def _claim_keys(self, tx_id: str) -> list[str]:
        """lua/claim.lua's KEYS for an id: its owner and its shard's seen filter."""
        keys = self.keys
        shard = keys.shard(tx_id)
        return [keys.tx_owner(shard, tx_id), keys.seen_filter(shard)]

    def _claim_call(self, tx_id: str, owner_id: str, history_checked: str) -> Any:
        return self._script_calls.call(
            self.scripts.claim,
            self._claim_keys(tx_id),
            (
                owner_id,
                filter_offsets(tx_id, self.settings.idempotency_filter_bits),
                self._retention_ms,
                history_checked,
            ),
        )

    async def run_script(
        self, script: Any, keys: list[str], args: tuple[Any, ...], *also: tuple[Any, ...]
    ) -> Any:
        """The script's reply; `also`: plain commands sent with it (keys of other slots)."""
        calls = self._script_calls
        pending = [calls.call(script, keys, args), *(calls.command(*c) for c in also)]
        return (await self._replies(pending))[0]

    async def run_command(self, *command: Any) -> Any:
        """A plain command of one key (its second word), on the money path's deadline."""
        return (await self._replies([self._script_calls.command(*command)]))[0]

    async def _replies(self, pending: list[Any]) -> list[Any]:
        """The replies of calls made together; the first failure raised (503 when Redis
        cannot answer now)."""
        try:
            replies = await asyncio.gather(*pending, return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return replies
        except REDIS_UNREACHABLE as exc:
            raise WalletUnavailable(str(exc)) from exc
        except ResponseError as exc:
            if is_not_now(exc):
                raise WalletUnavailable(str(exc)) from exc
            raise

    def _common_keys(self, shard: int, provider_tx_id: str) -> tuple[str, ...]:
        return money_common_keys(
            record=self.keys.tx(shard, provider_tx_id), events=self.keys.events(shard)
        )

    def _round_closed_key(self, round_id: str) -> str:
        return self.keys.round_closed(self.keys.shard(round_id), round_id)

    async def debit_bet(self, request: BetRequest, body: bytes) -> WalletReply:
        keys = self.keys
        shard = keys.shard(request.user_id)
        own_arguments = withdraw_arguments(
            session_token=request.session_token,
            session_idle_ms=self.session_idle_ms,
            default_maxbet_millis=self.settings.default_maxbet_millis,
            session_ttl_ms=self.session_ttl_ms,
        )
        session_index = keys.session_index(keys.shard(request.session_token), request.session_token)
        return await self._call_money_script(
            "withdraw",
            [
                *self._common_keys(shard, request.provider_tx_id),
                *withdraw_keys(
                    player=keys.player(shard, request.user_id),
                    session=keys.session(shard, request.session_token),
                    live_session=keys.live_session(shard, request.user_id),
                    tombstone=keys.tombstone(shard, request.provider_tx_id),
                    early_win=keys.early_win(shard, request.provider_tx_id),
                    incidents=keys.incidents(shard),
                ),
            ],
            request,
            body,
            lambda _: own_arguments,
            owner_id=request.user_id,
            user_id=request.user_id,
            amount_millis=request.amount_millis,
            currency=request.currency,
            round_closed_key=self._round_closed_key(request.round_id),
            # the index (in the token's slot) lives as long as the session it names, or a long
            # session would lose /auth; on a session that is not live it changes nothing
            session_index=session_index,
        )

    async def settle_bet(self, request: WinRequest | RollbackRequest, body: bytes) -> WalletReply:
        """WIN / FREE_BET_WIN (credit.lua) or ROLL_BACK (rollback.lua) of a bet: both read the
        bet's record, tombstone and early-win marker, and whom its id belongs to."""
        keys = self.keys
        shard = keys.shard(request.user_id)
        bet_tx_id = request.bet_tx_id or ""
        return await self._call_money_script(
            "rollback" if isinstance(request, RollbackRequest) else "credit",
            [
                *self._common_keys(shard, request.provider_tx_id),
                *settle_keys(
                    player=keys.player(shard, request.user_id),
                    bet_record=keys.tx(shard, bet_tx_id),
                    incidents=keys.incidents(shard),
                    tombstone=keys.tombstone(shard, bet_tx_id),
                    early_win=keys.early_win(shard, bet_tx_id),
                ),
            ],
            request,
            body,
            lambda bet_owner: settle_arguments(bet_owner=bet_owner),
            owner_id=request.user_id,
            user_id=request.user_id,
            amount_millis=request.amount_millis,
            currency=request.currency,
            bet_tx_id=request.bet_tx_id,
            round_closed_key=self._round_closed_key(request.round_id),
        )

    async def close_round(self, request: CloseRoundRequest, body: bytes) -> WalletReply:
        shard = self.keys.shard(request.round_id)
        own_arguments = close_round_arguments(
            stakes=orjson.dumps(request.stakes_millis).decode(),
            coefficients=orjson.dumps(request.cash_out_coefficients).decode(),
        )
        return await self._call_money_script(
            "close_round",
            [
                *self._common_keys(shard, request.provider_tx_id),
                *close_round_keys(round_closed=self.keys.round_closed(shard, request.round_id)),
            ],
            request,
            body,
            lambda _: own_arguments,
            owner_id=CLOSE_ROUND_OWNER_PREFIX + request.round_id,
            user_id="",
            amount_millis=0,
            currency=None,
        )

    async def get_player(self, user_id: str) -> Player | None:
        shard = self.keys.shard(user_id)
        try:  # one command, no retry: socket_timeout (REDIS_TIMEOUT_MS) bounds it
            fields = await self.redis.hmget(
                self.keys.player(shard, user_id), ["username", "currency", "balance", "maxbet"]
            )
        except REDIS_UNREACHABLE as exc:
            raise WalletUnavailable(str(exc)) from exc
        username, currency, balance, maxbet = fields
        if currency is None:
            return None
        return Player(
            user_id,
            username or "",
            currency,
            int(balance),
            int(maxbet) if maxbet else self.settings.default_maxbet_millis,
        )

    async def create_player(
        self,
        user_id: str,
        currency: str,
        username: str,
        balance_millis: int,
        maxbet_millis: int | None,
    ) -> str:
        shard = self.keys.shard(user_id)
        return await self.run_script(
            self.scripts.create_player,
            [self.keys.player(shard, user_id), self.keys.events(shard)],
            (
                user_id,
                currency,
                username,
                balance_millis,
                "" if maxbet_millis is None else maxbet_millis,
                now_ms(),
            ),
        )

    async def adjust_balance(
        self, user_id: str, amount_millis: int, reference: str, reason: str = ""
    ) -> tuple[str, int]:
        """The cashier: a signed amount, idempotent on `reference`; `reason` goes into the
        history with it."""
        shard = self.keys.shard(user_id)
        outcome, balance = await self.run_script(
            self.scripts.adjust_balance,
            [
                self.keys.adjustment(shard, user_id, reference),
                self.keys.player(shard, user_id),
                self.keys.events(shard),
                self.keys.incidents(shard),
            ],
            (user_id, amount_millis, reference, now_ms(), reason),
        )
        return outcome, int(balance)

    async def incidents(self, limit: int) -> list[dict[str, Any]]:
        """The most recent incidents of every shard, newest first."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self.keys.all_incident_lists():
                    pipe.lrange(key, 0, limit - 1)
                per_shard = await pipe.execute()
        except REDIS_UNREACHABLE as exc:
            raise WalletUnavailable(str(exc)) from exc
        incidents = [orjson.loads(item) for items in per_shard for item in items]
        incidents.sort(key=lambda incident: incident["ts"], reverse=True)
        return incidents[:limit]
