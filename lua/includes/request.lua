-- request: what a reservation asks for, checked the same way by reserve.lua and
-- reserve_group.lua.
--
-- bad_request(event_id, product_id, qty, buyer, hold)
--     nil when the arguments are a valid reservation, else the error's message:
--       event_id    1..64 characters of [A-Za-z0-9._:-]
--       product_id  a positive decimal integer that fits in a signed 64-bit integer
--       qty         an integer from 1 to 1000000
--       buyer       '' for none, else 1..64 characters of [A-Za-z0-9._:-]
--       hold        '' or '0' for none, else milliseconds
--     One pattern search covers the event id and the buyer together: a match per check
--     costs more than the rest of the checks.
-- replayed(record, product_id, qty, buyer)
--     The answer to a reservation whose event id has a record already: nil when it has none;
--     {2, seq, state, reserved_at, updated_at, deadline, version} when it is the same
--     reservation (same product, qty and buyer) and has not ended (or is applied): its first
--     answer, nothing taken (version 0 for a record written before versions); {-2, 0, state}
--     when the id is used otherwise.

local function bad_request(event_id, product_id, qty, buyer, hold)
  if not event_id or not buyer or #event_id < 1 or #event_id > 64 or #buyer > 64
     or string.find(event_id .. buyer, '[^%w%.%_%:%-]') then
    if not event_id or #event_id < 1 or #event_id > 64 or string.find(event_id, '[^%w%.%_%:%-]') then
      return 'stockq: event_id must be 1 to 64 characters of [A-Za-z0-9._:-]'
    end
    return 'stockq: buyer must be empty or 1 to 64 characters of [A-Za-z0-9._:-]'
  end
  if not product_id or #product_id > 19 or not string.match(product_id, '^[1-9]%d*$')
     or (#product_id == 19 and product_id > '9223372036854775807') then
    return 'stockq: product_id must be a positive 64-bit integer'
  end
  if not qty or #qty > 7 or not string.match(qty, '^[1-9]%d*$') or (#qty == 7 and qty > '1000000') then
    return 'stockq: qty must be an integer from 1 to 1000000'
  end
  if not hold or #hold > 12 or (hold ~= '' and not string.match(hold, '^%d+$')) then
    return 'stockq: hold must be empty or milliseconds'
  end
  return nil
end

--- @include "record"

local function replayed(record, product_id, qty, buyer)
  local r = read_record(record)
  if not r then return nil end
  local state = r.state
  local live = state == 'queued' or state == 'dead' or state == 'applied' or state == 'held'
    or state == 'releasing' or state == 'cancelling'
  if live and r.product_id == product_id and r.qty == qty and (r.buyer or '') == buyer then
    return {2, tonumber(r.seq), state, tonumber(r.reserved_at), tonumber(r.updated_at), tonumber(r.deadline or '0'),
      tonumber(r.version)}
  end
  return {-2, 0, state}
end
