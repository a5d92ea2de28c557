"""Scenario 6 of the fault suite: hostile input.

While a little honest traffic plays (a few rounds a second, the suite's Traffic), the hostile
side sends, phase after phase:

1. schemathesis: every operation of the running admin listener's `/openapi.json`, valid and
   invalid cases, a fixed number each (deterministic seed); the callbacks signed over their exact
   raw bytes (the document says so: `securitySchemes`), the admin API with the token;
2. hypothesis bodies: a victim's BET / WIN / ROLL_BACK / CLOSE_ROUND / balance query, each broken
   on purpose at least once (non-UTF-8, 10k-deep nesting, duplicate keys, huge and negative
   numbers, NUL, lone surrogates, missing fields, wrong types) plus harmless extras (unknown
   fields, unicode), signed correctly so they reach the parser; and hostile header bytes over raw
   sockets;
3. signatures: a captured honest request replayed to the other endpoints, a signature made with
   another key, other encodings (hex, URL-safe Base64, whitespace, truncated), and the admin
   API without or with a wrong token on every route of the document;
4. limits: slow senders, a never-ending chunked body, oversized bodies (and a gzip bomb), many
   idle connections; each is measured until the gateway cuts it off, or until our own bound
   (scale.seconds). Oversized and endless bodies must be cut (413); the gateway sets no read
   or idle timeout (aiohttp has none by default), so slow senders and idle connections are
   measured and reported, not failed, while new and honest clients must keep being answered.

Then: no 5xx but 503, every refusal in the envelope, the victims' balances unchanged, no
history row or Redis record from a refused call, the honest traffic's money checked as in
every scenario (checks.py) and `reconcile` agreeing, and the honest calls answered within a
bound all along.
"""

# annotations stay text: scenarios.Scale may not exist yet when scenarios.py imports this module
from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import json
import math
import secrets
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from gateway.callbacks import BODY_BYTES_MAX
from gateway.keys import KeySpace
from gateway.redis_connection import connect_background_redis
from gateway.signing import sign_body
from loadtests.bench import LOOPBACK
from loadtests.faults import scenarios  # a module: scenarios.py may import this one at its top
from loadtests.faults.report import ScenarioResult
from loadtests.faults.stack import FaultStack
from loadtests.faults.traffic import CURRENCY, GAME, SLOW_ATTEMPT_MS, Traffic
from persistence.postgres import connect_postgres
from provider.client import (
    AUTH_PATH,
    BALANCE_PATH,
    DEPOSIT_PATH,
    WITHDRAW_PATH,
    OperatorAdmin,
    PlayerSession,
    balance_body,
    bet_body,
)

SEED = 20261203  # every generated case is the same run after run
VICTIMS = 3
VICTIM_BALANCE_MILLIS = 1_000_000
STAKE_MILLIS = 1_000  # a valid stake: a body refused is refused for what was broken in it
DEEP = 10_000  # nesting depth of the deep bodies
SOCKET_TIMEOUT_SECONDS = 10.0
HONEST_ROUNDS_PER_SECOND = 4.0  # "a few bets a second"
HONEST_SECONDS_MAX = 600.0  # the honest load runs until the hostile phases end (cancelled then)
HONEST_P99_MS_MAX = 1_000.0  # a busy 2-core machine
CLIENT_TIMEOUT_SECONDS = 2  # the stack's: slow senders and idle sockets are cut after it
CUT_MARGIN_SECONDS = 1.5  # a busy 2-core machine, the timer's check
SLOW_BYTE_SECONDS = 0.1  # a slow sender's pace: one byte per 100 ms
IDLE_CONNECTIONS = 200
FRESH_CLIENT_SECONDS = 0.2
CHUNK_BYTES = 1024
DETAILS_MAX = 10
CALLBACK_PATHS = (AUTH_PATH, WITHDRAW_PATH, DEPOSIT_PATH, BALANCE_PATH)
MONEY_PATHS = (WITHDRAW_PATH, DEPOSIT_PATH)
PROVIDER_UNAVAILABLE = 502
TX_PREFIX = "hx-"  # every provider_tx_id the hostile side writes: none may be stored
OTHER_SECRET = "not-the-providers-secret"


# --- the tally ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the hostile side sent and what it got back."""

    sent: Counter[str] = field(default_factory=Counter)  # requests, by phase
    statuses: Counter[int] = field(default_factory=Counter)
    five_xx: Counter[int] = field(default_factory=Counter)
    no_answer: Counter[str] = field(default_factory=Counter)  # connection closed, by phase
    not_envelope: int = 0  # an answer of the app that is not {code, message, data} = status
    accepted: Counter[str] = field(default_factory=Counter)  # 2xx where a refusal was due
    unauthorised_tried: int = 0  # callbacks with a bad signature (or bad signing headers)
    unauthorised_accepted: int = 0  # ... answered 2xx
    unauthorised_not_401: int = 0  # ... of the signature phase, refused but not with 401
    admin_tried: int = 0  # admin calls without or with a wrong token
    admin_accepted: int = 0  # ... answered 2xx
    admin_not_401: int = 0  # ... refused but not with 401
    accepted_tx_ids: set[str] = field(default_factory=set)  # 2xx schemathesis money calls
    accepted_adjustments: int = 0
    launch_502: int = 0
    details: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.details) < DETAILS_MAX:
            self.details.append(text)

    def answer(
        self, phase: str, status: int | None, body: bytes, *, envelope: bool, launch: bool = False
    ) -> None:
        """Count one answer; `envelope`: the app answered (not aiohttp's parser), so the
        protocol's envelope is due; `launch`: /admin/launch, which calls the provider."""
        self.sent[phase] += 1
        if status is None:
            self.no_answer[phase] += 1
            return
        self.statuses[status] += 1
        if status == PROVIDER_UNAVAILABLE and launch:
            # the stack has no provider to launch games at (PROVIDER_BASE_URL unset): the
            # documented 502 of /admin/launch, not a failure of the gateway
            self.launch_502 += 1
        elif status >= 500:
            self.five_xx[status] += 1
            if str(status) != scenarios.EXPECTED_5XX:
                self.note(f"{phase}: {status} {body[:160]!r}")
        if envelope and not is_envelope(status, body):
            self.not_envelope += 1
            self.note(f"{phase}: not the envelope: {status} {body[:160]!r}")


def is_envelope(status: int, body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(parsed, dict)
        and set(parsed) == {"code", "message", "data"}
        and parsed["code"] == status
    )


# --- raw HTTP: every byte as we mean it ---------------------------------------------------------


