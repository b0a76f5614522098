#!lua flags=allow-oom
-- requeue.lua: the janitor's recovery pass.
--
-- KEYS[1]  {q}:processing
-- KEYS[2]  {q}:claims
-- KEYS[3]  {q}:attempts
-- KEYS[4]  {q}:pending
-- KEYS[5]  {q}:counters
-- KEYS[6]  {q}:unsure       set of entries whose earlier delivery may have committed
-- ARGV[1]  max attempts (deliveries before an entry is dead-lettered)
-- ARGV[2]  visibility timeout in milliseconds
-- ARGV[3]  at most this many expired claims per call
--
-- Returns {requeued, adopted, next_ms, entry, attempts, entry, attempts, ...}: next_ms is the
-- time until the earliest remaining claim deadline (-1 when there is none), so the janitor
-- can wake exactly then instead of waiting for its interval; the trailing pairs are
-- entries that reached max attempts. They stay in processing with a fresh deadline; the
-- caller builds their dead-letter envelopes and moves them with settle.lua. If the caller dies
-- first, the claim expires again and the next pass returns them again.
--
-- Invariants kept atomic:
-- * an entry in processing without a claim (its worker died between BLMOVE and claim.lua, or
--   an abandoned BLMOVE moved it for nobody) is adopted with a full deadline, so it is
--   recovered one visibility timeout later and never while a live worker may be claiming it;
-- * an expired entry moves from processing to pending in one step: it is never in both lists
--   and never in neither, however many janitors run at once;
-- * an expired entry is marked unsure: its worker may have committed it in MySQL before it
--   died, so the consistency check looks its row up (it does not read the backlog).
--
-- `allow-oom`: recovery only moves entries, so it runs when Redis is full.

--- @include "clock"

local now = clock_ms()
local max_attempts = tonumber(ARGV[1])
local vt = tonumber(ARGV[2])

local adopted = 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[2], entry) then
    redis.call('ZADD', KEYS[2], now + vt, entry)
    adopted = adopted + 1
  end
end

local requeued = 0
local result = {0, adopted, -1}
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, entry in ipairs(expired) do
  -- the oldest claims sit at the tail of processing, so search from there
  if not redis.call('LPOS', KEYS[1], entry, 'RANK', -1) then
    -- acknowledged meanwhile; only the claim was left behind
    redis.call('ZREM', KEYS[2], entry)
  else
    local attempts = redis.call('HINCRBY', KEYS[3], entry, 1)
    redis.call('SADD', KEYS[6], entry)
    if attempts >= max_attempts then
      redis.call('ZADD', KEYS[2], now + vt, entry)
      result[#result + 1] = entry
      result[#result + 1] = attempts
    else
      redis.call('LREM', KEYS[1], -1, entry)
      redis.call('ZREM', KEYS[2], entry)
      redis.call('RPUSH', KEYS[4], entry)
      requeued = requeued + 1
    end
  end
end
if requeued > 0 then
  redis.call('HINCRBY', KEYS[5], 'requeued', requeued)
end
result[1] = requeued
local earliest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if earliest[2] then
  result[3] = math.max(0, tonumber(earliest[2]) - now)
end
return result
