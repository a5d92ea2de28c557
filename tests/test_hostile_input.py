"""docs/protocol.md §1, §3: whatever arrives, every answer is the envelope with HTTP status == code,
never a 5xx but a 503 (or the launch API's 502), and a refused call moves nothing; no text the
wallet stores holds a NUL or a lone surrogate.

Hostile bodies are a valid body with one member replaced, added, dropped, duplicated or spliced
with raw bytes (deep nesting, numbers no parser holds, bytes that are not UTF-8), signed as
sent. Headers and path parameters that aiohttp's client would not send go over a raw socket.
"""

import asyncio
import copy
import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import ADMIN_TOKEN, PUBLIC_KEY, SECRET, Admin, Provider
from helpers import assert_error_envelope, stream_event_count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payloads import bet, close_round, rollback, win

from gateway.callbacks import REQUEST_ID_CHARS_MAX
from gateway.logs import CALLBACK_LOGGER, JsonLineFormatter
from gateway.outcomes import OUTCOMES
from gateway.schemas import COEFFICIENTS_ATTRIBUTE, STAKES_ATTRIBUTE
from gateway.signing import sign_body, signed_headers

BALANCE = 10_000
STAKE = 1_000
DEEP = 5_000
HYPOTHESIS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The three 401s of a callback's signing headers (gateway/signing.py).
SIGNATURE_REFUSALS = frozenset({"SIGNATURE_MISSING", "UNKNOWN_PUBLIC_KEY", "BAD_SIGNATURE"})
# Refusals that record nothing: the gateway's own, and the scripts' refusals before any write.
UNRECORDED_REFUSALS = SIGNATURE_REFUSALS | frozenset(
    {
        "BAD_REQUEST",
        "UNAUTHORIZED",
        "BODY_TOO_LARGE",
        "NOT_FOUND",
        "UNKNOWN_USER",
        "UNKNOWN_SESSION",
        "TX_CONFLICT",
        "PLAYER_EXISTS",
        "REFERENCE_CONFLICT",
        "PROVIDER_UNAVAILABLE",
    }
)
# The outcomes whose answers carry a message of their own instead of the table's.
OWN_MESSAGE_OUTCOMES = {400: "BAD_REQUEST", 502: "PROVIDER_UNAVAILABLE"}

_example_ids = itertools.count()


def outcome_of(code: int, message: str) -> str:
    for outcome, answer in OUTCOMES.items():
        if answer == (code, message):
            return outcome
    assert code in OWN_MESSAGE_OUTCOMES, (code, message)
    return OWN_MESSAGE_OUTCOMES[code]


def envelope_of(status: int, raw: bytes, allowed_5xx: frozenset[int] = frozenset({503})) -> str:
    """The answer is the envelope, its code is the HTTP status: -> its outcome."""
    body = orjson.loads(raw)
    assert set(body) == {"code", "message", "data"}, body
    assert body["code"] == status, body
    assert isinstance(body["message"], str) and body["message"], body
    assert status < 500 or status in allowed_5xx, body
    if status >= 300:
        assert_error_envelope(body, status)
    return outcome_of(status, body["message"])