def raw_request(port: int, request: bytes) -> tuple[int | None, bytes]:
    """Send `request` as is on a new connection (it should say `Connection: close`); -> the
    answer's status and body, or (None, b"") when the server closed without one."""
    with socket.create_connection((LOOPBACK, port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
        # no shutdown(SHUT_WR): aiohttp drops a request whose sender half-closed first
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server may answer (413) and close before it read everything
        data = b""
        with contextlib.suppress(OSError):
            # until the answer is whole: after a 413 aiohttp lingers up to 10 s reading the
            # rest of the body before it closes
            while not answer_complete(data) and (chunk := sock.recv(65536)):
                data += chunk
    return parse_answer(data)


def answer_complete(data: bytes) -> bool:
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def parse_answer(data: bytes) -> tuple[int | None, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None, b""
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")[1:]
            if line.lower().startswith(b"content-length:")
        ),
        len(body),
    )
    return int(parts[1]), body[:length]


def http_request(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + LOOPBACK.encode()]
    lines += [name + b": " + value for name, value in headers]
    if body and not any(name.lower() == b"content-length" for name, _ in headers):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def signing_headers(public_key: str, signature: str | bytes) -> list[tuple[bytes, bytes]]:
    sig = signature if isinstance(signature, bytes) else signature.encode()
    return [
        (b"Content-Type", b"application/json"),
        (b"X-Public-Key", public_key.encode()),
        (b"X-Signature", sig),
    ]


# --- what the scenario knows of the stack -------------------------------------------------------


@dataclass
class Target:
    gateway_port: int
    admin_port: int
    public_key: str
    secret: str
    admin_token: str
    victims: list[PlayerSession]

    def signed(self, path: str, body: bytes) -> bytes:
        headers = signing_headers(self.public_key, sign_body(self.secret, body))
        return http_request("POST", path, headers, body)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- 1. schemathesis against the running document -----------------------------------------------


def fuzz_with_schemathesis(target: Target, examples: int, tally: Tally) -> list[str]:
    """Every operation of the admin listener's /openapi.json, positive and negative cases; the
    callbacks signed. -> notes (operations whose cases could not be generated)."""
    # imported here: the dev extras' tools; the suite runs without them otherwise
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import HypothesisDeprecationWarning, Unsatisfiable

    admin_url = f"http://{LOOPBACK}:{target.admin_port}"
    gateway_url = f"http://{LOOPBACK}:{target.gateway_port}"
    schema = schemathesis.openapi.from_url(admin_url + "/openapi.json", timeout=10)
    raw_paths: dict[str, Any] = schema.raw_schema["paths"]
    notes: list[str] = []
    nothing_to_negate: list[str] = []
    operations = 0
    session = requests.Session()

    def send(case: Any, on_callbacks: bool) -> None:
        kwargs = case.as_transport_kwargs(base_url=gateway_url if on_callbacks else admin_url)
        if "json" in kwargs:
            body = json.dumps(kwargs["json"]).encode()
        else:
            data = kwargs.get("data") or b""
            body = data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogatepass")
        headers = {
            name: value
            for name, value in kwargs["headers"].items()
            if name.lower() not in ("x-signature", "x-public-key", "authorization")
        }
        if on_callbacks:  # over the exact bytes sent: the case then reaches the parser
            headers["X-Public-Key"] = target.public_key
            headers["X-Signature"] = sign_body(target.secret, body)
        else:  # the token: the cases reach the handlers (tokens refused: phase 3)
            headers["Authorization"] = f"Bearer {target.admin_token}"
        try:
            response = session.request(
                kwargs["method"],
                kwargs["url"],
                params=kwargs.get("params"),
                headers=headers,
                cookies=kwargs.get("cookies"),
                data=body,
                timeout=SOCKET_TIMEOUT_SECONDS,
            )
        except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
            tally.sent["schemathesis: not sendable by requests"] += 1
            return
        except requests.RequestException:
            tally.answer("schemathesis", None, b"", envelope=True)
            return
        status, answer = response.status_code, response.content
        # /metrics and the document itself answer in their own formats when they succeed
        envelope = status >= 400 or case.operation.path not in ("/metrics", "/openapi.json")
        launch = case.operation.path == "/admin/launch"
        tally.answer("schemathesis", status, answer, envelope=envelope, launch=launch)
        if 200 <= status < 300 and case.method.upper() == "POST":
            if on_callbacks:
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    tally.accepted_tx_ids.add(str(json.loads(body).get("provider_tx_id")))
            elif case.operation.path.endswith("/adjustments"):
                tally.accepted_adjustments += 1

    def run_operation(operation: Any, mode: Any, on_callbacks: bool) -> None:
        @hypothesis_seed(SEED)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy(mode))
        def run(case: Any) -> None:
            send(case, on_callbacks)

        with warnings.catch_warnings():
            # schemathesis' own strategies use `random`: hypothesis warns on every operation
            warnings.simplefilter("ignore", HypothesisDeprecationWarning)
            run()

    for result in schema.get_all_operations():
        operation = result.ok()
        servers = raw_paths[operation.path].get("servers") or []
        on_callbacks = any("callback" in server.get("description", "") for server in servers)
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                run_operation(operation, mode, on_callbacks)
            except Unsatisfiable:  # no parameter, no body: no invalid case to make
                nothing_to_negate.append(operation.label)
            except Exception as exc:  # a case schemathesis cannot build: noted, not fatal
                notes.append(
                    f"schemathesis {mode.value} {operation.label} not run: "
                    f"{type(exc).__name__}: {str(exc)[:200]}"
                )
        operations += 1
    notes.append(
        f"schemathesis: {operations} operations, valid and invalid cases; no invalid case "
        f"exists for {', '.join(nothing_to_negate) or 'none'}"
    )
    session.close()
    return notes


# --- 2. hypothesis bodies and hostile header bytes ----------------------------------------------

# A body is a list of (key, raw JSON value) pairs: keys may repeat, values may be any bytes.
Pairs = list[tuple[str, bytes]]
DEEP_LIST = b"[" * DEEP + b"]" * DEEP
DEEP_OBJECT = b'{"a":' * DEEP + b"1" + b"}" * DEEP
# never a valid identifier (1..128 printable characters, or a JSON integer)
BAD_IDENTIFIERS = [
    b'""',
    b'"a\\u0000b"',
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"\xff\xfe"',
    b'"\xc0\xaf"',
    b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8 (CESU): not UTF-8
    b'"a\x00b"',  # a raw NUL in a string: not JSON
    b'"\\u0007bell"',
    b'"line\\nbreak"',
    _json("x" * 129),
    b"1.5",
    b"true",
    b"null",
    b"[]",
    b"{}",
    DEEP_LIST,
]
BAD_AMOUNTS = [
    b"-1",
    b"-1000",
    b"-9223372036854775809",
    b"1000000000000001",  # AMOUNT_MILLIS_MAX + 1
    b"9223372036854775808",
    b"18446744073709551616",
    b"1" + b"0" * 400,
    b"1e308",
    b"1e400",
    b"-1e400",
    b"1.5",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"0x3e8",
    b"01000",
    b'"1000"',
    b"true",
    b"null",
    b"[1000]",
    b"{}",
    DEEP_LIST,
]
BAD_ROOTS = [
    b"",
    b"[]",
    b"null",
    b"1000",
    b'"BET"',
    DEEP_LIST,
    DEEP_OBJECT,
    b"\xff\xfe{}",
    b"\xef\xbb\xbf{}",  # a BOM before an empty object
    b"{" * DEEP,
]


