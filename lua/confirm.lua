#!lua flags=allow-oom
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
-- `allow-oom`: a confirm moves a reservation that is already counted (its stock taken, its
-- record written) from holds to pending, a few dozen bytes; refusing it when Redis is full
-- would let the hold expire while its buyer has paid. New reservations, which add records,
-- are what a full Redis refuses.

--- @include "clock"
--- @include "entry"
--- @include "give_back"

local record, stock, pending, holds, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local outcomes, bought = KEYS[6], KEYS[7]
local event_id, ttl = ARGV[1], ARGV[2]

local r = read_record(record)
if not r then
  return {-1, ''}
end
local state = r.state
if state == 'queued' or state == 'dead' or state == 'applied' then
  return {0, state}
end
if state ~= 'held' then
  return {-2, state}
end
local suffix = ':stock:' .. r.product_id
if string.sub(stock, -#suffix) ~= suffix then
  return redis.error_reply('ERR stockq: KEYS[2] must be the stock key of the record\'s product')
end

local now = clock_text()
if tonumber(now) < tonumber(r.deadline) then
  redis.call('ZREM', holds, event_id)
  r.state, r.updated_at, r.deadline = 'queued', now, nil
  save_record(record, r)
  redis.call('LPUSH', pending, entry_json(event_id, r.product_id, r.qty, r.seq, r.buyer, r.reserved_at,
    r.epoch))
  return {1, 'queued'}
end

-- the deadline has passed: expire the hold as the janitor would (cancel.lua)
trim_outcomes(outcomes, ARGV[3])
expire_hold({holds = holds, stock = stock, inflight = inflight, bought = bought, outcomes = outcomes},
  event_id, record, r, now, ttl)
return {-2, 'expired'}
