"""Request decoding and strict validation (docs/protocol.md §1, §4).

Each request body (the callbacks' and the admin API's) is declared once, below, as a msgspec
Struct: its fields, types and limits are the validation (`Request.parse`), the OpenAPI request
schemas (gateway/openapi.py) and the cases of tests/test_validation.py. What msgspec cannot say
sits in the model's `__post_init__`.

Bad input raises `InvalidRequest` with a message naming the field; nothing has been touched yet
when it does, so bad input changes nothing.
"""

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from functools import cache, cached_property
from operator import attrgetter
from typing import Annotated, Any, Literal, Self, get_args, get_type_hints

import msgspec
import orjson
from msgspec import Meta
from msgspec.structs import force_setattr

from gateway.keys import FIELD_SEPARATOR

AMOUNT_MILLIS_MAX = 10**15
IDENTIFIER_CHARS_MAX = 128

COEFFICIENTS_ATTRIBUTE = "aviadroneCashOutCoefficients"
STAKES_ATTRIBUTE = "aviadroneBets"


class InvalidRequest(ValueError):
    """A 400: the message says which field and why."""


def decode_object(body: bytes, exact_decimals: bool = False) -> dict[str, Any]:
    """`exact_decimals` reads JSON fractions as Decimal (CLOSE_ROUND's multipliers), at the cost
    of the slower standard-library parser. Its texts are stored (a callback's whole body, as
    text): none may be unstorable."""
    try:
        payload = _exact_json(body) if exact_decimals else orjson.loads(body)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise InvalidRequest("malformed JSON") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("body must be a JSON object")
    # orjson refuses lone surrogates, so only a \u0000 escape can make its strings unstorable:
    # one bytes search on the hot path, the walk only when it hits (or a literal "\\u0000").
    # The standard parser lets lone surrogates through: its result is always walked.
    if exact_decimals or b"\\u0000" in body:
        refuse_unstorable(payload, "body")
    return payload


# PostgreSQL text holds no NUL; UTF-8 (Redis replies, the history) holds no lone surrogate.
_UNSTORABLE_CHARACTER = re.compile(r"[\x00\ud800-\udfff]")


def refuse_unstorable(value: Any, field: str) -> None:
    """docs/protocol.md §1: no text the wallet stores holds a NUL or a lone surrogate. `value` is a
    text or a decoded JSON value, walked whole (names too); an object's members are named by
    their key in the message, anything deeper by the member it sits in."""
    pending = [(field, value)]
    while pending:  # a loop, not recursion: orjson allows nesting past Python's stack limit
        name, item = pending.pop()
        if isinstance(item, str):
            if _UNSTORABLE_CHARACTER.search(item):
                raise InvalidRequest(f"{name} holds a NUL or a lone surrogate: not storable")
        elif isinstance(item, dict):
            for key, inner in item.items():
                pending.append((key if item is value else name, inner))
                pending.append(("a field name", key))  # popped first: the name is checked first
        elif isinstance(item, list):
            pending.extend((name, inner) for inner in item)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_json(text: bytes | str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (RecursionError, InvalidOperation) as exc:
        # nested past the parser's depth, or an exponent no Decimal holds ("0.0e999...9",
        # twenty digits: a float zero to orjson)
        raise ValueError("nested too deep or a number out of range") from exc


# --- field types: each rule stated once --------------------------------------------------------

# Marks the identifier text wherever it is nested (optional, with a description of its own).
IDENTIFIER_MARK = {"identifier": True}
IdentifierText = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=IDENTIFIER_CHARS_MAX,
        description=f"1..{IDENTIFIER_CHARS_MAX} printable characters",
        extra=IDENTIFIER_MARK,
    ),
]
# A JSON integer is accepted and normalised to its decimal string (Request.__post_init__), and
# "printable" has no JSON Schema form: both are checked after decoding.
Identifier = Annotated[
    IdentifierText | int,
    Meta(
        description=f"1..{IDENTIFIER_CHARS_MAX} printable characters; a JSON integer is "
        "accepted and normalised to its decimal string"
    ),
]
# msgspec's int refuses floats (even 10.0) and booleans: neither is money.
MoneyMillis = Annotated[
    int,
    Meta(
        ge=0,
        le=AMOUNT_MILLIS_MAX,
        description="integer millis (1/1000 of the currency unit: 5.44 USD is 5440); a float "
        "(even 10.0), a numeric string or a boolean is a 400",
    ),
]
# The length bounds matter: Python's `$` also matches before a final newline ("USD\n").
Currency = Annotated[
    str, Meta(min_length=3, max_length=3, pattern="^[A-Z]{3}$", description="ISO 4217")
]

