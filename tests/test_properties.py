"""Property: whatever the interleaving of bets, wins, rollbacks, top-ups and retries (of
successes and of refusals alike), the wallet equals the opening balance minus the applied stakes
plus the applied wins, refunds and top-ups, and no provider_tx_id is ever applied twice.

A small model predicts each call's status from the protocol's rules (docs/protocol.md §4-§6); the
money sums use only the first, non-replayed answer of each provider_tx_id.
"""

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payloads import bet, rollback, win

from gateway.keys import shard_of

BET_SLOTS = 8
STAKE_MILLIS_MAX = 4_000
OPENING_BALANCE_MILLIS_MAX = 8_000
EXAMPLES_MAX = 40
SHARDS = 16

_example_ids = itertools.count()


def two_players(prefix: str, same_shard: bool) -> tuple[str, str]:
    """Two user ids of one example, in the same shard or in different shards."""
    first = f"{prefix}-p0"
    for n in range(1, 1_000):
        second = f"{prefix}-p{n}"
        if (shard_of(second, SHARDS) == shard_of(first, SHARDS)) == same_shard:
            return first, second
    raise AssertionError("no user id for that layout")


# --- operations -------------------------------------------------------------------------------

player_index = st.integers(0, 1)
slot = st.integers(0, BET_SLOTS - 1)
bet_operation = st.tuples(
    st.just("bet"),
    player_index,
    slot,
    st.integers(1, STAKE_MILLIS_MAX),
    st.sampled_from(["BET", "BET", "BET", "FREE_BET"]),
)
win_operation = st.tuples(
    st.just("win"), player_index, st.one_of(st.none(), slot, slot, slot), st.integers(0, 5_000)
)
rollback_operation = st.tuples(
    st.just("rollback"), player_index, slot, st.sampled_from(["none", "none", "stake", "wrong"])
)
top_up_operation = st.tuples(st.just("top_up"), player_index, st.integers(1, 3_000))
retry_operation = st.tuples(st.just("retry"), st.integers(0, 10_000))
# weights by repetition: mostly bets, then settlements and retries
operations = st.one_of(
    bet_operation,
    bet_operation,
    bet_operation,
    win_operation,
    win_operation,
    rollback_operation,
    rollback_operation,
    retry_operation,
    retry_operation,
    top_up_operation,
)


# --- the model --------------------------------------------------------------------------------


@dataclass
class BetSlot:
    """One bet id: who sent it, what it was, how it ended, and whether a rollback voided it."""

    tx: str
    owner: str | None = None  # whoever first claimed the id (bet or tombstoning rollback)
    bet_sent: bool = False  # a bet call used this id, whatever its answer
    bettor: str | None = None  # the player whose bet is recorded under this id
    action: str = ""
    stake: int = 0
    applied: bool = False  # the bet got a 200
    state: str = "open"  # open | won | rolledback
    tombstoned: bool = False
    early_winner: str | None = None  # a player whose WIN named this id before any bet record


