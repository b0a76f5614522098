-- wrk script for scripts/bench-http.sh: POST /reserve for products 1..100 (or 1 when HOT=1).
local hot = os.getenv("HOT") == "1"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
math.randomseed(os.time())
request = function()
  local product = hot and 1 or math.random(1, 100)
  return wrk.format(nil, "/reserve", nil, '{"product_id":' .. product .. ',"qty":1}')
end
