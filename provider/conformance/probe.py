"""What every conformance rule stands on: the probe (fresh players and ids, signed calls, and
checks that fail the rule), the rule registry, and the runner that plays the rules in protocol
order, one after another.

Each rule runs on fresh players from a `PlayerSource` (this project's admin API, or a hook command
of the operator's own) and fresh ids, so rules never depend on one another.
"""

import asyncio
import fnmatch
import itertools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from provider.client import (
    BALANCE_PATH,
    CALLBACK_TIMEOUT_SECONDS,
    NO_RETRY,
    WITHDRAW_PATH,
    CallbackReply,
    CallbackUndelivered,
    PlayerSession,
    PlayerSource,
    ProviderClient,
    balance_body,
    bet_body,
    encode,
    rollback_body,
    win_body,
)
from provider.conformance.report import ConformanceReport, RuleResult

PLAYER_BALANCE_MILLIS = 100_000
STAKE_MILLIS = 1_000
DUPLICATE_COPIES_DEFAULT = 10
DUPLICATE_COPIES_MAX = 100
RULE_TIMEOUT_SECONDS = 30.0
EXCERPT_BYTES_MAX = 160
GAME = "aviadrone"
JSON_CONTENT = {"Content-Type": "application/json"}


class RuleFailed(Exception):
    """The wallet broke the rule; the message says how."""


def excerpt(body: bytes) -> str:
    text = body[:EXCERPT_BYTES_MAX].decode("utf-8", "replace")
    return text + ("..." if len(body) > EXCERPT_BYTES_MAX else "")


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise RuleFailed(reason)


def envelope_problem(reply: CallbackReply) -> str | None:
    """What is wrong with the answer's envelope (docs/protocol.md §3); None when it is right."""
    payload = reply.payload
    if not isinstance(payload, dict):
        return f"HTTP {reply.status} body is not a JSON object: {excerpt(reply.body)}"
    if set(payload) != {"code", "message", "data"}:
        return f"envelope keys are {sorted(payload)}, not code, message, data"
    code = payload["code"]
    if type(code) is not int or code != reply.status:
        return f"envelope code {code!r} differs from HTTP status {reply.status}"
    if not isinstance(payload["message"], str):
        return "envelope message is not a string"
    if reply.status >= 400 and payload["data"] is not None:
        return f"error {reply.status} carries data {payload['data']!r}, not null"
    if reply.status < 300 and not isinstance(payload["data"], dict):
        return f"success carries data {payload['data']!r}, not an object"
    return None


# --- what rules use -----------------------------------------------------------------------------


@dataclass
class ConformanceConfig:
    wallet_url: str
    public_key: str
    secret: str
    players: PlayerSource
    currency: str = "USD"
    operator_id: str = "operator"
    duplicate_copies: int = DUPLICATE_COPIES_DEFAULT
    timeout_seconds: float = CALLBACK_TIMEOUT_SECONDS
    rule_patterns: tuple[str, ...] = ()  # fnmatch patterns of rule names; empty = every rule


