-- WIN / FREE_BET_WIN. KEYS[3] player, KEYS[4] bet_record (the referenced bet's, in the
-- player's shard), KEYS[5] incidents (list), KEYS[6] tombstone (of the bet), KEYS[7] early_win
-- (marker of the bet).
-- ARGV[15] bet_owner (whom lua/claim.lua found owning the bet's id: '' if nobody, and then
-- this player owns it now).
-- Settlement is never refused for an expired session: no session is checked.
local player_key, bet_key, incidents_key, tombstone_key, early_win_key =
  KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local bet_owner = ARGV[15]

local seen = replay_or_conflict()
if seen then return seen end

local currency, balance = read_player(player_key)
if not currency then return {'UNKNOWN_USER', 0, '', '', 0} end
if currency_in ~= currency then
  return finish('CURRENCY_MISMATCH', balance, currency, 0, {})
end

-- All checks first; `settles` says what the writes will do to the bet.
local settles, extra = nil, {}
if ref_id ~= '' then
  if bet_owner ~= '' and bet_owner ~= user_id then
    return refuse_as_incident(incidents_key, 'CROSS_PLAYER', 'bet belongs to ' .. bet_owner,
      balance, currency)
  end
  -- a rollback that overtook the bet voided it: the bet never charged, its win must not pay
  local voided_by = redis.call('GET', tombstone_key)
  if voided_by then
    return refuse_as_incident(incidents_key, 'WIN_AFTER_ROLLBACK',
      'bet voided by rollback ' .. voided_by, balance, currency)
  end
  local bet = redis.call('HMGET', bet_key, unpack(BET_FIELDS))
  if not bet[3] then
    -- the win overtook its bet: the bet, when it comes, is already settled (no rollback after)
    local earlier_win = redis.call('GET', early_win_key)
    if earlier_win then
      return refuse_as_incident(incidents_key, 'DOUBLE_WIN', 'bet settled by win ' .. earlier_win,
        balance, currency)
    end
    settles, extra = 'early', {'early_win', '1'}
  elseif bet[3] ~= 'BET' and bet[3] ~= 'FREE_BET' then
    return finish('NOT_A_BET', balance, currency, 0, {})
  elseif bet[4] ~= 'OK' then
    return finish('BET_REFUSED', balance, currency, 0, {})
  elseif bet[1] == 'rolledback' then
    return refuse_as_incident(incidents_key, 'WIN_AFTER_ROLLBACK', recorded_bet(bet), balance,
      currency)
  elseif bet[1] == 'won' then
    -- one cash-out per bet: a second WIN under another provider_tx_id would pay twice
    return refuse_as_incident(incidents_key, 'DOUBLE_WIN', recorded_bet(bet), balance, currency)
  else
    settles = 'open'
  end
end
local amount = tonumber(amount_text)
if over_balance_limit(balance, amount) then
  return refuse_as_incident(incidents_key, 'BALANCE_LIMIT', 'balance ' .. int_text(balance),
    balance, currency)
end

local closed_by = round_closed_by

if settles == 'open' then
  redis.call('HSET', bet_key, 'state', 'won')
elseif settles == 'early' then
  -- its claim named this player owner of the bet's id, and its seen-id filter keeps the id
  -- (so the marker outlives its retention)
  redis.call('SET', early_win_key, tx_id, 'PX', retention_ms)
end
local new_balance = redis.call('HINCRBY', player_key, 'balance', amount)
return finish_applied('OK', new_balance, currency, amount, extra, closed_by, incidents_key)
