"""The stream events lua/*.lua append, declared once: one NamedTuple per kind whose fields are
the entry's field names in the order the script writes them. Batch decoding reads fields by
these names, the writer bench builds events with them, and tests/test_event_fields.py holds the
Lua XADDs to them. Every value is a string, as Redis stores it.
"""

from typing import NamedTuple


class TxEvent(NamedTuple):
    """A money call (lua/money_common.lua finish()): every field, the raw request included."""

    kind: str
    tx: str  # provider_tx_id
    fp: str  # the request's fingerprint
    outcome: str
    balance: str  # after the call
    op: str  # operator_tx_id
    currency: str
    user: str  # '' for a CLOSE_ROUND
    action: str
    amount: str
    delta: str
    round: str
    game: str
    ref: str  # the referenced bet's tx id, or ''
    ts: str  # now_ms
    req: str  # the raw request body


class TxEventExtras(NamedTuple):
    """Fields some money calls add after TxEvent's."""

    stake: str  # a bet's
    state: str  # a bet's: open, won, ...
    incident: str  # a call refused as an incident: its kind
    recorded: str  # what the wallet held of the referenced bet when it refused
    tombstone: str  # '1': a rollback that overtook its bet
    early_win: str  # '1': a win that overtook its bet
    stakes: str  # CLOSE_ROUND: JSON array of millis
    coefficients: str  # CLOSE_ROUND: JSON array of cash-out coefficients as text
    late: str  # '1': a call applied after its round was closed (LATE_AFTER_CLOSE)


class TxRecord(NamedTuple):
    """The idempotency record finish() keeps in Redis beside the event (lua/money_common.lua
    `record`): only what replays, settlement and reconcile read back. Restore and the history's
    bring-back rebuild it from a row (persistence/records.py), with RECORD_EXTRAS."""

    fp: str
    outcome: str
    balance: str
    op: str
    currency: str
    action: str


# The extras a record keeps: the event's, but `recorded` (an incident's view of the bet) and
# `late` (the history's incident and the round's new comparison), which only the event carries.
RECORD_EXTRAS = tuple(
    name for name in TxEventExtras._fields if name not in ("recorded", "late")
)


class PlayerEvent(NamedTuple):
    kind: str
    user: str
    currency: str
    username: str
    balance: str  # opening balance
    maxbet: str  # or ''
    ts: str


class AdjustmentEvent(NamedTuple):
    kind: str
    user: str
    amount: str  # signed
    reference: str
    balance: str  # after the adjustment
    ts: str
    reason: str  # the operator's words; absent from entries written before 005


class AdjustmentRefusedEvent(NamedTuple):
    kind: str
    user: str
    amount: str
    reference: str
    balance: str  # unchanged
    outcome: str
    ts: str
    reason: str


class SessionEvent(NamedTuple):
    kind: str
    user: str
    session: str  # the session token
    source: str
    ts: str


# The `kind` field's values.
TX_KIND = "tx"
PLAYER_KIND = "player"
ADJUSTMENT_KIND = "adjustment"
ADJUSTMENT_REFUSED_KIND = "adjustment_refused"
SESSION_KIND = "session"

# The `kind` field's value -> the event's fields.
EVENT_KINDS: dict[str, type[tuple]] = {
    TX_KIND: TxEvent,
    PLAYER_KIND: PlayerEvent,
    ADJUSTMENT_KIND: AdjustmentEvent,
    ADJUSTMENT_REFUSED_KIND: AdjustmentRefusedEvent,
    SESSION_KIND: SessionEvent,
}

# Each event's field names as attributes (TX.user == "user"): code that reads or writes a field
# names it through these, so a field that is not declared is an AttributeError, not a miss.
TX = TxEvent._make(TxEvent._fields)
TX_EXTRAS = TxEventExtras._make(TxEventExtras._fields)
PLAYER = PlayerEvent._make(PlayerEvent._fields)
ADJUSTMENT = AdjustmentEvent._make(AdjustmentEvent._fields)
ADJUSTMENT_REFUSED = AdjustmentRefusedEvent._make(AdjustmentRefusedEvent._fields)
SESSION = SessionEvent._make(SessionEvent._fields)
