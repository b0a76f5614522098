-- give_back: what a live reservation holds, given back in Redis.
--
-- give_back(stock, inflight, bought, r)
--     The reservation `r` (read_record's table) returns its units to the product's stock,
--     leaves the product's in-flight units, and gives its tally back to its buyer (`r` no
--     longer holds one: the caller saves it). Callers do it in the step that ends what held
--     the stock (the hold, or the record's claim on its queued entry), which is what makes
--     it happen once.
-- expire_hold(keys, event_id, record, r, now, ttl)
--     A hold whose payment deadline passed ends `expired`: out of {q}:holds, given back,
--     announced. keys: {holds, stock, inflight, bought, outcomes}.

--- @include "tally"
--- @include "record"
--- @include "outcome"

local function give_back(stock, inflight, bought, r)
  redis.call('INCRBY', stock, r.qty)
  redis.call('HINCRBY', inflight, r.product_id, -tonumber(r.qty))
  if r.tally then
    untally(bought, r.product_id, r.buyer, r.tally, r.epoch)
    r.tally = nil
  end
end

local function expire_hold(keys, event_id, record, r, now, ttl)
  redis.call('ZREM', keys.holds, event_id)
  give_back(keys.stock, keys.inflight, keys.bought, r)
  end_record(record, r, 'expired', now, ttl)
  announce(keys.outcomes, event_id, 'expired', r.product_id, r.qty, r.seq, r.buyer, 'payment deadline passed',
    r.reserved_at, now, r.version)
end
