"""The OpenAPI 3.1 description of both listeners: the provider's four signed callbacks and the
operator's admin API. Served as `/openapi.json` on the admin listener.

Built in code so that its limits, actions and messages are the ones the gateway enforces: every
request schema is generated from the model that validates it (gateway/schemas.py);
tests/test_openapi.py checks real responses of the running app against it.
"""

from typing import Any

import msgspec

from gateway.callbacks import BODY_BYTES_MAX
from gateway.outcomes import INCIDENT_KINDS, OUTCOMES
from gateway.schemas import (
    ADMIN_REQUESTS,
    CALLBACK_REQUESTS,
    DEPOSIT_MODELS,
    Currency,
    IdentifierText,
    MoneyMillis,
)
from persistence.batch import EVENT_QUARANTINED, HISTORY_CONFLICT
from persistence.rounds import MISMATCH_INCIDENT
from persistence.support_queries import (
    INCIDENTS_PAGE_DEFAULT,
    INCIDENTS_PAGE_MAX,
    PLAYERS_PAGE_DEFAULT,
    PLAYERS_PAGE_MAX,
    SECRET_FIELDS,
    TRANSACTIONS_PAGE_DEFAULT,
    TRANSACTIONS_PAGE_MAX,
    UNPARSED_KEY,
)

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.3"  # the provider's wallet protocol version this gateway speaks

CALLBACK_SERVER = {
    "url": "http://{host}:{port}",
    "description": "callback listener (GATEWAY_HOST / GATEWAY_PORT)",
    "variables": {"host": {"default": "localhost"}, "port": {"default": "8080"}},
}
ADMIN_SERVER = {
    "url": "http://{host}:{port}",
    "description": "admin listener (ADMIN_HOST / ADMIN_PORT)",
    "variables": {"host": {"default": "localhost"}, "port": {"default": "8081"}},
}

SIGNED = [{"publicKey": [], "signature": []}]  # both headers on every callback
BEARER = [{"adminToken": []}]
PUBLIC: list[dict[str, list[str]]] = []  # probes, scrapers and this document need no token

JSON = "application/json"
PROMETHEUS_TEXT = "text/plain"

ERROR_STATUSES = sorted({status for status, _ in OUTCOMES.values() if status >= 300})
# statuses whose message may say more than the outcome's default one
DETAILED_MESSAGE_STATUSES = {400: "the bad field and why", 502: "what the provider did"}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _object(
    properties: dict[str, Any], required: tuple[str, ...] = (), closed: bool = True, **extra: Any
) -> dict[str, Any]:
    """An object schema; `closed` ones are answers whose every field is listed here."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _messages_of(status: int) -> list[str]:
    return sorted({message for code, message in OUTCOMES.values() if code == status})


def _success(status: int, data: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            JSON: {
                "schema": _object(
                    {
                        "code": {"const": status},
                        "message": {"type": "string"},
                        "data": data,
                    },
                    ("code", "message", "data"),
                )
            }
        },
    }


def _error_response(status: int) -> dict[str, Any]:
    messages = "; ".join(f"`{message}`" for message in _messages_of(status))
    if status in DETAILED_MESSAGE_STATUSES:
        messages += f", or one naming {DETAILED_MESSAGE_STATUSES[status]}"
    return {
        "description": f"error envelope, `data` is null. Messages: {messages}",
        "content": {
            JSON: {
                "schema": {
                    "allOf": [_schema("ErrorEnvelope"), {"properties": {"code": {"const": status}}}]
                }
            }
        },
    }


def _responses(success: dict[str, dict[str, Any]], errors: tuple[int, ...]) -> dict[str, Any]:
    responses = dict(success)
    # any operation: a failure nobody foresaw is a 500 in the envelope (docs/protocol.md §3)
    for status in (*errors, 500):
        responses[str(status)] = _ref("responses", f"Error{status}")
    return responses


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _schema("IdentifierText"),
    }


def _query_parameter(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _limit_parameter(default: int, maximum: int) -> dict[str, Any]:
    return _query_parameter(
        "limit",
        "the page's size",
        {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
    )


def _stored_json(description: str) -> dict[str, Any]:
    return {
        "type": ["object", "null"],
        "description": f"{description}, as a JSON object without {' or '.join(SECRET_FIELDS)};"
        f" a stored text that is not a JSON object comes as {{{UNPARSED_KEY!r}: the text}}",
    }


def _request_schemas() -> dict[str, Any]:
    """From the models that validate them; /deposit's `action` picks one of three."""
    _, schemas = msgspec.json.schema_components(
        (*CALLBACK_REQUESTS, *ADMIN_REQUESTS), ref_template="#/components/schemas/{name}"
    )
    deposit_names = {action: model.__name__ for action, model in DEPOSIT_MODELS.items()}
    schemas["DepositRequest"] = {
        "oneOf": [_schema(name) for name in dict.fromkeys(deposit_names.values())],
        "discriminator": {
            "propertyName": "action",
            "mapping": {
                action: f"#/components/schemas/{name}" for action, name in deposit_names.items()
            },
        },
    }
    return schemas


