-- An operator marks an incident resolved, once: with a note and who did it, kept with the
-- incident (resolving again with another note is refused, so the first resolution stays).
ALTER TABLE incidents
    ADD COLUMN resolved_at      timestamptz,
    ADD COLUMN resolution_note  text,
    ADD COLUMN resolved_by      text,
    ADD CHECK ((resolved_at IS NULL) = (resolution_note IS NULL)
               AND (resolved_at IS NULL) = (resolved_by IS NULL));
-- The admin API's open incidents, newest first.
CREATE INDEX incidents_open ON incidents (id) WHERE resolved_at IS NULL;

-- The admin API lists players by id, in code point order whatever the database's collation,
-- a prefix being one range of this index.
CREATE INDEX players_by_id_code_points ON players (user_id COLLATE "C");