async def raw_exchange(client: TestClient, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request written byte for byte (aiohttp's client sends only UTF-8 headers)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        async with asyncio.timeout(10):
            response = await reader.read()  # Connection: close, so up to EOF
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# --- hostile values ---------------------------------------------------------------------------

TRICKY_TEXTS = ["", " ", "\x00", "a\x00b", "\\u0000", "\ud800", "\udfff", "é😀", "BET", "USD"]
TRICKY_INTEGERS = [0, -1, 1, 10**15, 10**15 + 1, 2**53, 2**63, 2**64, -(2**63) - 1, 10**30]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(TRICKY_INTEGERS),
    st.floats(),
    # every code point, lone surrogates included
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
    st.sampled_from(TRICKY_TEXTS),
    st.builds(lambda head, tail: f"{head}\x00{tail}", st.text(max_size=4), st.text(max_size=4)),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
# Raw JSON text spliced in where a value belongs: what no serialiser would write.
raw_fragments = st.one_of(
    st.integers(1, DEEP).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, DEEP).map(lambda n: b'{"a":' * n + b"0" + b"}" * n),
    # a JSON string holding deeply nested JSON (CLOSE_ROUND reads attribute strings as JSON)
    st.integers(1, DEEP).map(lambda n: json.dumps("[" * n + "]" * n).encode()),
    # a string of bytes that are not (all) UTF-8
    st.binary(min_size=1, max_size=12).map(
        lambda raw: b'"' + raw.replace(b'"', b"").replace(b"\\", b"") + b'"'
    ),
    st.sampled_from(
        [
            b"1e99999999999999999999",
            b"0.0e99999999999999999999",  # a float zero to orjson, past any Decimal exponent
            b"1e-99999999999999999999",
            b"1" * 5_000,
            b"1e400",
            b"NaN",
            b"-Infinity",
            b"-0",
            b"1.0",
            b"0x10",
            b'"\\ud800"',
            b'"\\u0000"',
            b'"\\\\u0000"',
            b"",
            b"]",
        ]
    ),
)
SPLICE_MARK = "\ue000splice\ue000"


@dataclass(frozen=True)
class Mutation:
    kind: str  # replace | add | drop | splice | duplicate
    pick: int  # which member of the body (any depth)
    key: str
    value: Any
    fragment: bytes
    ensure_ascii: bool  # False: text as raw UTF-8 (lone surrogates as bytes no decoder takes)


mutations = st.builds(
    Mutation,
    # an added member is what a body may carry unchecked: drawn twice as often
    kind=st.sampled_from(["replace", "add", "add", "drop", "splice", "duplicate"]),
    pick=st.integers(0, 1_000),
    key=st.text(st.characters(codec=None, exclude_categories=()), max_size=6),
    value=json_values,
    fragment=raw_fragments,
    ensure_ascii=st.booleans(),
)


def members(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every member of objects and arrays, at any depth."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    paths = []
    for key, inner in items:
        paths.append((*path, key))
        if isinstance(inner, dict | list):
            paths += members(inner, (*path, key))
    return paths


def hostile_body(payload: dict[str, Any], mutation: Mutation) -> bytes:
    payload = copy.deepcopy(payload)
    paths = members(payload)
    path = paths[mutation.pick % len(paths)]
    parent: Any = payload
    for key in path[:-1]:
        parent = parent[key]
    if mutation.kind == "replace":
        parent[path[-1]] = mutation.value
    elif mutation.kind == "add":
        if isinstance(parent, dict):
            parent[mutation.key] = mutation.value
        else:
            parent.append(mutation.value)
    elif mutation.kind == "drop":
        del parent[path[-1]]
    elif mutation.kind == "splice":
        parent[path[-1]] = SPLICE_MARK
    encoder = json.JSONEncoder(ensure_ascii=mutation.ensure_ascii)

    def encode(value: Any) -> bytes:
        return encoder.encode(value).encode("utf-8", "surrogatepass")

    body = encode(payload)
    if mutation.kind == "splice":
        body = body.replace(encode(SPLICE_MARK), mutation.fragment)
    elif mutation.kind == "duplicate":
        # the top-level member again, later in the body: parsers keep the last one
        body = body[:-1] + b"," + encode(path[0]) + b":" + encode(mutation.value) + b"}"
    return body


# --- callbacks --------------------------------------------------------------------------------

CALLBACK_KINDS = [
    "auth", "balance", "BET", "FREE_BET", "WIN", "FREE_BET_WIN", "ROLL_BACK",
    "CLOSE_ROUND", "CLOSE_ROUND_LISTED",
]  # fmt: skip


@dataclass
class Player:
    user_id: str
    session_token: str
    bet_tx: str  # a bet of STAKE, applied


async def new_player(admin: Admin, provider: Provider) -> Player:
    prefix = f"h{next(_example_ids)}"
    user_id = f"{prefix}-player"
    await admin.create_player(user_id, BALANCE)
    session_token = await admin.open_session(user_id)
    status, body = await provider.post("/withdraw", bet(user_id, session_token, f"{prefix}-bet"))
    assert status == 200, body
    return Player(user_id, session_token, f"{prefix}-bet")


def valid_callback(kind: str, player: Player) -> tuple[str, dict[str, Any]]:
    user, session, bet_tx = player.user_id, player.session_token, player.bet_tx
    tx = f"{bet_tx}-{kind.lower()}"
    if kind == "auth":
        return "/auth", {"session_token": session, "currency": "USD", "platform": "desktop"}
    if kind == "balance":
        return "/balance", {"user_id": user, "session_token": session, "currency": "USD"}
    if kind in ("BET", "FREE_BET"):
        return "/withdraw", bet(user, session, tx, action=kind)
    if kind in ("WIN", "FREE_BET_WIN"):
        return "/deposit", win(user, tx, bet_tx, action=kind, session_token=session)
    if kind == "ROLL_BACK":
        return "/deposit", rollback(user, tx, bet_tx, amount=STAKE, currency="USD")
    payload = close_round(f"round-{bet_tx}", [STAKE], ["2.35"])
    if kind == "CLOSE_ROUND_LISTED":  # the other shape: a list of names and JSON-text values
        payload["attributes"] = [
            {"name": STAKES_ATTRIBUTE, "value": f"[{STAKE}]"},
            {"name": COEFFICIENTS_ATTRIBUTE, "value": "[2.35]"},
        ]
    return "/deposit", payload


def holds_unstorable(value: Any) -> bool:
    """A NUL or a lone surrogate anywhere in a decoded JSON value, names included."""
    pending = [value]
    while pending:  # a loop: an accepted body may nest deeper than Python recurses
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item or any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                return True
        elif isinstance(item, dict):
            pending += [*item, *item.values()]
        elif isinstance(item, list):
            pending += item
    return False


async def assert_nothing_moved_unless_ok(
    services: Any, admin: Admin, player: Player, outcome: str, before: tuple[int, int]
) -> None:
    balance, events = before
    if outcome in ("OK", "CREATED"):
        return
    assert await admin.balance(player.user_id) == balance, outcome
    if outcome in UNRECORDED_REFUSALS:
        assert await stream_event_count(services) == events, outcome


async def snapshot(services: Any, admin: Admin, player: Player) -> tuple[int, int]:
    return await admin.balance(player.user_id), await stream_event_count(services)


@pytest.mark.parametrize("kind", CALLBACK_KINDS)
async def test_the_valid_bodies_the_properties_start_from_are_accepted(
    kind: str, provider: Provider, admin: Admin
) -> None:
    path, payload = valid_callback(kind, await new_player(admin, provider))
    status, body = await provider.post(path, payload)
    assert status == 200, body


@settings(HYPOTHESIS, max_examples=100)
@given(kind=st.sampled_from(CALLBACK_KINDS), mutation=mutations)
async def test_any_hostile_callback_body_is_answered_in_the_envelope_and_moves_nothing_if_refused(
    provider: Provider, admin: Admin, services: Any, kind: str, mutation: Mutation
) -> None:
    player = await new_player(admin, provider)
    path, payload = valid_callback(kind, player)
    before = await snapshot(services, admin, player)
    body = hostile_body(payload, mutation)
    status, raw = await provider.post_raw(path, body)
    outcome = envelope_of(status, raw)
    if outcome == "OK" and path != "/auth" and path != "/balance":
        assert not holds_unstorable(orjson.loads(body)), "the history stores this body as text"
    await assert_nothing_moved_unless_ok(services, admin, player, outcome, before)


# Bytes a header value may carry on the wire (RFC 9110: tab, visible ASCII, obs-text).
HEADER_BYTES = [0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]
header_values = st.lists(st.sampled_from(HEADER_BYTES), min_size=1, max_size=24).map(bytes)


@settings(HYPOTHESIS, max_examples=50)
@given(
    kind=st.sampled_from(CALLBACK_KINDS),
    header=st.sampled_from(["X-Public-Key", "X-Signature"]),
    value=header_values,
    after_the_right_one=st.booleans(),
)
async def test_any_non_utf8_signing_header_is_401_in_the_envelope_and_moves_nothing(
    provider: Provider,
    admin: Admin,
    services: Any,
    kind: str,
    header: str,
    value: bytes,
    after_the_right_one: bool,
) -> None:
    player = await new_player(admin, provider)
    path, payload = valid_callback(kind, player)
    body = orjson.dumps(payload)
    headers = {"X-Public-Key": PUBLIC_KEY.encode(), "X-Signature": sign_body(SECRET, body).encode()}
    headers[header] = (headers[header] if after_the_right_one else b"") + b"\xff" + value
    head = f"POST {path} HTTP/1.1\r\nHost: wallet\r\n".encode() + b"".join(
        name.encode() + b": " + given + b"\r\n" for name, given in headers.items()
    )
    before = await snapshot(services, admin, player)
    status, raw = await raw_exchange(provider.client, head, body)
    outcome = envelope_of(status, raw)
    assert outcome in SIGNATURE_REFUSALS
    await assert_nothing_moved_unless_ok(services, admin, player, outcome, before)


# --- the admin API ----------------------------------------------------------------------------

ADMIN_BODY_ROUTES = ["players", "adjustments", "sessions", "launch"]


def valid_admin_call(route: str, player: Player, n: int) -> tuple[str, dict[str, Any]]:
    if route == "players":
        return "/admin/players", {
            "user_id": f"{player.user_id}-new-{n}",
            "currency": "USD",
            "balance": 500,
            "username": "Ann",
            "maxbet": 1_000,
        }
    if route == "adjustments":
        path = f"/admin/players/{player.user_id}/adjustments"
        return path, {"amount": 100, "reference": f"{player.user_id}-ref-{n}"}
    if route == "sessions":
        return "/admin/sessions", {"user_id": player.user_id}
    return "/admin/launch", {
        "user_id": player.user_id,
        "game": "aviadrone",
        "platform": "desktop",
        "portal_mode": "real",
        "return_url": "https://casino.example/lobby",
        "language": "en",
    }


@settings(HYPOTHESIS, max_examples=100)
@given(route=st.sampled_from(ADMIN_BODY_ROUTES), mutation=mutations)
async def test_any_hostile_admin_body_is_answered_in_the_envelope_and_moves_nothing_if_refused(
    provider: Provider, admin: Admin, services: Any, route: str, mutation: Mutation
) -> None:
    player = await new_player(admin, provider)
    path, payload = valid_admin_call(route, player, next(_example_ids))
    before = await snapshot(services, admin, player)
    response = await admin.client.post(
        path, data=hostile_body(payload, mutation), headers=admin.headers
    )
    raw = await response.read()
    # no provider runs here: a launch that gets past validation finds it unreachable
    allowed_5xx = frozenset({502, 503} if route == "launch" else {503})
    outcome = envelope_of(response.status, raw, allowed_5xx)
    if outcome == "CREATED" and route == "players":
        assert not holds_unstorable(orjson.loads(raw)["data"]["username"])
    await assert_nothing_moved_unless_ok(services, admin, player, outcome, before)


odd_texts = st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=12)


def percent_encoded(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@settings(HYPOTHESIS, max_examples=60)
@given(
    route=st.sampled_from(["player", "adjustments", "incidents"]),
    text=st.one_of(odd_texts, st.sampled_from(TRICKY_TEXTS[1:])),
)
async def test_any_odd_path_or_query_parameter_is_answered_in_the_envelope(
    provider: Provider, admin: Admin, services: Any, route: str, text: str
) -> None:
    player = await new_player(admin, provider)
    parameter = percent_encoded(text)
    body = b""
    if route == "player":
        target = f"GET /admin/players/{parameter}"
    elif route == "adjustments":
        target = f"POST /admin/players/{parameter}/adjustments"
        body = orjson.dumps({"amount": 100, "reference": f"{player.user_id}-odd"})
    else:
        target = f"GET /admin/incidents?{parameter}={parameter}"
    head = f"{target} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
    before = await snapshot(services, admin, player)
    status, raw = await raw_exchange(admin.client, head.encode(), body)
    outcome = envelope_of(status, raw)
    # a path parameter is stored, a query nowhere (a lone surrogate's bytes are not UTF-8:
    # they stay percent text, which is storable)
    if "\x00" in text and route != "incidents":
        assert outcome == "BAD_REQUEST", outcome
    await assert_nothing_moved_unless_ok(services, admin, player, outcome, before)


def admin_request(route: str, player: Player, n: int) -> tuple[bytes, bytes]:
    """-> (request line, body): a call each route would accept."""
    if route == "player":
        return f"GET /admin/players/{player.user_id}".encode(), b""
    if route == "incidents":
        return b"GET /admin/incidents", b""
    path, payload = valid_admin_call(route, player, n)
    return f"POST {path}".encode(), orjson.dumps(payload)


def bearer(token: bytes) -> bytes:
    return b" HTTP/1.1\r\nHost: admin\r\nAuthorization: " + token + b"\r\n"


@pytest.mark.parametrize(
    ("route", "status"),
    # no provider runs here: a valid launch finds it unreachable
    [
        ("players", 201),
        ("adjustments", 200),
        ("sessions", 201),
        ("launch", 502),
        ("player", 200),
        ("incidents", 200),
    ],
)
async def test_the_valid_admin_calls_the_properties_start_from_are_accepted(
    route: str, status: int, provider: Provider, admin: Admin
) -> None:
    line, body = admin_request(route, await new_player(admin, provider), 0)
    token = f"Bearer {ADMIN_TOKEN}".encode()
    assert (await raw_exchange(admin.client, line + bearer(token), body))[0] == status


@settings(HYPOTHESIS, max_examples=50)
@given(
    route=st.sampled_from([*ADMIN_BODY_ROUTES, "player", "incidents"]),
    value=header_values,
    after_the_token=st.booleans(),
)
async def test_any_non_utf8_authorization_is_401_in_the_envelope_and_moves_nothing(
    provider: Provider,
    admin: Admin,
    services: Any,
    route: str,
    value: bytes,
    after_the_token: bool,
) -> None:
    player = await new_player(admin, provider)
    line, body = admin_request(route, player, next(_example_ids))
    token = f"Bearer {ADMIN_TOKEN}".encode() if after_the_token else b""
    before = await snapshot(services, admin, player)
    status, raw = await raw_exchange(admin.client, line + bearer(token + b"\xff" + value), body)
    assert envelope_of(status, raw) == "UNAUTHORIZED"
    await assert_nothing_moved_unless_ok(services, admin, player, "UNAUTHORIZED", before)


# --- each of these once answered aiohttp's plain-text 500 -------------------------------------


def assert_refused(answer: tuple[int, bytes], naming: str) -> None:
    status, raw = answer
    assert status == 400, raw
    body = orjson.loads(raw)
    assert_error_envelope(body, 400)
    assert naming in body["message"], body


@pytest.mark.parametrize(
    ("kind", "action"),
    [("WIN", []), ("WIN", {}), ("CLOSE_ROUND", ["CLOSE_ROUND"]), ("BET", []), ("BET", {})],
)
async def test_an_action_that_is_a_list_or_an_object_is_400_naming_it(
    kind: str, action: Any, provider: Provider, admin: Admin, services: Any
) -> None:
    player = await new_player(admin, provider)
    path, payload = valid_callback(kind, player)
    before = await snapshot(services, admin, player)
    answer = await provider.post_raw(path, orjson.dumps({**payload, "action": action}))
    assert_refused(answer, "action")
    await assert_nothing_moved_unless_ok(services, admin, player, "BAD_REQUEST", before)


@pytest.mark.parametrize("attribute", [STAKES_ATTRIBUTE, COEFFICIENTS_ATTRIBUTE])
@pytest.mark.parametrize("kind", ["CLOSE_ROUND", "CLOSE_ROUND_LISTED"])
async def test_a_close_round_attribute_nested_past_any_depth_is_400_naming_it(
    kind: str, attribute: str, provider: Provider, admin: Admin, services: Any
) -> None:
    player = await new_player(admin, provider)
    path, payload = valid_callback(kind, player)
    deep = "[" * DEEP + "]" * DEEP
    attributes = payload["attributes"]
    if isinstance(attributes, dict):
        attributes[attribute] = deep
    else:
        next(item for item in attributes if item["name"] == attribute)["value"] = deep
    before = await snapshot(services, admin, player)
    answer = await provider.post_raw(path, orjson.dumps(payload))
    assert_refused(answer, attribute)
    await assert_nothing_moved_unless_ok(services, admin, player, "BAD_REQUEST", before)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"[" * 1_000 + b"]" * 1_000, id="nested-as-deep-as-orjson-takes"),
        pytest.param(b"0.0e99999999999999999999", id="exponent-past-any-decimal"),
    ],
)
async def test_a_close_round_body_the_decimal_parser_cannot_read_is_400(
    extra: bytes, provider: Provider, admin: Admin, services: Any
) -> None:
    player = await new_player(admin, provider)
    path, payload = valid_callback("CLOSE_ROUND", player)
    body = orjson.dumps(payload)[:-1] + b',"extra":' + extra + b"}"
    before = await snapshot(services, admin, player)
    assert_refused(await provider.post_raw(path, body), "JSON")
    await assert_nothing_moved_unless_ok(services, admin, player, "BAD_REQUEST", before)


