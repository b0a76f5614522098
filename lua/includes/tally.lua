-- tally: the units a buyer holds of a product with a buyer limit (docs/lifecycle.md "Buyer
-- limits"), one field of {q}:bought each.
--
-- A limit's tallies belong to its epoch: `stockq stock limit <p> 0` removes the limit, ends
-- its epoch and forgets its tallies (limit.lua). A reservation remembers the epoch it was
-- counted in (its record's `epoch`, its entry's `limit_epoch`, its `stock_log` row), and
-- gives its units back to that epoch's tally only: after the limit was removed and set
-- again, a cancel of an older reservation cannot free units that the new tally counts.
--
-- tally_field(product_id, buyer, epoch)
--     The buyer's field: '<product_id>:<buyer>' in epoch 0 (nil or '' reads as 0),
--     '<product_id>#<epoch>:<buyer>' after it. A buyer id has no '#', so the two never meet.
-- untally(bought, product_id, buyer, units, epoch)
--     Gives `units` back to the buyer's tally of that epoch. Every caller does it in the step
--     that ends what held the units, and takes the tally off the record there, so that it
--     is given back once. A field that comes to zero is removed; the tally of an epoch that
--     ended is gone and stays gone.

local function tally_field(product_id, buyer, epoch)
  if epoch and epoch ~= '' and epoch ~= '0' then
    return product_id .. '#' .. epoch .. ':' .. (buyer or '')
  end
  return product_id .. ':' .. (buyer or '')
end

local function untally(bought, product_id, buyer, units, epoch)
  local field = tally_field(product_id, buyer, epoch)
  local held = tonumber(redis.call('HGET', bought, field) or '0')
  if held > tonumber(units) then
    redis.call('HINCRBY', bought, field, -tonumber(units))
  elseif held > 0 then
    redis.call('HDEL', bought, field)
  end
end
