-- settle.lua: acknowledge a batch once MySQL has decided every event in it.
--
-- KEYS[1]  {q}:processing
-- KEYS[2]  {q}:claims
-- KEYS[3]  {q}:attempts     hash: entry -> deliveries that timed out
-- KEYS[4]  {q}:dead
-- KEYS[5]  {q}:counters     hash of running totals (applied, rejected, dead, ...)
-- KEYS[6..5+G]  the stock key of each give-back below, in order
-- ARGV[1]  D: entries to acknowledge only (applied in MySQL)
-- ARGV[2]  G: entries to acknowledge and give back (rejected in MySQL, or a duplicate event id)
-- ARGV[3]  X: entries to dead-letter
-- ARGV[4]  counters to add, as "field=n,field=n" (may be empty)
-- then D entries, then G pairs (entry, qty), then X pairs (entry, dead envelope)
--
-- Returns {acknowledged, units_given_back, dead_lettered}.
--
-- Invariant kept atomic: a give-back happens only together with the removal of its entry from
-- processing. Every reservation is exactly one entry in pending, processing or dead, so
-- however often an event is delivered, its stock is returned at most once.

local d, g, x = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local acked, given, dead = 0, 0, 0

local function remove(entry)
  if redis.call('LREM', KEYS[1], 1, entry) == 0 then
    return false
  end
  redis.call('ZREM', KEYS[2], entry)
  redis.call('HDEL', KEYS[3], entry)
  return true
end

local a = 5
for i = 1, d do
  if remove(ARGV[a]) then acked = acked + 1 end
  a = a + 1
end
for i = 1, g do
  if remove(ARGV[a]) then
    redis.call('INCRBY', KEYS[5 + i], ARGV[a + 1])
    given = given + tonumber(ARGV[a + 1])
    acked = acked + 1
  end
  a = a + 2
end
for i = 1, x do
  if remove(ARGV[a]) then
    redis.call('LPUSH', KEYS[4], ARGV[a + 1])
    dead = dead + 1
  end
  a = a + 2
end
for field, n in string.gmatch(ARGV[4], '([%w_]+)=(%d+)') do
  redis.call('HINCRBY', KEYS[5], field, n)
end
if dead > 0 then
  redis.call('HINCRBY', KEYS[5], 'dead', dead)
end
return {acked, given, dead}
