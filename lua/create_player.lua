-- KEYS[1] player, KEYS[2] event stream.
-- ARGV: 1 user_id, 2 currency, 3 username, 4 opening balance millis, 5 maxbet millis or '',
--       6 now_ms.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'PLAYER_EXISTS' end
-- the event first, as every script: no wallet key without its event
redis.call('XADD', KEYS[2], '*', 'kind', 'player', 'user', ARGV[1], 'currency', ARGV[2],
           'username', ARGV[3], 'balance', ARGV[4], 'maxbet', ARGV[5], 'ts', ARGV[6])
redis.call('HSET', KEYS[1], 'currency', ARGV[2], 'username', ARGV[3], 'balance', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'maxbet', ARGV[5]) end
return 'OK'