async def test_an_authorization_header_that_is_not_utf8_is_401_in_the_envelope(
    admin: Admin,
) -> None:
    head = b"GET /admin/incidents HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer \xff\xfe\r\n"
    status, raw = await raw_exchange(admin.client, head)
    assert status == 401, raw
    assert envelope_of(status, raw) == "UNAUTHORIZED"


@pytest.mark.parametrize("header", ["X-Public-Key", "X-Signature"])
async def test_a_signing_header_that_is_not_utf8_is_401_bad_signature(
    header: str, provider: Provider, admin: Admin, services: Any
) -> None:
    player = await new_player(admin, provider)
    body = orjson.dumps(valid_callback("BET", player)[1])
    headers = {
        name: value.encode() for name, value in signed_headers(PUBLIC_KEY, SECRET, body).items()
    }
    headers[header] += b"\xff"
    head = b"POST /withdraw HTTP/1.1\r\nHost: wallet\r\n" + b"".join(
        name.encode() + b": " + value + b"\r\n" for name, value in headers.items()
    )
    before = await snapshot(services, admin, player)
    status, raw = await raw_exchange(provider.client, head, body)
    assert status == 401, raw
    # an X-Public-Key with another byte is another key; a signature with one, a mismatch
    expected = "UNKNOWN_PUBLIC_KEY" if header == "X-Public-Key" else "BAD_SIGNATURE"
    assert envelope_of(status, raw) == expected
    await assert_nothing_moved_unless_ok(services, admin, player, expected, before)


