#!lua
-- claim.lua: take a batch of entries from pending into processing, each with a deadline.
--
-- KEYS[1]  {q}:pending
-- KEYS[2]  {q}:processing
-- KEYS[3]  {q}:claims       sorted set: entry -> claim deadline (unix ms, Redis clock)
-- KEYS[4]  {q}:seq          the queue's sequence, shared with reservations
-- KEYS[5]  {q}:cancels      set: entries of cancelled reservations still in the queue
-- KEYS[6]  {q}:unsure       set: entries whose earlier delivery may have committed
-- KEYS[7]  {q}:releases     list: releases waiting for MySQL
-- ARGV[1]  how many more entries to take from pending (0 or more)
-- ARGV[2]  visibility timeout in milliseconds
-- ARGV[3]  optional: an entry the caller already moved with BLMOVE (it only needs a deadline)
--
-- Returns {deadline_ms, claim_seq, releases, cancelled, entry, entry, ...}: the entries taken
-- from pending, oldest first (the BLMOVE'd entry of ARGV[3] is not repeated). `releases` is
-- the length of the releases list (the worker applies them when there are any);
-- `cancelled` lists the positions (1 = ARGV[3] if given, else the first entry taken) of the
-- entries whose reservation was cancelled, negated when the entry is also unsure: the worker
-- drops those without a MySQL deduction, asking MySQL first only for the unsure ones. claim_seq is a fresh number of the
-- queue's sequence (0 when nothing was claimed); the worker records it in each stock_log row it writes, which is how the
-- consistency check tells what MySQL applied after its snapshot without reading the backlog.
--
-- Invariant kept atomic: no entry taken by this script is in processing without a deadline.
-- An entry moved by BLMOVE has none until this script runs; the janitor adopts such orphans
-- (see requeue.lua), so a worker killed in between loses nothing.
--
-- The `#!lua` line makes Redis refuse the claim when it is over `maxmemory`: a worker that
-- could not acknowledge what it applies must not take more (settle.lua still runs then).

--- @include "clock"

local deadline = clock_ms() + tonumber(ARGV[2])

if ARGV[3] then
  redis.call('ZADD', KEYS[3], deadline, ARGV[3])
end

local result = {deadline, 0, redis.call('LLEN', KEYS[7]), {}}
-- as a string once: Lua formats a number with sprintf each time it is passed to Redis
local deadline_s = tostring(deadline)
local header = #result
local want = tonumber(ARGV[1])
if want > 0 then
  local taken = redis.call('RPOP', KEYS[1], want)
  if taken then
    -- unpack is bounded by Lua's stack, so push in slices
    local i = 1
    while i <= #taken do
      local last = math.min(i + 999, #taken)
      redis.call('LPUSH', KEYS[2], unpack(taken, i, last))
      local zargs = {}
      for j = i, last do
        zargs[#zargs + 1] = deadline_s
        zargs[#zargs + 1] = taken[j]
        result[#result + 1] = taken[j]
      end
      redis.call('ZADD', KEYS[3], unpack(zargs))
      i = last + 1
    end
  end
end
-- an empty claim (the common idle poll) takes no number
if ARGV[3] or #result > header then
  result[2] = redis.call('INCR', KEYS[4])
end
if redis.call('SCARD', KEYS[5]) > 0 then
  local claimed = {}
  if ARGV[3] then claimed[1] = ARGV[3] end
  for i = header + 1, #result do claimed[#claimed + 1] = result[i] end
  for i = 1, #claimed, 1000 do
    local last = math.min(i + 999, #claimed)
    local marks = redis.call('SMISMEMBER', KEYS[5], unpack(claimed, i, last))
    for j = 1, #marks do
      if marks[j] == 1 then
        local at = i + j - 1
        if redis.call('SISMEMBER', KEYS[6], claimed[at]) == 1 then at = -at end
        result[4][#result[4] + 1] = at
      end
    end
  end
end
return result
