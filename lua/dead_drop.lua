#!lua flags=allow-oom
-- dead_drop.lua: discard a dead-lettered entry, giving its reservation back.
--
-- KEYS[1]  {q}:dead
-- KEYS[2]  the stock key to give back to (any key of the queue when nothing is given back)
-- KEYS[3]  {q}:inflight     hash: product_id -> units reserved and not yet settled
-- KEYS[4]  {q}:unsure       set of entries whose earlier delivery may have committed
-- KEYS[5]  {q}:r:<event_id> the reservation's record (any key of the queue for an entry that
--                           is not an event)
-- KEYS[6]  {q}:outcomes
-- KEYS[7]  {q}:releases
-- KEYS[8]  {q}:bought       hash: "<product_id>:<buyer>" -> units the buyer holds
-- KEYS[9]  {q}:cancels
-- ARGV[1]  the dead envelope, exactly as stored
-- ARGV[2]  units to give back (0 for an entry that holds no reservation, or that MySQL applied)
-- ARGV[3]  product_id (any value when ARGV[4] is 0)
-- ARGV[4]  units the entry counts in the product's in-flight units (0 for one pushed by hand)
-- ARGV[5]  the original entry (its unsure mark goes with it)
-- ARGV[6]  record TTL in ms
-- ARGV[7]  the outcome stream's approximate MAXLEN
-- ARGV[8..15]  the ending, as in settle.lua: event_id, product_id, qty, seq, buyer,
--              reserved_at, state (`cancelled`, or `applied` when MySQL had applied it),
--              reason ('' for none); event_id '' for an entry that is not an event
--
-- Returns 1 when dropped, 0 when the envelope was no longer there. The give-back happens only
-- with the removal, so dropping twice never returns stock twice. A stock key that does not
-- exist is not created (the event was pushed by hand for a product never stocked, or Redis
-- lost its data, in which case `stockq check --repair` restores the key). The in-flight units go
-- whether or not stock is given back: a dropped entry is settled either way. The record
-- (when it is this entry's: same seq) ends with the drop and the outcome is announced in the
-- same step, so it is announced once however often the drop is tried. A reservation that was
-- cancelled before it died (record `cancelling`) has its stock and buyer units back already:
-- it ends `cancelled`, or, if MySQL had applied it, `applied` then `releasing` with a release
-- pushed (as settle.lua does), and nothing is given back here.
-- `allow-oom`: dropping only shrinks Redis.

if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
local event_id, seq, state = ARGV[8], ARGV[11], ARGV[14]
local reason = ARGV[15]
local r = {}
if event_id and event_id ~= '' then
  r = redis.call('HMGET', KEYS[5], 'seq', 'state', 'tally', 'buyer')
end
local mine = r[1] and r[1] == seq
if ARGV[5] then
  redis.call('SREM', KEYS[4], ARGV[5])
  redis.call('SREM', KEYS[9], ARGV[5])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if mine and r[2] == 'cancelling' then
  if state == 'applied' then
    if tonumber(ARGV[4]) > 0 then
      redis.call('HINCRBY', KEYS[3], ARGV[3], -tonumber(ARGV[4]))
    end
    redis.call('RPUSH', KEYS[7], '{"event_id":"' .. event_id .. '","product_id":' .. ARGV[9] ..
      ',"qty":' .. ARGV[10] .. ',"seq":' .. seq .. '}')
    redis.call('HSET', KEYS[5], 'state', 'releasing', 'updated_at', now)
  else
    state, reason = 'cancelled', 'cancelled'
    redis.call('HSET', KEYS[5], 'state', state, 'updated_at', now)
    redis.call('PEXPIRE', KEYS[5], ARGV[6])
  end
  redis.call('HDEL', KEYS[5], 'envelope')
else
  if tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('INCRBY', KEYS[2], ARGV[2])
  end
  if tonumber(ARGV[4]) > 0 then
    redis.call('HINCRBY', KEYS[3], ARGV[3], -tonumber(ARGV[4]))
  end
  if not (event_id and event_id ~= '') then
    return 1
  end
  if mine then
    redis.call('HSET', KEYS[5], 'state', state, 'updated_at', now)
    redis.call('HDEL', KEYS[5], 'envelope')
    redis.call('PEXPIRE', KEYS[5], ARGV[6])
    if state == 'cancelled' and r[3] then
      local field = ARGV[9] .. ':' .. (r[4] or '')
      local held = tonumber(redis.call('HGET', KEYS[8], field) or '0')
      if held > tonumber(r[3]) then
        redis.call('HINCRBY', KEYS[8], field, -tonumber(r[3]))
      else
        redis.call('HDEL', KEYS[8], field)
      end
      redis.call('HDEL', KEYS[5], 'tally')
    end
  end
end
local fields = {'event_id', event_id, 'state', state, 'product_id', ARGV[9], 'qty', ARGV[10]}
local optional = {'seq', seq, 'buyer', ARGV[12], 'reason', reason, 'reserved_at', ARGV[13]}
for k = 1, #optional, 2 do
  if optional[k + 1] ~= '' then
    fields[#fields + 1] = optional[k]
    fields[#fields + 1] = optional[k + 1]
  end
end
fields[#fields + 1] = 'at'
fields[#fields + 1] = now
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', unpack(fields))
return 1
