-- ROLL_BACK of the bet ref_id. KEYS[3] player, KEYS[4] bet_record (the referenced bet's, in the
-- player's shard), KEYS[5] incidents (list), KEYS[6] tombstone (of the bet), KEYS[7] early_win
-- (marker of the bet).
-- ARGV[15] bet_owner (whom lua/claim.lua found owning the bet's id: '' if nobody, and then
-- this player owns it now).
local player_key, bet_key, incidents_key, tombstone_key, early_win_key =
  KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local bet_owner = ARGV[15]

local seen = replay_or_conflict()
if seen then return seen end

local currency, balance = read_player(player_key)
if not currency then return {'UNKNOWN_USER', 0, '', '', 0} end

if currency_in ~= '' and currency_in ~= currency then
  return finish('CURRENCY_MISMATCH', balance, currency, 0, {})
end
if bet_owner ~= '' and bet_owner ~= user_id then
  return refuse_as_incident(incidents_key, 'CROSS_PLAYER', 'bet belongs to ' .. bet_owner,
    balance, currency)
end
local bet = redis.call('HMGET', bet_key, unpack(BET_FIELDS))
if bet[3] and bet[3] ~= 'BET' and bet[3] ~= 'FREE_BET' then
  return finish('NOT_A_BET', balance, currency, 0, {})
end
if not bet[3] then
  local early_win = redis.call('GET', early_win_key)
  if early_win then
    return refuse_as_incident(incidents_key, 'ROLLBACK_OF_WON_BET',
      'bet settled by win ' .. early_win, balance, currency)
  end
end
if not bet[1] or bet[4] ~= 'OK' then
  -- the rollback overtook the bet, the bet never arrived, or it was refused: nothing to
  -- refund; the tombstone makes a late bet with this id a 409
  -- (its claim named this player owner of the bet's id, and the seen-id filter keeps the id,
  -- so the tombstone outlives its retention)
  redis.call('SET', tombstone_key, tx_id, 'PX', retention_ms)
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
local closed_by = round_closed_by

redis.call('HSET', bet_key, 'state', 'rolledback')
local new_balance = redis.call('HINCRBY', player_key, 'balance', refund)
return finish_applied('OK', new_balance, currency, refund, {}, closed_by, incidents_key)