def money_bodies(victim: PlayerSession, tx: str) -> dict[str, tuple[str, Pairs]]:
    """Valid calls of a victim, by name -> (path, pairs); the strategy breaks each."""
    round_id = f"{TX_PREFIX}r-{tx}"
    common = [
        ("user_id", _json(victim.user_id)),
        ("currency", _json(CURRENCY)),
        ("provider_tx_id", _json(TX_PREFIX + tx)),
        ("round_id", _json(round_id)),
        ("game", _json(GAME)),
    ]
    return {
        "bet": (
            WITHDRAW_PATH,
            [
                ("action", b'"BET"'),
                *common,
                ("session_token", _json(victim.session_token)),
                ("amount", _json(STAKE_MILLIS)),
            ],
        ),
        # a WIN naming a bet not seen yet is applied (an early win): so it must be broken too
        "win": (
            DEPOSIT_PATH,
            [
                ("action", b'"WIN"'),
                *common,
                ("amount", _json(STAKE_MILLIS)),
                ("withdraw_provider_tx_id", _json(f"{TX_PREFIX}b-{tx}")),
            ],
        ),
        "rollback": (
            DEPOSIT_PATH,
            [
                ("action", b'"ROLL_BACK"'),
                # no currency: an unknown field, ignored; dropping it would break nothing
                *(pair for pair in common if pair[0] != "currency"),
                ("withdraw_provider_tx_id", _json(f"{TX_PREFIX}b-{tx}")),
            ],
        ),
        "close-round": (
            DEPOSIT_PATH,
            [
                ("action", b'"CLOSE_ROUND"'),
                ("provider_tx_id", _json(TX_PREFIX + tx)),
                ("round_id", _json(round_id)),
                ("game", _json(GAME)),
                ("amount", b"0"),
                ("attributes", b"{}"),
            ],
        ),
        "balance": (BALANCE_PATH, [("user_id", _json(victim.user_id)), ("currency", b'"USD"')]),
    }


OPTIONAL_FIELDS = {"win": ("withdraw_provider_tx_id",), "balance": ("currency",)}


def render(pairs: Pairs) -> bytes:
    return b"{" + b",".join(_json(key) + b":" + value for key, value in pairs) + b"}"


def hostile_body_strategy(target: Target) -> Any:
    """(label, path, body bytes): a victim's call with at least one breakage, some harmless
    extras (unknown fields are ignored by the protocol: they cannot make a call valid)."""
    from hypothesis import strategies as st

    run_id = secrets.token_hex(3)  # fixed while hypothesis draws: the strategy is replayable

    @st.composite
    def bodies(draw: Any) -> tuple[str, str, bytes]:
        victim = draw(st.sampled_from(target.victims))
        kind = draw(st.sampled_from(["bet", "win", "rollback", "close-round", "balance"]))
        number = draw(st.integers(0, 2**32))
        path, pairs = money_bodies(victim, f"{run_id}-{number}")[kind]
        extras = draw(
            st.lists(
                st.tuples(
                    st.text(min_size=1, max_size=12).filter(lambda key: key not in dict(pairs)),
                    st.one_of(
                        st.text(max_size=40).map(_json),
                        st.integers(-(2**63), 2**64 - 1).map(_json),
                        st.just(b"[" * 200 + b"]" * 200),
                        st.just(b'"\xe2\x82\xac \xf0\x9f\x8e\xb2"'),  # valid UTF-8
                    ),
                ),
                max_size=3,
            )
        )
        pairs = pairs + extras
        breakage = draw(
            st.sampled_from(
                [
                    "missing",
                    "identifier",
                    "amount",
                    "duplicate",
                    "action",
                    "currency",
                    "root",
                    "truncated",
                    "trailing",
                    "non-utf8",
                ]
            )
        )
        # an optional field dropped or null leaves a valid call: only required ones are broken
        keys = [
            key
            for key, _ in pairs[: len(pairs) - len(extras)]
            if key not in OPTIONAL_FIELDS.get(kind, ())
        ]
        if breakage in ("amount", "action") and kind in ("balance",):
            breakage = "identifier"
        if breakage == "currency" and kind in ("close-round", "rollback"):
            breakage = "missing"
        if breakage == "missing":
            gone = draw(st.sampled_from(keys))
            body = render([pair for pair in pairs if pair[0] != gone])
        elif breakage == "identifier":
            key = draw(
                st.sampled_from(
                    [k for k in keys if k not in ("action", "amount", "currency", "attributes")]
                )
            )
            bad = draw(st.sampled_from(BAD_IDENTIFIERS))
            body = render([(k, bad if k == key else v) for k, v in pairs])
        elif breakage == "amount":
            bad = draw(st.sampled_from(BAD_AMOUNTS))
            if kind == "close-round":
                bad = draw(st.sampled_from([*BAD_AMOUNTS, b"1"]))
            body = render([(k, bad if k == "amount" else v) for k, v in pairs])
            if kind == "rollback":  # its amount is optional: an added bad one
                body = render([*pairs, ("amount", bad)])
        elif breakage == "duplicate":
            # the same key again, the last one bad: the parser keeps the last
            key = draw(st.sampled_from(keys))
            bad = b"-1" if key == "amount" else draw(st.sampled_from(BAD_IDENTIFIERS[:6]))
            body = render([*pairs, (key, bad)])
        elif breakage == "action":
            bad = draw(st.sampled_from([b'"bet"', b'"BETT"', b'"DEPOSIT"', b"1", b"null"]))
            body = render([(k, bad if k == "action" else v) for k, v in pairs])
        elif breakage == "currency":
            bad = draw(st.sampled_from([b'"usd"', b'"US"', b'"USDT"', b'"\xc3\x9cSD"', b"840"]))
            body = render([(k, bad if k == "currency" else v) for k, v in pairs])
        elif breakage == "root":
            body = draw(st.sampled_from(BAD_ROOTS))
        elif breakage == "truncated":
            whole = render(pairs)
            body = whole[: draw(st.integers(0, len(whole) - 1))]
        elif breakage == "trailing":
            tail = draw(st.sampled_from([b"x", b",", b"}", b"{}", b"\x00", b"//c"]))
            body = render(pairs) + tail
        else:
            key = draw(st.sampled_from(keys))
            body = render([(k, b'"\xff' + v[1:] if k == key else v) for k, v in pairs])
        return f"{kind}/{breakage}", path, body

    return bodies()


