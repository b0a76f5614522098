#!lua flags=allow-oom
-- hand_back.lua: a worker that cannot finish (shutting down while MySQL is unreachable) hands
-- its entries back to pending at once, without counting a failed delivery.
--
-- KEYS[1]  {q}:processing
-- KEYS[2]  {q}:claims
-- KEYS[3]  {q}:pending
-- KEYS[4]  {q}:unsure       the batch may have committed with its answer lost: marked unsure
-- ARGV[1..] the entries held
--
-- Returns the number of entries handed back. An entry no longer in processing (already
-- re-queued by the janitor) is left alone, so nothing is ever duplicated.

local n = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('RPUSH', KEYS[3], ARGV[i])
    redis.call('SADD', KEYS[4], ARGV[i])
    n = n + 1
  end
end
return n
