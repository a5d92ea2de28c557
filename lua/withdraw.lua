-- BET / FREE_BET. KEYS[4] player, KEYS[5] session, KEYS[6] player's live-session pointer,
-- KEYS[7] rollback tombstone of this tx id, KEYS[8] early-win marker of this tx id.
-- ARGV[14] session_token, ARGV[15] session idle limit ms, ARGV[16] default maxbet millis,
-- ARGV[17] session record ttl ms.
local seen = replay_or_conflict()
if seen then return seen end

local player = redis.call('HMGET', KEYS[4], 'currency', 'balance', 'maxbet')
if not player[1] then return {'UNKNOWN_USER', 0, '', '', 0} end
local currency, balance = player[1], tonumber(player[2])
local maxbet = tonumber(player[3]) or tonumber(ARGV[16])
local amount = tonumber(amount_text)
local bet_fields = {'stake', amount_text, 'state', 'open'}

if currency_in ~= currency then
  return finish('CURRENCY_MISMATCH', balance, currency, 0, bet_fields)
end
local session = redis.call('HMGET', KEYS[5], 'user', 'last_seen')
if session[1] ~= user_id then
  return finish('SESSION_INVALID', balance, currency, 0, bet_fields)
end
if redis.call('GET', KEYS[6]) ~= ARGV[14] then
  return finish('SESSION_CLOSED', balance, currency, 0, bet_fields)
end
if tonumber(now_ms) - tonumber(session[2]) > tonumber(ARGV[15]) then
  return finish('SESSION_EXPIRED', balance, currency, 0, bet_fields)
end
redis.call('HSET', KEYS[5], 'last_seen', now_ms)
redis.call('PEXPIRE', KEYS[5], ARGV[17])
if redis.call('EXISTS', KEYS[7]) == 1 then
  return finish('BET_VOIDED', balance, currency, 0, bet_fields)
end
if redis.call('EXISTS', KEYS[8]) == 1 then
  bet_fields[4] = 'won'  -- its win came first: a rollback of this bet would pay twice
end
if action == 'FREE_BET' then
  -- paid by the provider's free-bet gift: recorded, the real balance does not move
  return finish('OK', balance, currency, 0, bet_fields)
end
if amount > maxbet then
  return finish('OVER_MAXBET', balance, currency, 0, bet_fields)
end
if balance < amount then
  return finish('INSUFFICIENT_FUNDS', balance, currency, 0, bet_fields)
end
local new_balance = redis.call('HINCRBY', KEYS[4], 'balance', -amount)
if new_balance < 0 then
  return redis.error_reply('corrupt wallet: negative balance after a checked debit')
end
return finish('OK', new_balance, currency, -amount, bet_fields)