def _components() -> dict[str, Any]:
    money = msgspec.json.schema(MoneyMillis)
    money.pop("description")  # the bounds only: its description speaks of requests
    currency = _schema("Currency")
    schemas: dict[str, Any] = {
        "IdentifierText": msgspec.json.schema(IdentifierText),
        "BalanceMillis": {"type": "integer", "minimum": 0, "description": "millis"},
        "Currency": msgspec.json.schema(Currency),
        **_request_schemas(),
        "AuthData": _object(
            {
                "user_id": _schema("IdentifierText"),
                "username": {"type": "string"},
                "currency": currency,
                "balance": _schema("BalanceMillis"),
                "maxbet": {**money, "description": "the player's limit or the default"},
            },
            ("user_id", "username", "currency", "balance", "maxbet"),
        ),
        "MoneyData": _object(
            {
                "user_id": _schema("IdentifierText"),
                "currency": currency,
                "new_balance": _schema("BalanceMillis"),
                "provider_tx_id": _schema("IdentifierText"),
                "operator_tx_id": {"type": "string", "minLength": 1},
            },
            ("user_id", "currency", "new_balance", "provider_tx_id", "operator_tx_id"),
        ),
        "CloseRoundData": _object(
            {"provider_tx_id": _schema("IdentifierText"), "round_id": _schema("IdentifierText")},
            ("provider_tx_id", "round_id"),
        ),
        "BalanceData": _object(
            {"currency": currency, "amount": _schema("BalanceMillis")}, ("currency", "amount")
        ),
        "ErrorEnvelope": _object(
            {
                "code": {"enum": ERROR_STATUSES},
                "message": {"type": "string", "minLength": 1},
                "data": {"type": "null"},
            },
            ("code", "message", "data"),
            description="every error: the HTTP status equals `code`, `data` is null",
        ),
        "Player": _object(
            {
                "user_id": _schema("IdentifierText"),
                "username": {"type": "string"},
                "currency": currency,
                "balance": _schema("BalanceMillis"),
                "maxbet": money,
            },
            ("user_id", "username", "currency", "balance", "maxbet"),
        ),
        "AdjustmentData": _object({"balance": _schema("BalanceMillis")}, ("balance",)),
        "SessionData": _object(
            {
                "session_token": {"type": "string", "minLength": 1},
                "user_token": {"type": "string", "minLength": 1},
            },
            ("session_token", "user_token"),
        ),
        "LaunchData": _object(
            {
                "launch_url": {"type": "string", "minLength": 1},
                "session_token": _schema("IdentifierText"),
            },
            ("launch_url", "session_token"),
        ),
        "Incident": _object(
            {
                "id": {
                    "type": ["integer", "null"],
                    "description": "the history's id; null while only the wallet lists it (not"
                    " yet written to the history, or without DATABASE_URL): not resolvable yet",
                },
                "kind": {
                    "enum": sorted(
                        {*INCIDENT_KINDS, HISTORY_CONFLICT, EVENT_QUARANTINED, MISMATCH_INCIDENT}
                    )
                },
                "provider_tx_id": {"type": "string"},
                "user_id": {"type": ["string", "null"]},
                "action": {"type": ["string", "null"]},
                "referenced_tx_id": {"type": "string"},
                "round_id": {"type": ["string", "null"]},
                "request": _stored_json("the refused (or late, LATE_AFTER_CLOSE) request's body"),
                "recorded": _stored_json(
                    "what the wallet had recorded of the referenced bet: {provider_tx_id, action,"
                    " stake (millis), state, outcome}; without such a record, a sentence naming"
                    " the bet's owner, the rollback that voided it or the win that settled it."
                    " The bet's request body is in the history:"
                    " /admin/players/{user_id}/transactions"
                ),
                "details": {
                    "type": ["object", "null"],
                    "description": "the history's own incidents: what differed",
                },
                "ts": {"type": "integer", "description": "milliseconds since the epoch"},
                "status": {"enum": ["open", "resolved"]},
                "resolution": {
                    "oneOf": [
                        {"type": "null"},
                        _object(
                            {
                                "note": {"type": "string", "minLength": 1},
                                "resolved_by": {"type": "string", "minLength": 1},
                                "resolved_at": {
                                    "type": "integer",
                                    "description": "milliseconds since the epoch",
                                },
                            },
                            ("note", "resolved_by", "resolved_at"),
                        ),
                    ]
                },
            },
            (
                "id",
                "kind",
                "provider_tx_id",
                "user_id",
                "action",
                "referenced_tx_id",
                "round_id",
                "request",
                "recorded",
                "details",
                "ts",
                "status",
                "resolution",
            ),
        ),
        "DepositData": {"oneOf": [_schema("MoneyData"), _schema("CloseRoundData")]},
        "IncidentList": _object(
            {
                "incidents": {"type": "array", "items": _schema("Incident")},
                "next_before": {
                    "type": ["integer", "null"],
                    "description": "`before` of the next page; null: this was the last one",
                },
            },
            ("incidents", "next_before"),
        ),
        "PlayerList": _object(
            {
                "players": {
                    "type": "array",
                    "items": _object(
                        {
                            "user_id": _schema("IdentifierText"),
                            "currency": currency,
                            "balance": _schema("BalanceMillis"),
                        },
                        ("user_id", "currency", "balance"),
                    ),
                },
                "next_after": {
                    "type": ["string", "null"],
                    "description": "`after` of the next page; null: this was the last one",
                },
            },
            ("players", "next_after"),
        ),
    }
    return {
        "schemas": schemas,
        "responses": {f"Error{status}": _error_response(status) for status in ERROR_STATUSES},
        "securitySchemes": {
            "publicKey": {
                "type": "apiKey",
                "in": "header",
                "name": "X-Public-Key",
                "description": "which operator key pair signed the body",
            },
            "signature": {
                "type": "apiKey",
                "in": "header",
                "name": "X-Signature",
                "description": "standard Base64 of HMAC-SHA256 keyed with the secret's UTF-8 "
                "bytes, over the exact raw body bytes",
            },
            "adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
        },
    }


