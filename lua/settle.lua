#!lua flags=allow-oom
-- settle.lua: acknowledge a batch once MySQL has decided every event in it.
--
-- KEYS[1]  {q}:processing
-- KEYS[2]  {q}:claims
-- KEYS[3]  {q}:attempts     hash: entry -> deliveries that timed out
-- KEYS[4]  {q}:dead
-- KEYS[5]  {q}:counters     hash of running totals (applied, rejected, dead, ...)
-- KEYS[6]  {q}:inflight     hash: product_id -> units reserved and not yet settled
-- KEYS[7]  {q}:unsure       set of entries whose earlier delivery may have committed
-- KEYS[8]  {q}:outcomes     stream: one entry per reservation that ends (or goes dead)
-- KEYS[9]  {q}:cancels      set: entries of cancelled reservations still in the queue
-- KEYS[10] {q}:releases     list: applied reservations whose quantity MySQL must get back
-- KEYS[11] {q}:bought       hash: "<product_id>:<buyer>" -> units the buyer holds
-- KEYS[12..11+G]  the stock key of each give-back below, in order
-- KEYS[12+G..11+G+D+G+X+C]  the record key {q}:r:<event_id> of each entry below, in order
--                       (for an entry that is not an event, any key of the queue)
-- ARGV[1]  D: entries to acknowledge only (applied in MySQL)
-- ARGV[2]  G: entries to acknowledge and give back (rejected in MySQL, or a duplicate event id)
-- ARGV[3]  X: entries to dead-letter
-- ARGV[4]  the running totals the D+G acknowledged entries add to, as runs in their order:
--          "field=n,field=n" (may be empty), each run naming the field of its next n entries.
--          Only the entries found count: a late acknowledgement adds nothing
-- ARGV[5]  record TTL in ms, set when a reservation reaches a final state
-- ARGV[6]  the outcome stream's approximate MAXLEN
-- ARGV[7]  C: entries of cancelled reservations to drop without a MySQL deduction
-- then D acknowledgements of 7 (entry, event_id, product_id, qty, seq, buyer, reserved_at:
-- an applied event, its in-flight units its qty when it has a seq), then G quadruples
-- (entry, product_id, qty, counted), then X pairs (entry, dead envelope), then C single
-- entries, each of these followed by the entry's 8 ending arguments: event_id, product_id,
-- qty, seq, buyer, reserved_at, state, reason ('' for none; an empty event_id for an entry
-- that is not an event). `counted` is the qty reserve.lua added to the product's in-flight
-- units (0 for an event pushed by hand without a seq). An acknowledgement's arguments are
-- its ending's first six: it ends `applied`, with no reason (each argument costs about a
-- thousand instructions, and acknowledgements are most of what a worker settles).
--
-- Returns {acknowledged, units_given_back, dead_lettered, cancelled}.
--
-- A reservation cancelled while its entry was queued (record `cancelling`, see cancel.lua)
-- already has its stock and buyer units back and is no longer counted in flight. Whatever
-- the worker reports for its entry, nothing is given back twice: dropped, rejected or a
-- duplicate, it ends `cancelled`; applied (the deduction committed before the worker could
-- know), it is announced `applied`, becomes `releasing`, and a release goes to
-- `{q}:releases` so MySQL gets the quantity back (its in-flight units go below zero by the
-- quantity until then, as cancel.lua does for an applied reservation); dead-lettered, it
-- stays `cancelling` in `{q}:dead` until requeued or dropped.
--
-- Invariants kept atomic: a give-back, a dead letter, an in-flight decrement, a record's
-- change of state and its outcome entry happen only together with the removal of its entry
-- from processing. Every reservation is exactly one entry in pending, processing or dead, so
-- however often an event is delivered, its stock is returned at most once and its outcome
-- announced once, and an entry the janitor already re-queued is left alone (a late
-- acknowledgement writes nothing). A record changes only for the entry that made it (same
-- seq): a second reservation under its id is announced `duplicate` without touching it.
--
-- Cost: LREM per entry would scan processing once per entry. A batch claimed in one call is
-- one block of processing, and mostly at one of its ends (below): then one LTRIM drops it.
-- Otherwise the entries are found in windows from the head (where fresh claims sit),
-- overwritten in place with a tombstone, and removed by one LREM: about one pass over the
-- part of processing that holds them. Inside the script, what costs most is each
-- redis.call, a number turned into a string, and a table per entry (callgrind counts:
-- BENCHMARKS.md "Where the time goes now"), so the hot path avoids all three where it can.
--
-- `allow-oom`: this script only shrinks the queue, so it runs when Redis is full; a worker
-- that could not acknowledge would otherwise apply to MySQL again and again.

--- @include "clock"
--- @include "entry"
--- @include "outcome"
--- @include "record"
--- @include "tally"

local processing, claims, attempts, dead_list, counters = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local inflight, unsure, outcomes, cancels, releases, bought = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local d, g, x, c = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[7])
local ttl, maxlen = ARGV[5], ARGV[6]
-- KEYS[stock_base + j] is the stock key of give-back j, KEYS[record_base + i] the record of
-- target i (below)
local stock_base, record_base = 11, 11 + g

