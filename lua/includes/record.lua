-- record: a reservation's record, the hash {q}:r:<event_id> (docs/redis-keys.md).
--
-- read_record(key)
--     nil when there is none, else a table of its fields (nil when absent): state,
--     product_id, qty, buyer, seq, reserved_at, deadline, tally, envelope, epoch (the buyer
--     limit's epoch its tally counts in: tally.lua; absent in a record made before epochs,
--     whose tally counts in epoch 0 and whose entry has no limit_epoch).
-- end_record(key, state, now, ttl)
--     The record's final state: it expires ttl ms from now.

local function read_record(key)
  local v = redis.call('HMGET', key, 'state', 'product_id', 'qty', 'buyer', 'seq', 'reserved_at',
    'deadline', 'tally', 'envelope', 'epoch')
  if not v[1] then return nil end
  return {state = v[1], product_id = v[2], qty = v[3], buyer = v[4], seq = v[5], reserved_at = v[6],
    deadline = v[7], tally = v[8], envelope = v[9], epoch = v[10]}
end

local function end_record(key, state, now, ttl)
  redis.call('HSET', key, 'state', state, 'updated_at', now)
  redis.call('PEXPIRE', key, ttl)
end