def send_hostile_bodies(target: Target, examples: int, tally: Tally) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import HypothesisDeprecationWarning

    @hypothesis_seed(SEED)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_body_strategy(target))
    def run(item: tuple[str, str, bytes]) -> None:
        label, path, body = item
        status, answer = raw_request(target.gateway_port, target.signed(path, body))
        tally.answer("bodies", status, answer, envelope=True)
        if status is not None and status < 300:
            tally.accepted["bodies"] += 1
            tally.note(f"accepted a broken body ({label}): {body[:120]!r} -> {answer[:120]!r}")
        elif status is not None and status >= 500:
            tally.note(f"body {label} -> {status}: {body[:120]!r}")

    with warnings.catch_warnings():
        # the honest traffic draws from `random` in the other thread meanwhile: hypothesis
        # sees the global state move while it generates and warns; nothing of ours uses it
        warnings.simplefilter("ignore", HypothesisDeprecationWarning)
        run()


def hostile_headers(target: Target) -> Iterator[tuple[str, int, bytes, bool]]:
    """(label, port, raw request, the app must answer in the envelope); a victim's valid bet
    each time (a header that let it through would move money). False: aiohttp's parser refuses
    it before the app (a plain-text 400)."""
    victim = target.victims[0]
    body = _json(
        bet_body(
            user_id=victim.user_id,
            session_token=victim.session_token,
            amount_millis=STAKE_MILLIS,
            currency=CURRENCY,
            provider_tx_id=f"{TX_PREFIX}hdr-{secrets.token_hex(4)}",
            round_id=f"{TX_PREFIX}hdr",
            game=GAME,
        )
    )
    good = sign_body(target.secret, body).encode()
    key = target.public_key.encode()
    json_type = (b"Content-Type", b"application/json")
    signed = [json_type, (b"X-Public-Key", key), (b"X-Signature", good)]
    length = str(len(body)).encode()
    bets: list[tuple[str, list[tuple[bytes, bytes]], bool]] = [
        ("signature not UTF-8", [*signed[:2], (b"X-Signature", b"\xff\xfe" + good[2:])], True),
        ("public key not UTF-8", [json_type, (b"X-Public-Key", key + b"\xff"), signed[2]], True),
        (
            "public key latin-1",
            [json_type, (b"X-Public-Key", b"f\xe4ults-public"), signed[2]],
            True,
        ),
        (
            "signature twice, the first wrong",
            [*signed[:2], (b"X-Signature", b"AAAA"), signed[2]],
            True,
        ),
        (
            "public key twice, the first unknown",
            [json_type, (b"X-Public-Key", b"nobody"), *signed[1:]],
            True,
        ),
        (
            "NUL in the signature",
            [*signed[:2], (b"X-Signature", good[:4] + b"\x00" + good[4:])],
            False,
        ),
        ("header without a colon", [*signed[:2], (b"X-Signature " + good, b"")], False),
        ("header 16 KiB long", [*signed, (b"X-Pad", b"p" * 16384)], False),
        ("200 headers", [*signed, *((f"X-H{n}".encode(), b"v") for n in range(200))], False),
        (
            "Content-Length and chunked both",
            [*signed, (b"Content-Length", length), (b"Transfer-Encoding", b"chunked")],
            False,
        ),
        ("Content-Length negative", [*signed, (b"Content-Length", b"-1")], False),
        ("Content-Length not a number", [*signed, (b"Content-Length", b"1e3")], False),
        (
            "Content-Length short of the body",
            [*signed, (b"Content-Length", str(len(body) // 2).encode())],
            False,
        ),
    ]
    for label, headers, app in bets:
        yield label, target.gateway_port, http_request("POST", WITHDRAW_PATH, headers, body), app
    request = http_request("POST", WITHDRAW_PATH, signed, body)
    yield (
        "request line not UTF-8",
        target.gateway_port,
        request.replace(b"/withdraw", b"/withdraw\xff\xfe", 1),
        False,
    )
    token = target.admin_token.encode()
    player = f"/admin/players/{victim.user_id}"
    for label, value, app in (
        ("admin token not UTF-8", b"Bearer \xff" + token, True),
        ("admin token with a NUL", b"Bearer " + token + b"\0", False),
    ):
        yield (
            label,
            target.admin_port,
            http_request("GET", player, [(b"Authorization", value)]),
            app,
        )


def send_hostile_headers(target: Target, tally: Tally) -> None:
    for label, port, request, app in hostile_headers(target):
        status, answer = raw_request(port, request)
        # aiohttp's own parser refuses some before the app sees them: a plain-text 400
        tally.answer("headers", status, answer, envelope=app and status is not None)
        accepted = status is not None and status < 300
        if port == target.admin_port:
            tally.admin_tried += 1
            tally.admin_accepted += accepted
        else:
            tally.unauthorised_tried += 1
            tally.unauthorised_accepted += accepted
        if accepted:
            tally.accepted["headers"] += 1
            tally.note(f"header '{label}' accepted: {answer[:120]!r}")


# --- 3. signatures and tokens -------------------------------------------------------------------


def signature_variants(target: Target, body: bytes) -> Iterator[tuple[str, bytes, bytes]]:
    """(label, X-Public-Key, X-Signature) that must all be refused with 401 for `body`."""
    key = target.public_key.encode()
    digest = hmac.digest(target.secret.encode(), body, "sha256")
    good = base64.b64encode(digest)
    yield (
        "another key's secret",
        key,
        base64.b64encode(hmac.digest(OTHER_SECRET.encode(), body, "sha256")),
    )
    yield (
        "an unknown public key, its own secret",
        b"mallory",
        base64.b64encode(hmac.digest(b"mallory-secret", body, "sha256")),
    )
    yield "the public key as the secret", key, base64.b64encode(hmac.digest(key, body, "sha256"))
    yield (
        "SHA-1 instead of SHA-256",
        key,
        base64.b64encode(hmac.digest(target.secret.encode(), body, "sha1")),
    )
    yield "a plain SHA-256 of the body", key, base64.b64encode(hashlib.sha256(body).digest())
    yield "hex", key, digest.hex().encode()
    yield "HEX", key, digest.hex().upper().encode()
    yield "URL-safe Base64", key, base64.urlsafe_b64encode(digest)
    yield "Base64 without padding", key, good.rstrip(b"=")
    # (leading and trailing blanks are not part of a header value (RFC 9110 5.5): the same
    # signature, so not tried here)
    yield "a space inside", key, good[:10] + b" " + good[10:]
    yield "padding doubled", key, good + b"="
    yield "Base64 of the hex digest", key, base64.b64encode(digest.hex().encode())
    yield "truncated", key, good[:-4]
    yield "one character off", key, good[:5] + (b"A" if good[5:6] != b"A" else b"B") + good[6:]
    yield "empty", key, b""
    yield "public key in upper case", key.upper(), good
    yield (
        "signed over the body with a newline",
        key,
        base64.b64encode(hmac.digest(target.secret.encode(), body + b"\n", "sha256")),
    )


def unauthorised_callbacks(target: Target, captured: tuple[str, bytes] | None, tally: Tally) -> int:
    """Every signature variant on a victim's valid bet; the captured honest call with its
    signature on a changed body, and replayed to the other endpoints. -> calls tried."""
    victim = target.victims[-1]
    for attempt in range(64):  # a body whose standard and URL-safe Base64 signatures differ
        body = _json(
            bet_body(
                user_id=victim.user_id,
                session_token=victim.session_token,
                amount_millis=STAKE_MILLIS,
                currency=CURRENCY,
                provider_tx_id=f"{TX_PREFIX}sig-{attempt}-{secrets.token_hex(3)}",
                round_id=f"{TX_PREFIX}sig",
                game=GAME,
            )
        )
        if set(sign_body(target.secret, body)) & {"+", "/"}:
            break
    requests: list[tuple[str, str, bytes, list[tuple[bytes, bytes]]]] = [
        (label, WITHDRAW_PATH, body, signing_headers(public.decode("latin-1"), signature))
        for label, public, signature in signature_variants(target, body)
    ]
    json_type = [(b"Content-Type", b"application/json")]
    requests.append(("no signature headers", WITHDRAW_PATH, body, json_type))
    requests.append(
        (
            "no signature",
            WITHDRAW_PATH,
            body,
            [*json_type, (b"X-Public-Key", target.public_key.encode())],
        )
    )
    if captured is not None:
        path, honest = captured
        signature = sign_body(target.secret, honest).encode()
        headers = signing_headers(target.public_key, signature)
        # the same signature on a body changed by one field: a bigger stake, another player
        altered = honest.replace(b'"amount":', b'"amount":9', 1)
        requests.append(("captured signature, body altered", path, altered, headers))
        requests.append(("captured signature, body + a space", path, honest + b" ", headers))
    for label, path, sent, headers in requests:
        status, answer = raw_request(target.gateway_port, http_request("POST", path, headers, sent))
        tally.answer("signatures", status, answer, envelope=True)
        tally.unauthorised_tried += 1
        if status != 401:
            if status is not None and status < 300:
                tally.unauthorised_accepted += 1
            else:
                tally.unauthorised_not_401 += 1
            tally.note(f"signature '{label}' answered {status}: {answer[:120]!r}")
    return len(requests)


def replay_elsewhere(target: Target, captured: tuple[str, bytes], tally: Tally) -> dict[str, int]:
    """The captured honest call, its valid signature, to every other callback: it must not apply
    as something else (4xx; /balance may read the balance: the bet's fields make a query).
    -> status by endpoint."""
    path, honest = captured
    headers = signing_headers(target.public_key, sign_body(target.secret, honest))
    statuses: dict[str, int] = {}
    for other in CALLBACK_PATHS:
        if other == path:
            continue
        status, answer = raw_request(
            target.gateway_port, http_request("POST", other, headers, honest)
        )
        tally.answer("replays", status, answer, envelope=True)
        statuses[other] = status or 0
        # /auth and /balance read: a bet's fields make a valid query of either (no money)
        money_moved = status is not None and status < 300 and other in MONEY_PATHS
        if money_moved or (status is not None and status >= 500):
            tally.accepted["replays"] += 1
            tally.note(f"captured {path} replayed to {other}: {status} {answer[:120]!r}")
    return statuses


def admin_operations(target: Target) -> list[tuple[str, str, bytes]]:
    """(method, path, body) of every admin route of the document that needs the token, path
    parameters naming a victim and valid bodies: only the token may refuse them."""
    status, document = raw_request(target.admin_port, http_request("GET", "/openapi.json", []))
    assert status == 200, f"/openapi.json answered {status}"
    victim = target.victims[0]
    bodies = {
        "CreatePlayerRequest": {"user_id": f"{TX_PREFIX}new", "currency": CURRENCY},
        "AdjustmentRequest": {"amount": 1_000_000, "reference": f"{TX_PREFIX}adj"},
        "OpenSessionRequest": {"user_id": victim.user_id},
        "LaunchRequestBody": {"user_id": victim.user_id, "game": GAME},
        "ResolveIncidentRequest": {"note": "hostile", "resolved_by": "mallory"},
    }
    operations = []
    for path, item in json.loads(document)["paths"].items():
        for method, operation in item.items():
            if method == "servers" or not operation.get("security"):
                continue
            if any("publicKey" in requirement for requirement in operation["security"]):
                continue  # a signed callback
            concrete = (
                path.replace("{user_id}", victim.user_id)
                .replace("{incident_id}", "1")
                .replace("{round_id}", f"{TX_PREFIX}r")
            )
            schema_ref = (
                operation.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema", {})
                .get("$ref", "")
            )
            body = _json(bodies.get(schema_ref.rsplit("/", 1)[-1], {})) if schema_ref else b""
            operations.append((method.upper(), concrete, body))
    return operations


def unauthorised_admin(target: Target, tally: Tally) -> int:
    token = target.admin_token.encode()
    wrong: list[tuple[str, list[tuple[bytes, bytes]]]] = [
        ("no token", []),
        ("wrong token", [(b"Authorization", b"Bearer wrong-" + token)]),
        ("token + 1 character", [(b"Authorization", b"Bearer " + token + b"x")]),
        ("token truncated", [(b"Authorization", b"Bearer " + token[:-1])]),
        ("no scheme", [(b"Authorization", token)]),
        ("lower-case scheme", [(b"Authorization", b"bearer " + token)]),
        ("Basic", [(b"Authorization", b"Basic " + base64.b64encode(b"admin:" + token))]),
        ("empty bearer", [(b"Authorization", b"Bearer ")]),
        ("token in a cookie", [(b"Cookie", b"token=" + token)]),
        ("token in the query", []),  # below: ?token=
    ]
    tried = 0
    for method, path, body in admin_operations(target):
        for label, headers in wrong:
            target_path = path + ("?token=" + target.admin_token if "query" in label else "")
            request = http_request(
                method, target_path, [(b"Content-Type", b"application/json"), *headers], body
            )
            status, answer = raw_request(target.admin_port, request)
            tally.answer("admin", status, answer, envelope=True)
            tally.admin_tried += 1
            tried += 1
            if status != 401:
                if status is not None and status < 300:
                    tally.admin_accepted += 1
                else:
                    tally.admin_not_401 += 1
                tally.note(f"admin {method} {path} with {label}: {status} {answer[:120]!r}")
    return tried


# --- 4. slow senders, endless and oversized bodies, idle connections -----------------------------


@dataclass
class Abuse:
    label: str
    cut_after_seconds: float | None = None  # None: still open at our own bound
    status: int | None = None  # what the gateway answered, if it did
    bytes_sent: int = 0
    closed: int | None = None  # of many connections, those the gateway closed

    def describe(self) -> str:
        if self.cut_after_seconds is None:
            return f"NOT cut off ({self.bytes_sent} bytes sent)"
        answer = f"answered {self.status}" if self.status else "closed"
        return f"{answer} after {self.cut_after_seconds:.1f} s ({self.bytes_sent} bytes sent)"

    def describe_within(self, bound: float) -> str:
        text = self.describe()
        if self.cut_after_seconds is None:
            text = text.replace("NOT cut off", f"NOT cut off within {bound:.0f} s")
        if self.closed is not None:
            text += f"; {self.closed} closed by the gateway"
        return text


async def _read_answer(reader: asyncio.StreamReader) -> int | None:
    data = await reader.read(65536)
    return parse_answer(data)[0] if data else None


async def trickle(
    port: int, label: str, head: bytes, payload: Callable[[int], bytes], pace: float, bound: float
) -> Abuse:
    """Send `head`, then `payload(n)` every `pace` seconds until the gateway answers or closes
    the connection, or `bound` seconds passed."""
    abuse = Abuse(label)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    answer = asyncio.create_task(_read_answer(reader))
    try:
        writer.write(head)
        abuse.bytes_sent += len(head)
        number = 0
        while time.monotonic() - started < bound:
            done, _ = await asyncio.wait({answer}, timeout=pace)
            if done:
                abuse.status = answer.result()
                abuse.cut_after_seconds = time.monotonic() - started
                break
            chunk = payload(number)
            number += 1
            try:
                writer.write(chunk)
                await writer.drain()
            except (ConnectionError, OSError):
                abuse.cut_after_seconds = time.monotonic() - started
                break
            abuse.bytes_sent += len(chunk)
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return abuse


async def idle_connections(port: int, count: int, bound: float) -> Abuse:
    """`count` connections that never send a byte: how many the gateway closes within `bound`."""
    abuse = Abuse(f"{count} idle connections")
    pairs = [await asyncio.open_connection(LOOPBACK, port) for _ in range(count)]
    started = time.monotonic()
    try:
        waits = [asyncio.create_task(reader.read(1)) for reader, _ in pairs]
        done, _ = await asyncio.wait(waits, timeout=bound)
        for task in waits:
            task.cancel()
        abuse.closed = len(done)
        if len(done) == count:
            abuse.cut_after_seconds = time.monotonic() - started
    finally:
        for _, writer in pairs:
            writer.close()
    return abuse


async def abuse_limits(target: Target, bound: float) -> list[Abuse]:
    """All at once, while the honest traffic plays."""
    port = target.gateway_port
    victim = target.victims[0]
    body = _json(balance_body(user_id=victim.user_id, currency=CURRENCY))
    sig = sign_body(target.secret, body).encode()
    signed = [(b"X-Public-Key", target.public_key.encode()), (b"X-Signature", sig)]

    def head(path: str, headers: list[tuple[bytes, bytes]]) -> bytes:
        request = http_request("POST", path, headers)
        return request.replace(b"Connection: close\r\n", b"")  # keep-alive: the body follows

    declared = 10_000  # bytes announced (under the limit), 1 per 100 ms: never all of them
    slow_body = trickle(
        port,
        "slow sender: headers, then 1 body byte per 100 ms",
        head(BALANCE_PATH, [*signed, (b"Content-Length", str(declared).encode())]),
        lambda n: b" ",
        SLOW_BYTE_SECONDS,
        bound,
    )
    partial_head = b"POST /balance HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    slow_headers = trickle(
        port,
        "slowloris: 1 header byte per 100 ms",
        partial_head,
        lambda n: b"X-a: b\r\n"[n % 8 : n % 8 + 1],
        SLOW_BYTE_SECONDS,
        bound,
    )
    endless = trickle(
        port,
        "never-ending chunked body, 1 KiB chunks",
        head(BALANCE_PATH, [*signed, (b"Transfer-Encoding", b"chunked")]),
        lambda n: b"400\r\n" + b" " * CHUNK_BYTES + b"\r\n",
        0.005,
        bound,
    )
    slow_chunks = trickle(
        port,
        "never-ending chunked body, 1-byte chunks every 100 ms",
        head(BALANCE_PATH, [*signed, (b"Transfer-Encoding", b"chunked")]),
        lambda n: b"1\r\n \r\n",
        SLOW_BYTE_SECONDS,
        bound,
    )
    results = await asyncio.gather(
        slow_body,
        slow_headers,
        endless,
        slow_chunks,
        idle_connections(port, IDLE_CONNECTIONS, bound),
        idle_after_answer(port, http_request("POST", BALANCE_PATH, signed, body), bound),
    )
    return list(results)


async def idle_after_answer(port: int, request: bytes, bound: float) -> Abuse:
    """A keep-alive connection left idle after one answered call: aiohttp's keepalive_timeout."""
    abuse = Abuse("keep-alive connection idle after one answer")
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(request.replace(b"Connection: close\r\n", b""))
        abuse.bytes_sent = len(request)
        data = b""
        while not answer_complete(data):
            chunk = await asyncio.wait_for(reader.read(65536), SOCKET_TIMEOUT_SECONDS)
            if not chunk:
                break
            data += chunk
        abuse.status = parse_answer(data)[0]
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(1), bound)
            abuse.cut_after_seconds = time.monotonic() - started
    finally:
        writer.close()
    return abuse


async def fresh_clients(target: Target, stop: asyncio.Event) -> list[float | None]:
    """A new client every 200 ms (a new connection, a signed /balance): the accept loop and the
    workers must not be starved by the abuse. -> each call's ms, None: no answer."""
    victim = target.victims[1]
    request = target.signed(BALANCE_PATH, _json(balance_body(user_id=victim.user_id)))
    times: list[float | None] = []
    while not stop.is_set():
        started = time.perf_counter()
        try:
            status, _ = await asyncio.to_thread(raw_request, target.gateway_port, request)
        except OSError:
            status = None
        times.append((time.perf_counter() - started) * 1000 if status == 200 else None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FRESH_CLIENT_SECONDS)
    return times


def oversized(target: Target, tally: Tally) -> dict[str, int | None]:
    """Bodies past the limit: announced, chunked, and a gzip bomb (small on the wire)."""
    victim = target.victims[0]
    padding = b" " * (BODY_BYTES_MAX + 1)
    body = _json(balance_body(user_id=victim.user_id)) + padding  # whitespace: still valid
    bomb = gzip.compress(b" " * (10 * 1024 * 1024))
    sig = sign_body(target.secret, body)
    cases = {
        "65 KiB, Content-Length": target.signed(BALANCE_PATH, body),
        "65 KiB, chunked": http_request(
            "POST",
            BALANCE_PATH,
            [*signing_headers(target.public_key, sig), (b"Transfer-Encoding", b"chunked")],
        )
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n",
        "Content-Length 10 GiB, no body": http_request(
            "POST",
            BALANCE_PATH,
            [*signing_headers(target.public_key, sig), (b"Content-Length", b"10737418240")],
        ),
        "gzip bomb: 10 KiB -> 10 MiB": http_request(
            "POST",
            BALANCE_PATH,
            [
                *signing_headers(target.public_key, sign_body(target.secret, bomb)),
                (b"Content-Encoding", b"gzip"),
            ],
            bomb,
        ),
        "admin: 2 MiB, with the token": http_request(
            "POST",
            "/admin/players",
            [
                (b"Authorization", f"Bearer {target.admin_token}".encode()),
                (b"Content-Type", b"application/json"),
            ],
            b"[" + b" " * (2 * 1024 * 1024) + b"]",
        ),
    }
    statuses: dict[str, int | None] = {}
    for label, request in cases.items():
        port = target.admin_port if label.startswith("admin") else target.gateway_port
        status, answer = raw_request(port, request)
        tally.answer("oversized", status, answer, envelope=status is not None)
        statuses[label] = status
        if status is not None and status < 300:
            tally.accepted["oversized"] += 1
            tally.note(f"oversized '{label}' accepted")
    return statuses


# --- nothing moves ------------------------------------------------------------------------------

HISTORY_TX_IDS = "SELECT provider_tx_id FROM transactions"
VICTIM_ROWS = """
SELECT (SELECT count(*) FROM transactions WHERE user_id = ANY($1::text[]))
     + (SELECT count(*) FROM adjustments WHERE user_id = ANY($1::text[]))
     + (SELECT count(*) FROM incidents WHERE user_id = ANY($1::text[]))
"""
ADJUSTMENT_ROWS = "SELECT count(*) FROM adjustments"


async def victim_balances(stack: FaultStack, victims: list[PlayerSession]) -> dict[str, int]:
    keys = KeySpace(stack.settings.shards)
    async with connect_background_redis(stack.settings.redis_url) as client:
        return {
            victim.user_id: int(
                await client.hget(
                    keys.player(keys.shard(victim.user_id), victim.user_id), "balance"
                )
            )
            for victim in victims
        }


async def hostile_redis_records(stack: FaultStack) -> int:
    """Idempotency, owner, round and adjustment records named by a hostile id: none may exist."""
    found = 0
    async with connect_background_redis(stack.settings.redis_url) as client:
        async for _ in client.scan_iter(match=f"*{TX_PREFIX}*", count=1000):
            found += 1
    return found


async def history_figures(stack: FaultStack, victims: list[str]) -> tuple[set[str], int, int]:
    """-> every provider_tx_id in the history, the victims' rows, the adjustment rows."""
    connection: asyncpg.Connection = await connect_postgres(stack.settings.database_url)
    try:
        tx_ids = {row["provider_tx_id"] for row in await connection.fetch(HISTORY_TX_IDS)}
        victim_rows = await connection.fetchval(VICTIM_ROWS, victims)
        adjustments = await connection.fetchval(ADJUSTMENT_ROWS)
    finally:
        await connection.close()
    return tx_ids, victim_rows, adjustments


def honest_p99_ms(traffic: Traffic) -> float:
    """From the attempts slower than traffic.SLOW_ATTEMPT_MS (the rest are faster than that):
    0.0 when the p99 is under it."""
    stats = traffic.stats
    rank = math.ceil(stats.attempts * 0.01)
    slow = sorted((ms for _, ms, _, _ in stats.slow_attempts), reverse=True)
    return round(slow[rank - 1], 1) if rank and len(slow) >= rank else 0.0


# --- the scenario -------------------------------------------------------------------------------


def examples_of(scale: scenarios.Scale) -> int:
    """Cases per schemathesis operation and mode; the hypothesis bodies are 10 times as many."""
    return max(3, min(50, round(scale.seconds)))


async def hostile_input(root: Path, scale: scenarios.Scale) -> list[ScenarioResult]:
    examples = examples_of(scale)
    limit_bound = max(4.0, scale.seconds)  # how long a slow sender is watched at most
    result = ScenarioResult(
        "hostile-input",
        "schemathesis and hypothesis bodies and headers, forged signatures and tokens, slow "
        "senders, endless and oversized bodies, idle connections; honest traffic meanwhile",
        "no 5xx but 503, every refusal in the envelope, nothing moves (the victims' balances, "
        "no record or history row from a refused call, reconcile agrees), no unauthorised "
        "call or admin call without the token accepted, and the honest calls answered within "
        f"{HONEST_P99_MS_MAX:.0f} ms (p99) all along.",
    )
    # the gateway's CLIENT_TIMEOUT_SECONDS, short enough to be seen cutting within the bound
    stack = FaultStack(root / "hostile-input", client_timeout_seconds=CLIENT_TIMEOUT_SECONDS)
    tally = Tally()
    spans: dict[str, tuple[float, float]] = {}

    async def phase(label: str, work: Any) -> Any:
        began = time.time()
        try:
            return await work
        finally:
            spans[label] = (began, time.time())
            result.notes.append(f"{label}: {time.time() - began:.1f} s")

    async def scenario() -> None:
        honest_scale = scenarios.Scale(HONEST_SECONDS_MAX, scale.calls_max, scale.concurrency)
        traffic = await scenarios.new_traffic(stack, stack.gateway_url, honest_scale)
        try:
            await scenario_with(traffic)
        finally:
            await traffic.close()

    async def scenario_with(traffic: Traffic) -> None:
        public_key, secret = stack.provider_key()
        async with OperatorAdmin(
            stack.admin_url, stack.settings.admin_token, f"victim-{traffic.run_id}"
        ) as admin:
            victims = [
                await admin.new_player(CURRENCY, VICTIM_BALANCE_MILLIS) for _ in range(VICTIMS)
            ]
        target = Target(
            stack.settings.gateway_port,
            stack.settings.admin_port,
            public_key,
            secret,
            stack.settings.admin_token,
            victims,
        )
        before = await victim_balances(stack, victims)
        _, _, adjustments_before = await history_figures(stack, [v.user_id for v in victims])
        load = asyncio.create_task(
            traffic.run(
                seconds=HONEST_SECONDS_MAX,
                calls_max=scale.calls_max,
                concurrency=scale.concurrency,
                rounds_per_second=scale.rounds_per_second or HONEST_ROUNDS_PER_SECOND,
            )
        )
        try:
            await asyncio.sleep(1.0)  # an honest call to capture
            captured_call = next(
                (c for c in traffic.calls if c.path == WITHDRAW_PATH and c.status == 200), None
            )
            captured = None if captured_call is None else (captured_call.path, captured_call.body)
            result.require(captured is not None, "an honest bet was captured to replay")
            fuzz_notes = await phase(
                "schemathesis",
                asyncio.to_thread(fuzz_with_schemathesis, target, examples, tally),
            )
            result.notes += fuzz_notes
            await phase(
                "hypothesis bodies",
                asyncio.to_thread(send_hostile_bodies, target, examples * 10, tally),
            )
            await phase("hostile headers", asyncio.to_thread(send_hostile_headers, target, tally))
            await phase(
                "signatures", asyncio.to_thread(unauthorised_callbacks, target, captured, tally)
            )
            if captured is not None:
                replays = await phase(
                    "replays", asyncio.to_thread(replay_elsewhere, target, captured, tally)
                )
                result.measured["captured bet replayed to, status"] = replays
            await phase("admin tokens", asyncio.to_thread(unauthorised_admin, target, tally))
            oversize = await phase("oversized", asyncio.to_thread(oversized, target, tally))
            result.measured["oversized bodies, status"] = oversize
            stop_probe = asyncio.Event()
            probe = asyncio.create_task(fresh_clients(target, stop_probe))
            try:
                abuses = await phase("limits", abuse_limits(target, limit_bound))
            finally:
                stop_probe.set()
                fresh = await probe
            answered = [ms for ms in fresh if ms is not None]
            result.measured["new clients during the abuse: answered / tried, slowest ms"] = (
                f"{len(answered)} / {len(fresh)}, {max(answered, default=0):.0f}"
            )
            result.require(
                bool(fresh) and len(answered) == len(fresh),
                "every new client is answered during the abuse",
            )
            result.require(
                max(answered, default=0) < HONEST_P99_MS_MAX,
                f"new clients answered within {HONEST_P99_MS_MAX:.0f} ms during the abuse",
            )
            for abuse in abuses:
                result.measured[abuse.label] = abuse.describe_within(limit_bound)
                # every slow, endless or idle connection is cut (CLIENT_TIMEOUT_SECONDS, or
                # 413 for a body past 64 KiB), well before the watch ends
                result.require(
                    abuse.cut_after_seconds is not None
                    and abuse.cut_after_seconds < CLIENT_TIMEOUT_SECONDS + CUT_MARGIN_SECONDS,
                    f"cut off within CLIENT_TIMEOUT_SECONDS: {abuse.label}",
                )
            await asyncio.sleep(1.0)  # the honest traffic after the abuse
        finally:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
        await scenarios.finish(result, traffic, stack, replays=0)
        # aiohttp logs each request its parser refused at ERROR, with a traceback
        parser_errors = len(stack.error_lines(10**6))

        # nothing moves
        after = await victim_balances(stack, victims)
        tx_ids, victim_rows, adjustments_after = await history_figures(
            stack, [v.user_id for v in victims]
        )
        honest = {call.tx for call in traffic.calls if call.money}
        foreign = sorted(tx_ids - honest - tally.accepted_tx_ids)
        records = await hostile_redis_records(stack)
        moved = {user: after[user] - before[user] for user in before if after[user] != before[user]}

        # the honest calls while the abuse went on
        served = {
            label: sum(began <= call.acknowledged_at <= ended for call in traffic.calls)
            for label, (began, ended) in spans.items()
            if ended - began >= 1.0
        }
        p99 = honest_p99_ms(traffic)

        hostile_5xx = {str(status): count for status, count in sorted(tally.five_xx.items())}
        for status, count in hostile_5xx.items():
            result.five_xx[status] = result.five_xx.get(status, 0) + count
        result.undelivered += sum(tally.no_answer.values())
        result.measured.update(
            {
                "hostile requests sent, by phase": dict(tally.sent),
                "hostile answers, by status": dict(sorted(tally.statuses.items())),
                "hostile requests without an answer (closed), by phase": dict(tally.no_answer),
                "hostile 5xx": hostile_5xx,
                "/admin/launch 502 (no provider configured, documented)": tally.launch_502,
                "answers not in the envelope": tally.not_envelope,
                "broken calls accepted": dict(tally.accepted),
                "unauthorised calls tried / accepted": (
                    f"{tally.unauthorised_tried} / {tally.unauthorised_accepted}"
                ),
                "bad signatures refused otherwise than 401": tally.unauthorised_not_401,
                "admin calls without or with a wrong token tried / accepted": (
                    f"{tally.admin_tried} / {tally.admin_accepted}"
                ),
                "admin calls refused otherwise than 401": tally.admin_not_401,
                "schemathesis money calls accepted (valid, unknown players or CLOSE_ROUND)": len(
                    tally.accepted_tx_ids
                ),
                "victims' balances moved": moved,
                "history rows of the victims": victim_rows,
                "history rows no honest or accepted call explains": len(foreign),
                "Redis keys naming a hostile id": records,
                "adjustment rows added / adjustments accepted (schemathesis, the token)": (
                    f"{adjustments_after - adjustments_before} / {tally.accepted_adjustments}"
                ),
                "honest calls acknowledged during each phase": served,
                "honest p99 attempt, ms": p99 or f"< {SLOW_ATTEMPT_MS:.0f}",
                "gateway ERROR log lines (aiohttp's parser refusals)": parser_errors,
                "honest slowest attempt, ms": round(traffic.stats.slowest_ms, 1),
            }
        )
        result.notes += tally.details
        if foreign:
            result.notes.append(f"foreign history rows: {foreign[:DETAILS_MAX]}")
        # the guarantees
        unexpected = {
            status: n for status, n in hostile_5xx.items() if status != scenarios.EXPECTED_5XX
        }
        result.require(not unexpected, f"no hostile call answered 5xx but 503 (saw {unexpected})")
        result.require(tally.not_envelope == 0, "every answer of the app is the envelope")
        result.require(not tally.accepted, f"no broken call accepted ({dict(tally.accepted)})")
        result.require(
            tally.unauthorised_tried > 0 and tally.unauthorised_accepted == 0,
            "no callback with a bad signature accepted",
        )
        result.require(
            tally.unauthorised_not_401 == 0, "every callback with a bad signature answers 401"
        )
        result.require(
            tally.admin_tried > 0 and tally.admin_accepted == 0,
            "no admin call without or with a wrong token accepted",
        )
        result.require(
            tally.admin_not_401 == 0, "every admin call without or with a wrong token answers 401"
        )
        result.require(not moved, f"the victims' balances do not move ({moved})")
        result.require(victim_rows == 0, "no history row for a victim")
        result.require(not foreign, "no history row from a refused call")
        result.require(records == 0, "no Redis record from a refused call")
        # an accepted adjustment may be a replay of an earlier one (same reference): no row
        result.require(
            adjustments_after - adjustments_before <= tally.accepted_adjustments,
            "no adjustment row but the accepted ones",
        )
        result.require(traffic.stats.undelivered == 0, "every honest attempt is answered")
        result.require(
            all(count > 0 for count in served.values()),
            "honest calls are answered during every phase",
        )
        result.require(p99 < HONEST_P99_MS_MAX, f"honest p99 < {HONEST_P99_MS_MAX:.0f} ms")
        for abuse in abuses:
            # the limits the gateway has: oversized and endless bodies are cut at 64 KiB
            if "1 KiB chunks" in abuse.label:
                result.require(
                    abuse.status == 413, "a never-ending chunked body is cut off with 413"
                )

    return [await scenarios.run_scenario(result, stack, scenario)]


def hostile_scales() -> tuple[scenarios.Scale, scenarios.Scale]:
    """(full, short) for SCENARIOS: seconds = how long each slow sender is watched and the
    schemathesis cases per operation and mode (the hypothesis bodies: 10 times as many);
    concurrency = honest players, at HONEST_ROUNDS_PER_SECOND in all. A function: this module
    may be imported while scenarios.py still is."""
    return (
        scenarios.Scale(30, 100_000, 4, HONEST_ROUNDS_PER_SECOND, replays=0),
        scenarios.Scale(4, 20_000, 2, HONEST_ROUNDS_PER_SECOND, replays=0),
    )
