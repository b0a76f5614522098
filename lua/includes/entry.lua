-- entry: the bytes of a queue entry and of a release (docs/redis-keys.md "The event").
-- Every script that pushes an entry, or names one to find it again (cancel.lua marks the
-- cancelled entry by its bytes), builds it here, so the bytes are the same whoever builds
-- them.
--
-- entry_json(event_id, product_id, qty, seq, buyer, at, limit_epoch)
--     buyer nil or '' for none; limit_epoch nil when the reservation is not counted against
--     a buyer limit, else the epoch of the tally it counts in (tally.lua), so that the worker
--     keeps it in `stock_log` and a refund after the record expired still gives it back
-- release_json(event_id, product_id, qty, seq)
--     seq nil or '' for none

local function entry_json(event_id, product_id, qty, seq, buyer, at, limit_epoch)
  local extra = ''
  if buyer and buyer ~= '' then extra = ',"buyer":"' .. buyer .. '"' end
  if limit_epoch then extra = extra .. ',"limit_epoch":' .. limit_epoch end
  return '{"event_id":"' .. event_id .. '","product_id":' .. product_id .. ',"qty":' .. qty ..
    ',"seq":' .. seq .. extra .. ',"at":' .. at .. '}'
end

local function release_json(event_id, product_id, qty, seq)
  if not seq or seq == '' then seq = 'null' end
  return '{"event_id":"' .. event_id .. '","product_id":' .. product_id .. ',"qty":' .. qty ..
    ',"seq":' .. seq .. '}'
end
