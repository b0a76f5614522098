#!lua
-- reserve.lua: the seckill front door.
--
-- KEYS[1]  {q}:stock:<product_id>   the product's Redis stock (an integer string)
-- KEYS[2]  {q}:pending              the list workers consume from the right
-- KEYS[3]  {q}:seq                  the reservation sequence
-- KEYS[4]  {q}:inflight             hash: product_id -> units reserved and not yet settled
-- ARGV[1]  event_id    1..64 characters of [A-Za-z0-9._:-]
-- ARGV[2]  product_id  a positive decimal integer that fits in a signed 64-bit integer
-- ARGV[3]  qty         an integer from 1 to 1000000
--
-- Returns {1, seq, remaining} reserved, {0, 0, stock} sold out (nothing taken),
-- {-1, 0, 0} unknown product (no stock key). Bad arguments raise an error reply.
--
-- Invariant kept atomic: the stock is taken if and only if the event is on the pending list
-- and counted in the product's in-flight units, and the event carries the sequence number
-- that orders it against the consistency check's snapshot (see src/check.rs).
--
-- The `#!lua` line makes Redis refuse the whole script when it is over `maxmemory`, before
-- anything is taken: a reservation is either made whole or not at all.

local event_id, product_id, qty_arg = ARGV[1], ARGV[2], ARGV[3]

if not event_id or #event_id < 1 or #event_id > 64 or string.find(event_id, '[^%w%.%_%:%-]') then
  return redis.error_reply('ERR stockq: event_id must be 1 to 64 characters of [A-Za-z0-9._:-]')
end
if not product_id or not string.match(product_id, '^[1-9]%d*$') or #product_id > 19
   or (#product_id == 19 and product_id > '9223372036854775807') then
  return redis.error_reply('ERR stockq: product_id must be a positive 64-bit integer')
end
if not qty_arg or not string.match(qty_arg, '^[1-9]%d*$') or #qty_arg > 7 or tonumber(qty_arg) > 1000000 then
  return redis.error_reply('ERR stockq: qty must be an integer from 1 to 1000000')
end
if #KEYS ~= 4 then
  return redis.error_reply('ERR stockq: reserve.lua takes 4 keys: stock, pending, seq, inflight')
end
local suffix = ':stock:' .. product_id
if string.sub(KEYS[1], -#suffix) ~= suffix then
  return redis.error_reply('ERR stockq: KEYS[1] must be the stock key of ARGV[2]')
end

local stock = redis.call('GET', KEYS[1])
if not stock then
  return {-1, 0, 0}
end
stock = tonumber(stock)
local qty = tonumber(qty_arg)
if stock < qty then
  return {0, 0, stock}
end

local remaining = redis.call('DECRBY', KEYS[1], qty)
local seq = redis.call('INCR', KEYS[3])
redis.call('HINCRBY', KEYS[4], product_id, qty)
redis.call('LPUSH', KEYS[2],
  '{"event_id":"' .. event_id .. '","product_id":' .. product_id ..
  ',"qty":' .. qty_arg .. ',"seq":' .. seq .. '}')
return {1, seq, remaining}
