#!lua flags=allow-oom
-- transfer.lua: units of a spread product moved from one of its buckets (shards) to another
-- (`stockq stock spread`, docs/cluster.md "One hot product on several shards").
--
-- Two buckets live on two shards (two slots, often two masters), so a transfer is two atomic
-- steps, each recorded under the transfer's id so that a step repeated (a retry, a janitor
-- finishing a transfer cut by a crash) changes nothing twice:
--
--   'out'  on the giving shard:   KEYS {q}:stock:<p>, {q}:seq, {q}:transfers
--          ARGV id, product_id, units wanted, units at least, to_shard
--          takes min(units wanted, stock) if that is at least `units at least` (else nothing),
--          numbers the take in this shard's sequence and records the transfer as on its way.
--          Returns {units taken, take_seq, stock left}.
--   'in'   on the receiving shard: KEYS {q}:stock:<p>, {q}:seq, {q}:received
--          ARGV id, product_id, units, from_shard, take_seq
--          gives the units once (a repeated id gives nothing), numbered in this shard's
--          sequence, and records it. Returns {1 given now | 0 given before, give_seq}.
--   'done' on the giving shard:   KEYS {q}:transfers; ARGV id
--          the transfer arrived: it is no longer on its way. Returns 1 or 0.
--
-- Invariant: a transfer's units are in exactly one of: the giving bucket (before 'out'), on
-- their way ({q}:transfers of the giver, not yet in {q}:received of the receiver), the
-- receiving bucket (after 'in'). The take and the give carry their shards' sequence numbers,
-- so that the consistency check counts each unit once whenever its snapshots of the two
-- shards were taken (src/check.rs). In-flight units are not touched: a transfer moves stock,
-- not reservations.

--- @include "clock"

local mode = ARGV[1]
if mode == 'done' then
  return redis.call('HDEL', KEYS[1], ARGV[2])
end
local stock, seq_key, log = KEYS[1], KEYS[2], KEYS[3]
local id, product_id = ARGV[2], ARGV[3]
local now = clock_ms()
if mode == 'out' then
  local wanted, least, to = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
  local have = tonumber(redis.call('GET', stock) or '0')
  local units = math.min(wanted, have)
  if units < math.max(least, 1) then
    return {0, 0, have}
  end
  redis.call('DECRBY', stock, units)
  local take_seq = redis.call('INCR', seq_key)
  redis.call('HSET', log, id, product_id .. '|' .. units .. '|' .. to .. '|' .. take_seq .. '|' .. now)
  return {units, take_seq, have - units}
elseif mode == 'in' then
  local units, from, take_seq = ARGV[4], ARGV[5], ARGV[6]
  local before = redis.call('HGET', log, id)
  if before then
    return {0, tonumber(string.match(before, '^[^|]*|[^|]*|[^|]*|[^|]*|(%d+)'))}
  end
  redis.call('INCRBY', stock, units)
  local give_seq = redis.call('INCR', seq_key)
  redis.call('HSET', log, id, product_id .. '|' .. units .. '|' .. from .. '|' .. take_seq .. '|' .. give_seq .. '|' .. now)
  return {1, give_seq}
end
return redis.error_reply('ERR stockq: transfer.lua mode must be out, in or done')