@dataclass
class Model:
    balances: dict[str, int]
    slots: list[BetSlot]
    sessions: dict[str, str]
    # provider_tx_id -> (path, raw body, first (status, raw response))
    first_answers: dict[str, tuple[str, bytes, tuple[int, bytes]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def predict_bet(self, user: str, bet_slot: BetSlot, action: str, stake: int) -> int:
        if bet_slot.owner is not None and bet_slot.owner != user:
            return 409  # the id is another player's
        if bet_slot.tombstoned:
            return 409  # a rollback voided it before it arrived
        if action == "FREE_BET":
            return 200
        return 200 if self.balances[user] >= stake else 402

    def predict_win(self, user: str, bet_slot: BetSlot | None) -> int:
        if bet_slot is None:
            return 200
        if bet_slot.owner is not None and bet_slot.owner != user:
            return 409  # cross-player
        if bet_slot.tombstoned or bet_slot.state == "rolledback":
            return 409  # win after rollback
        if bet_slot.bettor == user and not bet_slot.applied:
            return 409  # the bet was refused: nothing to settle
        if bet_slot.state == "won" if bet_slot.bettor == user else bet_slot.early_winner:
            return 409  # settled by another WIN already: one cash-out per bet (DOUBLE_WIN)
        return 200

    def predict_rollback(self, user: str, bet_slot: BetSlot, amount: int | None) -> int:
        if bet_slot.owner is not None and bet_slot.owner != user:
            return 409  # cross-player
        if bet_slot.bettor != user and bet_slot.early_winner == user:
            return 409  # its win came before it: a refund would pay twice
        if not bet_slot.applied or bet_slot.state == "rolledback":
            return 200  # nothing (more) to refund
        if bet_slot.state == "won":
            return 409
        if amount is not None and amount != bet_slot.stake:
            return 409
        return 200


async def send(provider: Any, model: Model, path: str, payload: dict[str, Any]) -> int:
    """First delivery of a provider_tx_id: remember the exact answer for the retries."""
    body = orjson.dumps(payload)
    answer = await provider.post_raw(path, body)
    tx = payload["provider_tx_id"]
    assert tx not in model.first_answers
    model.first_answers[tx] = (path, body, answer)
    model.calls.append(tx)
    return answer[0]


def new_balance_of(answer: tuple[int, bytes]) -> int:
    return orjson.loads(answer[1])["data"]["new_balance"]


async def run_operation(
    provider: Any,
    admin: Any,
    model: Model,
    users: tuple[str, str],
    prefix: str,
    n: int,
    operation: tuple[Any, ...],
) -> None:
    kind = operation[0]
    if kind == "retry":
        if not model.calls:
            return
        tx = model.calls[operation[1] % len(model.calls)]
        path, body, first = model.first_answers[tx]
        assert await provider.post_raw(path, body) == first, f"retry of {tx} differs"
        return
    user = users[operation[1]]
    if kind == "top_up":
        amount = operation[2]
        status, body = await admin.call(
            "POST",
            f"/admin/players/{user}/adjustments",
            {"amount": amount, "reference": f"{prefix}-top-up-{n}"},
        )
        assert status == 200, body
        model.balances[user] += amount
        return
    if kind == "bet":
        bet_slot = model.slots[operation[2]]
        stake, action = operation[3], operation[4]
        if bet_slot.bet_sent:
            # a bet id is sent once (its retries are "retry" operations): take a fresh one
            fresh = [s for s in model.slots if not s.bet_sent]
            if not fresh:
                return
            bet_slot = fresh[0]
        expected = model.predict_bet(user, bet_slot, action, stake)
        payload = bet(user, model.sessions[user], bet_slot.tx, stake, action=action)
        status = await send(provider, model, "/withdraw", payload)
        assert status == expected, (operation, status)
        bet_slot.bet_sent = True
        if bet_slot.owner is None:
            bet_slot.owner = user
        if bet_slot.owner == user:  # recorded (else refused as another player's id)
            bet_slot.bettor, bet_slot.action, bet_slot.stake = user, action, stake
        if status == 200:
            bet_slot.applied = True
            if bet_slot.early_winner == user:
                bet_slot.state = "won"  # settled before it arrived
            if action == "BET":
                model.balances[user] -= stake
        return
    if kind == "win":
        bet_slot = None if operation[2] is None else model.slots[operation[2]]
        amount = operation[3]
        expected = model.predict_win(user, bet_slot)
        payload = win(user, f"{prefix}-w{n}", None if bet_slot is None else bet_slot.tx, amount)
        status = await send(provider, model, "/deposit", payload)
        assert status == expected, (operation, status)
        if status == 200:
            model.balances[user] += amount
            if bet_slot is not None and bet_slot.bettor == user and bet_slot.state == "open":
                bet_slot.state = "won"
            elif bet_slot is not None and bet_slot.bettor != user:
                # the win overtook its bet: the bet comes already settled
                bet_slot.early_winner = bet_slot.early_winner or user
                bet_slot.owner = bet_slot.owner or user
        return
    if kind == "rollback":
        bet_slot = model.slots[operation[2]]
        mode = operation[3]
        amount = {"none": None, "stake": bet_slot.stake, "wrong": bet_slot.stake + 1}[mode]
        extra = {} if amount is None else {"amount": amount}
        expected = model.predict_rollback(user, bet_slot, amount)
        payload = rollback(user, f"{prefix}-rb{n}", bet_slot.tx, **extra)
        status = await send(provider, model, "/deposit", payload)
        assert status == expected, (operation, status)
        if status == 200:
            if bet_slot.applied and bet_slot.state == "open":
                bet_slot.state = "rolledback"
                if bet_slot.action == "BET":
                    model.balances[user] += bet_slot.stake
            elif not bet_slot.applied:
                # nothing to refund: the id is tombstoned (and claimed by this player)
                bet_slot.tombstoned = True
                bet_slot.owner = bet_slot.owner or user
        return
    raise AssertionError(f"unknown operation {kind}")


async def tx_events_per_id(services: Any, users: tuple[str, str], prefix: str) -> Counter[str]:
    """Tx events of this example's ids (the streams are shared by every example)."""
    keys = services.wallet.keys
    streams = {keys.events(shard_of(user, keys.shards)) for user in users}
    events: Counter[str] = Counter()
    for stream in streams:
        for _, fields in await services.redis.xrange(stream):
            if fields.get("kind") == "tx" and fields["tx"].startswith(f"{prefix}-"):
                events[fields["tx"]] += 1
    return events


@settings(
    max_examples=EXAMPLES_MAX,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    opening=st.tuples(
        st.integers(0, OPENING_BALANCE_MILLIS_MAX), st.integers(0, OPENING_BALANCE_MILLIS_MAX)
    ),
    same_shard=st.booleans(),
    ops=st.lists(operations, min_size=10, max_size=40),
)
async def test_any_interleaving_keeps_the_balance_equation_and_applies_each_tx_once(
    provider, admin, services, opening, same_shard, ops
):
    # fixtures live for the whole test: every example gets its own players and ids
    prefix = f"x{next(_example_ids)}"
    users = two_players(prefix, same_shard)
    sessions = {}
    for user, balance in zip(users, opening, strict=True):
        await admin.create_player(user, balance)
        sessions[user] = await admin.open_session(user)
    model = Model(
        balances=dict(zip(users, opening, strict=True)),
        slots=[BetSlot(tx=f"{prefix}-b{k}") for k in range(BET_SLOTS)],
        sessions=sessions,
    )

    for n, operation in enumerate(ops):
        await run_operation(provider, admin, model, users, prefix, n, operation)
        for user in users:
            assert await admin.balance(user) == model.balances[user], (n, operation)

    # every id's retry still gets its first answer, whatever happened since
    for path, body, first in model.first_answers.values():
        assert await provider.post_raw(path, body) == first
    for user in users:
        assert await admin.balance(user) == model.balances[user]
    events = await tx_events_per_id(services, users, prefix)
    assert set(events) <= set(model.first_answers)
    assert all(count == 1 for count in events.values()), events
    # an applied call or a refusal by the money rules is recorded once; only a key conflict
    # (a 409 that stores nothing) may have no event
    for tx, (_, _, (status, _)) in model.first_answers.items():
        if status != 409:
            assert events[tx] == 1, (tx, status)
