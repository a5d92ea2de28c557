"""Request decoding and strict validation (PROTOCOL.md §1, §4).

Bad input raises `InvalidRequest` with a message naming the field; nothing has been touched yet
when it does, so bad input changes nothing.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from gateway.keys import FIELD_SEPARATOR

AMOUNT_MILLIS_MAX = 10**15
IDENTIFIER_CHARS_MAX = 128
# str.isupper() alone lets "U5D" and "U D" through: a cased letter is enough for it.
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")

BET_ACTIONS = frozenset({"BET", "FREE_BET"})
WIN_ACTIONS = frozenset({"WIN", "FREE_BET_WIN"})
ROLLBACK_ACTION = "ROLL_BACK"
CLOSE_ROUND_ACTION = "CLOSE_ROUND"
DEPOSIT_ACTIONS = WIN_ACTIONS | {ROLLBACK_ACTION, CLOSE_ROUND_ACTION}

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
    """PROTOCOL.md §1: no text the wallet stores holds a NUL or a lone surrogate. `value` is a
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


def _present(payload: dict[str, Any], field: str) -> bool:
    return payload.get(field) is not None


def money_millis(payload: dict[str, Any], field: str, minimum: int = 0) -> int:
    if not _present(payload, field):
        raise InvalidRequest(f"{field} is required")
    value = payload[field]
    # bool is an int subclass in Python; JSON true is not money.
    if type(value) is not int:
        raise InvalidRequest(f"{field} must be an integer number of millis")
    if value < minimum or value > AMOUNT_MILLIS_MAX:
        raise InvalidRequest(f"{field} must be between {minimum} and {AMOUNT_MILLIS_MAX}")
    return value


def optional_money_millis(payload: dict[str, Any], field: str) -> int | None:
    return money_millis(payload, field) if _present(payload, field) else None


def identifier(payload: dict[str, Any], field: str) -> str:
    if not _present(payload, field):
        raise InvalidRequest(f"{field} is required")
    value = payload[field]
    if type(value) is int:
        return str(value)
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= IDENTIFIER_CHARS_MAX
        or not value.isprintable()
    ):
        raise InvalidRequest(
            f"{field} must be a string of 1..{IDENTIFIER_CHARS_MAX} printable characters"
        )
    return value


def optional_identifier(payload: dict[str, Any], field: str) -> str | None:
    return identifier(payload, field) if _present(payload, field) else None


def currency(payload: dict[str, Any], field: str = "currency") -> str:
    if not _present(payload, field):
        raise InvalidRequest(f"{field} is required")
    value = payload[field]
    if not isinstance(value, str) or not CURRENCY_PATTERN.fullmatch(value):
        raise InvalidRequest(f"{field} must be 3 upper-case letters (ISO 4217)")
    return value


def optional_currency(payload: dict[str, Any]) -> str | None:
    return currency(payload) if _present(payload, "currency") else None


def is_action(value: Any, allowed: frozenset[str]) -> bool:
    # a list or an object is unhashable: `in` a frozenset would raise TypeError, not say no
    return isinstance(value, str) and value in allowed


def action_of(payload: dict[str, Any], allowed: frozenset[str]) -> str:
    value = payload.get("action")
    if not is_action(value, allowed):
        raise InvalidRequest(f"action must be one of {', '.join(sorted(allowed))}")
    return value


def fingerprint(*fields: str | int | None) -> str:
    """What 'same content' means for an idempotency key (PROTOCOL.md §5)."""
    joined = FIELD_SEPARATOR.join("" if field is None else str(field) for field in fields)
    # Only compared for equality; 32 chars keep the record hash in Redis' compact encoding.
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


@dataclass(slots=True, frozen=True)
class AuthRequest:
    session_token: str
    user_token: str | None
    currency: str | None

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "AuthRequest":
        return cls(
            session_token=identifier(payload, "session_token"),
            user_token=optional_identifier(payload, "user_token"),
            currency=optional_currency(payload),
        )


@dataclass(slots=True, frozen=True)
class BalanceRequest:
    user_id: str
    currency: str | None

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "BalanceRequest":
        return cls(user_id=identifier(payload, "user_id"), currency=optional_currency(payload))


