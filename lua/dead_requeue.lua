#!lua flags=allow-oom
-- dead_requeue.lua: send a dead-lettered entry back to pending.
--
-- KEYS[1]  {q}:dead
-- KEYS[2]  {q}:pending
-- ARGV[1]  the dead envelope, exactly as stored
-- ARGV[2]  the original entry it holds
--
-- Returns 1 when moved, 0 when the envelope was no longer there (another operator got to it).
-- `allow-oom`: the entry is smaller than its envelope, so this shrinks Redis.

if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
