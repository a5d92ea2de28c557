-- The cashier's deposit (+) or withdrawal (-), idempotent on its reference.
-- KEYS[1] adjustment record, KEYS[2] player, KEYS[3] event stream.
-- ARGV: 1 user_id, 2 signed amount millis, 3 reference, 4 now_ms, 5 retention ms.
-- Reply: {outcome, balance}. Balances travel as Redis' own digits: a Lua number is a double,
-- inexact above 2^53.
local rec = redis.call('HMGET', KEYS[1], 'user', 'amount', 'balance')
if rec[1] then
  if rec[1] == ARGV[1] and rec[2] == ARGV[2] then return {'OK', rec[3]} end
  return {'REFERENCE_CONFLICT', '0'}
end
local balance = redis.call('HGET', KEYS[2], 'balance')
if not balance then return {'UNKNOWN_USER', '0'} end
local amount = tonumber(ARGV[2])
-- a refused debit is not stored as a record: the cashier may retry it once the player has the
-- funds; the event still tells the history that it was asked and refused
if tonumber(balance) + amount < 0 then
  redis.call('XADD', KEYS[3], '*', 'kind', 'adjustment_refused', 'user', ARGV[1],
             'amount', ARGV[2], 'reference', ARGV[3], 'balance', balance,
             'outcome', 'INSUFFICIENT_FUNDS', 'ts', ARGV[4])
  return {'INSUFFICIENT_FUNDS', balance}
end
redis.call('HINCRBY', KEYS[2], 'balance', amount)
local new_balance = redis.call('HGET', KEYS[2], 'balance')
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'amount', ARGV[2], 'balance', new_balance)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('XADD', KEYS[3], '*', 'kind', 'adjustment', 'user', ARGV[1], 'amount', ARGV[2],
           'reference', ARGV[3], 'balance', new_balance, 'ts', ARGV[4])
return {'OK', new_balance}
