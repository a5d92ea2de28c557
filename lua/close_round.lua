-- CLOSE_ROUND: no money moves. Lives in the shard of its round. KEYS[5] round-closed marker.
-- ARGV[17] stakes (JSON array of millis), ARGV[18] cash-out coefficients (JSON array of text).
local seen = replay_or_conflict()
if seen then return seen end
redis.call('SET', KEYS[5], tx_id, 'PX', retention_ms)
return finish('OK', 0, '', 0, {'stakes', ARGV[17], 'coefficients', ARGV[18]})
