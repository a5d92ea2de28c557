-- CLOSE_ROUND: no money moves. Lives in the shard of its round. KEYS[3] round_closed (marker).
-- ARGV[15] stakes (JSON array of millis), ARGV[16] coefficients (cash-out, JSON array of text).
local seen = replay_or_conflict()
if seen then return seen end
redis.call('SET', KEYS[3], tx_id, 'PX', retention_ms)
return finish('OK', 0, '', 0, {'stakes', ARGV[15], 'coefficients', ARGV[16]})
