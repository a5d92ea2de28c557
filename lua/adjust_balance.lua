-- The cashier's deposit (+) or withdrawal (-), idempotent on its reference for ever: its record
-- never expires (a cashier's adjustments are few beside bets; ~100 bytes each).
-- KEYS[1] adjustment record, KEYS[2] player, KEYS[3] event stream, KEYS[4] incidents list.
-- ARGV: 1 user_id, 2 signed amount millis, 3 reference, 4 now_ms, 5 reason (for the history
-- only: a retry with another reason is the same adjustment).
-- Reply: {outcome, balance}. Balances travel as digits: a Lua number is a double, exact only
-- up to 2^53, which is why balances stay below BALANCE_MILLIS_MAX.
-- All or nothing, as the money scripts: every check first, then only writes that cannot fail.
local BALANCE_MILLIS_MAX = 9007199254740991
local INCIDENTS_KEPT_MAX = 10000
local user_id, amount_text, reference, now_ms, reason = unpack(ARGV, 1, 5)
local rec = redis.call('HMGET', KEYS[1], 'user', 'amount', 'balance')
if rec[1] then
  if rec[1] == user_id and rec[2] == amount_text then return {'OK', rec[3]} end
  return {'REFERENCE_CONFLICT', '0'}
end
local balance_text = redis.call('HGET', KEYS[2], 'balance')
if not balance_text then return {'UNKNOWN_USER', '0'} end
local balance, amount = tonumber(balance_text), tonumber(amount_text)
-- only plain digits, as HINCRBY reads them: tonumber also takes '1e4', '0x10', ' 7'
if not balance or balance < 0 or balance > BALANCE_MILLIS_MAX
    or string.format('%d', balance) ~= balance_text then
  error('corrupt wallet: balance of ' .. KEYS[2] .. ' is ' .. balance_text)
end

-- A refused adjustment is not stored as a record: the cashier may retry it once it can apply;
-- the event still tells the history that it was asked and refused.
local refusal = nil
if balance + amount < 0 then
  refusal = 'INSUFFICIENT_FUNDS'
elseif balance + amount > BALANCE_MILLIS_MAX then
  refusal = 'BALANCE_LIMIT'
end
if refusal then
  redis.call('XADD', KEYS[3], '*', 'kind', 'adjustment_refused', 'user', user_id,
             'amount', amount_text, 'reference', reference, 'balance', balance_text,
             'outcome', refusal, 'ts', now_ms, 'reason', reason)
  if refusal == 'BALANCE_LIMIT' then  -- an incident (docs/protocol.md §6), as for a credit
    redis.call('LPUSH', KEYS[4], cjson.encode({
      kind = refusal, provider_tx_id = reference, user_id = user_id, action = 'ADJUSTMENT',
      referenced_tx_id = '', request = '{"amount":' .. amount_text .. '}',
      recorded = 'balance ' .. balance_text, ts = tonumber(now_ms),
    }))
    redis.call('LTRIM', KEYS[4], 0, INCIDENTS_KEPT_MAX - 1)
  end
  return {refusal, balance_text}
end

local new_balance = string.format('%d', balance + amount)
redis.call('XADD', KEYS[3], '*', 'kind', 'adjustment', 'user', user_id, 'amount', amount_text,
           'reference', reference, 'balance', new_balance, 'ts', now_ms, 'reason', reason)
redis.call('HSET', KEYS[1], 'user', user_id, 'amount', amount_text, 'balance', new_balance)
redis.call('HINCRBY', KEYS[2], 'balance', amount)
return {'OK', new_balance}
