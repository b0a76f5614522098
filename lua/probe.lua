#!lua
-- probe.lua: whether Redis answers and would accept a reservation now (`/healthz`).
--
-- No keys, no arguments. Returns 1.
--
-- The `#!lua` line (a script that may write) makes Redis refuse it when over `maxmemory`,
-- exactly as it refuses reserve.lua and claim.lua: the probe fails with `OOM ...` while a
-- full Redis refuses reservations, where a PING would still answer.
return 1
