#!lua
-- reserve_group.lua: the reservations that arrived together, in one step (group commit).
--
-- KEYS[1]  {q}:pending
-- KEYS[2]  {q}:seq
-- KEYS[3]  {q}:inflight
-- KEYS[4]  {q}:holds
-- KEYS[5]  {q}:limits   product_id -> '<limit>' or '<limit>@<epoch>'; '!heal' while healed; '!paused:<p>' -> since
-- KEYS[6]  {q}:bought
-- KEYS[5 + 2i], KEYS[6 + 2i]  for reservation i (1-based): its product's stock key and its
--                            record key {q}:r:<event_id>
-- ARGV[5i - 4 .. 5i]  reservation i: event_id, product_id, qty, buyer ('' for none), hold
--                     ('' or '0' for none, else ms)
--
-- Returns one answer per reservation, in order, seven values each (one flat array: a table per
-- answer would cost more than the answer's work), each exactly what reserve.lua answers for
-- it alone (see its contract), padded with 0: {1, seq, remaining, reserved_at, deadline},
-- {2, ...} a replay, {-2, 0, state}, {0, 0, stock}, {-1, 0, 0}, {-3, 0, limit},
-- {-4, 0, limit, held}, {-5, 0, until}, {-6, 0, since}; and {-9, 0, message} for a reservation whose
-- arguments are wrong, which fails alone: the others are made.
--
-- The reservations are decided one after the other, in the order given, as if each were its
-- own call: a later one sees the stock, the buyer's units and the records of the earlier
-- ones (the same event id twice in a group is a replay the second time). What the group
-- shares is paid once instead of once per reservation: the call, the clock, the heal flag,
-- each product's stock and limit (read once, written once: DECRBY by what the group took),
-- the sequence (one INCRBY for the group, each reservation numbered in turn), the in-flight
-- units (one HINCRBY per product) and the queue (one LPUSH of every entry, in order).
--
-- Invariant kept atomic, as in reserve.lua: each reservation's stock is taken if and only if
-- it is recorded, counted in flight and, under a limit, in its buyer's units, and it carries
-- its sequence number; nothing of a refused one is written.
--
-- The `#!lua` line makes Redis refuse the whole group when it is over `maxmemory`: none of
-- its reservations is made.

--- @include "clock"
--- @include "entry"
--- @include "request"
--- @include "tally"

local pending, seq_key, inflight, holds, limits, bought = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local n = #ARGV / 5
if n ~= math.floor(n) or #KEYS ~= 6 + 2 * n then
  return redis.error_reply('ERR stockq: reserve_group.lua takes 6 keys and 2 per reservation, and 5 arguments per reservation')
end
local prefix = string.sub(seq_key, 1, -4)
local format, find = string.format, string.find

-- The arguments are checked for the whole group at once: one pattern search over every
-- argument, for a character that none may hold (what would break an entry's JSON or a
-- record's fields), and each reservation's own checks (request.lua) only when that search
-- finds one. The caller, src/queue/group.rs, sends only reservations it has checked with the
-- same rules, under keys it built; checking each one again here would cost as much as the
-- rest of its reservation. Producers in other languages call reserve.lua, which checks all.
local bad = {}
if find(table.concat(ARGV, '.'), '[^%w%.%_%:%-]') then
  for i = 1, n do
    local a = 5 * i - 4
    bad[i] = bad_request(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  end
end

-- Every product the group names, read at once: its stock, limit and units in flight.
local products, stock_key_of = {}, {}
for i = 1, n do
  if not bad[i] then
    local product_id, stock_key = ARGV[5 * i - 3], KEYS[5 + 2 * i]
    local known = stock_key_of[product_id]
    if not known then
      if stock_key ~= prefix .. 'stock:' .. product_id then
        bad[i] = 'stockq: the stock key of reservation ' .. i .. ' must be that of its product in the queue of KEYS[2]'
      else
        stock_key_of[product_id] = stock_key
        products[#products + 1] = product_id
      end
    elseif known ~= stock_key then
      bad[i] = 'stockq: the stock key of reservation ' .. i .. ' must be that of its product in the queue of KEYS[2]'
    end
  end
end
local stock, limit_of, taken, paused_since = {}, {}, {}, {}
local healing_until
if #products > 0 then
  local stock_keys = {}
  for j = 1, #products do stock_keys[j] = stock_key_of[products[j]] end
  local stocks = redis.call('MGET', unpack(stock_keys))
  -- each product's limit, the heal flag and each product's pause, in one read
  local n = #products
  local fields = {}
  for j = 1, n do
    fields[j] = products[j]
    fields[n + 1 + j] = '!paused:' .. products[j]
  end
  fields[n + 1] = '!heal'
  local settings = redis.call('HMGET', limits, unpack(fields))
  local heal = settings[n + 1]
  healing_until = heal and tonumber(string.match(heal, '^%d+'))
  for j = 1, #products do
    local product_id = products[j]
    -- false: no stock key (an unknown product)
    stock[product_id] = tonumber(stocks[j] or '') or false
    taken[product_id] = 0
    local value, lim = settings[j], {0, '0'}
    if value then
      local l, e = tonumber(value), '0'
      if not l then
        local ls, es = string.match(value, '^(%d+)@(%d+)$')
        l, e = tonumber(ls), es
      end
      lim = {l or -1, e}
    end
    limit_of[product_id] = lim
    paused_since[product_id] = settings[n + 1 + j] and (tonumber(settings[n + 1 + j]) or 0)
  end
end

-- the answers, flat: six values per reservation (reserve.lua's answer, padded with 0), so
-- that the group's reply is one array instead of a table per reservation
local answers = {}
-- per tally field: the buyer's units as the group leaves them, and what the group added
local held, tally_add = {}, {}
local entries = {}
local now_s, now, base, numbered = nil, nil, nil, 0

for i = 1, n do
  local a = 5 * i - 4
  local event_id, product_id, qty_arg, buyer, hold = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local record = KEYS[6 + 2 * i]
  -- the answer: its code (nil until decided) and up to six values
  local c, v2, v3, v4, v5, v6, v7 = nil, 0, 0, 0, 0, 0, 0
  if bad[i] then
    c, v3 = -9, bad[i]
  else
    local replay = replayed(record, product_id, qty_arg, buyer)
    if replay then
      c, v2, v3, v4, v5, v6, v7 = replay[1], replay[2], replay[3], replay[4] or 0, replay[5] or 0, replay[6] or 0,
        replay[7] or 0
    end
  end
  if not c and healing_until then
    if not now then
      now_s = clock_text()
      now = tonumber(now_s)
    end
    if healing_until > now then c, v3 = -5, healing_until end
  end
  if not c then
    local left, lim = stock[product_id], limit_of[product_id]
    local qty = tonumber(qty_arg)
    local field
    if not left then
      c = -1
    elseif paused_since[product_id] then
      c, v3 = -6, paused_since[product_id]
    elseif lim[1] < 0 then
      c, v3 = -9, 'stockq: the buyer limit of product ' .. product_id .. ' in ' .. limits .. ' is not a number'
    elseif lim[1] > 0 and buyer == '' then
      c, v3 = -3, lim[1]
    elseif left < qty then
      c, v3 = 0, left
    elseif lim[1] > 0 then
      field = tally_field(product_id, buyer, lim[2])
      local units = held[field]
      if not units then
        units = tonumber(redis.call('HGET', bought, field) or '0')
        held[field] = units
      end
      if units + qty > lim[1] then c, v3, v4 = -4, lim[1], units end
    end
    if not c then
      -- reserved: numbered, counted, recorded, queued or held
      if not now then
        now_s = clock_text()
        now = tonumber(now_s)
      end
      if not base then base = tonumber(redis.call('GET', seq_key) or '0') end
      numbered = numbered + 1
      local seq = base + numbered
      local seq_s = format('%d', seq)
      left = left - qty
      stock[product_id], taken[product_id] = left, taken[product_id] + qty
      local deadline = 0
      if hold ~= '' and hold ~= '0' and tonumber(hold) > 0 then deadline = now + tonumber(hold) end
      local epoch, tally = '', ''
      if field then
        held[field] = held[field] + qty
        tally_add[field] = (tally_add[field] or 0) + qty
        epoch, tally = lim[2], qty_arg
      end
      -- the record (record.lua's layout), as one string
      if deadline > 0 then
        local deadline_s = format('%d', deadline)
        redis.call('SET', record, '1|held|' .. product_id .. '|' .. qty_arg .. '|' .. seq_s .. '|' .. now_s .. '|'
          .. now_s .. '|' .. buyer .. '|' .. deadline_s .. '|' .. tally .. '|' .. epoch .. '|')
        redis.call('ZADD', holds, deadline_s, event_id)
      else
        redis.call('SET', record, '1|queued|' .. product_id .. '|' .. qty_arg .. '|' .. seq_s .. '|' .. now_s .. '|'
          .. now_s .. '|' .. buyer .. '||' .. tally .. '|' .. epoch .. '|')
        entries[#entries + 1] = entry_json(event_id, product_id, qty_arg, seq_s, buyer, now_s, field and epoch)
      end
      c, v2, v3, v4, v5 = 1, seq, left, now, deadline
    end
  end
  local o = 7 * i - 7
  answers[o + 1], answers[o + 2], answers[o + 3], answers[o + 4], answers[o + 5], answers[o + 6], answers[o + 7] =
    c, v2, v3, v4, v5, v6, v7
end

-- what the group shares, written once: the stock it took, its units in flight (as values:
-- this step alone reads and writes them), the sequence, the buyers' units, the queue
if numbered > 0 then
  redis.call('INCRBY', seq_key, numbered)
  local inflight_fields = {}
  for j = 1, #products do
    local product_id = products[j]
    if taken[product_id] > 0 then
      redis.call('DECRBY', stock_key_of[product_id], taken[product_id])
      inflight_fields[#inflight_fields + 1] = product_id
    end
  end
  local counts = redis.call('HMGET', inflight, unpack(inflight_fields))
  local inflight_args = {}
  for j = 1, #inflight_fields do
    local product_id = inflight_fields[j]
    inflight_args[2 * j - 1] = product_id
    inflight_args[2 * j] = format('%d', tonumber(counts[j] or '0') + taken[product_id])
  end
  redis.call('HSET', inflight, unpack(inflight_args))
end
for field, units in pairs(tally_add) do
  redis.call('HINCRBY', bought, field, units)
end
-- unpack is bounded by Lua's stack: push in slices, in order
for i = 1, #entries, 1000 do
  redis.call('LPUSH', pending, unpack(entries, i, math.min(i + 999, #entries)))
end
return answers
