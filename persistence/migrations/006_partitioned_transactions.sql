-- `transactions` partitioned by RANGE on created_at, one partition per UTC calendar month,
-- named transactions_YYYY_MM, plus transactions_default for any row no month holds yet, so an
-- insert never fails for want of a partition. Monthly: a dozen partitions a year keeps
-- planning cheap and the lookups that cannot name a month (by round, by bet) to a dozen index
-- probes a year, while a month is the unit operators keep, archive and drop history by.
-- persistence/partitions.py creates months ahead (`migrate` and the writer do, at start).
--
-- provider_tx_id stays unique across all partitions. PostgreSQL's unique indexes on a
-- partitioned table must include the partition key, so `transaction_ids` (not partitioned) holds
-- one row per provider_tx_id, with the created_at of its transaction (the month it lives in):
-- a BEFORE INSERT trigger on `transactions` claims the id in the same database transaction and
-- skips the row when the id is claimed already: exactly what the writer's
-- `ON CONFLICT (provider_tx_id) DO NOTHING` did (a replayed entry stores nothing; a concurrent
-- claim of the same id waits for the other transaction, as a unique index does). A trigger,
-- rather than a step of the writer's statement, so that every insert, whoever makes it, goes
-- through the claim (about 4 us a row). Lookups by provider_tx_id go through `transaction_ids`
-- and so reach the one partition of its month. A claim outlives its row (a month archived):
-- an id is never stored twice, whatever was archived (docs/protocol.md §5: idempotency has no
-- expiry).
--
-- Identity columns on a partitioned table need PostgreSQL 17 or later.

DO $$
BEGIN
    IF current_setting('server_version_num')::integer < 170000 THEN
        RAISE EXCEPTION 'the partitioned history needs PostgreSQL 17 or later, this is %',
            current_setting('server_version');
    END IF;
END $$;

-- The view names the table by reference: dropped, and made again on the new table below.
DROP VIEW rolled_back_bets;
ALTER TABLE transactions RENAME TO transactions_unpartitioned;
ALTER SEQUENCE transactions_id_seq RENAME TO transactions_unpartitioned_id_seq;

-- As in 001_initial.sql; `id` keeps its identity (new ids continue the old sequence), and is
-- unique with created_at, the partition key.
CREATE TABLE transactions (
    id              bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME transactions_id_seq),
    provider_tx_id  text NOT NULL,            -- unique: see transaction_ids
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
    created_at      timestamptz NOT NULL,     -- when the wallet stored it; the partition key
    stream_id       text NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (outcome = 'OK' OR delta = 0)
) PARTITION BY RANGE (created_at);

CREATE TABLE transactions_default PARTITION OF transactions DEFAULT;

-- Every provider_tx_id the history ever stored, with its transaction's created_at.
CREATE TABLE transaction_ids (
    provider_tx_id  text NOT NULL,
    created_at      timestamptz NOT NULL
);