@dataclass(slots=True, frozen=True)
class BetRequest:
    action: str
    user_id: str
    session_token: str
    amount_millis: int
    currency: str
    provider_tx_id: str
    round_id: str
    game: str

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "BetRequest":
        action = action_of(payload, BET_ACTIONS)
        return cls(
            action=action,
            user_id=identifier(payload, "user_id"),
            session_token=identifier(payload, "session_token"),
            amount_millis=money_millis(payload, "amount", minimum=1 if action == "BET" else 0),
            currency=currency(payload),
            provider_tx_id=identifier(payload, "provider_tx_id"),
            round_id=identifier(payload, "round_id"),
            game=identifier(payload, "game"),
        )

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


@dataclass(slots=True, frozen=True)
class WinRequest:
    action: str
    user_id: str
    amount_millis: int
    currency: str
    provider_tx_id: str
    round_id: str
    game: str
    bet_tx_id: str | None

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "WinRequest":
        return cls(
            action=action_of(payload, WIN_ACTIONS),
            user_id=identifier(payload, "user_id"),
            amount_millis=money_millis(payload, "amount"),
            currency=currency(payload),
            provider_tx_id=identifier(payload, "provider_tx_id"),
            round_id=identifier(payload, "round_id"),
            game=identifier(payload, "game"),
            bet_tx_id=optional_identifier(payload, "withdraw_provider_tx_id"),
        )

    def fingerprint(self) -> str:
        return settlement_fingerprint(self)


@dataclass(slots=True, frozen=True)
class RollbackRequest:
    user_id: str
    provider_tx_id: str
    bet_tx_id: str
    round_id: str
    game: str
    amount_millis: int | None
    currency: str | None
    action: str = ROLLBACK_ACTION

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "RollbackRequest":
        return cls(
            user_id=identifier(payload, "user_id"),
            provider_tx_id=identifier(payload, "provider_tx_id"),
            bet_tx_id=identifier(payload, "withdraw_provider_tx_id"),
            round_id=identifier(payload, "round_id"),
            game=identifier(payload, "game"),
            amount_millis=optional_money_millis(payload, "amount"),
            currency=optional_currency(payload),
        )

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


@dataclass(slots=True, frozen=True)
class CloseRoundRequest:
    provider_tx_id: str
    round_id: str
    game: str
    stakes_millis: tuple[int, ...]
    cash_out_coefficients: tuple[str, ...]  # exact decimal text, never a float
    action: str = CLOSE_ROUND_ACTION

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "CloseRoundRequest":
        if money_millis(payload, "amount") != 0:
            raise InvalidRequest("amount must be 0 for CLOSE_ROUND")
        attributes = _attributes_by_name(payload.get("attributes"))
        coefficients = tuple(
            _coefficient(value) for value in _attribute_list(attributes, COEFFICIENTS_ATTRIBUTE)
        )
        stakes = tuple(_stake(value) for value in _attribute_list(attributes, STAKES_ATTRIBUTE))
        if len(coefficients) != len(stakes):
            raise InvalidRequest(
                f"{COEFFICIENTS_ATTRIBUTE} and {STAKES_ATTRIBUTE} must have equal lengths"
            )
        return cls(
            provider_tx_id=identifier(payload, "provider_tx_id"),
            round_id=identifier(payload, "round_id"),
            game=identifier(payload, "game"),
            stakes_millis=stakes,
            cash_out_coefficients=coefficients,
        )

    def fingerprint(self) -> str:
        return fingerprint(self.action, None, 0, None, self.round_id, None, self.game)


def _attributes_by_name(attributes: Any) -> dict[str, Any]:
    """Accept `{"name": value}` or `[{"name": ..., "value": ...}]`."""
    if isinstance(attributes, dict):
        return attributes
    if isinstance(attributes, list):
        by_name: dict[str, Any] = {}
        for item in attributes:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidRequest("attributes items must be objects with name and value")
            by_name[item["name"]] = item.get("value")
        return by_name
    raise InvalidRequest("attributes must be an object or a list of {name, value}")


def _attribute_list(attributes: dict[str, Any], name: str) -> list[Any]:
    """A value is a native array or a JSON-encoded string of one."""
    value = attributes.get(name)
    if isinstance(value, str):
        try:
            value = _exact_json(value)
        except ValueError as exc:
            raise InvalidRequest(f"{name} is not valid JSON") from exc
    if not isinstance(value, list):
        raise InvalidRequest(f"{name} must be an array")
    return value


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
