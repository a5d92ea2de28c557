"""The provider's signed client of the wallet callback protocol (docs/protocol.md), for the tools
that play the provider: the simulator, the conformance kit and the load test.

Bodies are built here, encoded once, signed with `gateway.signing` and posted. A retry re-sends
the very same bytes (same `provider_tx_id`, same signature), as the real provider does.

The same tools need the operator to hand them players; `OperatorAdmin` is the client of this
project's admin API that does it.
"""

import argparse
import asyncio
import itertools
import logging
import random
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Protocol, Self

import aiohttp
import orjson

from gateway.recorded_stack import nothing_running_from
from gateway.schemas import COEFFICIENTS_ATTRIBUTE, STAKES_ATTRIBUTE
from gateway.signing import signed_headers

AUTH_PATH = "/auth"
WITHDRAW_PATH = "/withdraw"
DEPOSIT_PATH = "/deposit"
BALANCE_PATH = "/balance"

CALLBACK_TIMEOUT_SECONDS = 5.0
ADMIN_TIMEOUT_SECONDS = 10.0
CONNECTIONS_MAX = 100
RETRY_ATTEMPTS_MAX = 20
BACKOFF_SECONDS_MAX = 60.0
ERROR_EXCERPT_BYTES_MAX = 200

log = logging.getLogger("provider.client")


