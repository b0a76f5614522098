#!lua flags=allow-oom
-- heal.lua: a shard whose Redis lost its latest writes (a restart from an AOF a second old, a
-- failover to a replica that lagged) stops selling, is healed from MySQL, and sells again
-- (docs/operations.md "Redis lost writes"; src/heal.rs drives it).
--
-- KEYS[1]  {q}:limits   field '!heal' while the shard is halted or healed:
--                       '<deadline_ms> halt <seq seen after the loss>' or
--                       '<deadline_ms> heal <token> <seq seen after the loss>';
--                       reserve.lua and adjust.lua refuse while it stands and its deadline
--                       has not passed; once it has, they sell again (a healer that died
--                       does not stop a sale), and the field tells the next janitor pass
--                       that the shard still needs its heal
-- KEYS[2]  {q}:seq
-- ARGV[1]  mode: 'halt', 'begin', 'renew', 'mark' or 'end'
--
-- 'halt' (a process saw the sequence go back: ARGV[2] the number it got, ARGV[3] the
--        highest it had seen, ARGV[4] the lease in ms): stops reservations until a healer
--        takes over, and raises the sequence to ARGV[3] so that what comes next is not
--        numbered like what was lost. When the number was a reservation's (ARGV[5] its
--        event_id; KEYS[3..8] its record, stock key, {q}:pending, {q}:inflight, {q}:holds,
--        {q}:bought), the reservation is undone as if never made, unless a worker took its
--        entry already: it was sold on stock Redis may no longer have, and its shopper is
--        told to retry instead. Returns {halted now (1 or 0), undone (1 or 0)}.
-- 'begin' (ARGV[2] the highest number MySQL has seen, ARGV[3] a token, ARGV[4] the lease in
--        ms): takes the heal unless another healer holds a live lease, halting reservations
--        and raising the sequence past MySQL's. Returns {1, seq before, seq seen after the
--        loss} or {0} when another heals.
-- 'renew' (ARGV[2] the token, ARGV[3] the lease in ms): extends the lease. Returns 1, or 0
--        when the token no longer holds it.
-- 'end' (ARGV[2] the token, ARGV[3] 'healed' or 'failed', ARGV[4] the lease in ms): sells
--        again when healed; a heal that failed goes back to a halt that the next healer
--        (the janitor's next pass) takes at once. Returns 1, or 0 when the token did not hold
--        it.
-- 'mark' (KEYS[3] {q}:unsure, KEYS[4] {q}:holds, KEYS[5] {q}:inflight, KEYS[6] {q}:outcomes,
--        KEYS[7] {q}:bought, KEYS[8..] one record key per candidate; ARGV[2] record TTL ms,
--        ARGV[3] the outcome stream's MAXLEN, then per candidate: event_id, seq, status
--        ('applied' or 'released' in stock_log), product_id, qty): brings what Redis
--        remembers of reservations MySQL settled during the lost writes in line with MySQL:
--          applied, record queued/dead/cancelling (same seq): its entry is back in the queue
--            and will be delivered again; it is marked unsure, so that the check counts it
--            as applied (an entry outside processing is otherwise never applied);
--          applied, record held: its confirm was lost with the writes; it ends `applied`
--            (out of holds and of the in-flight units, announced);
--          released, record applied: its cancel was lost; it ends `released` and its
--            buyer's units go back (the stock itself is set right by the check's repair).
--        Anything else is left alone. Returns {marked, applied, released}.
--
-- Invariant kept atomic: each candidate's record is read and changed in one step, against
-- the workers' settle.lua, which changes the same record and its unsure mark together: an
-- entry is never marked unsure after it was settled.

--- @include "clock"
--- @include "entry"
--- @include "record"
--- @include "outcome"
--- @include "tally"

local limits, seq_key, mode = KEYS[1], KEYS[2], ARGV[1]
local FIELD = '!heal'
local now = clock_ms()

local function current()
  local v = redis.call('HGET', limits, FIELD)
  if not v then return nil end
  local deadline, kind, a, b = string.match(v, '^(%d+) (%a+) ?(%S*) ?(%S*)$')
  if not deadline then return nil end
  return {deadline = tonumber(deadline), kind = kind, a = a, b = b}
end

local function raise(to)
  local seq = tonumber(redis.call('GET', seq_key) or '0')
  if seq < to then redis.call('SET', seq_key, string.format('%d', to)) end
  return seq