async def test_a_request_id_that_is_not_utf8_is_replaced_in_the_json_log_line(
    provider: Provider, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    player = await new_player(admin, provider)
    body = orjson.dumps(valid_callback("balance", player)[1])
    headers = signed_headers(PUBLIC_KEY, SECRET, body) | {"X-Request-Id": "r-\udcff"}
    head = b"POST /balance HTTP/1.1\r\nHost: wallet\r\n" + b"".join(
        f"{name}: {value}\r\n".encode("utf-8", "surrogateescape") for name, value in headers.items()
    )
    with caplog.at_level(logging.INFO, logger=CALLBACK_LOGGER):
        status, raw = await raw_exchange(provider.client, head, body)
    assert envelope_of(status, raw) == "OK"
    (record,) = [r for r in caplog.records if r.name == CALLBACK_LOGGER]
    line = orjson.loads(JsonLineFormatter().format(record))
    assert line["request_id"] and line["request_id"] != "r-\udcff"


@pytest.mark.parametrize(
    ("given", "kept", "signed"),
    [
        ("r" * REQUEST_ID_CHARS_MAX, True, True),
        ("r" * (REQUEST_ID_CHARS_MAX + 1), False, True),
        ("r" * 4000, False, False),  # a 401 logs its line too
    ],
    ids=["64-chars", "65-chars", "long-on-a-401"],
)
async def test_a_request_id_is_logged_as_sent_only_when_short_and_printable(
    provider: Provider,
    admin: Admin,
    caplog: pytest.LogCaptureFixture,
    given: str,
    kept: bool,
    signed: bool,
) -> None:
    player = await new_player(admin, provider)
    body = orjson.dumps(valid_callback("balance", player)[1])
    secret = SECRET if signed else "not-the-secret"
    headers = signed_headers(PUBLIC_KEY, secret, body) | {"X-Request-Id": given}
    with caplog.at_level(logging.INFO, logger=CALLBACK_LOGGER):
        response = await provider.client.post("/balance", data=body, headers=headers)
    assert response.status == (200 if signed else 401)
    (record,) = [r for r in caplog.records if r.name == CALLBACK_LOGGER]
    request_id = orjson.loads(JsonLineFormatter().format(record))["request_id"]
    assert (request_id == given) is kept
    assert 0 < len(request_id) <= REQUEST_ID_CHARS_MAX


# --- unstorable text --------------------------------------------------------------------------


async def test_a_username_holding_nul_is_400_and_creates_nothing(
    admin: Admin, services: Any
) -> None:
    payload = {"user_id": "ann", "currency": "USD", "username": "a\x00b"}
    status, body = await admin.call("POST", "/admin/players", payload)
    assert status == 400, body
    assert_error_envelope(body, 400)
    assert "username" in body["message"]
    assert (await admin.call("GET", "/admin/players/ann"))[0] == 404
    assert await stream_event_count(services) == 0


async def test_a_username_holding_the_text_backslash_u0000_is_stored_as_written(
    admin: Admin,
) -> None:
    player = await admin.create_player("ann", username="\\u0000")
    assert player["username"] == "\\u0000"


@pytest.mark.parametrize(
    ("extra", "naming"),
    [
        pytest.param({"note": "a\x00b"}, "note", id="extra-field"),
        pytest.param({"note": {"deeper": ["ok", "\x00"]}}, "note", id="nested-in-an-extra-field"),
        pytest.param({"no\x00te": "ok"}, "field name", id="field-name"),
    ],
)
async def test_a_callback_body_holding_nul_anywhere_is_400_and_moves_nothing(
    extra: dict[str, Any], naming: str, provider: Provider, admin: Admin, services: Any
) -> None:
    player = await new_player(admin, provider)
    path, payload = valid_callback("BET", player)
    before = await snapshot(services, admin, player)
    answer = await provider.post_raw(path, orjson.dumps({**payload, **extra}))
    assert_refused(answer, naming)
    await assert_nothing_moved_unless_ok(services, admin, player, "BAD_REQUEST", before)


async def test_a_callback_body_holding_the_text_backslash_u0000_is_accepted(
    provider: Provider, admin: Admin
) -> None:
    player = await new_player(admin, provider)
    path, payload = valid_callback("BET", player)
    status, body = await provider.post(path, {**payload, "note": "\\u0000"})
    assert status == 200, body
    assert await admin.balance(player.user_id) == BALANCE - 2 * STAKE


@pytest.mark.parametrize(
    "target", ["GET /admin/players/%00", "POST /admin/players/a%00b/adjustments"]
)
async def test_a_path_parameter_holding_nul_is_400_naming_it(target: str, admin: Admin) -> None:
    head = f"{target} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
    body = orjson.dumps({"amount": 1, "reference": "r-1"}) if target.startswith("POST") else b""
    assert_refused(await raw_exchange(admin.client, head.encode(), body), "user_id")


async def test_an_admin_body_past_the_size_limit_is_413_in_the_envelope(admin: Admin) -> None:
    too_large = b" " * (1024**2 + 1)  # aiohttp's default client_max_size, the admin listener's
    response = await admin.client.post("/admin/players", data=too_large, headers=admin.headers)
    assert response.status == 413
    assert_error_envelope(orjson.loads(await response.read()), 413)


# --- the safety net ---------------------------------------------------------------------------


async def metric(admin: Admin, sample: str) -> float:
    """One sample of /metrics, by its name and labels as Prometheus writes them."""
    response = await admin.client.get("/metrics")
    for line in (await response.text()).splitlines():
        if line.startswith(sample + " "):
            return float(line.removeprefix(sample + " "))
    return 0.0


async def corrupt_balance(services: Any, user_id: str) -> None:
    """A state no code path writes (as from a hand edit): the next read of it fails."""
    keys = services.wallet.keys
    await services.redis.hset(keys.player(keys.shard(user_id), user_id), "balance", "garbled")


async def test_an_unforeseen_callback_failure_is_a_500_envelope_logged_and_counted(
    provider: Provider, admin: Admin, services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await admin.create_player("ann")
    await corrupt_balance(services, "ann")
    with caplog.at_level(logging.ERROR):
        status, body = await provider.post("/balance", {"user_id": "ann"})
    assert status == 500, body
    assert_error_envelope(body, 500)
    assert any(record.exc_info for record in caplog.records if record.levelno == logging.ERROR)
    assert await metric(admin, 'wallet_internal_errors_total{listener="callbacks"}') == 1
    requests = 'wallet_requests_total{action="",endpoint="balance",status="500"}'
    assert await metric(admin, requests) == 1


async def test_an_unforeseen_admin_failure_is_a_500_envelope_logged_and_counted(
    admin: Admin, services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await admin.create_player("ann")
    await corrupt_balance(services, "ann")
    with caplog.at_level(logging.ERROR):
        status, body = await admin.call("GET", "/admin/players/ann")
    assert status == 500, body
    assert_error_envelope(body, 500)
    assert any(record.exc_info for record in caplog.records if record.levelno == logging.ERROR)
    assert await metric(admin, 'wallet_internal_errors_total{listener="admin"}') == 1


@pytest.mark.parametrize("listener", ["callbacks", "admin"])
async def test_a_path_no_route_matches_even_with_a_newline_is_a_404_envelope(
    provider: Provider, admin: Admin, listener: str
) -> None:
    """The catch-all route's pattern once stopped at a percent-encoded newline: the router's own
    404 escaped, a 500 on the admin listener."""
    client = provider.client if listener == "callbacks" else admin.client
    response = await client.get("/admin/players/%0A/x", headers=admin.headers)
    assert response.status == 404
    assert_error_envelope(orjson.loads(await response.read()), 404)
