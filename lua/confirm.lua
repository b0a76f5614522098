#!lua
-- confirm.lua: payment done; a held reservation goes to the queue to be deducted in MySQL.
--
-- KEYS[1]  {q}:r:<event_id>   the reservation's record
-- KEYS[2]  {q}:stock:<product_id> of the record (given back if the hold has expired)
-- KEYS[3]  {q}:pending
-- KEYS[4]  {q}:holds
-- KEYS[5]  {q}:inflight
-- KEYS[6]  {q}:outcomes
-- KEYS[7]  {q}:bought
-- ARGV[1]  event_id
-- ARGV[2]  record TTL in ms, set when the reservation ends
-- ARGV[3]  the outcome stream's approximate MAXLEN
--
-- Returns
--   {1, 'queued'}   confirmed now: the event is on pending with the seq of its reservation
--   {0, state}      nothing to do: the reservation is queued, dead or applied already
--   {-1, ''}        no such record
--   {-2, state}     the reservation has ended (or is being cancelled): the order service
--                   refunds. A hold whose deadline has passed on the Redis clock is expired
--                   here, in this step, and answers {-2, 'expired'}.
--
-- Invariant kept atomic: a hold ends exactly once. This script and the janitor's expiry
-- (cancel.lua) both decide on the record's state and the Redis clock in one step, so a
-- confirm racing the deadline either queues the event or finds it expired, never both.
-- Refused under `maxmemory` (`#!lua`): confirming adds an event to the queue.

local r = redis.call('HMGET', KEYS[1], 'state', 'product_id', 'qty', 'buyer', 'seq', 'reserved_at',
  'deadline', 'tally')
local state = r[1]
if not state then
  return {-1, ''}
end
if state == 'queued' or state == 'dead' or state == 'applied' then
  return {0, state}
end
if state ~= 'held' then
  return {-2, state}
end
local suffix = ':stock:' .. r[2]
if string.sub(KEYS[2], -#suffix) ~= suffix then
  return redis.error_reply('ERR stockq: KEYS[2] must be the stock key of the record\'s product')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[4], ARGV[1])
if now < tonumber(r[7]) then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at', now)
  redis.call('HDEL', KEYS[1], 'deadline')
  local buyer_field = ''
  if r[4] then buyer_field = ',"buyer":"' .. r[4] .. '"' end
  -- the same bytes reserve.lua would have pushed
  redis.call('LPUSH', KEYS[3],
    '{"event_id":"' .. ARGV[1] .. '","product_id":' .. r[2] ..
    ',"qty":' .. r[3] .. ',"seq":' .. r[5] .. buyer_field .. ',"at":' .. r[6] .. '}')
  return {1, 'queued'}
end

-- the deadline has passed: expire the hold as the janitor would (see cancel.lua)
redis.call('INCRBY', KEYS[2], r[3])
redis.call('HINCRBY', KEYS[5], r[2], -tonumber(r[3]))
if r[8] then
  local field = r[2] .. ':' .. (r[4] or '')
  local held = tonumber(redis.call('HGET', KEYS[7], field) or '0')
  if held > tonumber(r[8]) then
    redis.call('HINCRBY', KEYS[7], field, -tonumber(r[8]))
  else
    redis.call('HDEL', KEYS[7], field)
  end
  redis.call('HDEL', KEYS[1], 'tally')
end
redis.call('HSET', KEYS[1], 'state', 'expired', 'updated_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local fields = {'event_id', ARGV[1], 'state', 'expired', 'product_id', r[2], 'qty', r[3], 'seq', r[5]}
if r[4] then
  fields[#fields + 1] = 'buyer'
  fields[#fields + 1] = r[4]
end
for _, v in ipairs({'reason', 'payment deadline passed', 'reserved_at', r[6], 'at', now}) do
  fields[#fields + 1] = v
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
return {-2, 'expired'}
