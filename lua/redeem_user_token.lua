-- Bind an unknown session_token to the player of a one-time user_token. KEYS[1] user token.
-- ARGV: 1 session_token. The same session may redeem it again (a retried /auth); no other may.
-- Reply: {outcome, user_id}.
local token = redis.call('HMGET', KEYS[1], 'user', 'used_by')
if not token[1] then return {'UNKNOWN_SESSION', ''} end
if token[2] and token[2] ~= ARGV[1] then return {'UNKNOWN_SESSION', ''} end
redis.call('HSET', KEYS[1], 'used_by', ARGV[1])
return {'OK', token[1]}
