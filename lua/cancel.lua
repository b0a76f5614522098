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
-- For 'cancel' of an applied reservation whose record has expired, ARGV[5..7] give the
-- product_id, qty and seq of its `stock_log` row (the caller read it); otherwise absent.
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

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, maxlen = ARGV[2], ARGV[3]

local function read(record)
  local v = redis.call('HMGET', record, 'state', 'product_id', 'qty', 'buyer', 'seq', 'reserved_at',
    'deadline', 'tally', 'envelope')
  if not v[1] then return nil end
  return {state = v[1], product_id = v[2], qty = v[3], buyer = v[4], seq = v[5], reserved_at = v[6],
    deadline = v[7], tally = v[8], envelope = v[9]}
end

local function announce(event_id, r, state, reason)
  local fields = {'event_id', event_id, 'state', state, 'product_id', r.product_id, 'qty', r.qty}
  for _, kv in ipairs({{'seq', r.seq}, {'buyer', r.buyer}, {'reason', reason},
                       {'reserved_at', r.reserved_at}, {'at', now}}) do
    if kv[2] then
      fields[#fields + 1] = kv[1]
      fields[#fields + 1] = kv[2]
    end
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(fields))
end

-- Gives the reservation's stock back to Redis and its units back to its buyer; `counted`
-- says whether it still counts in the product's in-flight units.
local function give_back(record, stock, r)
  redis.call('INCRBY', stock, r.qty)
  redis.call('HINCRBY', KEYS[1], r.product_id, -tonumber(r.qty))
  if r.tally then
    local field = r.product_id .. ':' .. (r.buyer or '')
    local held = tonumber(redis.call('HGET', KEYS[3], field) or '0')
    if held > tonumber(r.tally) then
      redis.call('HINCRBY', KEYS[3], field, -tonumber(r.tally))
    else
      redis.call('HDEL', KEYS[3], field)
    end
    redis.call('HDEL', record, 'tally')
  end
end

local function finish(event_id, record, r, state, reason)
  redis.call('HSET', record, 'state', state, 'updated_at', now)
  redis.call('PEXPIRE', record, ttl)
  announce(event_id, r, state, reason)
end

-- The bytes reserve.lua (or confirm.lua) pushed for this reservation.
local function entry_of(event_id, r)
  local buyer_field = ''
  if r.buyer then buyer_field = ',"buyer":"' .. r.buyer .. '"' end
  return '{"event_id":"' .. event_id .. '","product_id":' .. r.product_id .. ',"qty":' .. r.qty ..
    ',"seq":' .. r.seq .. buyer_field .. ',"at":' .. r.reserved_at .. '}'
end

local function release_of(event_id, r)
  return '{"event_id":"' .. event_id .. '","product_id":' .. r.product_id .. ',"qty":' .. r.qty ..
    ',"seq":' .. (r.seq or 'null') .. '}'
end

local function check_stock_key(stock, r)
  local suffix = ':stock:' .. r.product_id
  if string.sub(stock, -#suffix) ~= suffix then
    error('stockq: the stock key of ' .. r.product_id .. ' is expected after its record')
  end
end

if ARGV[1] == 'expire' then
  local expired = 0
  for i = 4, #ARGV do
    local event_id, record, stock = ARGV[i], KEYS[9 + 2 * (i - 4)], KEYS[10 + 2 * (i - 4)]
    local r = read(record)
    if not r or r.state ~= 'held' then
      redis.call('ZREM', KEYS[4], event_id)
    elseif tonumber(r.deadline) <= now then
      check_stock_key(stock, r)
      redis.call('ZREM', KEYS[4], event_id)
      give_back(record, stock, r)
      finish(event_id, record, r, 'expired', 'payment deadline passed')
      expired = expired + 1
    end
  end
  return {expired}
end

if ARGV[1] ~= 'cancel' then
  return redis.error_reply('ERR stockq: cancel.lua mode must be cancel or expire')
end
local event_id, record, stock = ARGV[4], KEYS[9], KEYS[10]
local r = read(record)
if not r then
  if not ARGV[5] then return {'', 0} end
  -- applied, and its record expired: what the ledger says is enough to release it
  r = {state = 'applied', product_id = ARGV[5], qty = ARGV[6], seq = ARGV[7], reserved_at = nil}
  if ARGV[7] == '' then r.seq = nil end
  redis.call('HSET', record, 'state', 'applied', 'product_id', r.product_id, 'qty', r.qty,
    'updated_at', now)
  if r.seq then redis.call('HSET', record, 'seq', r.seq) end
end
check_stock_key(stock, r)

if r.state == 'held' then
  redis.call('ZREM', KEYS[4], event_id)
  give_back(record, stock, r)
  finish(event_id, record, r, 'cancelled', 'cancelled')
  return {'cancelled', 1}
elseif r.state == 'queued' or r.state == 'dead' then
  local entry = entry_of(event_id, r)
  if r.state == 'dead' then
    if not r.envelope or redis.call('LREM', KEYS[7], 1, r.envelope) == 0 then
      return redis.error_reply('ERR stockq: the dead letter of ' .. event_id .. ' is not in the dead list')
    end
    redis.call('RPUSH', KEYS[5], entry)
    redis.call('HDEL', record, 'envelope')
  end
  redis.call('SADD', KEYS[6], entry)
  give_back(record, stock, r)
  redis.call('HSET', record, 'state', 'cancelling', 'updated_at', now)
  return {'cancelling', 1}
elseif r.state == 'applied' then
  give_back(record, stock, r)
  redis.call('RPUSH', KEYS[8], release_of(event_id, r))
  redis.call('HSET', record, 'state', 'releasing', 'updated_at', now)
  redis.call('PERSIST', record)
  return {'releasing', 1}
end
return {r.state, 0}
