-- Put back a record the hot wallet let expire, as the history holds it, so that the call that
-- asked for it is decided exactly as within retention (docs/protocol.md §5: no expiry).
-- KEYS[1] the record (an idempotency record, tombstone or early-win marker). ARGV: 1 retention
-- ms, 2 'hash' or 'string', 3.. the hash's field/value pairs, or the string's value.
-- The owner of its id is in another slot: persistence/records.py puts it back after this.
-- A record that is back already (another call brought it, or a new call wrote it) stays.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[2] == 'hash' then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[1])
end
return 1
