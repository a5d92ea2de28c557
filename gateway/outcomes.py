"""Errors are values at the boundary: one mapping from wallet outcomes to HTTP status and
message, and the one envelope every response uses (docs/protocol.md §3).

The Lua scripts return these outcome names; idempotency records store them, so a replay
rebuilds the identical body from the identical outcome.
"""

from typing import Any

import orjson

OK = "OK"

# outcome -> (HTTP status, message)
OUTCOMES: dict[str, tuple[int, str]] = {
    OK: (200, "OK"),
    "CREATED": (201, "Created"),
    "BAD_REQUEST": (400, "Bad request"),
    "CURRENCY_MISMATCH": (400, "Currency does not match the player's wallet"),
    "OVER_MAXBET": (400, "Bet exceeds the player's maximum bet"),
    # the three refusals of a callback's signing headers (docs/protocol.md §2), told apart
    "SIGNATURE_MISSING": (401, "Missing X-Signature header"),
    "UNKNOWN_PUBLIC_KEY": (401, "Unknown X-Public-Key"),
    "BAD_SIGNATURE": (401, "Signature does not match the raw body"),
    "UNAUTHORIZED": (401, "Missing or wrong admin token"),
    "SESSION_INVALID": (401, "Session is not valid for this player"),
    "SESSION_EXPIRED": (401, "Session expired"),
    "SESSION_CLOSED": (401, "Session closed"),
    "INSUFFICIENT_FUNDS": (402, "Insufficient player balance"),
    "UNKNOWN_USER": (404, "Unknown user"),
    "UNKNOWN_SESSION": (404, "Unknown session"),
    "NOT_FOUND": (404, "Not found"),
    "METHOD_NOT_ALLOWED": (405, "Method not allowed"),
    "TX_CONFLICT": (409, "Transaction id already used with different content"),
    "BET_VOIDED": (409, "Bet was already voided by a rollback"),
    "NOT_A_BET": (409, "Referenced transaction is not a bet"),
    "BET_REFUSED": (409, "Referenced bet was refused"),
    "ROLLBACK_OF_WON_BET": (409, "Bet was already settled by a win"),
    "WIN_AFTER_ROLLBACK": (409, "Bet was rolled back"),
    "AMOUNT_MISMATCH": (409, "Rollback amount differs from the recorded stake"),
    "CROSS_PLAYER": (409, "Referenced bet belongs to another player"),
    "DOUBLE_WIN": (409, "Bet was already settled by another win"),
    "BALANCE_LIMIT": (409, "The credit would take the balance above its limit"),
    "PLAYER_EXISTS": (409, "Player already exists"),
    "REFERENCE_CONFLICT": (409, "Adjustment reference already used with different content"),
    "INCIDENT_RESOLVED": (409, "Incident already resolved with another note"),
    "BODY_TOO_LARGE": (413, "Request body too large"),
    "BODY_TIMEOUT": (408, "Request body not received in time"),
    "INTERNAL_ERROR": (500, "Internal error"),
    "PROVIDER_UNAVAILABLE": (502, "Game provider did not answer"),
    "WALLET_UNAVAILABLE": (503, "Wallet temporarily unavailable"),
}

# The 409s an operator must resolve by hand (docs/protocol.md §6): stored with both payloads.
INCIDENT_OUTCOMES = frozenset(
    {
        "ROLLBACK_OF_WON_BET",
        "WIN_AFTER_ROLLBACK",
        "AMOUNT_MISMATCH",
        "CROSS_PLAYER",
        "DOUBLE_WIN",
        "BALANCE_LIMIT",
    }
)

# A call applied after its round was closed (docs/protocol.md §7): an incident, but answered as
# usual, so no outcome of its own.
LATE_AFTER_CLOSE = "LATE_AFTER_CLOSE"
INCIDENT_KINDS = INCIDENT_OUTCOMES | {LATE_AFTER_CLOSE}


def status_of(outcome: str) -> int:
    return OUTCOMES[outcome][0]


def message_of(outcome: str, message: str | None = None) -> str:
    """The envelope's message: the answer's own, else the table's."""
    return message or OUTCOMES[outcome][1]


def envelope(outcome: str, data: dict[str, Any] | None = None, message: str | None = None) -> bytes:
    """The response body: `{"code", "message", "data"}`; errors carry `data: null`."""
    status = status_of(outcome)
    return orjson.dumps(
        {
            "code": status,
            "message": message_of(outcome, message),
            "data": data if status < 300 else None,
        }
    )
