-- ROLL_BACK of the bet ref_id. KEYS[5] player, KEYS[6] bet_record (the referenced
-- bet's, player's shard), KEYS[7] bet_owner (of the referenced bet id), KEYS[8] incidents (list),
-- KEYS[9] tombstone (of the bet), KEYS[10] early_win (marker of the bet),
-- KEYS[11] bet_seen_filter (the seen-id filter of the bet id's shard).
-- KEYS[12] round_closed (marker of the call's round, in the round's shard).
-- ARGV[16] bet_offsets (the bet id's offsets in that filter).
local player_key, bet_key, bet_owner_key, incidents_key, tombstone_key, early_win_key,
      bet_filter_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local bet_offsets = ARGV[16]

local seen = replay_or_conflict()
if seen then return seen end

local currency, balance = read_player(player_key)
if not currency then return {'UNKNOWN_USER', 0, '', '', 0} end
local looked_up = remember_or_look_up()
if looked_up then return looked_up end

if currency_in ~= '' and currency_in ~= currency then
  return finish('CURRENCY_MISMATCH', balance, currency, 0, {})
end
local bet_owner = redis.call('GET', bet_owner_key)
if bet_owner and bet_owner ~= user_id then
  return refuse_as_incident(incidents_key, 'CROSS_PLAYER', 'bet belongs to ' .. bet_owner,
    balance, currency)
end
local bet = redis.call('HMGET', bet_key, unpack(BET_FIELDS))
if bet[3] and bet[3] ~= 'BET' and bet[3] ~= 'FREE_BET' then
  return finish('NOT_A_BET', balance, currency, 0, {})
end
if not bet[3] then
  local lookup = lookup_expired_bet(bet_filter_key, bet_offsets, bet_owner)
  if lookup then return lookup end
  local early_win = redis.call('GET', early_win_key)
  if early_win then
    return refuse_as_incident(incidents_key, 'ROLLBACK_OF_WON_BET',
      'bet settled by win ' .. early_win, balance, currency)
  end
end
if not bet[1] or bet[4] ~= 'OK' then
  -- the rollback overtook the bet, the bet never arrived, or it was refused: nothing to
  -- refund; the tombstone makes a late bet with this id a 409
  redis.call('SET', tombstone_key, tx_id, 'PX', retention_ms)
  redis.call('SET', bet_owner_key, user_id, 'PX', retention_ms)
  remember_bet(bet_filter_key, bet_offsets)  -- so the tombstone outlives its retention
  return finish('OK', balance, currency, 0, {'tombstone', '1'})
end
if bet[1] == 'rolledback' then
  return finish('OK', balance, currency, 0, {})
end
if bet[1] == 'won' then
  return refuse_as_incident(incidents_key, 'ROLLBACK_OF_WON_BET', recorded_bet(bet), balance,
    currency)
end
if amount_text ~= '' and amount_text ~= bet[2] then
  return refuse_as_incident(incidents_key, 'AMOUNT_MISMATCH', recorded_bet(bet), balance,
    currency)
end
local refund = 0
if bet[3] == 'BET' then refund = tonumber(bet[2]) end
if over_balance_limit(balance, refund) then
  return refuse_as_incident(incidents_key, 'BALANCE_LIMIT', 'balance ' .. int_text(balance),
    balance, currency)
end
local closed_by = round_closed_by(KEYS[12])

redis.call('HSET', bet_key, 'state', 'rolledback')
local new_balance = redis.call('HINCRBY', player_key, 'balance', refund)
return finish_applied('OK', new_balance, currency, refund, {}, closed_by, incidents_key)
