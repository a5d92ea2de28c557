-- The durable history: what the Redis streams carry, kept for ever.
-- Money is bigint millis (1/1000 of the currency unit); multipliers are exact numeric.
-- No foreign keys between these tables: several writers commit batches of different shard
-- streams in any order, so a bet may land before its player's row.

-- A stream entry id 'ms-seq' as a comparable value: entries of one stream are ordered by it.
CREATE FUNCTION stream_position(stream_id text) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT ARRAY[split_part(stream_id, '-', 1)::bigint, split_part(stream_id, '-', 2)::bigint] $$;

CREATE TABLE players (
    user_id         text PRIMARY KEY,
    currency        text NOT NULL,
    username        text NOT NULL,
    opening_balance bigint NOT NULL,          -- millis, when the player was created
    maxbet          bigint,                   -- millis; NULL = the configured default
    created_at      timestamptz NOT NULL,
    stream_id       text NOT NULL
);

-- Every stored money outcome, applied or refused: one row per provider_tx_id.
CREATE TABLE transactions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_tx_id  text NOT NULL UNIQUE,
    user_id         text,                     -- NULL for CLOSE_ROUND
    action          text NOT NULL
        CHECK (action IN ('BET', 'FREE_BET', 'WIN', 'FREE_BET_WIN', 'ROLL_BACK', 'CLOSE_ROUND')),
    amount          bigint,                   -- millis as requested; NULL when absent
    delta           bigint NOT NULL,          -- millis, signed change of the real balance
    balance_after   bigint NOT NULL,          -- millis
    currency        text,                     -- NULL for CLOSE_ROUND
    round_id        text NOT NULL,
    game            text NOT NULL,
    bet_tx_id       text,                     -- the bet a WIN / ROLL_BACK names
    outcome         text NOT NULL,            -- OK or the refusal (INSUFFICIENT_FUNDS, ...)
    operator_tx_id  text NOT NULL,
    fingerprint     text NOT NULL,            -- what "same content" means (docs/protocol.md §5)
    state           text,                     -- a bet's state when stored: open, or won
                                              -- (its WIN came first); NULL for other actions
    incident        text,                     -- the incident kind of an incident 409
    tombstone       boolean NOT NULL DEFAULT false, -- ROLL_BACK of an unknown bet
    early_win       boolean NOT NULL DEFAULT false, -- WIN that overtook its bet
    request         text NOT NULL,            -- the raw request body, byte for byte
    created_at      timestamptz NOT NULL,     -- when the wallet stored it
    stream_id       text NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (outcome = 'OK' OR delta = 0)
);
CREATE INDEX transactions_by_user_and_time ON transactions (user_id, created_at DESC, id DESC);
CREATE INDEX transactions_by_round ON transactions (round_id);
CREATE INDEX transactions_by_bet ON transactions (bet_tx_id) WHERE bet_tx_id IS NOT NULL;
CREATE INDEX transactions_by_time ON transactions (created_at);

-- The cashier's deposits and withdrawals.
CREATE TABLE adjustments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reference       text NOT NULL,            -- the cashier's id, unique per player
    user_id         text NOT NULL,
    amount          bigint NOT NULL,          -- millis, signed
    balance_after   bigint NOT NULL,          -- millis
    created_at      timestamptz NOT NULL,
    stream_id       text NOT NULL,
    UNIQUE (user_id, reference)
);
CREATE INDEX adjustments_by_user_and_time ON adjustments (user_id, created_at);

-- Cashier debits refused for want of funds: nothing moved, no record kept in Redis (the
-- reference may be used again), but asked for, so kept here.
CREATE TABLE refused_adjustments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reference       text NOT NULL,
    user_id         text NOT NULL,
    amount          bigint NOT NULL,          -- millis, signed, as asked
    balance         bigint NOT NULL,          -- millis, the balance that did not suffice
    outcome         text NOT NULL,
    created_at      timestamptz NOT NULL,
    stream_id       text NOT NULL,
    UNIQUE (reference, stream_id)
);

CREATE TABLE sessions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         text NOT NULL,
    session_token   text NOT NULL,
    source          text NOT NULL,
    opened_at       timestamptz NOT NULL,
    stream_id       text NOT NULL,
    UNIQUE (user_id, session_token, opened_at)
);

-- docs/protocol.md §7: the provider's aggregate of a closed round against our ledger.
-- status: 'pending' until every shard stream is written past the close, then 'match' or
-- 'mismatch' (once: a redelivered CLOSE_ROUND finds the row and changes nothing).
CREATE TABLE rounds (
    round_id             text PRIMARY KEY,
    close_tx_id          text NOT NULL,
    game                 text NOT NULL,
    stakes               bigint[] NOT NULL,   -- millis per bet (aviadroneBets)
    coefficients         numeric[] NOT NULL,  -- cash-out multiplier per bet, 0 = lost
    provider_bets_count  integer NOT NULL,
    provider_staked      bigint NOT NULL,     -- millis
    provider_paid        bigint NOT NULL,     -- millis, sum of floor(stake * multiplier)
    closed_at            timestamptz NOT NULL,
    close_stream_ms      bigint NOT NULL,     -- time part of the close's stream entry id
    status               text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'match', 'mismatch')),
    ledger_bets_count    integer,
    ledger_staked        bigint,              -- millis
    ledger_paid          bigint,              -- millis
    differences          jsonb,
    compared_at          timestamptz
);
CREATE INDEX rounds_pending ON rounds (close_stream_ms) WHERE status = 'pending';

-- What an operator resolves by hand: the four incident 409s, and round mismatches.
CREATE TABLE incidents (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL,
    provider_tx_id  text NOT NULL,            -- the refused call, or the CLOSE_ROUND
    user_id         text,
    round_id        text,
    bet_tx_id       text,
    request         text,                     -- the refused request
    recorded        text,                     -- what the wallet held of the referenced bet
    details         jsonb,
    created_at      timestamptz NOT NULL,
    UNIQUE (kind, provider_tx_id)
);
CREATE INDEX incidents_by_time ON incidents (created_at);

-- Stream entries the writer could not decode: kept, acknowledged, and logged loudly, so one
-- bad entry neither blocks the history nor disappears.
CREATE TABLE rejected_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream          text NOT NULL,
    stream_id       text NOT NULL,
    fields          jsonb NOT NULL,
    reason          text NOT NULL,
    rejected_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, stream_id)
);
