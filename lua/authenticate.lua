-- /auth of a known session. KEYS[1] player, KEYS[2] session, KEYS[3] live-session pointer.
-- (The gateway refreshes the session index, in the token's slot, with this call.)
-- ARGV: 1 session_token, 2 now_ms, 3 session idle limit ms, 4 session record ttl ms.
-- Reply: {outcome, username, currency, balance, maxbet ('' = default)}.
local session = redis.call('HMGET', KEYS[2], 'user', 'last_seen')
if not session[1] then return {'UNKNOWN_SESSION', '', '', 0, ''} end
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {'SESSION_CLOSED', '', '', 0, ''} end
if tonumber(ARGV[2]) - tonumber(session[2]) > tonumber(ARGV[3]) then
  return {'SESSION_EXPIRED', '', '', 0, ''}
end
local player = redis.call('HMGET', KEYS[1], 'username', 'currency', 'balance', 'maxbet')
if not player[2] then return {'UNKNOWN_USER', '', '', 0, ''} end
redis.call('HSET', KEYS[2], 'last_seen', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
-- the balance as Redis' digits: tonumber would round it above 2^53
return {'OK', player[1] or '', player[2], player[3], player[4] or ''}