end

-- Undoes the reservation of the halt's ARGV[5], numbered ARGV[2]; true when done.
local function undo()
  local record, stock, pending, inflight, holds, bought = KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
  local event_id, seq = ARGV[5], ARGV[2]
  local r = read_record(record)
  if not (r and r.seq == seq) then return false end
  if r.state == 'held' then
    redis.call('ZREM', holds, event_id)
  elseif r.state ~= 'queued' or redis.call('LREM', pending, 1,
      entry_json(event_id, r.product_id, r.qty, r.seq, r.buyer, r.reserved_at, r.epoch)) == 0 then
    return false
  end
  redis.call('INCRBY', stock, r.qty)
  redis.call('HINCRBY', inflight, r.product_id, -tonumber(r.qty))
  if r.tally then untally(bought, r.product_id, r.buyer, r.tally, r.epoch) end
  redis.call('DEL', record)
  return true
end

if mode == 'halt' then
  local c = current()
  raise(tonumber(ARGV[3]))
  local undone = ARGV[5] and undo() and 1 or 0
  if c and c.deadline > now then return {0, undone} end
  redis.call('HSET', limits, FIELD, string.format('%d', now + tonumber(ARGV[4])) .. ' halt ' .. ARGV[2])
  return {1, undone}
elseif mode == 'begin' then
  local c = current()
  if c and c.kind == 'heal' and c.deadline > now then return {0} end
  local since = (c and c.kind == 'halt' and tonumber(c.a)) or (c and c.kind == 'heal' and tonumber(c.b))
  local before = raise(tonumber(ARGV[2]))
  since = math.min(since or before, before)
  redis.call('HSET', limits, FIELD,
    string.format('%d', now + tonumber(ARGV[4])) .. ' heal ' .. ARGV[3] .. ' ' .. string.format('%d', since))
  return {1, before, since}
elseif mode == 'renew' then
  local c = current()
  if not (c and c.kind == 'heal' and c.a == ARGV[2]) then return 0 end
  redis.call('HSET', limits, FIELD,
    string.format('%d', now + tonumber(ARGV[3])) .. ' heal ' .. ARGV[2] .. ' ' .. c.b)
  return 1
elseif mode == 'end' then
  local c = current()
  if not (c and c.kind == 'heal' and c.a == ARGV[2]) then return 0 end
  if ARGV[3] == 'healed' then
    redis.call('HDEL', limits, FIELD)
  else
    redis.call('HSET', limits, FIELD, string.format('%d', now + tonumber(ARGV[4])) .. ' halt ' .. c.b)
  end
  return 1
elseif mode ~= 'mark' then
  return redis.error_reply('ERR stockq: heal.lua mode must be halt, begin, renew, mark or end')
end

local unsure, holds, inflight, outcomes, bought = KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local ttl = ARGV[2]
trim_outcomes(outcomes, ARGV[3])
local now_s = string.format('%d', now)
local marked, applied, released = 0, 0, 0
for i = 0, (#ARGV - 3) / 5 - 1 do
  local a = 4 + 5 * i
  local event_id, seq, status = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local record = KEYS[8 + i]
  local r = read_record(record)
  if r and r.seq == seq then
    if status == 'applied' and (r.state == 'queued' or r.state == 'dead' or r.state == 'cancelling') then
      redis.call('SADD', unsure, entry_json(event_id, r.product_id, r.qty, r.seq, r.buyer, r.reserved_at, r.epoch))
      marked = marked + 1
    elseif status == 'applied' and r.state == 'held' then
      redis.call('ZREM', holds, event_id)
      redis.call('HINCRBY', inflight, r.product_id, -tonumber(r.qty))
      r.deadline = nil
      end_record(record, r, 'applied', now_s, ttl)
      announce(outcomes, event_id, 'applied', r.product_id, r.qty, r.seq, r.buyer, nil, r.reserved_at, now_s,
        r.version)
      applied = applied + 1
    elseif status == 'released' and r.state == 'applied' then
      if r.tally then
        untally(bought, r.product_id, r.buyer, r.tally, r.epoch)
        r.tally = nil
      end
      end_record(record, r, 'released', now_s, ttl)
      announce(outcomes, event_id, 'released', r.product_id, r.qty, r.seq, r.buyer, nil, r.reserved_at, now_s,
        r.version)
      released = released + 1
    end
  end
end
return {marked, applied, released}
