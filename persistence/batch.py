"""One batch of stream entries: decoded into history rows, stored in one PostgreSQL transaction.

Every field of an event is a string, as lua/*.lua writes it. Inserts are idempotent (unique
provider_tx_id, user_id, reference, ...): a batch redelivered after a crash between commit and
XACK stores nothing twice; an entry whose provider_tx_id the history holds from another stream
entry (the wallet applied one id twice) is no duplicate: it is quarantined beside a
HISTORY_CONFLICT incident. An entry that cannot be decoded goes to `rejected_events`, loudly,
instead of blocking the history or vanishing; one PostgreSQL refuses is quarantined there by the
writer (persistence/writer.py).
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
import orjson

from persistence.events import (
    ADJUSTMENT,
    ADJUSTMENT_KIND,
    ADJUSTMENT_REFUSED,
    ADJUSTMENT_REFUSED_KIND,
    PLAYER,
    PLAYER_KIND,
    SESSION,
    SESSION_KIND,
    TX,
    TX_EXTRAS,
    TX_KIND,
)
from persistence.rounds import (
    LateCall,
    RoundClose,
    provider_totals,
    record_late_calls,
    record_round_closes,
)
from persistence.streams import stream_id_ms

log = logging.getLogger("persistence.batch")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BIGINT_MAX = 2**63 - 1
# A multiplier PostgreSQL numeric stores exactly (it allows far more; these are sane bounds).
COEFFICIENT_DIGITS_MAX = 1000

# One stream entry: (stream key, entry id, fields).
Entry = tuple[str, str, dict[str, str]]

TX_COLUMNS = (
    "provider_tx_id",
    "user_id",
    "action",
    "amount",
    "delta",
    "balance_after",
    "currency",
    "round_id",
    "game",
    "bet_tx_id",
    "outcome",
    "operator_tx_id",
    "fingerprint",
    "state",
    "incident",
    "tombstone",
    "early_win",
    "request",
    "created_at",
    "stream_id",
)
_TX_COLUMN_LIST = ", ".join(TX_COLUMNS)
# What an incident's script found of the referenced bet: staged with its call, stored in
# `incidents` only.
STAGE_COLUMNS = (*TX_COLUMNS, "recorded")

# Per connection (the writer's pool runs it on connect): COPY lands here, then one
# INSERT ... ON CONFLICT DO NOTHING moves the rows; emptied at every commit.
STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS tx_stage (
    provider_tx_id text, user_id text, action text, amount bigint, delta bigint,
    balance_after bigint, currency text, round_id text, game text, bet_tx_id text,
    outcome text, operator_tx_id text, fingerprint text, state text, incident text,
    tombstone boolean, early_win boolean, request text, created_at timestamptz, stream_id text,
    recorded text
) ON COMMIT DELETE ROWS
"""

# Each row claims its provider_tx_id in `transaction_ids` first (a trigger, migration 006), and
# is skipped when the id is claimed already, as ON CONFLICT DO NOTHING skipped it: a redelivered
# entry stores nothing. Sorted by key so that two writers inserting overlapping batches (a
# reclaimed batch) lock the claims in the same order and cannot deadlock; of two entries of one
# id, the first written to its stream is kept.
INSERT_STAGED_TRANSACTIONS = f"""
INSERT INTO transactions ({_TX_COLUMN_LIST})
SELECT {_TX_COLUMN_LIST} FROM tx_stage
ORDER BY provider_tx_id, stream_position(stream_id)
"""

# Staged entries the insert skipped although they are not the row it holds (a redelivered
# entry is: same stream id): the same provider_tx_id applied twice. The held row is found
# through its claim, in the one partition of its month; a claim whose row is gone (its month
# archived) cannot prove the entry a redelivery, so the entry is kept too.
STAGED_CONFLICTS = """
SELECT s.stream_id, s.provider_tx_id, s.user_id, s.round_id, s.bet_tx_id, s.request,
       s.created_at, t.request AS held_request,
       jsonb_build_object(
           'stream_id', s.stream_id, 'outcome', s.outcome, 'delta', s.delta,
           'fingerprint', s.fingerprint, 'held_stream_id', t.stream_id,
           'held_outcome', t.outcome, 'held_delta', t.delta,
           'held_fingerprint', t.fingerprint) AS details
FROM tx_stage s
JOIN transaction_ids i USING (provider_tx_id)
LEFT JOIN transactions t ON t.provider_tx_id = i.provider_tx_id AND t.created_at = i.created_at
WHERE t.stream_id IS DISTINCT FROM s.stream_id
ORDER BY s.provider_tx_id
"""

HISTORY_CONFLICT = "HISTORY_CONFLICT"
EVENT_QUARANTINED = "EVENT_QUARANTINED"

