"""Provider-shaped load on the wallet: run with `locust -f loadtests/locustfile.py Provider`.

Each simulated player is created through the admin API, authenticates, then plays rounds:
classic rounds (BET, then WIN or a 0 WIN for a loss) and server-driven rounds (several bets,
per-bet cash-outs, one CLOSE_ROUND whose aggregates match the bets). About 2% of rounds are
voided by ROLL_BACK, about 1% of money calls are sent twice with the identical body (the
second answer must be identical), and every few rounds the player asks for its balance.

Two more user classes, for the benchmark (`wallet-gateway bench`): `NewBets` sends only new
bets (the throughput the issue budgets), and `EmptyHandlerCeiling` sends the same signed bet body
to an empty aiohttp handler (the ceiling the gateway is compared with).

Everything is set by environment variables (see `LoadSettings`), else taken from the running
`wallet-gateway up` of DATA_DIR; the target is that stack's, or 127.0.0.1:8080, unless `--host`
says otherwise. Bound it with `--run-time`. `LOAD_THROUGHPUT_PER_USER` fixes
each user's rate (requests per second) instead of going flat out.
"""

import itertools
import json
import os
import random
import secrets
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from locust import FastHttpUser, between, constant_throughput, events, task

from gateway.recorded_stack import data_dir_of, running_stack
from gateway.signing import KeyRing, signed_headers
from provider.client import (
    BALANCE_PATH,
    DEPOSIT_PATH,
    WITHDRAW_PATH,
    auth_body,
    balance_body,
    bet_body,
    close_round_body,
    encode,
    paid_millis,
    rollback_body,
    win_body,
)

ADMIN_TIMEOUT_SECONDS = 10
COEFFICIENT_CHOICES = tuple(Decimal(text) for text in ("1.25", "1.5", "2", "2.35", "3.1", "5"))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


# What the environment does not say comes from the stack a `wallet-gateway up` runs from
# DATA_DIR (.wallet-gateway in the working folder by default): locust needs no exports there.
STACK = running_stack(data_dir_of(None))


@dataclass(frozen=True)
class LoadSettings:
    admin_url: str = os.environ.get(
        "ADMIN_URL", STACK.admin_url if STACK else "http://127.0.0.1:8081"
    )
    admin_token: str = os.environ.get("ADMIN_TOKEN", STACK.admin_token if STACK else "")
    provider_keys: str = os.environ.get("PROVIDER_KEYS", STACK.provider_keys if STACK else "")
    operator_id: str = os.environ.get("OPERATOR_ID", "operator")
    currency: str = os.environ.get("LOAD_CURRENCY", "USD")
    opening_balance_millis: int = int(os.environ.get("LOAD_BALANCE_MILLIS", 10**12))
    stake_millis: int = int(os.environ.get("LOAD_STAKE_MILLIS", 1000))
    win_ratio: float = _env_float("LOAD_WIN_RATIO", 0.45)
    rollback_ratio: float = _env_float("LOAD_ROLLBACK_RATIO", 0.02)
    duplicate_ratio: float = _env_float("LOAD_DUPLICATE_RATIO", 0.01)
    server_driven_ratio: float = _env_float("LOAD_SERVER_DRIVEN_RATIO", 0.3)
    server_driven_bets_max: int = int(os.environ.get("LOAD_SERVER_DRIVEN_BETS_MAX", 3))
    balance_every_rounds: int = int(os.environ.get("LOAD_BALANCE_EVERY_ROUNDS", 10))
    wait_seconds_max: float = _env_float("LOAD_WAIT_SECONDS_MAX", 0.0)
    throughput_per_user: float = _env_float("LOAD_THROUGHPUT_PER_USER", 0.0)
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))


SETTINGS = LoadSettings()
_user_numbers = itertools.count(1)


def _admin_call(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        SETTINGS.admin_url + path,
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {SETTINGS.admin_token}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_SECONDS) as response:
        return json.load(response)["data"]


@events.init_command_line_parser.add_listener
def _default_host(parser: Any) -> None:
    parser.set_defaults(host=STACK.callbacks_url if STACK else "http://127.0.0.1:8080")


def _wait_time() -> Any:
    if SETTINGS.throughput_per_user > 0:
        return constant_throughput(SETTINGS.throughput_per_user)
    return between(0, SETTINGS.wait_seconds_max)


def stake_bet(
    user_id: str, session_token: str, tx_id: str, round_id: str, game: str
) -> dict[str, Any]:
    """A bet of the configured stake, in the configured currency."""
    return bet_body(
        user_id=user_id,
        session_token=session_token,
        amount_millis=SETTINGS.stake_millis,
        currency=SETTINGS.currency,
        provider_tx_id=tx_id,
        round_id=round_id,
        game=game,
    )


