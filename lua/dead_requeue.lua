#!lua flags=allow-oom
-- dead_requeue.lua: send a dead-lettered entry back to pending.
--
-- KEYS[1]  {q}:dead
-- KEYS[2]  {q}:pending
-- KEYS[3]  {q}:r:<event_id>  the reservation's record
-- ARGV[1]  the dead envelope, exactly as stored
-- ARGV[2]  the original entry it holds
-- ARGV[3]  the entry's seq ('' for none)
--
-- Returns 1 when moved, 0 when the envelope was no longer there (another operator got to it).
-- The record (when it is this entry's: same seq) is `queued` again, or stays `cancelling` if
-- the reservation was cancelled while dead (the worker that meets the entry drops it); no
-- outcome is announced, the reservation has not ended.
-- `allow-oom`: the entry is smaller than its envelope, so this shrinks Redis (the record only
-- changes a field).

--- @include "clock"
--- @include "record"

-- searched from the tail, where a sweep of them all takes them (the oldest first)
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
local r = ARGV[3] and ARGV[3] ~= '' and read_record(KEYS[3])
if r and r.seq == ARGV[3] then
  r.envelope = nil
  if r.state == 'dead' then
    r.state, r.updated_at = 'queued', clock_text()
  end
  save_record(KEYS[3], r)
end
return 1