-- The month of `moment` (UTC) as a partition of `transactions`, unless it exists; its name
-- when this call created it, else NULL. Rows of that month the default partition took
-- meanwhile move into it. Takes an ACCESS EXCLUSIVE lock on `transactions` only when it creates
-- one (persistence/partitions.py bounds the wait with lock_timeout).
CREATE FUNCTION create_transactions_partition(moment timestamptz) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', moment AT TIME ZONE 'UTC');
    lower_bound timestamptz := month_start AT TIME ZONE 'UTC';
    upper_bound timestamptz := (month_start + interval '1 month') AT TIME ZONE 'UTC';
    partition_name text := 'transactions_' || to_char(month_start, 'YYYY_MM');
    bounds text := format(
        'FOR VALUES FROM (%L) TO (%L)',
        to_char(month_start, 'YYYY-MM-DD HH24:MI:SS') || '+00',
        to_char(month_start + interval '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
BEGIN
    IF to_regclass(quote_ident(partition_name)) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    LOCK TABLE ONLY transactions IN ACCESS EXCLUSIVE MODE;
    IF to_regclass(quote_ident(partition_name)) IS NOT NULL THEN  -- made while we waited
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM transactions_default
               WHERE created_at >= lower_bound AND created_at < upper_bound) THEN
        -- Filled outside the table (an insert through it would find the ids claimed), then
        -- attached: attaching takes the parent's indexes, constraints and trigger.
        EXECUTE format('CREATE TABLE %I (LIKE transactions INCLUDING DEFAULTS '
                       'INCLUDING CONSTRAINTS)', partition_name);
        EXECUTE format('WITH moved AS (DELETE FROM transactions_default '
                       'WHERE created_at >= $1 AND created_at < $2 RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved', partition_name)
            USING lower_bound, upper_bound;
        EXECUTE format('ALTER TABLE transactions ATTACH PARTITION %I %s',
                       partition_name, bounds);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF transactions %s', partition_name, bounds);
    END IF;
    RETURN partition_name;
END $$;

-- Every month from the one of `first_moment` to the one of `last_moment`, both included; the
-- names of those this call created.
CREATE FUNCTION create_transactions_partitions(first_moment timestamptz,
                                               last_moment timestamptz)
    RETURNS SETOF text
    LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', first_moment AT TIME ZONE 'UTC');
    created text;
BEGIN
    WHILE month_start <= last_moment AT TIME ZONE 'UTC' LOOP
        created := create_transactions_partition(month_start AT TIME ZONE 'UTC');
        IF created IS NOT NULL THEN
            RETURN NEXT created;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
END $$;

-- A partition for each month that holds rows (found by walking the created_at index, a probe
-- per month, not a scan), and for this month.
SELECT create_transactions_partition(month_start AT TIME ZONE 'UTC')
FROM (
    WITH RECURSIVE months(month_start) AS (
        SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC')
        FROM transactions_unpartitioned
        UNION ALL
        SELECT (SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC')
                FROM transactions_unpartitioned
                WHERE created_at >= (months.month_start + interval '1 month') AT TIME ZONE 'UTC')
        FROM months
        WHERE months.month_start IS NOT NULL
    )
    SELECT month_start FROM months WHERE month_start IS NOT NULL
    UNION
    SELECT date_trunc('month', now() AT TIME ZONE 'UTC')
) AS needed;

-- The rows with their ids, then their claims; indexes after, built once.
INSERT INTO transactions (
    id, provider_tx_id, user_id, action, amount, delta, balance_after, currency, round_id,
    game, bet_tx_id, outcome, operator_tx_id, fingerprint, state, incident, tombstone,
    early_win, request, created_at, stream_id, written_at)
OVERRIDING SYSTEM VALUE
SELECT id, provider_tx_id, user_id, action, amount, delta, balance_after, currency, round_id,
       game, bet_tx_id, outcome, operator_tx_id, fingerprint, state, incident, tombstone,
       early_win, request, created_at, stream_id, written_at
FROM transactions_unpartitioned;

INSERT INTO transaction_ids (provider_tx_id, created_at)
SELECT provider_tx_id, created_at FROM transactions_unpartitioned;

-- The next id is the one the old table would have given.
SELECT setval('transactions_id_seq', last_value, is_called)
FROM transactions_unpartitioned_id_seq;

DROP TABLE transactions_unpartitioned;

ALTER TABLE transaction_ids ADD PRIMARY KEY (provider_tx_id);
ALTER TABLE transactions ADD PRIMARY KEY (id, created_at);
CREATE INDEX transactions_by_tx_id ON transactions (provider_tx_id);
CREATE INDEX transactions_by_user_and_time ON transactions (user_id, created_at DESC, id DESC);
CREATE INDEX transactions_by_round ON transactions (round_id);
CREATE INDEX transactions_by_bet ON transactions (bet_tx_id) WHERE bet_tx_id IS NOT NULL;
CREATE INDEX transactions_by_time ON transactions (created_at);

CREATE FUNCTION claim_provider_tx_id() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO transaction_ids (provider_tx_id, created_at)
    VALUES (NEW.provider_tx_id, NEW.created_at)
    ON CONFLICT (provider_tx_id) DO NOTHING;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    RETURN NULL;  -- claimed already: the row is not stored, and not counted
END $$;
CREATE TRIGGER transactions_claim_id BEFORE INSERT ON transactions
    FOR EACH ROW EXECUTE FUNCTION claim_provider_tx_id();

-- A row's id and month are its claim's: never changed (moving a row to another month would
-- make its own claim skip it).
CREATE FUNCTION refuse_provider_tx_id_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.provider_tx_id IS DISTINCT FROM OLD.provider_tx_id
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'provider_tx_id and created_at of a stored transaction do not change'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER transactions_keep_claim BEFORE UPDATE OF provider_tx_id, created_at
    ON transactions FOR EACH ROW EXECUTE FUNCTION refuse_provider_tx_id_change();

-- Emptying the whole table (a benchmark's reset) starts the history over: the claims go too.
-- Archiving a month (detaching or truncating its partition) keeps them.
CREATE FUNCTION forget_transaction_ids() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE transaction_ids;
    RETURN NULL;
END $$;
CREATE TRIGGER transactions_truncated AFTER TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION forget_transaction_ids();

-- As in 003_rolled_back_bets.sql.
CREATE VIEW rolled_back_bets AS
SELECT user_id, bet_tx_id
FROM transactions
WHERE action = 'ROLL_BACK' AND outcome = 'OK' AND NOT tombstone;
