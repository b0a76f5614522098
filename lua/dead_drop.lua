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

--- @include "clock"
--- @include "entry"
--- @include "outcome"
--- @include "record"
--- @include "tally"

local dead, stock, inflight, unsure, record = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local outcomes, releases, bought, cancels = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local envelope, units, product_id, counted, original, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local event_id, qty, seq, buyer, reserved_at, state, reason = ARGV[8], ARGV[10], ARGV[11], ARGV[12],
  ARGV[13], ARGV[14], ARGV[15]

trim_outcomes(outcomes, ARGV[7])
-- searched from the tail: `dead drop --all` and its kin sweep the oldest first, so that each
-- removal finds its letter at once instead of reading the whole list
if redis.call('LREM', dead, -1, envelope) == 0 then
  return 0
end
local is_event = event_id and event_id ~= ''
local r = is_event and read_record(record)
local mine = r and r.seq == seq
if original then
  redis.call('SREM', unsure, original)
  redis.call('SREM', cancels, original)
end
local now = clock_text()
if mine and r.state == 'cancelling' then
  r.envelope = nil
  if state == 'applied' then
    if tonumber(counted) > 0 then
      redis.call('HINCRBY', inflight, product_id, -tonumber(counted))
    end
    redis.call('RPUSH', releases, release_json(event_id, ARGV[9], qty, seq))
    r.state, r.updated_at = 'releasing', now
    save_record(record, r)
  else
    state, reason = 'cancelled', 'cancelled'
    end_record(record, r, state, now, ttl)
  end
else
  if tonumber(units) > 0 and redis.call('EXISTS', stock) == 1 then
    redis.call('INCRBY', stock, units)
  end
  if tonumber(counted) > 0 then
    redis.call('HINCRBY', inflight, product_id, -tonumber(counted))
  end
  if not is_event then
    return 1
  end
  if mine then
    r.envelope = nil
    if state == 'cancelled' and r.tally then
      untally(bought, ARGV[9], r.buyer, r.tally, r.epoch)
      r.tally = nil
    end
    end_record(record, r, state, now, ttl)
  end
end
announce(outcomes, event_id, state, ARGV[9], qty, seq, buyer, reason, reserved_at, now, mine and r.version or nil)
return 1
