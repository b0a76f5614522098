-- record: a reservation's record {q}:r:<event_id> (docs/redis-keys.md), one string:
--
--     version|state|product_id|qty|seq|reserved_at|updated_at|buyer|deadline|tally|epoch|envelope
--
-- (an absent field empty; the envelope, a dead letter's JSON, last, so that it may hold any
-- character). `version` counts the reservation's transitions: 1 when it is made, raised by
-- every change of state (save_record sees it), carried by every outcome, so that a consumer
-- can drop an outcome older than one it has seen (docs/outcomes.md). A record written before
-- versions starts with its state: it reads as version 0 (its outcomes carried none).
--
-- One string is read with one GET and written with one SET (with its TTL once
-- the reservation ended), where a hash of the same fields cost a call per change and grew
-- field by field. Records written before (hashes) are still read; each is written back as a
-- string at its next change.
--
-- read_record(key)
--     nil when there is none, else a table of its fields (nil when absent): state,
--     product_id, qty, seq, reserved_at, updated_at, buyer, deadline, tally (units it counts
--     against its buyer's limit), epoch (the limit's epoch they count in: tally.lua; absent
--     in a record made before epochs, whose tally counts in epoch 0 and whose entry has no
--     limit_epoch), envelope (its dead letter while dead).
-- next_version(v)
--     The version after `v` (both decimal strings).
-- record_text(r)
--     The string of record `r`.
-- save_record(key, r, ttl)
--     Writes `r`, expiring ttl ms from now when given (a reservation that ended), else
--     kept (one that lives: held, queued, dead, cancelling, releasing). Raises its version
--     when its state is not the one read (r.was).
-- end_record(key, r, state, now, ttl)
--     `r` moves to its final `state` at `now` and is saved to expire ttl ms later.

local function read_record(key)
  local v = redis.pcall('GET', key)
  if not v then return nil end
  if type(v) == 'table' then
    -- a record written as a hash, before records were strings
    local h = redis.call('HMGET', key, 'state', 'product_id', 'qty', 'buyer', 'seq', 'reserved_at',
      'deadline', 'tally', 'envelope', 'epoch', 'updated_at')
    if not h[1] then return nil end
    return {state = h[1], product_id = h[2], qty = h[3], buyer = h[4] or nil, seq = h[5] or nil,
      reserved_at = h[6] or nil, deadline = h[7] or nil, tally = h[8] or nil, envelope = h[9] or nil,
      epoch = h[10] or nil, updated_at = h[11] or nil, version = '0', was = h[1]}
  end
  local version, state, product_id, qty, seq, reserved_at, updated_at, buyer, deadline, tally, epoch, envelope =
    string.match(v, '^(%d*)|?(%a+)|(%d+)|(%d+)|(%d*)|(%d*)|(%d*)|([^|]*)|(%d*)|(%d*)|(%d*)|(.*)$')
  if not state then return nil end
  if version == '' then version = '0' end
  return {state = state, was = state, version = version, product_id = product_id, qty = qty,
    seq = seq ~= '' and seq or nil, reserved_at = reserved_at ~= '' and reserved_at or nil,
    updated_at = updated_at ~= '' and updated_at or nil, buyer = buyer ~= '' and buyer or nil,
    deadline = deadline ~= '' and deadline or nil, tally = tally ~= '' and tally or nil,
    epoch = epoch ~= '' and epoch or nil, envelope = envelope ~= '' and envelope or nil}
end

local function next_version(v)
  -- the last digit raised in place: formatting a number costs thousands of instructions
  local last = string.byte(v, -1)
  if last < 57 then return string.sub(v, 1, -2) .. string.char(last + 1) end
  return string.format('%d', tonumber(v) + 1)
end

local function record_text(r)
  return (r.version or '1') .. '|' .. r.state .. '|' .. r.product_id .. '|' .. r.qty .. '|' .. (r.seq or '') .. '|' .. (r.reserved_at or '')
    .. '|' .. (r.updated_at or '') .. '|' .. (r.buyer or '') .. '|' .. (r.deadline or '') .. '|'
    .. (r.tally or '') .. '|' .. (r.epoch or '') .. '|' .. (r.envelope or '')
end

local function save_record(key, r, ttl)
  if r.state ~= r.was then
    r.version, r.was = next_version(r.version or '0'), r.state
  end
  if ttl then
    redis.call('SET', key, record_text(r), 'PX', ttl)
  else
    redis.call('SET', key, record_text(r))
  end
end

local function end_record(key, r, state, now, ttl)
  r.state, r.updated_at = state, now
  save_record(key, r, ttl)
end
