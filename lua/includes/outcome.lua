-- outcome: the outcome stream, one entry per reservation that ends or goes dead
-- (docs/outcomes.md). Every script that ends a reservation writes it here, so that every
-- entry has the same fields in the same order, whoever wrote it.
--
-- trim_outcomes(stream, maxlen)
--     Trims the stream to about maxlen entries. Once per call and before the script's first
--     other write: a Redis user whose ACL lacks XTRIM then fails the call before it has
--     changed anything (docs/security.md).
-- announce(stream, event_id, state, product_id, qty, seq, buyer, reason, reserved_at, at, version)
--     Appends one entry: event_id, state, product_id, qty, then seq, buyer, reason and
--     reserved_at when known (nil or '' when not), then at and version. Values are strings: a
--     number passed to Redis is formatted on every call. `version` is the record's after the
--     transition (record.lua); nil for an entry that is not the record's own reservation (a
--     copy pushed by hand, ended `duplicate`; a record that is gone), which then carries
--     version 0: it claims to be newer than nothing. (A refund after the record expired
--     brings a record back with the clock as its version: cancel.lua.)

local function trim_outcomes(stream, maxlen)
  redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
end

local function announce(stream, event_id, state, product_id, qty, seq, buyer, reason, reserved_at, at, version)
  version = version or '0'
  if seq and seq ~= '' and reserved_at and reserved_at ~= '' and (not reason or reason == '') then
    -- the usual entry, passed as it is: a table per entry costs more than the XADD's own work
    if buyer and buyer ~= '' then
      return redis.call('XADD', stream, '*', 'event_id', event_id, 'state', state, 'product_id', product_id,
        'qty', qty, 'seq', seq, 'buyer', buyer, 'reserved_at', reserved_at, 'at', at, 'version', version)
    end
    return redis.call('XADD', stream, '*', 'event_id', event_id, 'state', state, 'product_id', product_id,
      'qty', qty, 'seq', seq, 'reserved_at', reserved_at, 'at', at, 'version', version)
  end
  local fields = {'event_id', event_id, 'state', state, 'product_id', product_id, 'qty', qty}
  local f = 8
  for _, kv in ipairs({{'seq', seq}, {'buyer', buyer}, {'reason', reason}, {'reserved_at', reserved_at}}) do
    if kv[2] and kv[2] ~= '' then
      fields[f + 1] = kv[1]
      fields[f + 2] = kv[2]
      f = f + 2
    end
  end
  fields[f + 1] = 'at'
  fields[f + 2] = at
  fields[f + 3] = 'version'
  fields[f + 4] = version
  return redis.call('XADD', stream, '*', unpack(fields))
end
