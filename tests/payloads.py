"""Callback bodies as the provider sends them; keyword arguments override any field."""

from typing import Any


def bet(user_id: str, session_token: str, tx: str, amount: int = 1000, **fields: Any
        ) -> dict[str, Any]:
    return {
        "user_id": user_id, "session_token": session_token, "amount": amount,
        "currency": "USD", "provider_tx_id": tx, "round_id": f"round-{tx}",
        "game": "aviadrone", "action": "BET", **fields,
    }


def win(user_id: str, tx: str, bet_tx: str | None, amount: int = 2000, **fields: Any
        ) -> dict[str, Any]:
    payload = {
        "user_id": user_id, "amount": amount, "currency": "USD", "provider_tx_id": tx,
        "round_id": f"round-{bet_tx}", "game": "aviadrone", "action": "WIN", **fields,
    }
    if bet_tx is not None:
        payload["withdraw_provider_tx_id"] = bet_tx
    return payload


def rollback(user_id: str, tx: str, bet_tx: str, **fields: Any) -> dict[str, Any]:
    return {
        "user_id": user_id, "provider_tx_id": tx, "withdraw_provider_tx_id": bet_tx,
        "round_id": f"round-{bet_tx}", "game": "aviadrone", "action": "ROLL_BACK", **fields,
    }


def close_round(round_id: str, stakes: list[int], coefficients: list[Any], **fields: Any
                ) -> dict[str, Any]:
    return {
        "provider_tx_id": f"{round_id}-operator-close-round", "round_id": round_id,
        "game": "aviadrone", "action": "CLOSE_ROUND", "amount": 0,
        "attributes": {
            "aviadroneCashOutCoefficients": coefficients, "aviadroneBets": stakes,
        },
        **fields,
    }
