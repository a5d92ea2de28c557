-- Put back a record the hot wallet let expire, as the history holds it, so that the call that
-- asked for it is decided exactly as within retention (docs/protocol.md §5: no expiry).
-- KEYS[1] the record (an idempotency record, tombstone or early-win marker), KEYS[2] the owner
-- of its tx id. ARGV: 1 retention ms, 2 owner id, 3 'hash' or 'string', 4.. the hash's
-- field/value pairs, or the string's value.
-- A record that is back already (another call brought it, or a new call wrote it) stays.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[3] == 'hash' then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[1])
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
return 1
