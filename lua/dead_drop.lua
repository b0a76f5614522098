-- dead_drop.lua: discard a dead-lettered entry, giving its reservation back.
--
-- KEYS[1]  {q}:dead
-- KEYS[2]  the stock key to give back to (any key of the queue when nothing is given back)
-- ARGV[1]  the dead envelope, exactly as stored
-- ARGV[2]  units to give back (0 for an entry that holds no reservation)
--
-- Returns 1 when dropped, 0 when the envelope was no longer there. The give-back happens only
-- with the removal, so dropping twice never returns stock twice. A stock key that does not
-- exist is not created (the event was pushed by hand for a product never stocked, or Redis
-- lost its data, in which case `stockq check --repair` restores the key).

if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
if tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], ARGV[2])
end
return 1
