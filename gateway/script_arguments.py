"""The positional KEYS and ARGV of the money scripts, declared once: each part is one builder
whose keyword-only parameters, in order, are the layout. wallet.py calls them by keyword; the Lua
headers name the same entries (`-- KEYS[n] name`, `-- ARGV[n] name`) and
tests/test_script_arguments.py holds the two to each other (and each builder to its signature).

Every money script receives the common part (lua/money_common.lua) then its own part. Absent
values are ''. Keyword-only functions, not NamedTuples: built by keyword, a money call's KEYS and
ARGV as NamedTuples cost 4.2 us of client CPU, as these functions 0.9 us, as bare tuples 0.6 us
(Python 3.11), on a path of ~25 us per call (gateway/coalesced_scripts.py).
"""

import inspect
from collections.abc import Callable
from typing import Any

Layout = Callable[..., tuple[Any, ...]]


def money_common_keys(
    *,
    record: str,  # the idempotency record
    events: str,  # the shard's event stream
) -> tuple[str, ...]:
    return (record, events)


def money_common_arguments(
    *,
    provider_tx_id: str,
    user_id: str,
    action: str,
    amount: str,
    currency: str,
    round_id: str,
    game: str,
    ref_id: str,  # the referenced bet's tx id
    fingerprint: str,
    now_ms: str,
    operator_tx_id: str,
    retention_ms: int,
    request_body: bytes,
    round_closed_by: str,  # the CLOSE_ROUND that closed the call's round, read just before; ''
) -> tuple[str | int | bytes, ...]:
    return (
        provider_tx_id, user_id, action, amount, currency, round_id, game, ref_id, fingerprint,
        now_ms, operator_tx_id, retention_ms, request_body, round_closed_by,
    )  # fmt: skip


def withdraw_keys(
    *,
    player: str,
    session: str,
    live_session: str,  # the player's live-session pointer
    tombstone: str,  # of this tx id, left by a rollback that overtook it
    early_win: str,  # of this tx id, left by a win that overtook it
    incidents: str,
) -> tuple[str, ...]:
    return (player, session, live_session, tombstone, early_win, incidents)


def withdraw_arguments(
    *,
    session_token: str,
    session_idle_ms: int,
    default_maxbet_millis: int,
    session_ttl_ms: int,
) -> tuple[str | int, ...]:
    return (session_token, session_idle_ms, default_maxbet_millis, session_ttl_ms)


def settle_keys(
    *,
    player: str,
    bet_record: str,
    incidents: str,
    tombstone: str,  # of the bet
    early_win: str,  # of the bet
) -> tuple[str, ...]:
    """credit.lua and rollback.lua: the player and what of the referenced bet is in its slot."""
    return (player, bet_record, incidents, tombstone, early_win)


def settle_arguments(
    *,
    bet_owner: str,  # whom lua/claim.lua found owning the bet's id ('' if nobody)
) -> tuple[str, ...]:
    return (bet_owner,)


# Where credit.lua and rollback.lua take the bet's owner in their ARGV (1-based): the first of
# their own, after the common part.
BET_OWNER_ARGUMENT = len(inspect.signature(money_common_arguments).parameters) + 1


def close_round_keys(*, round_closed: str) -> tuple[str, ...]:
    return (round_closed,)


def close_round_arguments(
    *,
    stakes: str,  # JSON array of millis
    coefficients: str,  # JSON array of cash-out coefficients, as text
) -> tuple[str, ...]:
    return (stakes, coefficients)


def claim_and_decide_arguments(
    *,
    money_keys_count: int,
    tx_owner_id: str,
    tx_offsets: str,  # the tx id's four offsets in its shard's seen filter
    bet_claimant: str,  # who names the bet ('' when the call names none)
    bet_offsets: str,
    retention_ms: int,
    history_checked: str,
    reads_round: str,  # '1': read the round's close marker for the money ARGV's round_closed_by
    bet_owner_at: int | str,  # where the money ARGV takes the bet's owner ('' when none)
    index_ttl_ms: int | str,  # the session index's refresh ('' when none)
) -> tuple[str | int, ...]:
    """lua/claim_and_decide.lua's own ARGV (one Redis: both steps in one script), which the
    money script's ARGV follow."""
    return (
        money_keys_count, tx_owner_id, tx_offsets, bet_claimant, bet_offsets, retention_ms,
        history_checked, reads_round, bet_owner_at, index_ttl_ms,
    )  # fmt: skip


# Each money script's own KEYS and ARGV, which follow the common parts.
MONEY_SCRIPT_LAYOUTS: dict[str, tuple[Layout, Layout]] = {
    "withdraw": (withdraw_keys, withdraw_arguments),
    "credit": (settle_keys, settle_arguments),
    "rollback": (settle_keys, settle_arguments),
    "close_round": (close_round_keys, close_round_arguments),
}