class Player(FastHttpUser):
    """A player created through the admin API, authenticated, with the signed-call helpers."""

    abstract = True
    wait_time = _wait_time()

    def on_start(self) -> None:
        key_ring = KeyRing.parse(SETTINGS.provider_keys)
        self.public_key = key_ring.public_keys()[0]
        self.secret = key_ring.secret(self.public_key)
        self.user_id = f"load-{SETTINGS.run_id}-{os.getpid()}-{next(_user_numbers)}"
        self.tx_numbers = itertools.count(1)
        self.rounds_played = 0
        _admin_call(
            "/admin/players",
            {
                "user_id": self.user_id,
                "currency": SETTINGS.currency,
                "balance": SETTINGS.opening_balance_millis,
            },
        )
        self.session_token = _admin_call("/admin/sessions", {"user_id": self.user_id})[
            "session_token"
        ]
        self._post("/auth", "/auth", auth_body(session_token=self.session_token), duplicate=False)

    def _tx_id(self) -> str:
        return f"{self.user_id}-{next(self.tx_numbers)}"

    def _post(
        self, path: str, name: str, payload: dict[str, Any], duplicate: bool | None = None
    ) -> dict[str, Any] | None:
        """Sign and send; 1% of money calls go twice and must get the identical answer."""
        body = encode(payload)
        headers = signed_headers(self.public_key, self.secret, body)
        with self.client.post(
            path, data=body, headers=headers, name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return None
            first = response.content
        if duplicate is None:
            duplicate = random.random() < SETTINGS.duplicate_ratio
        if duplicate:
            with self.client.post(
                path, data=body, headers=headers, name=f"{name} (duplicate)", catch_response=True
            ) as response:
                if response.content != first:
                    response.failure("duplicate answered differently")
        return json.loads(first)["data"]

    def _bet(self, round_id: str, game: str, duplicate: bool | None = None) -> str:
        tx = self._tx_id()
        self._post(
            WITHDRAW_PATH,
            "/withdraw BET",
            stake_bet(self.user_id, self.session_token, tx, round_id, game),
            duplicate,
        )
        return tx

    def _win(self, round_id: str, game: str, bet_tx: str, amount_millis: int) -> None:
        self._post(
            DEPOSIT_PATH,
            "/deposit WIN",
            win_body(
                user_id=self.user_id,
                amount_millis=amount_millis,
                currency=SETTINGS.currency,
                provider_tx_id=self._tx_id(),
                round_id=round_id,
                game=game,
                bet_tx_id=bet_tx,
            ),
        )

    def _roll_back(self, round_id: str, game: str, bet_tx: str) -> None:
        self._post(
            DEPOSIT_PATH,
            "/deposit ROLL_BACK",
            rollback_body(
                user_id=self.user_id,
                provider_tx_id=self._tx_id(),
                bet_tx_id=bet_tx,
                round_id=round_id,
                game=game,
                amount_millis=SETTINGS.stake_millis,
            ),
        )


class Provider(Player):
    """One player's provider traffic: the realistic mix."""

    @task
    def play_round(self) -> None:
        self.rounds_played += 1
        round_id = f"{self.user_id}-r{self.rounds_played}"
        if random.random() < SETTINGS.server_driven_ratio:
            self._play_server_driven_round(round_id)
        else:
            self._play_classic_round(round_id)
        if self.rounds_played % SETTINGS.balance_every_rounds == 0:
            self._post(
                BALANCE_PATH, "/balance", balance_body(user_id=self.user_id), duplicate=False
            )

    def _play_classic_round(self, round_id: str) -> None:
        game = "chicken-race"
        bet_tx = self._bet(round_id, game)
        if random.random() < SETTINGS.rollback_ratio:
            self._roll_back(round_id, game, bet_tx)
            return
        won = random.random() < SETTINGS.win_ratio
        coefficient = random.choice(COEFFICIENT_CHOICES) if won else Decimal(0)
        self._win(round_id, game, bet_tx, paid_millis(SETTINGS.stake_millis, coefficient))

    def _play_server_driven_round(self, round_id: str) -> None:
        """Several bets, per-bet cash-outs or rollbacks, then one CLOSE_ROUND that matches."""
        game = "aviadrone"
        stakes: list[int] = []
        coefficients: list[Decimal] = []
        for _ in range(random.randint(1, SETTINGS.server_driven_bets_max)):
            bet_tx = self._bet(round_id, game)
            if random.random() < SETTINGS.rollback_ratio:
                self._roll_back(round_id, game, bet_tx)
                continue  # a voided bet is not in the provider's aggregate
            coefficient = Decimal(0)
            if random.random() < SETTINGS.win_ratio:
                coefficient = random.choice(COEFFICIENT_CHOICES)
                self._win(round_id, game, bet_tx, paid_millis(SETTINGS.stake_millis, coefficient))
            stakes.append(SETTINGS.stake_millis)
            coefficients.append(coefficient)
        self._post(
            DEPOSIT_PATH,
            "/deposit CLOSE_ROUND",
            close_round_body(
                round_id=round_id,
                operator_id=SETTINGS.operator_id,
                game=game,
                stakes_millis=stakes,
                coefficients=coefficients,
            ),
        )


def post_new_bet(user: FastHttpUser, user_id: str, session_token: str, tx_id: str) -> None:
    """The benchmark's request, the same code for the gateway and for the empty handler, so
    the two phases differ only by the server. A non-2xx answer counts as a locust failure."""
    body = encode(stake_bet(user_id, session_token, tx_id, f"{user_id}-r", "aviadrone"))
    headers = signed_headers(user.public_key, user.secret, body)
    user.client.post(WITHDRAW_PATH, data=body, headers=headers, name="/withdraw BET")


class NewBets(Player):
    """Only new bets, each with a fresh provider_tx_id: the gateway's hot path."""

    @task
    def bet_once(self) -> None:
        post_new_bet(self, self.user_id, self.session_token, self._tx_id())


class EmptyHandlerCeiling(FastHttpUser):
    """The same request (a signed new bet) against loadtests/empty_app.py."""

    wait_time = _wait_time()

    def on_start(self) -> None:
        key_ring = KeyRing.parse(SETTINGS.provider_keys or "ceiling:ceiling")
        public_key = key_ring.public_keys()[0]
        self.tx_numbers = itertools.count(1)
        self.user_id = f"ceiling-{os.getpid()}-{next(_user_numbers)}"
        self.public_key, self.secret = public_key, key_ring.secret(public_key)

    @task
    def post_bet(self) -> None:
        post_new_bet(
            self,
            self.user_id,
            "session-token-of-the-same-length-as-a-real-one",
            f"{self.user_id}-{next(self.tx_numbers)}",
        )
