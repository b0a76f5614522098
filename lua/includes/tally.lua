-- tally: the units a buyer holds of a product with a buyer limit (docs/lifecycle.md "Buyer
-- limits"), one field of {q}:bought each.
--
-- tally_field(product_id, buyer)
--     The buyer's field: '<product_id>:<buyer>'.
-- untally(bought, record, product_id, buyer, units)
--     Gives `units` back to the buyer and takes the tally off the record (nil for none), so
--     that it is given back once: every caller does it in the step that ends what held the
--     units. A field that comes to zero is removed.

local function tally_field(product_id, buyer)
  return product_id .. ':' .. (buyer or '')
end

local function untally(bought, record, product_id, buyer, units)
  local field = tally_field(product_id, buyer)
  local held = tonumber(redis.call('HGET', bought, field) or '0')
  if held > tonumber(units) then
    redis.call('HINCRBY', bought, field, -tonumber(units))
  else
    redis.call('HDEL', bought, field)
  end
  if record then redis.call('HDEL', record, 'tally') end
end
