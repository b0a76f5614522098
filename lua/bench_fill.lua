-- bench_fill.lua: `stockq bench`'s setup for the check against a backlog; never used by a
-- shopper or a worker.
--
-- KEYS[1]  {q}:pending
-- KEYS[2]  {q}:seq
-- KEYS[3]  {q}:inflight
-- KEYS[4]  {q}:stock:     the stock keys' prefix (the product id follows it)
-- ARGV[1]  'stock' or 'backlog'
-- 'stock':   ARGV[2] first product, ARGV[3] last product, ARGV[4] stock: SET each stock key
-- 'backlog': ARGV[2] events already pushed (their ids go on from it), ARGV[3] events to push,
--            ARGV[4] products (1..P): pushes events of qty 1 spread over the products, each
--            reserved as reserve.lua would reserve it (stock taken, in-flight counted, a seq),
--            so that the books stay exact
--
-- Returns the number of keys set or entries pushed. A call of 200,000 holds Redis for about
-- a second: setup only.

if ARGV[1] == 'stock' then
  local n = 0
  for p = tonumber(ARGV[2]), tonumber(ARGV[3]) do
    redis.call('SET', KEYS[4] .. p, ARGV[4])
    n = n + 1
  end
  return n
end
local first, k, products = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local seq = redis.call('INCRBY', KEYS[2], k) - k
for i = 1, k do
  local id = first + i
  local p = id % products + 1
  redis.call('LPUSH', KEYS[1], '{"event_id":"bench-' .. id .. '","product_id":' .. p ..
    ',"qty":1,"seq":' .. (seq + i) .. '}')
  redis.call('DECRBY', KEYS[4] .. p, 1)
  redis.call('HINCRBY', KEYS[3], p, 1)
end
return k
