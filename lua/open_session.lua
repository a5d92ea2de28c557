-- Open a session and make it the player's one live session (the old one is closed).
-- KEYS[1] player, KEYS[2] session, KEYS[3] live-session pointer, KEYS[4] event stream.
-- ARGV: 1 session_token, 2 user_id, 3 now_ms, 4 session record ttl ms, 5 source.
-- The session index (token -> user_id, in the token's slot, for /auth) is written by the
-- gateway after an 'OK' (gateway/sessions.py), a reopen included, so a lost one comes back.
-- Reopening the same token for the same player is idempotent.
-- All checks first, then writes that cannot fail, the event first: a refusal writes nothing.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'UNKNOWN_USER' end
local owner = redis.call('HGET', KEYS[2], 'user')
if owner and owner ~= ARGV[2] then return 'SESSION_INVALID' end
local reopened = owner and redis.call('GET', KEYS[3]) == ARGV[1]
if not reopened then
  redis.call('XADD', KEYS[4], '*', 'kind', 'session', 'user', ARGV[2], 'session', ARGV[1],
             'source', ARGV[5], 'ts', ARGV[3])
  redis.call('HSET', KEYS[2], 'user', ARGV[2], 'last_seen', ARGV[3], 'opened', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('SET', KEYS[3], ARGV[1])
end
return 'OK'
