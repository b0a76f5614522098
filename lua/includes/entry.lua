-- entry: the bytes of a queue entry and of a release (docs/redis-keys.md "The event").
-- Every script that pushes an entry, or names one to find it again (cancel.lua marks the
-- cancelled entry by its bytes), builds it here, so the bytes are the same whoever builds
-- them.
--
-- entry_json(event_id, product_id, qty, seq, buyer, at)   buyer nil or '' for none
-- release_json(event_id, product_id, qty, seq)             seq nil or '' for none

local function entry_json(event_id, product_id, qty, seq, buyer, at)
  local buyer_field = ''
  if buyer and buyer ~= '' then buyer_field = ',"buyer":"' .. buyer .. '"' end
  return '{"event_id":"' .. event_id .. '","product_id":' .. product_id .. ',"qty":' .. qty ..
    ',"seq":' .. seq .. buyer_field .. ',"at":' .. at .. '}'
end

local function release_json(event_id, product_id, qty, seq)
  if not seq or seq == '' then seq = 'null' end
  return '{"event_id":"' .. event_id .. '","product_id":' .. product_id .. ',"qty":' .. qty ..
    ',"seq":' .. seq .. '}'
end