-- Target i is entry[i] of kind[i] ('ack', 'give', 'dead' or 'drop') with extra[i] (the
-- ARGV index of its own arguments) and ending[i] (the ARGV index of its 8 ending arguments);
-- wanted[entry] = the target index still to be found, and more[entry] the others when the
-- same entry is given more than once (rare). Flat arrays: a table per event costs more than
-- the work it describes.
local entry, kind, extra, ending, wanted, more = {}, {}, {}, {}, {}, {}
local n = 0
local function want(a, k, e)
  n = n + 1
  local v = ARGV[a]
  entry[n], kind[n], extra[n], ending[n] = v, k, a, e
  if not wanted[v] then
    wanted[v] = n
  elseif more[v] then
    more[v][#more[v] + 1] = n
  else
    more[v] = {n}
  end
end
local a = 8
for i = 1, d do want(a, 'ack', a + 1); a = a + 7 end
for i = 1, g do want(a, 'give', a + 4); a = a + 12 end
for i = 1, x do want(a, 'dead', a + 2); a = a + 10 end
for i = 1, c do want(a, 'drop', a + 1); a = a + 9 end

-- The outcome stream is trimmed once per call rather than on each XADD, and first: a Redis
-- user whose ACL predates XTRIM and LTRIM (docs/security.md) then fails this script before
-- it has changed anything, and the batch is retried or re-queued whole.
trim_outcomes(outcomes, maxlen)

local now, t = clock_text()
local tombstone = '\0stockq:settled\0' .. t[1] .. '.' .. t[2]
local found = {}
local remaining = n
local tombstoned = false

-- Marks every target found when the list elements `block` are exactly the entries wanted
-- (as many of each); otherwise marks none and returns false.
local function take_block(block)
  if #block ~= n then return false end
  if next(more) then
    -- an entry given more than once (rare): count them
    local seen = {}
    for j = 1, n do
      local v = block[j]
      if not wanted[v] then return false end
      local s = (seen[v] or 0) + 1
      local others = more[v]
      if s > 1 + (others and #others or 0) then return false end
      seen[v] = s
    end
    for i = 1, n do found[i] = true end
    return true
  end
  for j = 1, n do
    local i = wanted[block[j]]
    if not i or found[i] then
      found = {}
      return false
    end
    found[i] = true
  end
  return true
end

-- The entries of one claim are pushed as one block, and batches are mostly settled in the
-- order they were claimed: the block is usually at the tail of processing (the oldest
-- claim), or at its head (the newest). There it goes with one LTRIM, with no tombstones
-- and no scan; anywhere else the windows below find it.
if n > 0 then
  -- {the end's index, the block's LRANGE start and stop, the LTRIM that drops it}
  for _, e in ipairs({{-1, -n, -1, 0, -n - 1}, {0, 0, n - 1, n, -1}}) do
    -- one element first: reading n entries is wasted when the block is not at this end
    local edge = redis.call('LINDEX', processing, e[1])
    if edge and wanted[edge] then
      if take_block(redis.call('LRANGE', processing, e[2], e[3])) then
        redis.call('LTRIM', processing, e[4], e[5])
        remaining = 0
        break
      end
    end
  end
end

local start, window = 0, math.max(2 * n, 256)
while remaining > 0 do
  local chunk = redis.call('LRANGE', processing, start, start + window - 1)
  if #chunk == 0 then break end
  for j = 1, #chunk do
    local v = chunk[j]
    local i = wanted[v]
    if i then
      found[i] = true
      local others = more[v]
      wanted[v] = others and table.remove(others) or nil
      redis.call('LSET', processing, start + j - 1, tombstone)
      tombstoned = true
      remaining = remaining - 1
      if remaining == 0 then break end
    end
  end
  start = start + #chunk
  window = window * 2
end
if tombstoned then
  redis.call('LREM', processing, 0, tombstone)
end

-- Records the end of target i's reservation and announces it on the outcome stream.
-- Returns true when the reservation was cancelled meanwhile: its stock and in-flight units
-- are back already, so the caller gives nothing back.
local function end_reservation(i)
  local e = ending[i]
  local k = kind[i]
  local event_id, seq, state, reason = ARGV[e], ARGV[e + 3], 'applied', ''
  if k ~= 'ack' then state, reason = ARGV[e + 6], ARGV[e + 7] end
  if event_id == '' then return false end
  local record = KEYS[record_base + i]
  if k == 'ack' then
    -- the usual acknowledgement: a record still queued, by this entry's reservation. Its
    -- head is known from the entry, so the record is checked by it and ended by writing the
    -- new state and time in front of the rest, without reading it field by field.
    local v = redis.pcall('GET', record)
    local head = '|' .. ARGV[e + 1] .. '|' .. ARGV[e + 2] .. '|' .. seq .. '|'
    local bar = type(v) == 'string' and string.find(v, '|', 1, true)
    if bar and bar > 1 and string.sub(v, bar + 1, bar + 6 + #head) == 'queued' .. head then
      local reserved_at, rest = string.match(v, '^(%d*)|%d*|(.*)$', bar + 7 + #head)
      if rest then
        local version = next_version(string.sub(v, 1, bar - 1))
        redis.call('SET', record, version .. '|' .. state .. head .. reserved_at .. '|' .. now .. '|' .. rest,
          'PX', ttl)
        announce(outcomes, event_id, state, ARGV[e + 1], ARGV[e + 2], seq, ARGV[e + 4], reason, ARGV[e + 5], now,
          version)
        return false
      end
    end
  end
  local r = read_record(record)
  local cancelled = false
  local version
  if r and r.seq == seq then
    if r.state == 'cancelling' then
      if k == 'dead' then
        -- still cancelled: dead_drop.lua and dead_requeue.lua keep it so
        r.envelope, r.updated_at = ARGV[extra[i] + 1], now
        save_record(record, r)
        return true
      elseif k == 'ack' then
        -- the deduction committed before the cancel could stop it: release it
        r.state, r.updated_at = 'releasing', now
        save_record(record, r)
        redis.call('RPUSH', releases, release_json(event_id, ARGV[e + 1], ARGV[e + 2], seq))
        state, reason = 'applied', ''
      else
        state, reason, cancelled = 'cancelled', 'cancelled', true
        end_record(record, r, state, now, ttl)
        redis.call('HINCRBY', counters, 'cancelled', 1)
      end
    elseif r.state == 'queued' or r.state == 'dead' then
      r.state, r.updated_at = state, now
      if state == 'dead' then
        r.envelope = ARGV[extra[i] + 1]
        save_record(record, r)
      else
        -- only a dead letter carries its envelope
        r.envelope = nil
        if k == 'give' and r.tally then
          untally(bought, ARGV[e + 1], r.buyer, r.tally, r.epoch)
          r.tally = nil
        end
        save_record(record, r, ttl)
      end
    else
      -- already told (a copy of the same entry pushed by hand): say it once
      return false
    end
    version = r.version
  end
  announce(outcomes, event_id, state, ARGV[e + 1], ARGV[e + 2], seq, ARGV[e + 4], reason, ARGV[e + 5], now,
    version)
  return cancelled
end

local acked, given, dead, dropped = 0, 0, 0, 0
local claimed, settled, uncount = {}, {}, {}
local nc, ns = 0, 0
local function settle(product_id, counted)
  local n = counted == '1' and 1 or tonumber(counted)
  if n > 0 then uncount[product_id] = (uncount[product_id] or 0) + n end
end
for i = 1, n do
  if found[i] then
    local k, v, a = kind[i], entry[i], extra[i]
    nc = nc + 1
    claimed[nc] = v
    local cancelled = end_reservation(i)
    if k == 'ack' then
      settle(ARGV[a + 2], ARGV[a + 4] ~= '' and ARGV[a + 3] or '0')
      ns = ns + 1
      settled[ns] = v
      acked = acked + 1
    elseif k == 'give' then
      if not cancelled then
        local qty = ARGV[a + 2]
        redis.call('INCRBY', KEYS[stock_base + i - d], qty)
        settle(ARGV[a + 1], ARGV[a + 3])
        given = given + tonumber(qty)
      end
      ns = ns + 1
      settled[ns] = v
      acked = acked + 1
    elseif k == 'drop' then
      ns = ns + 1
      settled[ns] = v
      acked = acked + 1
      dropped = dropped + 1
    else
      redis.call('LPUSH', dead_list, ARGV[a + 1])
      dead = dead + 1
    end
  end
end
-- ZREM/HDEL in slices: unpack is bounded by Lua's stack; attempts is empty but after a
-- timed-out claim
local timed_out = redis.call('EXISTS', attempts) == 1
for i = 1, #claimed, 1000 do
  local last = math.min(i + 999, #claimed)
  redis.call('ZREM', claims, unpack(claimed, i, last))
  if timed_out then redis.call('HDEL', attempts, unpack(claimed, i, last)) end
end
-- a dead letter keeps its reservation (and its unsure mark) until `dead requeue` or `drop`
for _, set in ipairs({unsure, cancels}) do
  for i = 1, (redis.call('EXISTS', set) == 1) and #settled or 0, 1000 do
    redis.call('SREM', set, unpack(settled, i, math.min(i + 999, #settled)))
  end
end
for product_id, n in pairs(uncount) do
  redis.call('HINCRBY', inflight, product_id, -n)
end
local run_end = 0
for field, n in string.gmatch(ARGV[4], '([%w_]+)=(%d+)') do
  local run_start, counted = run_end + 1, 0
  run_end = run_end + tonumber(n)
  for i = run_start, math.min(run_end, d + g) do
    if found[i] then counted = counted + 1 end
  end
  if counted > 0 then redis.call('HINCRBY', counters, field, counted) end
end
if dead > 0 then
  redis.call('HINCRBY', counters, 'dead', dead)
end
return {acked, given, dead, dropped}
