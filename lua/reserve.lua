#!lua
-- reserve.lua: the seckill front door.
--
-- KEYS[1]  {q}:stock:<product_id>   the product's Redis stock (an integer string)
-- KEYS[2]  {q}:pending              the list workers consume from the right
-- KEYS[3]  {q}:seq                  the reservation sequence
-- KEYS[4]  {q}:inflight             hash: product_id -> units reserved and not yet settled
-- KEYS[5]  {q}:r:<event_id>         the reservation's record (lua/includes/record.lua)
-- KEYS[6]  {q}:holds                sorted set: event_id of a held reservation -> deadline
-- KEYS[7]  {q}:limits               hash: product_id -> units one buyer may hold, as
--                                   '<limit>' or '<limit>@<epoch>' (limit.lua); and '!heal'
--                                   while the shard is healed after Redis lost writes (heal.lua)
-- KEYS[8]  {q}:bought               hash: the buyer's tally field (tally.lua) -> units held
-- ARGV[1]  event_id    1..64 characters of [A-Za-z0-9._:-]
-- ARGV[2]  product_id  a positive decimal integer that fits in a signed 64-bit integer
-- ARGV[3]  qty         an integer from 1 to 1000000
-- ARGV[4]  buyer       '' for none, else 1..64 characters of [A-Za-z0-9._:-]
-- ARGV[5]  hold        '' or '0' for none, else milliseconds the stock is held unpaid
--                      (the caller bounds it by STOCKQ_MAX_HOLD)
--
-- Returns
--   {1, seq, remaining, reserved_at, deadline}  reserved (deadline 0 unless held), version 1
--   {2, seq, state, reserved_at, updated_at, deadline, version}
--                                             a replay: the event id was reserved before with
--                                             the same product, qty and buyer and has not
--                                             ended (or is applied); nothing taken (version 0:
--                                             a record written before versions)
--   {-2, 0, state}                            the event id is used otherwise; nothing taken
--   {0, 0, stock}                             sold out, nothing taken
--   {-1, 0, 0}                                unknown product (no stock key)
--   {-3, 0, limit}                            the product has a buyer limit and no buyer was given
--   {-4, 0, limit, held}                      the buyer would hold more than the limit
--   {-5, 0, until}                            the shard is being healed after Redis lost
--                                             writes (heal.lua): try again; nothing taken
--   {-6, 0, since}                            the product's sale is paused (`stockq stock
--                                             pause`) since then; nothing taken
-- Times are unix ms on the Redis clock. Bad arguments raise an error reply. Refusals create
-- no record, so they do not use up the event id.
--
-- Invariant kept atomic: the stock is taken if and only if the reservation is recorded
-- (`queued` with its event on the pending list, or `held` with its deadline in holds),
-- counted in the product's in-flight units and, under a limit, in the buyer's units; and it
-- carries the sequence number that orders it against the consistency check's snapshot (see
-- src/check.rs). Because the record and the buyer's units are read in the same step, a
-- retried reservation can never take a second unit nor be told "sold out" for the unit it
-- got, and no concurrency can take a buyer past the limit.
--
-- The `#!lua` line makes Redis refuse the whole script when it is over `maxmemory`, before
-- anything is taken: a reservation is either made whole or not at all.

-- Cost: this runs once per shopper, on Redis's one thread, so it avoids what costs most
-- inside a script (measured in instructions under callgrind): converting a number to a
-- string (tostring is about 5,000 instructions, string.format('%d') half that), tonumber,
-- a pattern match per check, and a table per call. Times stay strings where they can.

--- @include "clock"
--- @include "entry"
--- @include "request"
--- @include "tally"

local format = string.format
local stock_key, pending, seq_key, inflight, record = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local holds, limits, bought = KEYS[6], KEYS[7], KEYS[8]
local event_id, product_id, qty_arg, buyer, hold = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local bad = bad_request(event_id, product_id, qty_arg, buyer, hold)
if bad then
  return redis.error_reply('ERR ' .. bad)
