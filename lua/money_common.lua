-- Shared by every money script (prepended at load time; Redis has no `require`).
-- KEYS and ARGV: gateway/script_arguments.py MoneyCommonKeys and MoneyCommonArguments.
-- KEYS[1] record (the idempotency record: only what replay, settlement and reconcile read, see
-- finish()), KEYS[2] tx_owner (of the tx id), KEYS[3] events (the shard's stream: every field of
-- the call), KEYS[4] seen_filter (of the tx id's shard); KEYS[5..] belong to each script.
-- ARGV[1] provider_tx_id, ARGV[2] user_id, ARGV[3] action, ARGV[4] amount, ARGV[5] currency,
--   ARGV[6] round_id, ARGV[7] game, ARGV[8] ref_id (the referenced bet's tx id),
--   ARGV[9] fingerprint, ARGV[10] now_ms, ARGV[11] operator_tx_id, ARGV[12] retention_ms,
--   ARGV[13] request_body (raw), ARGV[14] tx_offsets (the tx id's four bit offsets in the
--   seen-id filter, "a b c d"), ARGV[15] history_checked ('1' once the gateway has brought back
--   from the history whatever it holds of these ids); ARGV[16..] belong to each script.
--   Absent values are ''.
-- Reply: {outcome, new_balance, operator_tx_id, currency, replayed (0|1)}.
--
-- All or nothing: Redis keeps every write a script made before a command errors, so each
-- script reads and checks everything first and then only writes what cannot fail (money is
-- bounded by BALANCE_MILLIS_MAX, so HINCRBY cannot overflow).
local tx_id, user_id, action, amount_text, currency_in, round_id, game, ref_id, fingerprint,
      now_ms, operator_tx_id, retention_ms, request_body = unpack(ARGV, 1, 13)
local tx_offsets, history_checked = ARGV[14], ARGV[15]
local INCIDENTS_KEPT_MAX = 10000
-- Balances stay exact everywhere: Lua numbers, JSON readers and PostgreSQL (docs/protocol.md §6).
local BALANCE_MILLIS_MAX = 9007199254740991
-- Who a tx id belongs to: its player; a CLOSE_ROUND has none, so its round (records of two
-- rounds may sit in different shards). \31 never occurs in an identifier: no player id clashes.
-- (gateway/keys.py CLOSE_ROUND_OWNER_PREFIX says the same for restore.)
local owner_id = user_id
if user_id == '' then owner_id = '\31round\31' .. round_id end
local tx_owned = false  -- the id's owner key is in the hot wallet (set by replay_or_conflict)

-- Lua numbers print as 1e+15; money is always written as an integer's digits.
local function int_text(n)
  return string.format('%d', n)
end

-- The seen-id filter (gateway/seen_filter.py, FILTER_HASHES = 4): an id's four bit offsets
-- travel as one argument (each argument costs the gateway to pack). One BITFIELD each way,
-- literal: no Lua loop or table on the hot path.
local function filter_get(filter_key, offsets)
  local a, b, c, d = string.match(offsets, '^(%d+) (%d+) (%d+) (%d+)$')
  return redis.call('BITFIELD', filter_key, 'GET', 'u1', a, 'GET', 'u1', b, 'GET', 'u1', c,
    'GET', 'u1', d)
end

-- Sets the id's bits; returns them as they were.
local function filter_set(filter_key, offsets)
  local a, b, c, d = string.match(offsets, '^(%d+) (%d+) (%d+) (%d+)$')
  return redis.call('BITFIELD', filter_key, 'SET', 'u1', a, 1, 'SET', 'u1', b, 1,
    'SET', 'u1', c, 1, 'SET', 'u1', d, 1)
end

-- All of an id's bits set: seen before, or a false positive. One clear bit: certainly new.
local function all_set(bits)
  return bits[1] == 1 and bits[2] == 1 and bits[3] == 1 and bits[4] == 1
end

-- The gateway looks these ids up in the history, brings back what it holds, and calls again.
local LOOKUP_HISTORY = {'LOOKUP_HISTORY', 0, '', '', 0}

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
  tx_owned = owner ~= false
  return nil
end

-- An id of which the hot wallet holds nothing (no record, no owner: its retention passed, or
-- it is new) is remembered in the seen-id filter for ever, and was it there already, the
-- history decides (LOOKUP_HISTORY). Called after the checks that can fail: it writes.
local function remember_or_look_up()
  if tx_owned then return nil end
  local before = filter_set(KEYS[4], tx_offsets)
  if history_checked ~= '1' and all_set(before) then return LOOKUP_HISTORY end
  return nil
end

-- A referenced bet of which the hot wallet holds nothing (no record, no owner): never seen
-- (nil), or seen and gone (LOOKUP_HISTORY: it comes back from the history before the call is
-- decided). `ref_offsets`: its offsets (bet_offsets of credit and rollback).
local function lookup_expired_bet(ref_filter_key, ref_offsets, bet_owner)
  if not bet_owner and history_checked ~= '1' and all_set(filter_get(ref_filter_key, ref_offsets))
  then
    return LOOKUP_HISTORY
  end
  return nil
end

-- A tombstone or an early-win marker outlives its retention through its bet id in the filter.
local function remember_bet(ref_filter_key, ref_offsets)
  filter_set(ref_filter_key, ref_offsets)
end

-- Append the event the history writer turns into a ledger row, store the outcome for replay,
-- claim the tx id and remember it in the seen-id filter. The event goes first: a record is
-- never left without its event. The record keeps only what is read back: replays (fp,
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
  redis.call('XADD', KEYS[3], '*', unpack(event))
  redis.call('HSET', KEYS[1], unpack(record))
  redis.call('PEXPIRE', KEYS[1], retention_ms)
  redis.call('SET', KEYS[2], owner_id, 'PX', retention_ms)
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

-- docs/protocol.md §7: a call for a round already closed is answered and applied as usual (the
-- provider is authoritative on money), but is a LATE_AFTER_CLOSE incident, and its event says
-- `late` so the writer compares the round again. The close's tx id, or false. A read: call it
-- before the script writes.
local function round_closed_by(round_closed_key)
  return redis.call('GET', round_closed_key)
end

-- finish() of an applied call; when late (`closed_by`), also listed as an incident, with its
-- outcome kept (it is not refused). The reply's sixth entry tells the gateway's metrics.
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
