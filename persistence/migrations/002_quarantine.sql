-- Nothing is dropped silently (docs/protocol.md §5). A stream entry PostgreSQL refuses (a NUL byte,
-- a number out of range), or whose provider_tx_id the history already holds with other
-- content, is kept here with its raw fields, byte for byte, beside an incident, and the writer
-- goes on with the next entry.
ALTER TABLE rejected_events
    ALTER COLUMN fields DROP NOT NULL,
    ADD COLUMN raw bytea[],                   -- name, value, name, value, ... as Redis held them
    ADD COLUMN provider_tx_id text;           -- of a tx event, where storable
CREATE INDEX rejected_events_by_tx ON rejected_events (provider_tx_id)
    WHERE provider_tx_id IS NOT NULL;
