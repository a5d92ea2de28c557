-- Shared by every money script (prepended at load time; Redis has no `require`).
-- KEYS[1] idempotency record, KEYS[2] tx-id owner, KEYS[3] the shard's event stream.
-- ARGV: 1 provider_tx_id, 2 user_id, 3 action, 4 amount, 5 currency, 6 round_id, 7 game,
--       8 referenced bet tx id, 9 fingerprint, 10 now_ms, 11 operator_tx_id, 12 retention_ms,
--       13 raw request body; ARGV[14..] belong to each script. Absent values are ''.
-- Reply: {outcome, new_balance, operator_tx_id, currency, replayed (0|1)}.
local tx_id, user_id, action, amount_text, currency_in, round_id, game, ref_id, fingerprint,
      now_ms, operator_tx_id, retention_ms, request_body = unpack(ARGV, 1, 13)
local INCIDENTS_KEPT_MAX = 10000
-- Who a tx id belongs to: its player; a CLOSE_ROUND has none, so its round (records of two
-- rounds may sit in different shards). \31 never occurs in an identifier: no player id clashes.
-- (gateway/keys.py CLOSE_ROUND_OWNER_PREFIX says the same for restore.)
local owner_id = user_id
if user_id == '' then owner_id = '\31round\31' .. round_id end

-- Lua numbers print as 1e+15; money is always written as an integer's digits.
local function int_text(n)
  return string.format('%d', n)
end

-- The three answers of an idempotent id: new (nil), exists with the same content (replay),
-- exists with different content (TX_CONFLICT).
local function replay_or_conflict()
  local rec = redis.call('HMGET', KEYS[1], 'fp', 'outcome', 'balance', 'op', 'currency')
  if rec[1] then
    if rec[1] == fingerprint then
      return {rec[2], tonumber(rec[3]) or 0, rec[4] or '', rec[5] or '', 1}
    end
    return {'TX_CONFLICT', 0, '', '', 0}
  end
  local owner = redis.call('GET', KEYS[2])
  if owner and owner ~= owner_id then
    return {'TX_CONFLICT', 0, '', '', 0}
  end
  return nil
end

-- Store the outcome for replay, claim the tx id, and append the event the history writer
-- turns into a ledger row. `extra` adds fields to both (bet state, incident payload...).
local function finish(outcome, balance, currency, delta, extra)
  local fields = {
    'fp', fingerprint, 'outcome', outcome, 'balance', int_text(balance), 'op', operator_tx_id,
    'currency', currency, 'user', user_id, 'action', action, 'amount', amount_text,
    'delta', int_text(delta), 'round', round_id, 'game', game, 'ref', ref_id, 'ts', now_ms,
    'req', request_body,
  }
  for i = 1, #extra do fields[#fields + 1] = extra[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], retention_ms)
  redis.call('SET', KEYS[2], owner_id, 'PX', retention_ms)
  redis.call('XADD', KEYS[3], '*', 'kind', 'tx', 'tx', tx_id, unpack(fields))
  return {outcome, balance, operator_tx_id, currency, 0}
end

local function record_incident(incidents_key, outcome, recorded_payload)
  redis.call('LPUSH', incidents_key, cjson.encode({
    kind = outcome, provider_tx_id = tx_id, user_id = user_id, action = action,
    referenced_tx_id = ref_id, request = request_body, recorded = recorded_payload,
    ts = tonumber(now_ms),
  }))
  redis.call('LTRIM', incidents_key, 0, INCIDENTS_KEPT_MAX - 1)
end