def _callback(
    summary: str,
    request: str,
    data: str,
    errors: tuple[int, ...],
    description: str,
) -> dict[str, Any]:
    return {
        "servers": [CALLBACK_SERVER],
        "post": {
            "tags": ["callbacks"],
            "summary": summary,
            "description": description,
            "security": SIGNED,
            "requestBody": {
                **_json_body(_schema(request)),
                "description": f"JSON object of at most {BODY_BYTES_MAX} bytes (413 beyond)",
            },
            "responses": _responses({"200": _success(200, _schema(data), "success")}, errors),
        },
    }


def _admin(
    method: str,
    summary: str,
    success: dict[str, dict[str, Any]],
    errors: tuple[int, ...],
    request: str | None = None,
    parameters: tuple[dict[str, Any], ...] = (),
    tags: tuple[str, ...] = ("admin",),
    security: list[dict[str, list[str]]] = BEARER,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": list(tags),
        "summary": summary,
        "security": security,
        "responses": _responses(success, errors),
    }
    if parameters:
        operation["parameters"] = list(parameters)
    if request is not None:
        operation["requestBody"] = _json_body(_schema(request))
    return {method: operation}


def _paths() -> dict[str, Any]:
    user_id = _path_parameter("user_id", "the player")
    any_data = {"type": ["object", "null"]}
    return {
        "/auth": _callback(
            "Authenticate a session",
            "AuthRequest",
            "AuthData",
            (400, 401, 404, 408, 413, 503),
            "An unknown session_token with a valid, unused user_token binds the session to "
            "that player. Unknown session: 404; expired or closed: 401.",
        ),
        "/withdraw": _callback(
            "Place a bet (BET, FREE_BET)",
            "BetRequest",
            "MoneyData",
            (400, 401, 402, 404, 409, 408, 413, 503),
            "Idempotent on provider_tx_id: a retry with the same content gets the original "
            "status and body; different content is a 409.",
        ),
        "/deposit": _callback(
            "Settle: WIN, FREE_BET_WIN, ROLL_BACK, CLOSE_ROUND",
            "DepositRequest",
            "DepositData",
            (400, 401, 404, 409, 408, 413, 503),
            "`action` decides the request's fields. Wins and rollbacks answer MoneyData, "
            "CLOSE_ROUND answers CloseRoundData. Idempotent on provider_tx_id.",
        ),
        "/balance": _callback(
            "Read a balance",
            "BalanceRequest",
            "BalanceData",
            (400, 401, 404, 408, 413, 503),
            "Read-only; no idempotency record.",
        ),
        "/admin/players": _admin(
            "post",
            "Create a player",
            {"201": _success(201, _schema("Player"), "created")},
            (400, 401, 409, 413, 503),
            request="CreatePlayerRequest",
        )
        | _admin(
            "get",
            "The players by id (code point order), with their live balance; from the history,"
            " so served with DATABASE_URL only, and a player shows once the history has it",
            {"200": _success(200, _schema("PlayerList"), "one page of players")},
            (400, 401, 503),
            parameters=(
                _query_parameter("prefix", "only ids that start with it", {"type": "string"}),
                _query_parameter(
                    "after", "the `next_after` of the previous page", {"type": "string"}
                ),
                _limit_parameter(PLAYERS_PAGE_DEFAULT, PLAYERS_PAGE_MAX),
            ),
        ),
        "/admin/players/{user_id}": _admin(
            "get",
            "A player's wallet",
            {"200": _success(200, _schema("Player"), "the player")},
            (400, 401, 404, 503),
            parameters=(user_id,),
        ),
        "/admin/players/{user_id}/adjustments": _admin(
            "post",
            "Cashier deposit or withdrawal",
            {"200": _success(200, _schema("AdjustmentData"), "applied (or replayed)")},
            (400, 401, 402, 404, 409, 413, 503),
            request="AdjustmentRequest",
            parameters=(user_id,),
        ),
        "/admin/players/{user_id}/transactions": _admin(
            "get",
            "A player's transaction history",
            {"200": _success(200, {"type": "object"}, "the player's transactions")},
            (400, 401, 404, 503),
            parameters=(
                user_id,
                _query_parameter(
                    "before", "the `next_before` of the previous page", {"type": "string"}
                ),
                _limit_parameter(TRANSACTIONS_PAGE_DEFAULT, TRANSACTIONS_PAGE_MAX),
            ),
        ),
        "/admin/sessions": _admin(
            "post",
            "Open a session directly (development and tests), with a one-time user_token",
            {"201": _success(201, _schema("SessionData"), "the new live session")},
            (400, 401, 404, 413, 503),
            request="OpenSessionRequest",
        ),
        "/admin/launch": _admin(
            "post",
            "Launch a game at the provider and open its session",
            {"200": _success(200, _schema("LaunchData"), "where to send the player")},
            (400, 401, 404, 413, 502, 503),
            request="LaunchRequestBody",
        ),
        "/admin/incidents": _admin(
            "get",
            "Incidents (money conflicts to resolve by hand), newest first. With DATABASE_URL: the"
            " history's, paged by id, the first page also holding the wallet's newest ones not"
            " written yet (id null); without: the wallet's newest ones",
            {"200": _success(200, _schema("IncidentList"), "one page of incidents")},
            (400, 401, 503),
            parameters=(
                _query_parameter(
                    "before",
                    "the `next_before` of the previous page (needs DATABASE_URL)",
                    {"type": "integer", "minimum": 1},
                ),
                _query_parameter("status", "only these", {"enum": ["open", "resolved"]}),
                _limit_parameter(INCIDENTS_PAGE_DEFAULT, INCIDENTS_PAGE_MAX),
            ),
        ),
        "/admin/incidents/{incident_id}/resolve": _admin(
            "post",
            "Mark an incident resolved, with a note and who resolved it (kept in the history;"
            " DATABASE_URL only). Again with the same note and name: 200, nothing changes; with"
            " others: 409",
            {"200": _success(200, _schema("Incident"), "the resolved incident")},
            (400, 401, 404, 409, 413, 503),
            request="ResolveIncidentRequest",
            parameters=(
                {
                    "name": "incident_id",
                    "in": "path",
                    "required": True,
                    "description": "the incident's `id`",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            ),
        ),
        "/admin/rounds/{round_id}": _admin(
            "get",
            "A round: its bets, wins, rollbacks and post-round reconciliation",
            {"200": _success(200, {"type": "object"}, "the round")},
            (400, 401, 404, 503),
            parameters=(_path_parameter("round_id", "the provider's round"),),
        ),
        "/healthz": _admin(
            "get",
            "Liveness: the process answers",
            {"200": _success(200, any_data, "alive")},
            (),
            tags=("operations",),
            security=PUBLIC,
        ),
        "/readyz": _admin(
            "get",
            "Readiness: the hot wallet answers",
            {"200": _success(200, any_data, "ready")},
            (503,),
            tags=("operations",),
            security=PUBLIC,
        ),
        "/metrics": _admin(
            "get",
            "Prometheus metrics",
            {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}},
                }
            },
            (),
            tags=("operations",),
            security=PUBLIC,
        ),
        "/openapi.json": _admin(
            "get",
            "This document",
            {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {JSON: {"schema": {"type": "object"}}},
                }
            },
            (),
            tags=("operations",),
            security=PUBLIC,
        ),
    }


def openapi_document() -> dict[str, Any]:
    """A fresh dict each call: callers may serialise or change it freely."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "wallet-gateway",
            "version": API_VERSION,
            "description": "Seamless-wallet gateway. The provider's signed callbacks "
            "(docs/protocol.md) "
            "on the callback listener; the operator's admin API on the admin listener. Every "
            "JSON answer is the envelope `{code, message, data}` with the HTTP status equal to "
            "`code`; errors carry `data: null`. All money is integer millis.",
        },
        "servers": [ADMIN_SERVER],
        "tags": [
            {"name": "callbacks", "description": "signed calls from the game provider"},
            {"name": "admin", "description": "the operator's API, bearer token"},
            {"name": "operations", "description": "probes, metrics and this document"},
        ],
        "paths": _paths(),
        "components": _components(),
    }