end
if #KEYS ~= 8 then
  return redis.error_reply('ERR stockq: reserve.lua takes 8 keys: stock, pending, seq, inflight, record, holds, limits, bought')
end
-- every key of the queue starts with the prefix of its sequence key, '{q}:'
local prefix = string.sub(seq_key, 1, -4)
if stock_key ~= prefix .. 'stock:' .. product_id then
  return redis.error_reply('ERR stockq: KEYS[1] must be the stock key of ARGV[2] in the queue of KEYS[3]')
end
if record ~= prefix .. 'r:' .. event_id then
  return redis.error_reply('ERR stockq: KEYS[5] must be the record key of ARGV[1] in the queue of KEYS[3]')
end

local replay = replayed(record, product_id, qty_arg, buyer)
if replay then
  return replay
end

local stock = redis.call('GET', stock_key)
if not stock then
  return {-1, 0, 0}
end
-- '<limit>', or '<limit>@<epoch>' once a limit of the product was removed (limit.lua); and
-- in the same read, whether the shard is being healed (heal.lua) and whether the product's
-- sale is paused (`stockq stock pause`: '!paused:<p>' -> since, unix ms)
local settings = redis.call('HMGET', limits, product_id, '!heal', '!paused:' .. product_id)
local limit_value = settings[1]
if settings[2] then
  local until_ms = tonumber(string.match(settings[2], '^%d+'))
  if until_ms and until_ms > tonumber((clock_text())) then
    return {-5, 0, until_ms}
  end
end
if settings[3] then
  return {-6, 0, tonumber(settings[3]) or 0}
end
local limit, epoch = 0, '0'
if limit_value then
  limit = tonumber(limit_value)
  if not limit then
    local l, e = string.match(limit_value, '^(%d+)@(%d+)$')
    limit, epoch = tonumber(l), e
    if not limit then
      return redis.error_reply('ERR stockq: the buyer limit of product ' .. product_id .. ' in ' .. limits .. ' is not a number')
    end
  end
end
if limit > 0 and buyer == '' then
  return {-3, 0, limit}
end
if tonumber(stock) < tonumber(qty_arg) then
  return {0, 0, tonumber(stock)}
end
local field
if limit > 0 then
  field = tally_field(product_id, buyer, epoch)
  local held = tonumber(redis.call('HGET', bought, field) or '0')
  if held + tonumber(qty_arg) > limit then
    return {-4, 0, limit, held}
  end
end

local now_s = clock_text()
local now = tonumber(now_s)
local remaining = redis.call('DECRBY', stock_key, qty_arg)
local seq = redis.call('INCR', seq_key)
local seq_s = format('%d', seq)
redis.call('HINCRBY', inflight, product_id, qty_arg)
local deadline = 0
if hold ~= '' and hold ~= '0' and tonumber(hold) > 0 then
  deadline = now + tonumber(hold)
end
local tally = ''
if field then
  -- the record says how many units it holds against the buyer, and in which epoch, so that
  -- whichever script ends it gives exactly those back, once
  redis.call('HINCRBY', bought, field, qty_arg)
  tally = qty_arg
else
  epoch = ''
end
-- the record (record.lua's layout), as one string
if deadline > 0 then
  local deadline_s = format('%d', deadline)
  redis.call('SET', record, '1|held|' .. product_id .. '|' .. qty_arg .. '|' .. seq_s .. '|' .. now_s .. '|' .. now_s
    .. '|' .. buyer .. '|' .. deadline_s .. '|' .. tally .. '|' .. epoch .. '|')
  redis.call('ZADD', holds, deadline_s, event_id)
else
  redis.call('SET', record, '1|queued|' .. product_id .. '|' .. qty_arg .. '|' .. seq_s .. '|' .. now_s .. '|' .. now_s
    .. '|' .. buyer .. '||' .. tally .. '|' .. epoch .. '|')
  -- the entry carries the buyer and the time, so that the worker writes the outcome without
  -- reading the record
  redis.call('LPUSH', pending, entry_json(event_id, product_id, qty_arg, seq_s, buyer, now_s, field and epoch))
end
return {1, seq, remaining, now, deadline}