INSERT_CONFLICT_INCIDENT = f"""
INSERT INTO incidents (kind, provider_tx_id, user_id, round_id, bet_tx_id, request, recorded,
                       details, created_at)
VALUES ('{HISTORY_CONFLICT}', $1, $2, $3, $4, $5, $6, $7::jsonb, $8)
ON CONFLICT (kind, provider_tx_id) DO NOTHING
"""

INSERT_QUARANTINED = """
INSERT INTO rejected_events (stream, stream_id, raw, reason, provider_tx_id)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stream, stream_id) DO NOTHING
"""

INSERT_QUARANTINE_INCIDENT = f"""
INSERT INTO incidents (kind, provider_tx_id, details, created_at)
VALUES ('{EVENT_QUARANTINED}', $1, $2::jsonb, now())
ON CONFLICT (kind, provider_tx_id) DO NOTHING
"""

INSERT_STAGED_INCIDENTS = """
INSERT INTO incidents
    (kind, provider_tx_id, user_id, round_id, bet_tx_id, request, recorded, created_at)
SELECT incident, provider_tx_id, user_id, round_id, bet_tx_id, request, recorded, created_at
FROM tx_stage
WHERE incident IS NOT NULL
ORDER BY provider_tx_id
ON CONFLICT (kind, provider_tx_id) DO NOTHING
"""

INSERT_PLAYER = """
INSERT INTO players (user_id, currency, username, opening_balance, maxbet, created_at, stream_id)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id) DO NOTHING
"""

INSERT_ADJUSTMENT = """
INSERT INTO adjustments
    (reference, user_id, amount, balance_after, created_at, stream_id, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, reference) DO NOTHING
"""

INSERT_SESSION = """
INSERT INTO sessions (user_id, session_token, source, opened_at, stream_id)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, session_token, opened_at) DO NOTHING
"""

INSERT_REFUSED_ADJUSTMENT = """
INSERT INTO refused_adjustments
    (reference, user_id, amount, balance, outcome, created_at, stream_id, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (reference, stream_id) DO NOTHING
"""

INSERT_REJECTED = """
INSERT INTO rejected_events (stream, stream_id, fields, reason)
VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (stream, stream_id) DO NOTHING
"""


class CorruptEvent(ValueError):
    """A stream entry that does not decode: names the field and why."""


def raw_fields(fields: dict[str, str]) -> list[bytes]:
    """An entry's fields as the bytes Redis held (the writer reads them with surrogateescape):
    name, value, name, value, ..., storable whatever they contain."""
    return [
        text.encode("utf-8", "surrogateescape") for pair in fields.items() for text in pair
    ]


def storable_text(text: str | None) -> str | None:
    """`text` if PostgreSQL can store it as text, else None."""
    if text is None or "\x00" in text:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


async def quarantine(
    connection: asyncpg.Connection, entry: "Entry", reason: str, incident: str | None
) -> None:
    """Keep an entry the history cannot hold, raw, with an incident (of `incident` kind, or
    EVENT_QUARANTINED) unless the caller records its own."""
    stream, entry_id, fields = entry
    await connection.execute(
        INSERT_QUARANTINED, stream, entry_id, raw_fields(fields), reason,
        storable_text(fields.get(TX.tx)),
    )  # fmt: skip
    if incident is None:
        details = orjson.dumps({"stream": stream, "stream_id": entry_id, "reason": reason})
        await connection.execute(
            INSERT_QUARANTINE_INCIDENT, f"{stream}/{entry_id}", details.decode()
        )


def ms_to_datetime(milliseconds: int) -> datetime:
    # timedelta arithmetic, not a float division: exact to the millisecond both ways
    return EPOCH + timedelta(milliseconds=milliseconds)


def datetime_to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _field(fields: dict[str, str], name: str) -> str:
    try:
        return fields[name]
    except KeyError:
        raise CorruptEvent(f"field {name!r} is missing") from None


def _integer(fields: dict[str, str], name: str) -> int:
    text = _field(fields, name)
    try:
        value = int(text)
    except ValueError:
        raise CorruptEvent(f"field {name!r} is not an integer: {text!r}") from None
    if abs(value) > BIGINT_MAX:
        raise CorruptEvent(f"field {name!r} is out of range: {text!r}")
    return value


def _optional_integer(fields: dict[str, str], name: str) -> int | None:
    return None if _field(fields, name) == "" else _integer(fields, name)


def _optional_text(fields: dict[str, str], name: str) -> str | None:
    return _field(fields, name) or None


def _created_at(fields: dict[str, str]) -> datetime:
    # every kind names its time `ts`, as a tx event does
    return ms_to_datetime(_integer(fields, TX.ts))


