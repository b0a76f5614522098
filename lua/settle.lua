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
-- KEYS[9..8+G]  the stock key of each give-back below, in order
-- KEYS[9+G..8+G+D+G+X]  the record key {q}:r:<event_id> of each entry below, in order (for
--                       an entry that is not an event, any key of the queue)
-- ARGV[1]  D: entries to acknowledge only (applied in MySQL)
-- ARGV[2]  G: entries to acknowledge and give back (rejected in MySQL, or a duplicate event id)
-- ARGV[3]  X: entries to dead-letter
-- ARGV[4]  counters to add, as "field=n,field=n" (may be empty)
-- ARGV[5]  record TTL in ms, set when a reservation reaches a final state
-- ARGV[6]  the outcome stream's approximate MAXLEN
-- then D triples (entry, product_id, counted), then G quadruples (entry, product_id, qty,
-- counted), then X pairs (entry, dead envelope), each followed by the entry's 8 ending
-- arguments: event_id, product_id, qty, seq, buyer, reserved_at, state, reason ('' for none;
-- an empty event_id for an entry that is not an event). `counted` is the qty reserve.lua
-- added to the product's in-flight units (0 for an event pushed by hand without a seq).
--
-- Returns {acknowledged, units_given_back, dead_lettered}.
--
-- Invariants kept atomic: a give-back, a dead letter, an in-flight decrement, a record's
-- change of state and its outcome entry happen only together with the removal of its entry
-- from processing. Every reservation is exactly one entry in pending, processing or dead, so
-- however often an event is delivered, its stock is returned at most once and its outcome
-- announced once, and an entry the janitor already re-queued is left alone (a late
-- acknowledgement writes nothing). A record changes only for the entry that made it (same
-- seq): a second reservation under its id is announced `duplicate` without touching it.
--
-- Cost: LREM per entry would scan processing once per entry. Instead the entries are found
-- in windows from the head (where fresh claims sit), overwritten in place with a tombstone,
-- and removed by one LREM: about one pass over the part of processing that holds them.
--
-- `allow-oom`: this script only shrinks the queue, so it runs when Redis is full; a worker
-- that could not acknowledge would otherwise apply to MySQL again and again.

local d, g, x = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

-- targets[i] = {entry, kind, extra}; wanted[entry] = stack of target indexes
local targets, wanted = {}, {}
local function want(entry, kind, extra)
  local i = #targets + 1
  targets[i] = {entry, kind, extra}
  local stack = wanted[entry]
  if not stack then
    stack = {}
    wanted[entry] = stack
  end
  stack[#stack + 1] = i
end
-- ending[i] = the index in ARGV of target i's 8 ending arguments
local ending = {}
local a = 7
for i = 1, d do want(ARGV[a], 'ack', {ARGV[a + 1], ARGV[a + 2]}); ending[#targets] = a + 3; a = a + 11 end
for i = 1, g do
  want(ARGV[a], 'give', {8 + i, ARGV[a + 2], ARGV[a + 1], ARGV[a + 3]}); ending[#targets] = a + 4; a = a + 12
end
for i = 1, x do want(ARGV[a], 'dead', ARGV[a + 1]); ending[#targets] = a + 2; a = a + 10 end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tombstone = '\0stockq:settled\0' .. t[1] .. '.' .. t[2]
local found = {}
local remaining = #targets
local start, window = 0, math.max(4 * #targets, 256)
while remaining > 0 do
  local chunk = redis.call('LRANGE', KEYS[1], start, start + window - 1)
  if #chunk == 0 then break end
  for j = 1, #chunk do
    local stack = wanted[chunk[j]]
    if stack and #stack > 0 then
      found[table.remove(stack)] = true
      redis.call('LSET', KEYS[1], start + j - 1, tombstone)
      remaining = remaining - 1
      if remaining == 0 then break end
    end
  end
  start = start + #chunk
  window = window * 2
end
if remaining < #targets then
  redis.call('LREM', KEYS[1], 0, tombstone)
end

-- Records the end of target i's reservation and announces it on the outcome stream.
local function announce(i)
  local e = ending[i]
  local event_id, seq, state = ARGV[e], ARGV[e + 3], ARGV[e + 6]
  if event_id == '' then return end
  local record = KEYS[8 + g + i]
  local r = redis.call('HMGET', record, 'seq', 'state')
  if r[1] and r[1] == seq then
    -- already told (a copy of the same entry pushed by hand): say it once
    if r[2] == state then return end
    redis.call('HSET', record, 'state', state, 'updated_at', now)
    if state ~= 'dead' then redis.call('PEXPIRE', record, ARGV[5]) end
  end
  local fields = {'event_id', event_id, 'state', state, 'product_id', ARGV[e + 1], 'qty', ARGV[e + 2]}
  local optional = {'seq', seq, 'buyer', ARGV[e + 4], 'reason', ARGV[e + 7], 'reserved_at', ARGV[e + 5]}
  for k = 1, #optional, 2 do
    if optional[k + 1] ~= '' then
      fields[#fields + 1] = optional[k]
      fields[#fields + 1] = optional[k + 1]
    end
  end
  fields[#fields + 1] = 'at'
  fields[#fields + 1] = now
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
end

local acked, given, dead = 0, 0, 0
local claims, settled, uncount = {}, {}, {}
local function settle(product_id, counted)
  local n = tonumber(counted)
  if n > 0 then uncount[product_id] = (uncount[product_id] or 0) + n end
end
for i, target in ipairs(targets) do
  if found[i] then
    local entry, kind, extra = target[1], target[2], target[3]
    claims[#claims + 1] = entry
    announce(i)
    if kind == 'ack' then
      settle(extra[1], extra[2])
      settled[#settled + 1] = entry
      acked = acked + 1
    elseif kind == 'give' then
      redis.call('INCRBY', KEYS[extra[1]], extra[2])
      settle(extra[3], extra[4])
      settled[#settled + 1] = entry
      given = given + tonumber(extra[2])
      acked = acked + 1
    else
      redis.call('LPUSH', KEYS[4], extra)
      dead = dead + 1
    end
  end
end
-- ZREM/HDEL in slices: unpack is bounded by Lua's stack
for i = 1, #claims, 1000 do
  local last = math.min(i + 999, #claims)
  redis.call('ZREM', KEYS[2], unpack(claims, i, last))
  redis.call('HDEL', KEYS[3], unpack(claims, i, last))
end
-- a dead letter keeps its reservation (and its unsure mark) until `dead requeue` or `drop`
for i = 1, (redis.call('EXISTS', KEYS[7]) == 1) and #settled or 0, 1000 do
  redis.call('SREM', KEYS[7], unpack(settled, i, math.min(i + 999, #settled)))
end
for product_id, n in pairs(uncount) do
  redis.call('HINCRBY', KEYS[6], product_id, -n)
end
for field, n in string.gmatch(ARGV[4], '([%w_]+)=(%d+)') do
  redis.call('HINCRBY', KEYS[5], field, n)
end
if dead > 0 then
  redis.call('HINCRBY', KEYS[5], 'dead', dead)
end
return {acked, given, dead}
