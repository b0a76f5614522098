#!lua flags=allow-oom
-- snapshot.lua: the Redis side of the consistency check for one chunk of products, read at
-- one instant.
--
-- KEYS[1]  {q}:seq
-- KEYS[2]  {q}:inflight     hash: product_id -> units reserved and not yet settled
-- KEYS[3]  {q}:processing
-- KEYS[4]  {q}:unsure       set of entries whose earlier delivery may have committed
-- KEYS[5]  {q}:releases     list of releases MySQL may or may not have applied yet
-- KEYS[6..5+N]  the stock keys of the chunk's products
-- ARGV[1]  the highest sequence number MySQL has seen
-- ARGV[2..1+N]  the chunk's product ids, in the order of their stock keys
--
-- Returns {seq, {stock...}, {inflight...}, {processing...}, {unsure...}, {releases...}}; a missing stock
-- key or in-flight field reads as false (nil).
--
-- Atomic because the check's exactness rests on it: at this instant every reservation
-- stamped up to seq and not yet settled is counted in its product's in-flight units, and the
-- only such reservations MySQL can already have applied under a claim numbered up to seq
-- are the entries in processing and the unsure ones; likewise the only releases MySQL can
-- have applied under a number up to seq while still counted (negatively) in flight are those
-- on the releases list. Both are bounded by what workers hold
-- (and by crash recoveries), never by the backlog in pending, so a chunk costs
-- O(products in it + entries held), whatever waits in the queue.

-- A Redis that lost its data (restarted without persistence) restarts the sequence at 1, and
-- the check would then mistake every settled row for one made after the snapshot. Raising
-- the sequence to what MySQL has seen keeps it monotonic across such a loss.
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1] or '0')
if seq < floor then
  redis.call('SET', KEYS[1], floor)
  seq = floor
end

local stocks, inflight = {}, {}
local n = #KEYS - 5
-- MGET/HMGET in slices: unpack is bounded by Lua's stack
for i = 1, n, 1000 do
  local last = math.min(i + 999, n)
  local s = redis.call('MGET', unpack(KEYS, 5 + i, 5 + last))
  local f = redis.call('HMGET', KEYS[2], unpack(ARGV, 1 + i, 1 + last))
  for j = 1, #s do
    stocks[#stocks + 1] = s[j]
    inflight[#inflight + 1] = f[j]
  end
end
return {
  seq,
  stocks,
  inflight,
  redis.call('LRANGE', KEYS[3], 0, -1),
  redis.call('SMEMBERS', KEYS[4]),
  redis.call('LRANGE', KEYS[5], 0, -1),
}