def _round_close(entry_id: str, fields: dict[str, str]) -> RoundClose:
    try:
        stakes = orjson.loads(_field(fields, TX_EXTRAS.stakes))
        coefficient_texts = orjson.loads(_field(fields, TX_EXTRAS.coefficients))
        coefficients = [Decimal(text) for text in coefficient_texts]
    except (orjson.JSONDecodeError, InvalidOperation, TypeError) as exc:
        raise CorruptEvent(f"stakes or coefficients do not decode: {exc}") from None
    if not all(type(stake) is int and 0 <= stake <= BIGINT_MAX for stake in stakes):
        raise CorruptEvent("stakes must be non-negative integers of millis")
    if len(stakes) != len(coefficients):
        raise CorruptEvent("stakes and coefficients differ in length")
    for coefficient in coefficients:
        exponent = coefficient.as_tuple().exponent
        if (
            not coefficient.is_finite()
            or coefficient < 0
            or not isinstance(exponent, int)
            or exponent < -COEFFICIENT_DIGITS_MAX
            or coefficient.adjusted() > COEFFICIENT_DIGITS_MAX
        ):
            raise CorruptEvent(f"coefficient {coefficient} is not a storable multiplier")
    try:
        totals = provider_totals(stakes, coefficients)
    except ArithmeticError as exc:
        raise CorruptEvent(f"the provider's round totals are not exact: {exc!r}") from None
    if max(totals.staked_millis, totals.paid_millis) > BIGINT_MAX:
        raise CorruptEvent("the provider's round totals do not fit a bigint of millis")
    return RoundClose(
        round_id=_field(fields, TX.round),
        close_tx_id=_field(fields, TX.tx),
        game=_field(fields, TX.game),
        stakes=tuple(stakes),
        coefficients=tuple(coefficients),
        provider=totals,
        closed_at=_created_at(fields),
        close_stream_ms=stream_id_ms(entry_id),
    )