# --- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a call is re-sent after a 5xx, a timeout or a lost connection.

    4xx answers are final and never retried (docs/protocol.md §3).
    """

    attempts_max: int = 1
    backoff_first_seconds: float = 0.1
    backoff_max_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts_max <= RETRY_ATTEMPTS_MAX:
            raise ValueError(f"attempts_max must be within 1..{RETRY_ATTEMPTS_MAX}")
        if not 0 <= self.backoff_first_seconds <= self.backoff_max_seconds <= BACKOFF_SECONDS_MAX:
            raise ValueError(
                f"backoff must satisfy 0 <= first <= max <= {BACKOFF_SECONDS_MAX} seconds"
            )

    def backoff_seconds(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based): doubling up to the cap, with jitter so
        that the retries of many failed calls do not arrive together."""
        ceiling = min(self.backoff_max_seconds, self.backoff_first_seconds * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


NO_RETRY = RetryPolicy()
PROVIDER_RETRY = RetryPolicy(attempts_max=5, backoff_first_seconds=0.1, backoff_max_seconds=2.0)


# --- replies and counters -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallbackReply:
    """The wallet's final answer to one callback: status, raw body, and the body parsed."""

    status: int
    body: bytes
    payload: Any  # the parsed JSON; None when the body is not JSON
    attempts: int

    @property
    def acknowledged(self) -> bool:
        """A definitive answer; a 5xx means 'not confirmed' (the call may or may not have run)."""
        return self.status < 500

    @property
    def data(self) -> Any:
        return self.payload.get("data") if isinstance(self.payload, dict) else None


class CallbackUndelivered(Exception):
    """No HTTP answer at all (timeouts, refused or dropped connections) after every attempt."""


@dataclass
class CallStats:
    calls: int = 0
    attempts: int = 0
    undelivered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "path status" -> final answers

    @property
    def retries(self) -> int:
        return self.attempts - self.calls


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def print_answer(status: int, body: bytes) -> int:
    """`call` and `admin` show an answer so: its status, then its JSON indented (a body that is
    not JSON as it came). -> the command's exit code: 0 on a 2xx, else 1."""
    parsed = parse_json(body)
    shown = (
        body.decode(errors="replace")
        if parsed is None
        else orjson.dumps(parsed, option=orjson.OPT_INDENT_2).decode()
    )
    print(f"< {status}\n{shown}")
    return 0 if 200 <= status < 300 else 1


# --- the client ---------------------------------------------------------------------------------


class HttpClient:
    """An aiohttp session made on first use (a ClientSession belongs to the running event loop)
    and closed by `close()` or the `async with` block."""

    def __init__(self, timeout_seconds: float, connections_max: int = CONNECTIONS_MAX) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._connections_max = connections_max
        self._session: aiohttp.ClientSession | None = None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._connections_max),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class ProviderClient(HttpClient):
    """Posts signed callbacks to one wallet; safe to use from many tasks at once."""

    def __init__(
        self,
        wallet_url: str,
        public_key: str,
        secret: str,
        retry: RetryPolicy = NO_RETRY,
        timeout_seconds: float = CALLBACK_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(timeout_seconds)
        self.wallet_url = wallet_url.rstrip("/")
        self.public_key = public_key
        self.secret = secret
        self.retry = retry
        self.stats = CallStats()

    async def post(
        self, path: str, payload: dict[str, Any], retry: RetryPolicy | None = None
    ) -> CallbackReply:
        return await self.post_raw(path, encode(payload), retry=retry)

    async def post_raw(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> CallbackReply:
        """Post `body` as is; `headers` replace the signed ones (to send a bad signature).

        Returns the last answer (a 5xx when every attempt got one); raises CallbackUndelivered
        when the last attempt got no answer at all.
        """
        policy = retry or self.retry
        if headers is None:
            headers = signed_headers(self.public_key, self.secret, body)
        self.stats.calls += 1
        failure = ""
        for attempt in range(1, policy.attempts_max + 1):
            if attempt > 1:
                await asyncio.sleep(policy.backoff_seconds(attempt - 1))
            self.stats.attempts += 1
            try:
                async with self._client_session().post(
                    self.wallet_url + path, data=body, headers=headers
                ) as response:
                    status, answer = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                log.debug("%s attempt %d: no answer (%s)", path, attempt, failure)
                continue
            if status < 500 or attempt == policy.attempts_max:
                self.stats.statuses[f"{path} {status}"] += 1
                return CallbackReply(status, answer, parse_json(answer), attempt)
            log.debug("%s attempt %d: %d, retrying", path, attempt, status)
        self.stats.undelivered += 1
        self.stats.statuses[f"{path} undelivered"] += 1
        raise CallbackUndelivered(
            f"{path}: no answer after {policy.attempts_max} attempts: {failure}"
        )

    async def deliver(self, path: str, payload: dict[str, Any]) -> CallbackReply | None:
        """Post with the client's retries; None when the wallet never answered, so the caller
        must treat the call's outcome as unknown."""
        try:
            return await self.post(path, payload)
        except CallbackUndelivered as exc:
            log.warning("undelivered: %s", exc)
            return None


# --- callback bodies (docs/protocol.md §4) --------------------------------------------------------


def encode(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


def _present(payload: dict[str, Any]) -> dict[str, Any]:
    """Optional fields are omitted, not sent as null."""
    return {name: value for name, value in payload.items() if value is not None}


def auth_body(
    *,
    session_token: str,
    user_token: str | None = None,
    currency: str | None = None,
    game: str | None = None,
    platform: str | None = None,
) -> dict[str, Any]:
    return _present(
        {
            "session_token": session_token,
            "user_token": user_token,
            "platform": platform,
            "currency": currency,
            "game": game,
        }
    )


def balance_body(*, user_id: str, currency: str | None = None) -> dict[str, Any]:
    return _present({"user_id": user_id, "currency": currency})


def bet_body(
    *,
    user_id: str,
    session_token: str,
    amount_millis: int,
    currency: str,
    provider_tx_id: str,
    round_id: str,
    game: str,
    action: str = "BET",
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "session_token": session_token,
        "amount": amount_millis,
        "currency": currency,
        "provider_tx_id": provider_tx_id,
        "round_id": round_id,
        "game": game,
        "action": action,
    }


def win_body(
    *,
    user_id: str,
    amount_millis: int,
    currency: str,
    provider_tx_id: str,
    round_id: str,
    game: str,
    bet_tx_id: str | None = None,
    session_token: str | None = None,
    action: str = "WIN",
) -> dict[str, Any]:
    return _present(
        {
            "user_id": user_id,
            "session_token": session_token,
            "amount": amount_millis,
            "currency": currency,
            "provider_tx_id": provider_tx_id,
            "withdraw_provider_tx_id": bet_tx_id,
            "round_id": round_id,
            "game": game,
            "action": action,
        }
    )


def rollback_body(
    *,
    user_id: str,
    provider_tx_id: str,
    bet_tx_id: str,
    round_id: str,
    game: str,
    amount_millis: int | None = None,
    currency: str | None = None,
) -> dict[str, Any]:
    return _present(
        {
            "user_id": user_id,
            "amount": amount_millis,
            "currency": currency,
            "provider_tx_id": provider_tx_id,
            "withdraw_provider_tx_id": bet_tx_id,
            "round_id": round_id,
            "game": game,
            "action": "ROLL_BACK",
        }
    )


def close_round_tx_id(round_id: str, operator_id: str) -> str:
    return f"{round_id}-{operator_id}-close-round"


def _coefficient_json(coefficient: Decimal) -> int | float:
    # The shortest float repr of a 2..15-digit decimal reads back as that decimal, so a native
    # JSON number carries it exactly; whole multipliers (0 = lost) go out as integers.
    if coefficient == coefficient.to_integral_value():
        return int(coefficient)
    return float(coefficient)


def close_round_body(
    *,
    round_id: str,
    operator_id: str,
    game: str,
    stakes_millis: Sequence[int],
    coefficients: Sequence[Decimal],
    as_list: bool = False,
    as_text: bool = False,
) -> dict[str, Any]:
    """CLOSE_ROUND: per-bet stakes and cash-out multipliers, positionally aligned.

    `as_list` sends `[{"name", "value"}]` instead of `{"name": value}`; `as_text` sends each value
    as a JSON-encoded string (`"[0,2.35]"`) instead of a native array: the four formats GP uses.
    """
    if as_text:
        stakes: Any = "[" + ",".join(str(stake) for stake in stakes_millis) + "]"
        multipliers: Any = "[" + ",".join(str(c) for c in coefficients) + "]"
    else:
        stakes = list(stakes_millis)
        multipliers = [_coefficient_json(c) for c in coefficients]
    values = {COEFFICIENTS_ATTRIBUTE: multipliers, STAKES_ATTRIBUTE: stakes}
    attributes: Any = (
        [{"name": name, "value": value} for name, value in values.items()] if as_list else values
    )
    return {
        "provider_tx_id": close_round_tx_id(round_id, operator_id),
        "round_id": round_id,
        "game": game,
        "action": "CLOSE_ROUND",
        "amount": 0,
        "attributes": attributes,
    }


def paid_millis(stake_millis: int, coefficient: Decimal) -> int:
    """What a cash-out pays: stake times multiplier, rounded down to a milli
    (docs/protocol.md §7)."""
    return int((stake_millis * coefficient).to_integral_value(rounding=ROUND_FLOOR))


# --- players from the operator ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlayerSession:
    """A player with a live session at the wallet, ready to bet."""

    user_id: str
    session_token: str
    currency: str


class PlayerSource(Protocol):
    async def new_player(self, currency: str, balance_millis: int) -> PlayerSession: ...


class AdminError(RuntimeError):
    """The admin API refused a call."""


class OperatorAdmin(HttpClient):
    """Client of this project's admin API (bearer token): players, sessions, launches."""

    def __init__(self, admin_url: str, admin_token: str, user_id_prefix: str = "") -> None:
        super().__init__(ADMIN_TIMEOUT_SECONDS)
        self.admin_url = admin_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"}
        # unique per run, so that repeated runs against one wallet never collide
        self._user_id_prefix = user_id_prefix or f"p-{secrets.token_hex(4)}"
        self._user_numbers = itertools.count(1)

    async def call(
        self, method: str, path: str, payload: dict[str, Any] | None, expected_status: int
    ) -> Any:
        """-> the envelope's `data`; AdminError on any other status."""
        async with self._client_session().request(
            method, self.admin_url + path, json=payload, headers=self._headers
        ) as response:
            body = await response.read()
            if response.status != expected_status:
                text = body[:ERROR_EXCERPT_BYTES_MAX].decode(errors="replace")
                raise AdminError(f"{method} {path} answered {response.status}: {text}")
        parsed = parse_json(body)
        return parsed.get("data") if isinstance(parsed, dict) else None

    def new_user_id(self) -> str:
        return f"{self._user_id_prefix}-{next(self._user_numbers)}"

    async def create_player(self, user_id: str, currency: str, balance_millis: int) -> None:
        await self.call(
            "POST",
            "/admin/players",
            {"user_id": user_id, "currency": currency, "balance": balance_millis},
            201,
        )

    async def open_session(self, user_id: str) -> str:
        data = await self.call("POST", "/admin/sessions", {"user_id": user_id}, 201)
        return str(data["session_token"])

    async def launch(
        self,
        user_id: str,
        game: str,
        platform: str = "desktop",
        portal_mode: str = "real",
        return_url: str = "https://operator.example/lobby",
        language: str = "en",
    ) -> dict[str, Any]:
        """POST /admin/launch: the operator asks the provider for a game launch."""
        return await self.call(
            "POST",
            "/admin/launch",
            {
                "user_id": user_id,
                "game": game,
                "platform": platform,
                "portal_mode": portal_mode,
                "return_url": return_url,
                "language": language,
            },
            200,
        )

    async def balance_millis(self, user_id: str) -> int:
        data = await self.call("GET", f"/admin/players/{user_id}", None, 200)
        return int(data["balance"])

    async def new_player(self, currency: str, balance_millis: int) -> PlayerSession:
        user_id = self.new_user_id()
        await self.create_player(user_id, currency, balance_millis)
        return PlayerSession(user_id, await self.open_session(user_id), currency)


# --- command-line arguments both tools share ----------------------------------------------------


STACK_NOTE = " (default: the running `wallet-gateway up`'s)"


def add_wallet_arguments(parser: argparse.ArgumentParser) -> None:
    """The wallet to call; each option not given is taken from the stack `wallet-gateway up`
    runs from --data-dir (the CLI fills them in: gateway.cli)."""
    parser.add_argument("--url", help="the wallet's callback base URL" + STACK_NOTE)
    parser.add_argument("--public-key", help="the provider key pair's public key" + STACK_NOTE)
    parser.add_argument("--secret", help="the provider key pair's secret" + STACK_NOTE)
    add_data_dir_argument(parser)


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="the DATA_DIR of the `wallet-gateway up` to take defaults from"
        " (default: $DATA_DIR, else .wallet-gateway)",
    )
    parser.add_argument(
        "--timeout-seconds",
        type=float,
        default=CALLBACK_TIMEOUT_SECONDS,
        help=f"per-attempt timeout of a callback (default {CALLBACK_TIMEOUT_SECONDS})",
    )


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-url", help="this project's admin API base URL (players, launch)" + STACK_NOTE
    )
    parser.add_argument(
        "--admin-token", default="", help="bearer token of the admin API" + STACK_NOTE
    )


def require_wallet_arguments(args: argparse.Namespace) -> None:
    """ValueError naming every wallet option neither given nor found in a running stack."""
    missing = [
        "--" + name.replace("_", "-")
        for name in ("url", "public_key", "secret")
        if not getattr(args, name)
    ]
    if missing:
        raise ValueError(f"needs {', '.join(missing)}: {nothing_running_from(args.data_dir)}")
