-- Shared by every money script (prepended at load time; Redis has no `require`).
-- A money call is two steps (docs/design.md, "A money call in two steps"): lua/claim.lua has
-- claimed its tx id (and the bet it names) in the ids' own slots; this script runs in the slot
-- of its player (a CLOSE_ROUND's: its round), and touches no key of another slot.
-- KEYS and ARGV: gateway/script_arguments.py money_common_keys and
-- money_common_arguments.
-- KEYS[1] record (the idempotency record: only what replay, settlement and reconcile read, see
-- finish()), KEYS[2] events (the shard's stream: every field of the call); KEYS[3..] belong to
-- each script.
-- ARGV[1] provider_tx_id, ARGV[2] user_id, ARGV[3] action, ARGV[4] amount, ARGV[5] currency,
--   ARGV[6] round_id, ARGV[7] game, ARGV[8] ref_id (the referenced bet's tx id),
--   ARGV[9] fingerprint, ARGV[10] now_ms, ARGV[11] operator_tx_id, ARGV[12] retention_ms,
--   ARGV[13] request_body (raw), ARGV[14] round_closed_by (the tx id of the CLOSE_ROUND that
--   closed the call's round, read in the round's slot just before; '' while open);
--   ARGV[15..] belong to each script. Absent values are ''.
-- Reply: {outcome, new_balance, operator_tx_id, currency, replayed (0|1)}.
--
-- All or nothing: Redis keeps every write a script made before a command errors, so each
-- script reads and checks everything first and then only writes what cannot fail (money is
-- bounded by BALANCE_MILLIS_MAX, so HINCRBY cannot overflow).
local tx_id, user_id, action, amount_text, currency_in, round_id, game, ref_id, fingerprint,
      now_ms, operator_tx_id, retention_ms, request_body = unpack(ARGV, 1, 13)
local round_closed_by = ARGV[14] ~= '' and ARGV[14]
local INCIDENTS_KEPT_MAX = 10000
-- Balances stay exact everywhere: Lua numbers, JSON readers and PostgreSQL (docs/protocol.md §6).
local BALANCE_MILLIS_MAX = 9007199254740991

-- Lua numbers print as 1e+15; money is always written as an integer's digits.
local function int_text(n)
  return string.format('%d', n)
end

-- The two answers of an id the claim found ours: new (nil), or stored already: the same
-- content (replay) or different content (TX_CONFLICT).
local function replay_or_conflict()
  local rec = redis.call('HMGET', KEYS[1], 'fp', 'outcome', 'balance', 'op', 'currency')
  if rec[1] then
    if rec[1] == fingerprint then
      return {rec[2], tonumber(rec[3]) or 0, rec[4] or '', rec[5] or '', 1}
    end
    return {'TX_CONFLICT', 0, '', '', 0}
  end
  return nil
end

-- Append the event the history writer turns into a ledger row and store the outcome for
-- replay. The event goes first: a record is never left without its event. The record keeps only what is read back: replays (fp,
-- outcome, balance, op, currency), settlement of a bet (action, stake, state) and reconcile
-- (outcome, fp); short values keep it in Redis' compact hash encoding. The event carries every
-- field, the raw request body included. `extra` adds fields to both (stake/state,
-- incident...), `event_extra` (optional) to the event only. The event's fields are declared in
-- persistence/events.py (TxEvent, TxEventExtras); tests/test_event_fields.py compares.
local function finish(outcome, balance, currency, delta, extra, event_extra)
  local balance_text = int_text(balance)
  local record = {
    'fp', fingerprint, 'outcome', outcome, 'balance', balance_text, 'op', operator_tx_id,
    'currency', currency, 'action', action,
  }
  local event = {
    'kind', 'tx', 'tx', tx_id, 'fp', fingerprint, 'outcome', outcome, 'balance', balance_text,
    'op', operator_tx_id, 'currency', currency, 'user', user_id, 'action', action,
    'amount', amount_text, 'delta', int_text(delta), 'round', round_id, 'game', game,
    'ref', ref_id, 'ts', now_ms, 'req', request_body,
  }
  for i = 1, #extra do
    record[#record + 1] = extra[i]
    event[#event + 1] = extra[i]
  end
  for i = 1, #(event_extra or {}) do event[#event + 1] = event_extra[i] end
  redis.call('XADD', KEYS[2], '*', unpack(event))
  redis.call('HSET', KEYS[1], unpack(record))
  redis.call('PEXPIRE', KEYS[1], retention_ms)
  return {outcome, balance, operator_tx_id, currency, 0}
end

-- A referenced bet as credit.lua and rollback.lua read it from its record:
-- HMGET(bet record, unpack(BET_FIELDS)) -> {state, stake, action, outcome}.
local BET_FIELDS = {'state', 'stake', 'action', 'outcome'}

-- An incident's `recorded`: that bet as its record holds it (its request body is in the
-- history). The stake goes in as the record's digits: cjson would print 10^15 as 1e+15.
local function recorded_bet(bet)
  return '{"provider_tx_id":' .. cjson.encode(ref_id) .. ',"action":' .. cjson.encode(bet[3])
    .. ',"stake":' .. bet[2] .. ',"state":' .. cjson.encode(bet[1])
    .. ',"outcome":' .. cjson.encode(bet[4]) .. '}'
end

-- A 409 an operator resolves by hand (docs/protocol.md §6): listed for the admin API with both
-- payloads, stored as the call's outcome, and in the event with `recorded`, so the history
-- holds what the wallet held when it refused.
local function refuse_as_incident(incidents_key, kind, recorded, balance, currency)
  local incident = cjson.encode({
    kind = kind, provider_tx_id = tx_id, user_id = user_id, action = action,
    referenced_tx_id = ref_id, request = request_body, recorded = recorded,
    ts = tonumber(now_ms),
  })
  local reply = finish(kind, balance, currency, 0, {'incident', kind}, {'recorded', recorded})
  redis.call('LPUSH', incidents_key, incident)
  redis.call('LTRIM', incidents_key, 0, INCIDENTS_KEPT_MAX - 1)
  return reply
end

-- finish() of an applied call. docs/protocol.md §7: a call for a round already closed
-- (`closed_by`: round_closed_by, or false) is answered and applied as usual (the provider is
-- authoritative on money), but is also a LATE_AFTER_CLOSE incident, with its outcome kept (it
-- is not refused), and its event says `late` so the writer compares the round again. The reply's sixth entry tells the gateway's metrics.
local function finish_applied(outcome, balance, currency, delta, extra, closed_by, incidents_key)
  if not closed_by then return finish(outcome, balance, currency, delta, extra) end
  local why = 'round closed by ' .. closed_by
  local reply = finish(outcome, balance, currency, delta, extra, {'late', '1', 'recorded', why})
  redis.call('LPUSH', incidents_key, cjson.encode({
    kind = 'LATE_AFTER_CLOSE', provider_tx_id = tx_id, user_id = user_id, action = action,
    referenced_tx_id = ref_id, request = request_body, recorded = why, ts = tonumber(now_ms),
  }))
  redis.call('LTRIM', incidents_key, 0, INCIDENTS_KEPT_MAX - 1)
  reply[6] = 'LATE_AFTER_CLOSE'
  return reply
end

-- A player's currency and balance, checked: a balance that is not an integer within the limit
-- is an error before any write (never a half-applied call on a corrupt wallet).
local function read_player(player_key)
  local player = redis.call('HMGET', player_key, 'currency', 'balance', 'maxbet')
  if not player[1] then return nil end
  local balance = tonumber(player[2])
  -- only plain digits, as HINCRBY reads them: tonumber also takes '1e4', '0x10', ' 7'
  if not balance or balance < 0 or balance > BALANCE_MILLIS_MAX
      or int_text(balance) ~= player[2] then
    error('corrupt wallet: balance of ' .. player_key .. ' is ' .. tostring(player[2]))
  end
  return player[1], balance, tonumber(player[3])
end

-- Whether crediting `amount` would take the balance past BALANCE_MILLIS_MAX. Both are exact
-- doubles; a sum past 2^53 rounds to no less than 2^53, so the comparison stays right.
local function over_balance_limit(balance, amount)
  return balance + amount > BALANCE_MILLIS_MAX
end