BetAction = Literal["BET", "FREE_BET"]
WinAction = Literal["WIN", "FREE_BET_WIN"]
RollbackAction = Literal["ROLL_BACK"]
CloseRoundAction = Literal["CLOSE_ROUND"]

BET_ACTIONS = frozenset(get_args(BetAction))
(CLOSE_ROUND_ACTION,) = get_args(CloseRoundAction)


def is_action(value: Any, allowed: frozenset[str]) -> bool:
    # a list or an object is unhashable: `in` a frozenset would raise TypeError, not say no
    return isinstance(value, str) and value in allowed


def normalised_identifier(field: str, value: str | int) -> str:
    """An Identifier after its declared type: printable, and an integer as its decimal text."""
    if type(value) is not str:
        return str(value)
    if not value.isprintable():
        raise InvalidRequest(
            f"{field} must be a string of 1..{IDENTIFIER_CHARS_MAX} printable characters"
        )
    return value


def _is_identifier(kind: msgspec.inspect.Type) -> bool:
    """Whether IdentifierText is inside `kind` (through descriptions and `| None`)."""
    if isinstance(kind, msgspec.inspect.Metadata):
        return kind.extra == IDENTIFIER_MARK or _is_identifier(kind.type)
    if isinstance(kind, msgspec.inspect.UnionType):
        return any(_is_identifier(member) for member in kind.types)
    return False


@cache
def identifier_fields(model: type[msgspec.Struct]) -> tuple[tuple[str, str], ...]:
    """(attribute, wire name) of each Identifier field of `model`."""
    info = msgspec.inspect.type_info(model)
    assert isinstance(info, msgspec.inspect.StructType)
    return tuple(
        (field.name, field.encode_name) for field in info.fields if _is_identifier(field.type)
    )


@cache
def _identifier_values(model: type[msgspec.Struct]) -> attrgetter:
    """Reads them all at once: a tuple, or the one text itself (join takes either)."""
    return attrgetter(*(name for name, _ in identifier_fields(model)))


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """A request body: unknown fields are ignored (docs/protocol.md §1); an optional field may be
    null."""

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> Self:
        try:
            return msgspec.convert(payload, cls)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(str(exc)) from exc

    def __post_init__(self) -> None:
        # The common case in C (a third of the decode time saved): every identifier is given
        # as printable text. join refuses an integer or an absent (None) one: the loop then.
        try:
            if "".join(_identifier_values(type(self))(self)).isprintable():
                return
        except TypeError:
            pass
        for name, wire_name in identifier_fields(type(self)):
            value = getattr(self, name)
            if value is not None:
                normalised = normalised_identifier(wire_name, value)
                if normalised is not value:
                    force_setattr(self, name, normalised)


# --- the callbacks' requests -------------------------------------------------------------------


class AuthRequest(Request, frozen=True):
    session_token: Identifier
    user_token: Annotated[
        Identifier | None,
        Meta(description="the one-time launch token; binds an unknown session_token to its player"),
    ] = None
    currency: Currency | None = None


class BalanceRequest(Request, frozen=True):
    user_id: Identifier
    currency: Currency | None = None


class BetRequest(Request, frozen=True):
    action: Annotated[
        BetAction, Meta(description="FREE_BET is recorded but does not move the real balance")
    ]
    user_id: Identifier
    session_token: Identifier
    amount_millis: Annotated[
        MoneyMillis, Meta(description="stake; at least 1 for BET, at most the player's maxbet")
    ] = msgspec.field(name="amount")
    currency: Currency
    provider_tx_id: Annotated[Identifier, Meta(description="the idempotency key")]
    round_id: Identifier
    game: Identifier

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.action == "BET" and self.amount_millis < 1:
            raise InvalidRequest(f"amount must be between 1 and {AMOUNT_MILLIS_MAX} for BET")

    def fingerprint(self) -> str:
        return fingerprint(
            self.action,
            self.user_id,
            self.amount_millis,
            self.currency,
            self.round_id,
            None,
            self.game,
        )


