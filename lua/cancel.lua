#!lua flags=allow-oom
-- cancel.lua: ends reservations before their time: an order cancelled (any state), or holds
-- whose payment deadline passed (the janitor's expiry).
--
-- KEYS[1]  {q}:inflight
-- KEYS[2]  {q}:outcomes
-- KEYS[3]  {q}:bought
-- KEYS[4]  {q}:holds
-- KEYS[5]  {q}:pending
-- KEYS[6]  {q}:cancels     set: entries of cancelled reservations still in the queue
-- KEYS[7]  {q}:dead
-- KEYS[8]  {q}:releases    list: applied reservations whose quantity MySQL must get back
-- KEYS[9..]  per reservation, its record {q}:r:<event_id> then its product's stock key
-- ARGV[1]  'cancel' (one reservation) or 'expire' (any number of holds)
-- ARGV[2]  record TTL in ms, set when a reservation ends
-- ARGV[3]  the outcome stream's approximate MAXLEN
-- ARGV[4..]  the event id of each reservation, in the order of its keys
-- For 'cancel' of an applied reservation whose record has expired, ARGV[5..9] give the
-- product_id, qty, seq, buyer and limit_epoch of its `stock_log` row (the caller read it;
-- '' for none); otherwise absent.
--
-- Returns for 'cancel' {state, changed}: the state it leaves (`cancelled`, `cancelling`,
-- `releasing`, or the state it was already in) and 1 if this call changed it; state '' for
-- an unknown reservation. For 'expire' {expired}: the holds that were due and ended now.
--
-- The transitions (docs/lifecycle.md):
--   held       -> cancelled / expired  stock, in-flight and buyer units back; outcome now
--   queued     -> cancelling           stock, in-flight and buyer units back; the entry is
--                                      marked in cancels, and the worker that meets it drops
--                                      it without a MySQL deduction (settle.lua)
--   dead       -> cancelling           the same, and the entry goes back to pending (an
--                                      earlier delivery may have committed: the worker asks
--                                      MySQL before it drops it)
--   applied    -> releasing           stock and buyer units back, in-flight lowered by the
--                                      quantity (MySQL still has it deducted), and a release
--                                      pushed for a worker to add it back in MySQL
--   anything else: unchanged (a repeated cancel is harmless).
-- Invariant kept atomic: stock goes back in the same step that removes what held it (the
-- hold, or the record's claim on the queued entry), so it goes back exactly once; whatever
-- the worker then finds, settle.lua gives nothing back twice.
-- `allow-oom`: ending reservations frees memory and must run when Redis is full.

--- @include "clock"
--- @include "entry"
--- @include "give_back"

local inflight, outcomes, bought, holds, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local cancels, dead, releases = KEYS[6], KEYS[7], KEYS[8]
local mode, ttl = ARGV[1], ARGV[2]

trim_outcomes(outcomes, ARGV[3])
local now = clock_text()

local function check_stock_key(stock, r)
  local suffix = ':stock:' .. r.product_id
  if string.sub(stock, -#suffix) ~= suffix then
    error('stockq: the stock key of ' .. r.product_id .. ' is expected after its record')
  end
end

if mode == 'expire' then
  local expired = 0
  local now_ms = tonumber(now)
  for i = 4, #ARGV do
    local event_id, record, stock = ARGV[i], KEYS[9 + 2 * (i - 4)], KEYS[10 + 2 * (i - 4)]
    local r = read_record(record)
    if not r or r.state ~= 'held' then
      redis.call('ZREM', holds, event_id)
    elseif tonumber(r.deadline) <= now_ms then
      check_stock_key(stock, r)
      expire_hold({holds = holds, stock = stock, inflight = inflight, bought = bought, outcomes = outcomes},
        event_id, record, r, now, ttl)
      expired = expired + 1
    end
  end
  return {expired}
end

if mode ~= 'cancel' then
  return redis.error_reply('ERR stockq: cancel.lua mode must be cancel or expire')
end
local event_id, record, stock = ARGV[4], KEYS[9], KEYS[10]
local r = read_record(record)
if not r then
  if not ARGV[5] then return {'', 0} end
  -- applied, and its record expired: what the ledger says is enough to release it
  -- its versions are not known any more: counted on from the clock, above any of them
  r = {state = 'applied', was = 'applied', version = now, product_id = ARGV[5], qty = ARGV[6], seq = ARGV[7],
    buyer = ARGV[8], updated_at = now}
  if ARGV[7] == '' then r.seq = nil end
  if not ARGV[8] or ARGV[8] == '' then r.buyer = nil end
  -- the buyer's units go back to the tally the reservation counted in (give_back, below)
  if r.buyer and ARGV[9] and ARGV[9] ~= '' then
    r.tally, r.epoch = r.qty, ARGV[9]
  end
end
check_stock_key(stock, r)

if r.state == 'held' then
  redis.call('ZREM', holds, event_id)
  give_back(stock, inflight, bought, r)
  end_record(record, r, 'cancelled', now, ttl)
  announce(outcomes, event_id, 'cancelled', r.product_id, r.qty, r.seq, r.buyer, 'cancelled', r.reserved_at, now,
    r.version)
  return {'cancelled', 1}
elseif r.state == 'queued' or r.state == 'dead' then
  -- the bytes reserve.lua (or confirm.lua) pushed for this reservation
  local entry = entry_json(event_id, r.product_id, r.qty, r.seq, r.buyer, r.reserved_at, r.epoch)
  if r.state == 'dead' then
    if not r.envelope or redis.call('LREM', dead, 1, r.envelope) == 0 then
      return redis.error_reply('ERR stockq: the dead letter of ' .. event_id .. ' is not in the dead list')
    end
    redis.call('RPUSH', pending, entry)
    r.envelope = nil
  end
  redis.call('SADD', cancels, entry)
  give_back(stock, inflight, bought, r)
  r.state, r.updated_at = 'cancelling', now
  save_record(record, r)
  return {'cancelling', 1}
elseif r.state == 'applied' then
  give_back(stock, inflight, bought, r)
  redis.call('RPUSH', releases, release_json(event_id, r.product_id, r.qty, r.seq))
  -- lives again until the release is done: saved without an expiry
  r.state, r.updated_at = 'releasing', now
  save_record(record, r)
  return {'releasing', 1}
end
return {r.state, 0}
