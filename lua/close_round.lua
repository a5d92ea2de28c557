-- CLOSE_ROUND: no money moves. Lives in the shard of its round. KEYS[5] round_closed (marker).
-- ARGV[16] stakes (JSON array of millis), ARGV[17] coefficients (cash-out, JSON array of text).
local seen = replay_or_conflict()
if seen then return seen end
local looked_up = remember_or_look_up()
if looked_up then return looked_up end
redis.call('SET', KEYS[5], tx_id, 'PX', retention_ms)
return finish('OK', 0, '', 0, {'stakes', ARGV[16], 'coefficients', ARGV[17]})
