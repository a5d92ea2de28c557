-- The first step of a money call (docs/design.md, "A money call in two steps"): claim an id for
-- its owner in the id's own slot, where the ids of every player meet. The call's tx id is
-- claimed for its player (a CLOSE_ROUND's: its round, gateway/keys.py CLOSE_ROUND_OWNER_PREFIX);
-- the bet a WIN or ROLL_BACK names, for the player naming it. The money script then runs in
-- the player's slot.
-- KEYS[1] owner (of the id), KEYS[2] seen filter (of the id's shard, gateway/seen_filter.py).
-- ARGV[1] owner id, ARGV[2] the id's four offsets in the filter ("a b c d"), ARGV[3] retention
-- ms, ARGV[4] history_checked ('1' once the history brought back what it holds of the id).
-- Reply: {'OK', the owner found ('' if none: the id is now this owner's)} or
-- {'LOOKUP_HISTORY', ''}: the owner expired, or a false positive; the gateway brings back from
-- the history what it holds of the id and claims again.
-- An id owned by another stays so; the caller refuses the call (TX_CONFLICT, CROSS_PLAYER). An
-- unowned id is claimed even when the money script then refuses the call: a later call naming
-- it for another player is a conflict, as the provider reused an id it had sent.
local owner = redis.call('GET', KEYS[1])
if owner then return {'OK', owner} end
local a, b, c, d = string.match(ARGV[2], '^(%d+) (%d+) (%d+) (%d+)$')
-- Remembered for ever (one BITFIELD: literal offsets, no Lua loop on the hot path); all four
-- bits set before: seen, its owner gone with its retention, or a false positive.
local was = redis.call('BITFIELD', KEYS[2], 'SET', 'u1', a, 1, 'SET', 'u1', b, 1,
  'SET', 'u1', c, 1, 'SET', 'u1', d, 1)
if ARGV[4] ~= '1' and was[1] == 1 and was[2] == 1 and was[3] == 1 and was[4] == 1 then
  return {'LOOKUP_HISTORY', ''}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {'OK', ''}
