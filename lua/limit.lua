#!lua flags=allow-oom
-- limit.lua: set or remove the buyer limit of a product (`stockq stock limit`).
--
-- KEYS[1]  {q}:limits   hash: product_id -> '<limit>' in epoch 0, '<limit>@<epoch>' after
-- ARGV[1]  product_id
-- ARGV[2]  the limit: units one buyer may hold; 0 removes it
--
-- Returns {epoch, ended}: the epoch the product's tallies now count in, and 1 when this call
-- ended the one before (a limit was removed). The caller then forgets the tallies of every
-- earlier epoch ({q}:bought fields '<p>:...' and '<p>#<e>:...' with e below it: tally.lua).
--
-- Invariant kept atomic: removing a limit ends its epoch in the same step that removes it,
-- so every reservation counted under it (held, queued, applied) gives its units back to the
-- ended epoch's tally, which is forgotten, and never to the tally of a limit set later:
-- however resets, cancels, expiries and releases interleave, a buyer holds at most the
-- limit of the epoch that counts them.
-- `allow-oom`: it replaces one field by one of about the same size.

local limits, product_id, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local current = redis.call('HGET', limits, product_id)
local held, epoch = 0, 0
if current then
  local l, e = string.match(current, '^(%d+)@(%d+)$')
  held, epoch = tonumber(l or current) or 0, tonumber(e or '0')
end
local ended = 0
if limit == 0 and held > 0 then
  epoch = epoch + 1
  ended = 1
end
if epoch == 0 then
  if limit == 0 then
    redis.call('HDEL', limits, product_id)
  else
    redis.call('HSET', limits, product_id, ARGV[2])
  end
else
  redis.call('HSET', limits, product_id, ARGV[2] .. '@' .. epoch)
end
return {epoch, ended}
