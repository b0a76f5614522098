-- clock: the Redis clock, read once per call, in unix milliseconds.
--
-- clock_ms()    -> now as a number, and TIME's own reply
-- clock_text()  -> now as a decimal string, and TIME's own reply. Built from TIME's strings:
--                  formatting a number costs more inside a script than most commands do
--                  (tostring is about 5,000 instructions under callgrind)
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end

local function clock_text()
  local t = redis.call('TIME')
  local us = t[2]
  return t[1] .. string.sub(string.sub('000000', #us + 1) .. us, 1, 3), t
end
