-- WIN / FREE_BET_WIN. KEYS[4] player, KEYS[5] record of the referenced bet (player's shard),
-- KEYS[6] owner of the referenced bet id, KEYS[7] incidents list, KEYS[8] tombstone of the bet,
-- KEYS[9] early-win marker of the bet.
-- Settlement is never refused for an expired session: no session is checked.
local seen = replay_or_conflict()
if seen then return seen end

local player = redis.call('HMGET', KEYS[4], 'currency', 'balance')
if not player[1] then return {'UNKNOWN_USER', 0, '', '', 0} end
local currency, balance = player[1], tonumber(player[2])

if currency_in ~= currency then
  return finish('CURRENCY_MISMATCH', balance, currency, 0, {})
end
local extra = {}
if ref_id ~= '' then
  local bet_owner = redis.call('GET', KEYS[6])
  if bet_owner and bet_owner ~= user_id then
    return refuse_as_incident(KEYS[7], 'CROSS_PLAYER', 'bet belongs to ' .. bet_owner,
      balance, currency)
  end
  -- a rollback that overtook the bet voided it: the bet never charged, its win must not pay
  local voided_by = redis.call('GET', KEYS[8])
  if voided_by then
    return refuse_as_incident(KEYS[7], 'WIN_AFTER_ROLLBACK', 'bet voided by rollback ' .. voided_by,
      balance, currency)
  end
  local bet = redis.call('HMGET', KEYS[5], unpack(BET_FIELDS))
  if not bet[3] then
    -- the win overtook its bet: the bet, when it comes, is already settled (no rollback after)
    redis.call('SET', KEYS[9], tx_id, 'NX', 'PX', retention_ms)
    redis.call('SET', KEYS[6], user_id, 'PX', retention_ms)  -- and names its player
    extra = {'early_win', '1'}
  elseif bet[3] ~= 'BET' and bet[3] ~= 'FREE_BET' then
    return finish('NOT_A_BET', balance, currency, 0, {})
  elseif bet[4] ~= 'OK' then
    return finish('BET_REFUSED', balance, currency, 0, {})
  elseif bet[1] == 'rolledback' then
    return refuse_as_incident(KEYS[7], 'WIN_AFTER_ROLLBACK', recorded_bet(bet), balance, currency)
  elseif bet[1] == 'open' then
    redis.call('HSET', KEYS[5], 'state', 'won')
  end
end
local amount = tonumber(amount_text)
local new_balance = redis.call('HINCRBY', KEYS[4], 'balance', amount)
return finish('OK', new_balance, currency, amount, extra)
