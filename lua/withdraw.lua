-- BET / FREE_BET. KEYS[3] player, KEYS[4] session, KEYS[5] live_session (the player's
-- live-session pointer), KEYS[6] tombstone (a rollback's, of this tx id), KEYS[7] early_win
-- (marker of this tx id), KEYS[8] incidents (list).
-- ARGV[15] session_token, ARGV[16] session_idle_ms (idle limit), ARGV[17] default_maxbet_millis,
-- ARGV[18] session_ttl_ms (how long the session record lives).
-- The session's index (token -> player, in the token's slot) is kept alive by the gateway.
local player_key, session_key, live_session_key, tombstone_key, early_win_key =
  KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local session_token, session_idle_ms, default_maxbet, session_ttl_ms = unpack(ARGV, 15, 18)

local seen = replay_or_conflict()
if seen then return seen end

local currency, balance, maxbet = read_player(player_key)
if not currency then return {'UNKNOWN_USER', 0, '', '', 0} end
maxbet = maxbet or tonumber(default_maxbet)
local amount = tonumber(amount_text)
local bet_fields = {'stake', amount_text, 'state', 'open'}

if currency_in ~= currency then
  return finish('CURRENCY_MISMATCH', balance, currency, 0, bet_fields)
end
local session = redis.call('HMGET', session_key, 'user', 'last_seen')
if session[1] ~= user_id then
  return finish('SESSION_INVALID', balance, currency, 0, bet_fields)
end
if redis.call('GET', live_session_key) ~= session_token then
  return finish('SESSION_CLOSED', balance, currency, 0, bet_fields)
end
if tonumber(now_ms) - tonumber(session[2]) > tonumber(session_idle_ms) then
  return finish('SESSION_EXPIRED', balance, currency, 0, bet_fields)
end

-- The session is live: every outcome from here on keeps it alive. All checks first.
local outcome, debit = 'OK', 0
if redis.call('EXISTS', tombstone_key) == 1 then
  outcome = 'BET_VOIDED'
elseif action == 'BET' then
  -- a FREE_BET is paid by the provider's free-bet gift: recorded, the balance does not move
  if amount > maxbet then
    outcome = 'OVER_MAXBET'
  elseif balance < amount then
    outcome = 'INSUFFICIENT_FUNDS'
  else
    debit = amount
  end
end
if outcome ~= 'BET_VOIDED' and redis.call('EXISTS', early_win_key) == 1 then
  bet_fields[4] = 'won'  -- its win came first: a rollback of this bet would pay twice
end
local closed_by = outcome == 'OK' and round_closed_by

redis.call('HSET', session_key, 'last_seen', now_ms)
redis.call('PEXPIRE', session_key, session_ttl_ms)
if debit > 0 then
  balance = redis.call('HINCRBY', player_key, 'balance', -debit)
end
return finish_applied(outcome, balance, currency, -debit, bet_fields, closed_by, KEYS[8])
