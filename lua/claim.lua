#!lua
-- claim.lua: take a batch of entries from pending into processing, each with a deadline.
--
-- KEYS[1]  {q}:pending
-- KEYS[2]  {q}:processing
-- KEYS[3]  {q}:claims       sorted set: entry -> claim deadline (unix ms, Redis clock)
-- KEYS[4]  {q}:seq          the queue's sequence, shared with reservations
-- ARGV[1]  how many more entries to take from pending (0 or more)
-- ARGV[2]  visibility timeout in milliseconds
-- ARGV[3]  optional: an entry the caller already moved with BLMOVE (it only needs a deadline)
--
-- Returns {deadline_ms, claim_seq, entry, entry, ...}: the entries taken from pending, oldest
-- first (the BLMOVE'd entry of ARGV[3] is not repeated). claim_seq is a fresh number of the
-- queue's sequence (0 when nothing was claimed); the worker records it in each stock_log row it writes, which is how the
-- consistency check tells what MySQL applied after its snapshot without reading the backlog.
--
-- Invariant kept atomic: no entry taken by this script is in processing without a deadline.
-- An entry moved by BLMOVE has none until this script runs; the janitor adopts such orphans
-- (see requeue.lua), so a worker killed in between loses nothing.
--
-- The `#!lua` line makes Redis refuse the claim when it is over `maxmemory`: a worker that
-- could not acknowledge what it applies must not take more (settle.lua still runs then).

local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])

if ARGV[3] then
  redis.call('ZADD', KEYS[3], deadline, ARGV[3])
end

local result = {deadline, 0}
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
        zargs[#zargs + 1] = deadline
        zargs[#zargs + 1] = taken[j]
        result[#result + 1] = taken[j]
      end
      redis.call('ZADD', KEYS[3], unpack(zargs))
      i = last + 1
    end
  end
end
-- an empty claim (the common idle poll) takes no number
if ARGV[3] or #result > 2 then
  result[2] = redis.call('INCR', KEYS[4])
end
return result
