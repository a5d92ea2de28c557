-- A money call's two steps in one script, on one Redis (docs/design.md, "A money call in two
-- steps"): a cluster runs lua/claim.lua and the money script apart, in their own slots; one
-- Redis, where any key may meet any other, runs both here and saves the gateway a round trip.
-- Prepended at load time (gateway/scripts.py): claim(KEYS, ARGV) is lua/claim.lua and
-- decide(KEYS, ARGV) the money script, each unchanged, so the two steps decide alike however
-- they are sent.
-- KEYS: the money script's KEYS (money_keys_count of them), then the tx id's owner and seen
-- filter, then the named bet's owner and seen filter (when it has a claimant), then the round's
-- close marker (when read), then the session's index (when refreshed).
-- ARGV (gateway/script_arguments.py claim_and_decide_arguments): ARGV[1] money_keys_count,
-- ARGV[2] tx_owner_id, ARGV[3] tx_offsets (in the filter), ARGV[4] bet_claimant ('' when
-- none), ARGV[5] bet_offsets, ARGV[6] retention_ms, ARGV[7] history_checked,
-- ARGV[8] reads_round ('1': read the close marker), ARGV[9] bet_owner_at (where the money ARGV
-- takes the bet's owner), ARGV[10] index_ttl_ms ('' when not refreshed); then the money
-- script's ARGV (its round_closed_by and bet owner filled in here).
-- Reply: the money script's, {'TX_CONFLICT', 0, '', '', 0} (the tx id is another's: nothing
-- decided), or {'LOOKUP_HISTORY'} (a claim asks: the gateway brings back and calls again).
local money_keys_count = tonumber(ARGV[1])
local tx_owner_id, tx_offsets, bet_claimant, bet_offsets, retention_ms, history_checked,
      reads_round, bet_owner_at, index_ttl_ms = unpack(ARGV, 2, 10)
local money_arguments = {unpack(ARGV, 11)}

local next_key = money_keys_count + 1
local function claimed(owner_id, offsets)
  local first = next_key
  next_key = next_key + 2
  return claim({KEYS[first], KEYS[first + 1]}, {owner_id, offsets, retention_ms, history_checked})
end

-- both claims before any answer, as the gateway makes them together on a cluster
local tx = claimed(tx_owner_id, tx_offsets)
local bet = bet_claimant ~= '' and claimed(bet_claimant, bet_offsets)
if tx[1] == 'LOOKUP_HISTORY' or (bet and bet[1] == 'LOOKUP_HISTORY') then
  return {'LOOKUP_HISTORY'}
end
if tx[2] ~= '' and tx[2] ~= tx_owner_id then return {'TX_CONFLICT', 0, '', '', 0} end
if reads_round == '1' then
  money_arguments[14] = redis.call('GET', KEYS[next_key]) or ''
  next_key = next_key + 1
end
if bet then money_arguments[tonumber(bet_owner_at)] = bet[2] end

local reply = decide({unpack(KEYS, 1, money_keys_count)}, money_arguments)
-- the index lives as long as the session it names; on one not live it changes nothing
if index_ttl_ms ~= '' then redis.call('PEXPIRE', KEYS[next_key], index_ttl_ms) end
return reply
