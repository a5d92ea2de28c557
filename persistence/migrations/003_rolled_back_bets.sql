-- The bets a ROLL_BACK refunded: one that applied (OK) and was no tombstone (a rollback that
-- overtook its bet refunded nothing: that bet did not exist yet). Keyed by player and bet id,
-- as a rollback names its bet in the player's own shard. A plain filter, so the planner inlines
-- it and still uses transactions_by_bet.
CREATE VIEW rolled_back_bets AS
SELECT user_id, bet_tx_id
FROM transactions
WHERE action = 'ROLL_BACK' AND outcome = 'OK' AND NOT tombstone;
