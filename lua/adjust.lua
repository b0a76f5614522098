-- adjust.lua: change a product's Redis stock by an operator's delta (stock set / stock add).
--
-- KEYS[1]  {q}:stock:<product_id>
-- KEYS[2]  {q}:seq
-- KEYS[3]  {q}:limits      its field '!heal' stands while the shard is healed (heal.lua)
-- ARGV[1]  delta (may be negative or zero; zero creates a missing key at 0)
--
-- Returns {1, seq, new_stock} or {0, 0, current_stock} when the delta would take the Redis
-- stock below zero (the units are reserved and not yet deducted in MySQL), or {-1, 0, until}
-- while the shard is healed after Redis lost writes: the heal sets the stock from MySQL, and
-- an operator's change in the middle would be counted twice or not at all.
--
-- Relative, never a SET, so reservations made concurrently survive. The sequence number
-- orders the change against the consistency check's snapshot, as for reservations.

--- @include "clock"

local healing = redis.call('HGET', KEYS[3], '!heal')
if healing then
  local until_ms = tonumber(string.match(healing, '^%d+'))
  if until_ms and until_ms > clock_ms() then
    return {-1, 0, until_ms}
  end
end
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local delta = tonumber(ARGV[1])
if current + delta < 0 then
  return {0, 0, current}
end
local new_stock = redis.call('INCRBY', KEYS[1], ARGV[1])
local seq = redis.call('INCR', KEYS[2])
return {1, seq, new_stock}