class Probe:
    """What a rule uses: fresh players and ids, signed calls, and checks that fail the rule."""

    def __init__(self, client: ProviderClient, config: ConformanceConfig) -> None:
        self.client = client
        self.config = config
        self.public_key = config.public_key
        self.secret = config.secret
        self._run_id = secrets.token_hex(4)  # ids never collide with an earlier run's
        self._numbers = itertools.count(1)

    def new_id(self, label: str) -> str:
        return f"cf-{self._run_id}-{next(self._numbers)}-{label}"

    async def player(self, balance_millis: int = PLAYER_BALANCE_MILLIS) -> PlayerSession:
        try:
            return await self.config.players.new_player(self.config.currency, balance_millis)
        except Exception as exc:
            raise RuleFailed(f"could not create a test player: {exc}") from exc

    def unknown_player(self) -> PlayerSession:
        return PlayerSession(self.new_id("nobody"), self.new_id("no-session"), self.config.currency)

    def bet(
        self,
        player: PlayerSession,
        amount_millis: int = STAKE_MILLIS,
        action: str = "BET",
        round_id: str | None = None,
    ) -> dict[str, Any]:
        return bet_body(
            user_id=player.user_id,
            session_token=player.session_token,
            amount_millis=amount_millis,
            currency=player.currency,
            provider_tx_id=self.new_id("bet"),
            round_id=round_id or self.new_id("round"),
            game=GAME,
            action=action,
        )

    def win(
        self,
        player: PlayerSession,
        amount_millis: int,
        bet: dict[str, Any] | None = None,
        action: str = "WIN",
    ) -> dict[str, Any]:
        return win_body(
            user_id=player.user_id,
            amount_millis=amount_millis,
            currency=player.currency,
            provider_tx_id=self.new_id("win"),
            round_id=bet["round_id"] if bet else self.new_id("round"),
            game=GAME,
            bet_tx_id=bet["provider_tx_id"] if bet else None,
            action=action,
        )

    def rollback(
        self, player: PlayerSession, bet: dict[str, Any], amount_millis: int | None = None
    ) -> dict[str, Any]:
        return rollback_body(
            user_id=player.user_id,
            provider_tx_id=self.new_id("rollback"),
            bet_tx_id=bet["provider_tx_id"],
            round_id=bet["round_id"],
            game=GAME,
            amount_millis=amount_millis,
            currency=None if amount_millis is None else player.currency,
        )

    async def send(
        self, path: str, payload: dict[str, Any] | bytes, headers: dict[str, str] | None = None
    ) -> CallbackReply:
        """One call, no retry; every answer must be the protocol's envelope."""
        body = payload if isinstance(payload, bytes) else encode(payload)
        try:
            reply = await self.client.post_raw(path, body, headers)
        except CallbackUndelivered as exc:
            raise RuleFailed(f"no answer: {exc}") from exc
        problem = envelope_problem(reply)
        require(problem is None, f"{path}: {problem}")
        return reply

    async def expect(
        self,
        path: str,
        payload: dict[str, Any] | bytes,
        status: int,
        headers: dict[str, str] | None = None,
    ) -> CallbackReply:
        reply = await self.send(path, payload, headers)
        require(
            reply.status == status,
            f"{path}: expected {status}, got {reply.status} {excerpt(reply.body)}",
        )
        return reply

    async def expect_money(
        self,
        path: str,
        payload: dict[str, Any],
        player: PlayerSession,
        new_balance_millis: int,
        body: bytes | None = None,
    ) -> CallbackReply:
        """A 200 money answer (docs/protocol.md §4) for `payload` (sent as `body` when given)."""
        reply = await self.expect(path, body if body is not None else payload, 200)
        expected = {
            "user_id": player.user_id,
            "currency": player.currency,
            "new_balance": new_balance_millis,
            "provider_tx_id": payload["provider_tx_id"],
        }
        data = reply.data
        for name, value in expected.items():
            require(
                data.get(name) == value, f"{path}: data.{name} is {data.get(name)!r}, not {value!r}"
            )
        operator_tx_id = data.get("operator_tx_id")
        require(
            isinstance(operator_tx_id, str) and operator_tx_id != "",
            f"{path}: data.operator_tx_id is {operator_tx_id!r}, not a non-empty string",
        )
        return reply

    async def expect_balance(self, player: PlayerSession, balance_millis: int) -> None:
        reply = await self.expect(BALANCE_PATH, balance_body(user_id=player.user_id), 200)
        amount = reply.data.get("amount")
        require(
            amount == balance_millis,
            f"balance of {player.user_id} is {amount!r}, expected {balance_millis}",
        )

    async def player_with_bet(
        self, stake_millis: int = STAKE_MILLIS, action: str = "BET"
    ) -> tuple[PlayerSession, dict[str, Any]]:
        """A new player whose bet the wallet took."""
        player = await self.player()
        bet = self.bet(player, stake_millis, action)
        debit = stake_millis if action == "BET" else 0
        await self.expect_money(WITHDRAW_PATH, bet, player, PLAYER_BALANCE_MILLIS - debit)
        return player, bet


# --- the registry -------------------------------------------------------------------------------

Check = Callable[[Probe], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    section: str  # of docs/protocol.md
    check: Check


RULES: list[Rule] = []


def rule(section: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        RULES.append(Rule(check.__name__, section, check))
        return check

    return register


# --- running ------------------------------------------------------------------------------------


def select_rules(patterns: tuple[str, ...] = ()) -> list[Rule]:
    """The rules whose name matches a pattern (all without patterns), in protocol order."""
    in_order = sorted(RULES, key=lambda r: r.section)  # stable: file order within a section
    if not patterns:
        return in_order
    return [r for r in in_order if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]


async def run_rule(target: Rule, probe: Probe) -> RuleResult:
    try:
        await asyncio.wait_for(target.check(probe), RULE_TIMEOUT_SECONDS)
    except RuleFailed as exc:
        return RuleResult(target.name, target.section, False, str(exc))
    except TimeoutError:
        return RuleResult(target.name, target.section, False, f"ran over {RULE_TIMEOUT_SECONDS}s")
    except Exception as exc:  # a rule reports; it never ends the run
        return RuleResult(target.name, target.section, False, f"{type(exc).__name__}: {exc}")
    return RuleResult(target.name, target.section, True)


async def run_conformance(
    config: ConformanceConfig, on_result: Callable[[RuleResult], None] | None = None
) -> ConformanceReport:
    """Run the selected rules one after another; `on_result` sees each result as it comes."""
    if not 1 <= config.duplicate_copies <= DUPLICATE_COPIES_MAX:
        raise ValueError(f"duplicate_copies must be within 1..{DUPLICATE_COPIES_MAX}")
    report = ConformanceReport()
    async with ProviderClient(
        config.wallet_url,
        config.public_key,
        config.secret,
        retry=NO_RETRY,  # a 5xx is an answer to judge, not to hide behind a retry
        timeout_seconds=config.timeout_seconds,
    ) as client:
        probe = Probe(client, config)
        for selected in select_rules(config.rule_patterns):
            result = await run_rule(selected, probe)
            report.results.append(result)
            if on_result is not None:
                on_result(result)
    return report
