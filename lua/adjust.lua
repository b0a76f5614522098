-- adjust.lua: change a product's Redis stock by an operator's delta (stock set / stock add).
--
-- KEYS[1]  {q}:stock:<product_id>
-- KEYS[2]  {q}:seq
-- ARGV[1]  delta (may be negative or zero; zero creates a missing key at 0)
--
-- Returns {1, seq, new_stock} or {0, 0, current_stock} when the delta would take the Redis
-- stock below zero (the units are reserved and not yet deducted in MySQL).
--
-- Relative, never a SET, so reservations made concurrently survive. The sequence number
-- orders the change against the consistency check's snapshot, as for reservations.

local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local delta = tonumber(ARGV[1])
if current + delta < 0 then
  return {0, 0, current}
end
local new_stock = redis.call('INCRBY', KEYS[1], ARGV[1])
local seq = redis.call('INCR', KEYS[2])
return {1, seq, new_stock}
