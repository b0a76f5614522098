#!lua flags=allow-oom
-- webhook.lua: the relay's deliveries of outcomes to the order service's webhook
-- (`stockq relay`, docs/webhooks.md), one shard at a time.
--
-- Each reservation with outcomes to deliver has a list {q}:webhooks:q:<event_id> of
-- deliveries in version order (the order the outcome stream holds them in), and a place in
-- {q}:webhooks:due (score: when its first delivery may be tried next, unix ms) and in
-- {q}:webhooks:since (score: the `at` of its first delivery, for the oldest undelivered
-- age). Only a list's first delivery is ever tried: a later outcome of a reservation waits for
-- the earlier one, and other reservations are not held up by it. A delivery is the string
--
--     at|attempts|first_try|body
--
-- (`at` the outcome's time, `first_try` 0 until tried, `body` the JSON that is POSTed).
--
--   'take'   KEYS cursor, due, since, list_1..list_n
--            ARGV from, to, now, then per outcome: event_id, at, delivery
--            The outcomes of the stream after stream id `from` up to `to`, read by the relay,
--            each appended to its reservation's list, and the cursor moved to `to`; only if
--            the cursor is still `from` (else another relay took them first: returns -1). One
--            cursor for every relay, moved in one step with what it passes, is what keeps a
--            reservation's outcomes in stream order: an outcome is never taken before an
--            earlier one. Returns the number taken.
--   'lease'  KEYS due; ARGV now, lease_ms, limit
--            Up to `limit` reservations whose first delivery is due, each leased: due again
--            only lease_ms later (when the relay that leased it died meanwhile). Returns their
--            event ids.
--   'done'   KEYS due, since, list; ARGV event_id, delivery, now
--            The first delivery was delivered: removed if it is still `delivery` (a relay
--            whose lease ran out may deliver it twice; it is removed once), and the next one
--            is due now. Returns 1, or 0 when it was not there. An empty delivery forgets a
--            reservation whose list is empty.
--   'retry'  KEYS due, list; ARGV event_id, delivery, new_delivery, due_at
--            A failed try: the first delivery, if still `delivery`, becomes `new_delivery`
--            (its count of attempts), due at due_at. Returns 1 or 0.
--   'dead'   KEYS due, since, list, dead; ARGV event_id, delivery, dead_letter, now
--            Tried for too long: the first delivery, if still `delivery`, moves to the dead
--            list as `dead_letter`; the next one is due now. Returns 1 or 0.
--   'replay' KEYS due, since, list, dead; ARGV event_id, dead_letter, delivery, now
--            A dead letter goes back in front of its reservation's list, due now. Returns 1,
--            or 0 when the dead list no longer holds it.
--
-- Invariant: an outcome taken from the stream is in exactly one place until delivered: its
-- reservation's list (due or leased) or the dead list.

local mode = ARGV[1]

local function since_of(delivery)
  return string.match(delivery, '^(%d+)|')
end

-- after the first delivery of event_id's list left it: the next one is due now, or the
-- reservation has nothing left to deliver
local function advance(due, since, list, event_id, now)
  local head = redis.call('LINDEX', list, 0)
  if head then
    redis.call('ZADD', due, now, event_id)
    redis.call('ZADD', since, since_of(head), event_id)
  else
    redis.call('ZREM', due, event_id)
    redis.call('ZREM', since, event_id)
  end
end

if mode == 'take' then
  local cursor, due, since = KEYS[1], KEYS[2], KEYS[3]
  local from, to, now = ARGV[2], ARGV[3], ARGV[4]
  if redis.call('GET', cursor) ~= from then return -1 end
  local taken = 0
  for i = 0, (#ARGV - 4) / 3 - 1 do
    local a = 5 + 3 * i
    local event_id, at, delivery = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    if redis.call('RPUSH', KEYS[4 + i], delivery) == 1 then
      redis.call('ZADD', due, now, event_id)
      redis.call('ZADD', since, at, event_id)
    end
    taken = taken + 1
  end
  redis.call('SET', cursor, to)
  return taken
elseif mode == 'lease' then
  local due = KEYS[1]
  local now, lease, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
  local ids = redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZADD', due, 'XX', now + lease, id)
  end
  return ids
elseif mode == 'done' then
  local due, since, list = KEYS[1], KEYS[2], KEYS[3]
  local event_id, delivery, now = ARGV[2], ARGV[3], ARGV[4]
  if delivery == '' then
    -- a reservation leased with nothing left to deliver: forgotten
    if redis.call('LLEN', list) > 0 then return 0 end
    redis.call('ZREM', due, event_id)
    redis.call('ZREM', since, event_id)
    return 1
  end
  if redis.call('LINDEX', list, 0) ~= delivery then return 0 end
  redis.call('LPOP', list)
  advance(due, since, list, event_id, now)
  return 1
elseif mode == 'retry' then
  local due, list = KEYS[1], KEYS[2]
  local event_id, delivery, new_delivery, due_at = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  if redis.call('LINDEX', list, 0) ~= delivery then return 0 end
  redis.call('LSET', list, 0, new_delivery)
  redis.call('ZADD', due, due_at, event_id)
  return 1
elseif mode == 'dead' then
  local due, since, list, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local event_id, delivery, dead_letter, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  if redis.call('LINDEX', list, 0) ~= delivery then return 0 end
  redis.call('LPOP', list)
  redis.call('LPUSH', dead, dead_letter)
  advance(due, since, list, event_id, now)
  return 1
elseif mode == 'replay' then
  local due, since, list, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local event_id, dead_letter, delivery, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  -- from the tail: a replay of them all takes the oldest first
  if redis.call('LREM', dead, -1, dead_letter) == 0 then return 0 end
  redis.call('LPUSH', list, delivery)
  redis.call('ZADD', due, now, event_id)
  redis.call('ZADD', since, since_of(delivery), event_id)
  return 1
end
return redis.error_reply('ERR stockq: webhook.lua mode must be take, lease, done, retry, dead or replay')
