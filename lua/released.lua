#!lua flags=allow-oom
-- released.lua: acknowledge releases once MySQL has added their quantity back.
--
-- KEYS[1]  {q}:releases
-- KEYS[2]  {q}:inflight
-- KEYS[3]  {q}:outcomes
-- KEYS[4]  {q}:counters
-- KEYS[5..4+N]  the record {q}:r:<event_id> of each release below
-- ARGV[1]  record TTL in ms
-- ARGV[2]  the outcome stream's approximate MAXLEN
-- then per release: the entry exactly as on the list, event_id, product_id, qty, seq ('' if none)
--
-- Returns the number of releases acknowledged now.
--
-- Invariant kept atomic: a release leaves the list together with its in-flight correction
-- (cancel.lua lowered the product's in-flight units by the quantity when it gave the stock
-- back in Redis; MySQL has it back now, so the units return to zero) and with its record's
-- `released` and the outcome entry. Two workers that applied the same release (MySQL changed
-- the row once) both call this; the second finds the entry gone and changes nothing.
-- `allow-oom`: acknowledging only shrinks Redis.

--- @include "clock"
--- @include "outcome"
--- @include "record"

local releases, inflight, outcomes, counters = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl = ARGV[1]

trim_outcomes(outcomes, ARGV[2])
local now = clock_text()
local n = 0
for i = 0, (#ARGV - 2) / 5 - 1 do
  local a = 3 + 5 * i
  local entry, event_id, product_id, qty, seq = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if redis.call('LREM', releases, 1, entry) > 0 then
    n = n + 1
    redis.call('HINCRBY', inflight, product_id, tonumber(qty))
    local record = KEYS[5 + i]
    local r = read_record(record)
    local version
    if r and r.state == 'releasing' and (r.seq or '') == seq then
      end_record(record, r, 'released', now, ttl)
      version = r.version
    end
    announce(outcomes, event_id, 'released', product_id, qty, seq, r and r.buyer, nil, r and r.reserved_at, now,
      version)
  end
end
if n > 0 then
  redis.call('HINCRBY', counters, 'released', n)
end
return n
