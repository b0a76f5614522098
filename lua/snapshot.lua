-- snapshot.lua: the Redis side of the consistency check, read at one instant.
--
-- KEYS[1]  {q}:seq
-- KEYS[2]  {q}:pending
-- KEYS[3]  {q}:processing
-- KEYS[4]  {q}:dead
-- KEYS[5..] the stock keys of the products to check
-- ARGV[1]  the highest sequence number MySQL has seen
--
-- Returns {seq, {stock...}, {pending...}, {processing...}, {dead...}}; a missing stock key
-- reads as false (nil).
--
-- Atomic because the check's exactness rests on it: every reservation with a sequence
-- number up to seq is either settled (its entry gone) or one of the entries returned.

-- A Redis that lost its data (restarted without persistence) restarts the sequence at 1, and
-- the check would then mistake every settled row for one made after the snapshot. Raising
-- the sequence to what MySQL has seen keeps it monotonic across such a loss.
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1] or '0')
if seq < floor then
  redis.call('SET', KEYS[1], floor)
  seq = floor
end

local stocks = {}
for i = 5, #KEYS do
  stocks[#stocks + 1] = redis.call('GET', KEYS[i])
end
return {
  seq,
  stocks,
  redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('LRANGE', KEYS[3], 0, -1),
  redis.call('LRANGE', KEYS[4], 0, -1),
}
