#!lua flags=allow-oom
-- dead_drop.lua: discard a dead-lettered entry, giving its reservation back.
--
-- KEYS[1]  {q}:dead
-- KEYS[2]  the stock key to give back to (any key of the queue when nothing is given back)
-- KEYS[3]  {q}:inflight     hash: product_id -> units reserved and not yet settled
-- KEYS[4]  {q}:unsure       set of entries whose earlier delivery may have committed
-- ARGV[1]  the dead envelope, exactly as stored
-- ARGV[2]  units to give back (0 for an entry that holds no reservation, or that MySQL applied)
-- ARGV[3]  product_id (any value when ARGV[4] is 0)
-- ARGV[4]  units the entry counts in the product's in-flight units (0 for one pushed by hand)
-- ARGV[5]  the original entry (its unsure mark goes with it)
--
-- Returns 1 when dropped, 0 when the envelope was no longer there. The give-back happens only
-- with the removal, so dropping twice never returns stock twice. A stock key that does not
-- exist is not created (the event was pushed by hand for a product never stocked, or Redis
-- lost its data, in which case `stockq check --repair` restores the key). The in-flight units go
-- whether or not stock is given back: a dropped entry is settled either way.
-- `allow-oom`: dropping only shrinks Redis.

if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
if tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], ARGV[2])
end
if tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[3], ARGV[3], -tonumber(ARGV[4]))
end
if ARGV[5] then
  redis.call('SREM', KEYS[4], ARGV[5])
end
return 1
