-- ROLL_BACK of the bet ref_id. KEYS[4] player, KEYS[5] record of the referenced bet,
-- KEYS[6] owner of the referenced bet id, KEYS[7] incidents list, KEYS[8] tombstone of the bet,
-- KEYS[9] early-win marker of the bet.
local seen = replay_or_conflict()
if seen then return seen end

local player = redis.call('HMGET', KEYS[4], 'currency', 'balance')
if not player[1] then return {'UNKNOWN_USER', 0, '', '', 0} end
local currency, balance = player[1], tonumber(player[2])

if currency_in ~= '' and currency_in ~= currency then
  return finish('CURRENCY_MISMATCH', balance, currency, 0, {})
end
local bet_owner = redis.call('GET', KEYS[6])
if bet_owner and bet_owner ~= user_id then
  return refuse_as_incident(KEYS[7], 'CROSS_PLAYER', 'bet belongs to ' .. bet_owner,
    balance, currency)
end
local bet = redis.call('HMGET', KEYS[5], unpack(BET_FIELDS))
if bet[3] and bet[3] ~= 'BET' and bet[3] ~= 'FREE_BET' then
  return finish('NOT_A_BET', balance, currency, 0, {})
end
if not bet[3] then
  local early_win = redis.call('GET', KEYS[9])
  if early_win then
    return refuse_as_incident(KEYS[7], 'ROLLBACK_OF_WON_BET', 'bet settled by win ' .. early_win,
      balance, currency)
  end
end
if not bet[1] or bet[4] ~= 'OK' then
  -- the rollback overtook the bet, the bet never arrived, or it was refused: nothing to
  -- refund; the tombstone makes a late bet with this id a 409
  redis.call('SET', KEYS[8], tx_id, 'PX', retention_ms)
  redis.call('SET', KEYS[6], user_id, 'PX', retention_ms)
  return finish('OK', balance, currency, 0, {'tombstone', '1'})
end
if bet[1] == 'rolledback' then
  return finish('OK', balance, currency, 0, {})
end
if bet[1] == 'won' then
  return refuse_as_incident(KEYS[7], 'ROLLBACK_OF_WON_BET', recorded_bet(bet), balance, currency)
end
if amount_text ~= '' and amount_text ~= bet[2] then
  return refuse_as_incident(KEYS[7], 'AMOUNT_MISMATCH', recorded_bet(bet), balance, currency)
end
redis.call('HSET', KEYS[5], 'state', 'rolledback')
local refund = 0
if bet[3] == 'BET' then refund = tonumber(bet[2]) end
local new_balance = redis.call('HINCRBY', KEYS[4], 'balance', refund)
return finish('OK', new_balance, currency, refund, {})