@dataclass(slots=True)
class HistoryBatch:
    transactions: list[tuple[Any, ...]] = field(default_factory=list)
    players: list[tuple[Any, ...]] = field(default_factory=list)
    adjustments: list[tuple[Any, ...]] = field(default_factory=list)
    refused_adjustments: list[tuple[Any, ...]] = field(default_factory=list)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    closes: list[RoundClose] = field(default_factory=list)
    late: list[LateCall] = field(default_factory=list)
    rejected: list[tuple[str, str, str, str]] = field(default_factory=list)
    incidents: int = 0
    tx_entries: dict[str, Entry] = field(default_factory=dict)  # by stream id, for conflicts
    conflicts: int = 0  # entries of an id the history holds from another entry

    @classmethod
    def decode(cls, entries: list[Entry]) -> "HistoryBatch":
        batch = cls()
        for stream, entry_id, fields in entries:
            try:
                batch._add(entry_id, fields)
                if fields.get(TX.kind) == TX_KIND:
                    batch.tx_entries[entry_id] = (stream, entry_id, fields)
            except CorruptEvent as exc:
                log.error("rejected stream entry %s %s: %s", stream, entry_id, exc)
                batch.rejected.append((stream, entry_id, orjson.dumps(fields).decode(), str(exc)))
        return batch

    def _add(self, entry_id: str, fields: dict[str, str]) -> None:
        kind = fields.get(TX.kind)
        if kind == TX_KIND:
            self._add_transaction(entry_id, fields)
        elif kind == PLAYER_KIND:
            maxbet = _optional_integer(fields, PLAYER.maxbet)
            self.players.append(
                (
                    _field(fields, PLAYER.user),
                    _field(fields, PLAYER.currency),
                    _field(fields, PLAYER.username),
                    _integer(fields, PLAYER.balance),
                    maxbet,
                    _created_at(fields),
                    entry_id,
                )
            )
        elif kind == ADJUSTMENT_KIND:
            self.adjustments.append(
                (
                    _field(fields, ADJUSTMENT.reference),
                    _field(fields, ADJUSTMENT.user),
                    _integer(fields, ADJUSTMENT.amount),
                    _integer(fields, ADJUSTMENT.balance),
                    _created_at(fields),
                    entry_id,
                    fields.get(ADJUSTMENT.reason, ""),  # entries from before the field
                )
            )
        elif kind == ADJUSTMENT_REFUSED_KIND:
            self.refused_adjustments.append(
                (
                    _field(fields, ADJUSTMENT_REFUSED.reference),
                    _field(fields, ADJUSTMENT_REFUSED.user),
                    _integer(fields, ADJUSTMENT_REFUSED.amount),
                    _integer(fields, ADJUSTMENT_REFUSED.balance),
                    _field(fields, ADJUSTMENT_REFUSED.outcome),
                    _created_at(fields),
                    entry_id,
                    fields.get(ADJUSTMENT_REFUSED.reason, ""),
                )
            )
        elif kind == SESSION_KIND:
            self.sessions.append(
                (
                    _field(fields, SESSION.user),
                    _field(fields, SESSION.session),
                    _field(fields, SESSION.source),
                    _created_at(fields),
                    entry_id,
                )
            )
        else:
            raise CorruptEvent(f"unknown event kind {kind!r}")

    def _add_transaction(self, entry_id: str, fields: dict[str, str]) -> None:
        action = _field(fields, TX.action)
        outcome = _field(fields, TX.outcome)
        if action == "CLOSE_ROUND" and outcome == "OK":
            self.closes.append(_round_close(entry_id, fields))
        incident = fields.get(TX_EXTRAS.incident) or None
        self.incidents += incident is not None
        if fields.get(TX_EXTRAS.late) == "1":
            self.late.append(
                LateCall(
                    _field(fields, TX.tx),
                    _field(fields, TX.user),
                    _field(fields, TX.round),
                    _optional_text(fields, TX.ref),
                    _field(fields, TX.req),
                    _field(fields, TX_EXTRAS.recorded),
                    _created_at(fields),
                )
            )
        self.transactions.append(
            (
                _field(fields, TX.tx),
                _optional_text(fields, TX.user),
                action,
                _optional_integer(fields, TX.amount),
                _integer(fields, TX.delta),
                _integer(fields, TX.balance),
                _optional_text(fields, TX.currency),
                _field(fields, TX.round),
                _field(fields, TX.game),
                _optional_text(fields, TX.ref),
                outcome,
                _field(fields, TX.op),
                _field(fields, TX.fp),
                fields.get(TX_EXTRAS.state) or None,
                incident,
                fields.get(TX_EXTRAS.tombstone) == "1",
                fields.get(TX_EXTRAS.early_win) == "1",
                _field(fields, TX.req),
                _created_at(fields),
                entry_id,
                fields.get(TX_EXTRAS.recorded),
            )
        )

    def __len__(self) -> int:
        return (
            len(self.transactions)
            + len(self.players)
            + len(self.adjustments)
            + len(self.refused_adjustments)
            + len(self.sessions)
            + len(self.rejected)
        )

    async def store(self, connection: asyncpg.Connection) -> None:
        """Insert everything; the caller holds the transaction (one per batch)."""
        # Players first: within a batch, a player's creation precedes their bets.
        if self.players:
            await connection.executemany(INSERT_PLAYER, sorted(self.players))
        if self.adjustments:
            await connection.executemany(INSERT_ADJUSTMENT, sorted(self.adjustments))
        if self.refused_adjustments:
            await connection.executemany(
                INSERT_REFUSED_ADJUSTMENT, sorted(self.refused_adjustments)
            )
        if self.sessions:
            await connection.executemany(INSERT_SESSION, sorted(self.sessions))
        if self.transactions:
            await connection.copy_records_to_table(
                "tx_stage", records=self.transactions, columns=STAGE_COLUMNS
            )
            status = await connection.execute(INSERT_STAGED_TRANSACTIONS)
            if int(status.rsplit(" ", 1)[1]) < len(self.transactions):
                await self._keep_conflicts(connection)
            if self.incidents:
                await connection.execute(INSERT_STAGED_INCIDENTS)
        if self.closes:
            await record_round_closes(connection, self.closes)
        if self.late:
            await record_late_calls(connection, self.late)
        if self.rejected:
            await connection.executemany(INSERT_REJECTED, self.rejected)

    async def _keep_conflicts(self, connection: asyncpg.Connection) -> None:
        """Entries the insert skipped that are no redelivery: quarantined, each an incident."""
        for row in await connection.fetch(STAGED_CONFLICTS):
            entry = self.tx_entries[row["stream_id"]]
            log.error(
                "provider_tx_id %r is in the history from stream entry %s; entry %s %s of it "
                "quarantined (%s)",
                row["provider_tx_id"], row["details"], entry[0], entry[1], HISTORY_CONFLICT,
            )  # fmt: skip
            reason = "provider_tx_id already in the history from another stream entry"
            await quarantine(connection, entry, reason, HISTORY_CONFLICT)
            await connection.execute(
                INSERT_CONFLICT_INCIDENT, row["provider_tx_id"], row["user_id"],
                row["round_id"], row["bet_tx_id"], row["request"], row["held_request"],
                row["details"], row["created_at"],
            )  # fmt: skip
            self.conflicts += 1
