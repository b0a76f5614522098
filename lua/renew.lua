#!lua flags=allow-oom
-- renew.lua: a live worker extends the deadlines of the entries it still holds.
--
-- KEYS[1]  {q}:claims
-- ARGV[1]  visibility timeout in milliseconds
-- ARGV[2..] the entries held
--
-- Returns the number of claims extended. An entry whose claim is gone (acknowledged, or
-- re-queued by the janitor) is not given a new one: XX only updates existing members.
-- `allow-oom`: it only updates scores, and a live worker must keep what it holds when Redis
-- is full.

--- @include "clock"

local deadline = clock_ms() + tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
end
return n