class WinRequest(Request, frozen=True):
    action: WinAction
    user_id: Identifier
    amount_millis: MoneyMillis = msgspec.field(name="amount")
    currency: Currency
    provider_tx_id: Identifier
    round_id: Identifier
    game: Identifier
    bet_tx_id: Annotated[Identifier | None, Meta(description="the bet it settles")] = msgspec.field(
        name="withdraw_provider_tx_id", default=None
    )

    def fingerprint(self) -> str:
        return settlement_fingerprint(self)


class RollbackRequest(Request, frozen=True):
    action: RollbackAction
    user_id: Identifier
    provider_tx_id: Identifier
    bet_tx_id: Annotated[Identifier, Meta(description="the voided bet")] = msgspec.field(
        name="withdraw_provider_tx_id"
    )
    round_id: Identifier
    game: Identifier
    amount_millis: Annotated[
        MoneyMillis | None, Meta(description="if given, must equal the recorded stake (else 409)")
    ] = msgspec.field(name="amount", default=None)
    currency: Currency | None = None

    def fingerprint(self) -> str:
        return settlement_fingerprint(self)


def settlement_fingerprint(request: WinRequest | RollbackRequest) -> str:
    return fingerprint(
        request.action,
        request.user_id,
        request.amount_millis,
        request.currency,
        request.round_id,
        request.bet_tx_id,
        request.game,
    )


class NamedAttribute(msgspec.Struct, frozen=True):
    name: str
    value: Any = None


# dict=True: room for the two attribute lists, decoded once (cached_property)
class CloseRoundRequest(Request, frozen=True, dict=True):
    """After a round: each bet's stake and cash-out multiplier, for the history. No money moves."""

    action: CloseRoundAction
    provider_tx_id: Annotated[
        Identifier, Meta(description="`{round_id}-{operator_id}-close-round`")
    ]
    round_id: Identifier
    game: Identifier
    amount: Annotated[int, Meta(ge=0, le=0, description="no money moves")]
    attributes: Annotated[
        dict[str, Any] | list[NamedAttribute],
        Meta(
            description=f"{COEFFICIENTS_ATTRIBUTE} (per-bet cash-out multipliers, 0 = lost) and "
            f"{STAKES_ATTRIBUTE} (per-bet stakes in millis), positionally aligned, of equal "
            "length; each a native array or a string holding its JSON"
        ),
    ]

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.cash_out_coefficients) != len(self.stakes_millis):
            raise InvalidRequest(
                f"{COEFFICIENTS_ATTRIBUTE} and {STAKES_ATTRIBUTE} must have equal lengths"
            )

    @cached_property
    def cash_out_coefficients(self) -> tuple[str, ...]:
        """Exact decimal text, never a float."""
        return tuple(_coefficient(value) for value in self._attribute(COEFFICIENTS_ATTRIBUTE))

    @cached_property
    def stakes_millis(self) -> tuple[int, ...]:
        return tuple(_stake(value) for value in self._attribute(STAKES_ATTRIBUTE))

    def _attribute(self, name: str) -> list[Any]:
        if isinstance(self.attributes, dict):
            value = self.attributes.get(name)
        else:  # the last of a repeated name wins, as in an object
            value = next(
                (item.value for item in reversed(self.attributes) if item.name == name), None
            )
        if isinstance(value, str):
            try:
                value = _exact_json(value)
            except ValueError as exc:
                raise InvalidRequest(f"{name} is not valid JSON") from exc
        if not isinstance(value, list):
            raise InvalidRequest(f"{name} must be an array")
        return value

    def fingerprint(self) -> str:
        return fingerprint(self.action, None, 0, None, self.round_id, None, self.game)


