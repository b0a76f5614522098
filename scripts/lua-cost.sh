#!/usr/bin/env bash
# What reserve.lua, claim.lua and settle.lua cost Redis, in instructions counted by callgrind
# (repeatable on a noisy machine, where times are not). Starts a private redis-server under
# valgrind on $LUA_COST_PORT (default 6398), replays a sale against it (scripts/lua_cost.py
# says what), prints one JSON line per run and stops the server.
#
#   bash scripts/lua-cost.sh                      # the scripts of this checkout (built with cargo),
#                                                 # batches settled oldest first
#   bash scripts/lua-cost.sh --order newest       # ... newest first (at the head of processing)
#   bash scripts/lua-cost.sh /tmp/stockq-before   # the scripts another stockq binary runs
#   bash scripts/lua-cost.sh /tmp/old-lua --old-layout   # a lua/ directory of commit 684cb9c
set -euo pipefail
cd "$(dirname "$0")/.."

port="${LUA_COST_PORT:-6398}"
source=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then source="$1"; shift; fi
if [ -z "$source" ]; then
  cargo build --quiet --locked
  source="${CARGO_TARGET_DIR:-target}/debug/stockq"
fi

command -v valgrind >/dev/null || { echo "lua-cost: valgrind is missing (apt-get install -y valgrind)" >&2; exit 1; }
command -v redis-server >/dev/null || bash scripts/services.sh
bash scripts/tools.sh redis-py
python="${STOCKQ_TOOLS_VENV:-$HOME/.cache/stockq/venv}/bin/python"

work="$(mktemp -d)"
valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$work/valgrind.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.2
done
redis-cli -p "$port" ping >/dev/null || { echo "lua-cost: redis-server under valgrind did not start" >&2; cat "$work/valgrind.log" >&2; exit 1; }
"$python" scripts/lua_cost.py "$source" --port "$port" --out "$work/cg" "$@"