def _coefficient(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise InvalidRequest(f"{COEFFICIENTS_ATTRIBUTE} must hold numbers")
    try:
        # repr of a float is the shortest text that reads back as the same number: the
        # provider's decimal as written, kept exact from here on.
        exact = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation as exc:
        raise InvalidRequest(f"{COEFFICIENTS_ATTRIBUTE} must hold numbers") from exc
    if not exact.is_finite() or exact < 0:
        raise InvalidRequest(f"{COEFFICIENTS_ATTRIBUTE} must hold non-negative numbers")
    return str(exact)


def _stake(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= AMOUNT_MILLIS_MAX:
        raise InvalidRequest(f"{STAKES_ATTRIBUTE} must hold non-negative integer millis")
    return value


DepositRequest = WinRequest | RollbackRequest | CloseRoundRequest
# /deposit's `action` picks the model; derived from the models' own `action` types.
DEPOSIT_MODELS: dict[str, type[DepositRequest]] = {
    action: model
    for model in get_args(DepositRequest)
    for action in get_args(get_type_hints(model)["action"])
}
DEPOSIT_ACTIONS = frozenset(DEPOSIT_MODELS)


def deposit_model(payload: dict[str, Any]) -> type[DepositRequest]:
    action = payload.get("action")
    if not is_action(action, DEPOSIT_ACTIONS):
        raise InvalidRequest(f"action must be one of {', '.join(sorted(DEPOSIT_ACTIONS))}")
    return DEPOSIT_MODELS[action]


CALLBACK_REQUESTS = (
    AuthRequest,
    BalanceRequest,
    BetRequest,
    *dict.fromkeys(DEPOSIT_MODELS.values()),
)


# --- the admin API's requests ------------------------------------------------------------------


class CreatePlayerRequest(Request, frozen=True):
    user_id: Identifier
    currency: Currency
    # UNSET, not None: an absent username defaults to the user_id, a null one is a 400
    username: Annotated[str | msgspec.UnsetType, Meta(description="default: the user_id")] = (
        msgspec.UNSET
    )
    balance_millis: Annotated[
        MoneyMillis | None, Meta(description="opening balance, default 0")
    ] = msgspec.field(name="balance", default=None)
    # a limit of 0 would refuse every bet
    maxbet_millis: Annotated[
        Annotated[int, Meta(ge=1, le=AMOUNT_MILLIS_MAX)] | None,
        Meta(description="millis, at least 1; default: the configured one"),
    ] = msgspec.field(name="maxbet", default=None)


ADJUSTMENT_REASON_CHARS_MAX = 500


class AdjustmentRequest(Request, frozen=True):
    amount_millis: Annotated[
        int,
        Meta(
            ge=-AMOUNT_MILLIS_MAX,
            le=AMOUNT_MILLIS_MAX,
            description="signed millis, not 0: + the cashier's deposit, - a withdrawal",
            extra_json_schema={"not": {"const": 0}},  # the rule of __post_init__
        ),
    ] = msgspec.field(name="amount")
    reference: Annotated[
        Identifier,
        Meta(
            description="idempotency key: the same reference and amount answer the same "
            "balance; a refused debit (402) is not stored"
        ),
    ]
    # kept in the history with the adjustment; not part of what makes a retry the same one
    reason: Annotated[
        str,
        Meta(max_length=ADJUSTMENT_REASON_CHARS_MAX, description="why: kept in the history"),
    ] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.amount_millis == 0:
            raise InvalidRequest("amount must not be 0")


class OpenSessionRequest(Request, frozen=True):
    user_id: Identifier


class LaunchRequestBody(Request, frozen=True):
    """The operator's side; gateway.launch.LaunchRequest is what goes to the provider."""

    user_id: Identifier
    game: Identifier
    platform: Literal["mobile", "desktop"]
    portal_mode: Literal["real", "demo"]
    return_url: Identifier
    language: Annotated[Identifier, Meta(description="ISO 639-1")]


NOTE_CHARS_MAX = 4000


class ResolveIncidentRequest(Request, frozen=True):
    """Kept in the history with the incident; resolving again with the same note and name
    changes nothing, with others is a 409. Stored texts: decode_object refuses the unstorable."""

    note: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=NOTE_CHARS_MAX,
            description="what was done; not blank, may span lines",
        ),
    ]
    resolved_by: Annotated[Identifier, Meta(description="who resolved it")]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.note.strip():
            raise InvalidRequest("note must not be blank")


ADMIN_REQUESTS = (
    CreatePlayerRequest,
    AdjustmentRequest,
    OpenSessionRequest,
    LaunchRequestBody,
    ResolveIncidentRequest,
)


def identifier(payload: dict[str, Any], field: str) -> str:
    """One identifier field of a body that has no model (the provider's launch answer)."""
    value = payload.get(field)
    if value is None:
        raise InvalidRequest(f"{field} is required")
    try:
        return normalised_identifier(field, msgspec.convert(value, Identifier))
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"{field}: {exc}") from exc


def fingerprint(*fields: str | int | None) -> str:
    """What 'same content' means for an idempotency key (docs/protocol.md §5)."""
    joined = FIELD_SEPARATOR.join("" if field is None else str(field) for field in fields)
    # Only compared for equality; 32 chars keep the record hash in Redis' compact encoding.
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()
