#!/usr/bin/env bash
# The consistency check against a backlog: how long `stockq check` takes, the longest single
# Redis call while it runs (SLOWLOG), and the worst latency of reservations made meanwhile.
#
#   scripts/bench-check.sh [products] [backlog...]      (default: 100000 products; 0 1000000 10000000)
#
# Fills {benchcheck}:pending with a backlog that keeps the books exact (each entry reserved
# as reserve.lua would: stock taken, in-flight counted), runs the check three times while
# `stockq produce` reserves at a steady 2,000/s, and prints one line per backlog. Uses its own
# queue ({benchcheck}) and database (stockq_benchcheck); needs a release build and ~1.5 GB of
# Redis memory per 10 M entries. Nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/stockq
[ -x "$B" ] || cargo build --release --locked --quiet
P=${1:-100000}; shift || true
BACKLOGS=("${@:-0 1000000 10000000}")
export STOCKQ_QUEUE=benchcheck DATABASE_URL=mysql://stockq:stockq@127.0.0.1:3306/stockq_benchcheck RUST_LOG=warn
q='{benchcheck}'
SQL() { mariadb -ustockq -pstockq -h127.0.0.1 stockq_benchcheck -N -e "$1"; }
STOCK=1000000000

reset() {
  redis-cli --scan --pattern "$q:*" | xargs -r -n 1000 redis-cli del >/dev/null
  SQL 'DELETE FROM stock_log; DELETE FROM stock_adjustments; DELETE FROM products'
  SQL "INSERT INTO products (id, stock) SELECT seq, $STOCK FROM seq_1_to_$P"
  # stock keys in slices, as `stock set` would leave them
  for ((lo = 1; lo <= P; lo += 50000)); do
    redis-cli eval "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', '$q:stock:' .. i, ARGV[3]) end" 0 \
      "$lo" "$((lo + 49999 < P ? lo + 49999 : P))" "$STOCK" >/dev/null
  done
}

# n entries spread over the products, in slices of 200k (setup only: these calls do stall Redis)
fill() {
  local n=$1 done=0 k
  while ((done < n)); do
    k=$((n - done < 200000 ? n - done : 200000))
    redis-cli eval "
      local seq = redis.call('INCRBY', KEYS[2], ARGV[2])
      for i = 1, tonumber(ARGV[2]) do
        local id = tonumber(ARGV[1]) + i
        local p = id % tonumber(ARGV[3]) + 1
        redis.call('LPUSH', KEYS[1], '{\"event_id\":\"b' .. id .. '\",\"product_id\":' .. p .. ',\"qty\":1,\"seq\":' .. (seq - tonumber(ARGV[2]) + i) .. '}')
        redis.call('DECRBY', '$q:stock:' .. p, 1)
        redis.call('HINCRBY', KEYS[3], p, 1)
      end" 3 "$q:pending" "$q:seq" "$q:inflight" "$done" "$k" "$P" >/dev/null
    done=$((done + k))
  done
}

$B migrate >/dev/null
redis-cli config set slowlog-log-slower-than 1000 >/dev/null
redis-cli config set slowlog-max-len 10000 >/dev/null
for n in ${BACKLOGS[@]}; do
  reset
  fill "$n"
  redis-cli slowlog reset >/dev/null
  $B produce --events 20000 --rate 2000 --products "$P" --in-flight 1 --json > /tmp/bench-check-produce.json &
  PRODUCE=$!
  sleep 1
  took=()
  for _ in 1 2 3; do
    t0=$(date +%s%N)
    $B check --json > /tmp/bench-check.json || { echo "check exited $?: $(head -c 300 /tmp/bench-check.json)"; exit 1; }
    took+=("$(( ($(date +%s%N) - t0) / 1000000 ))")
  done
  wait $PRODUCE
  stall=$(redis-cli --json slowlog get 10000 | python3 -c 'import json, sys; print(max([e[2] for e in json.load(sys.stdin)] or [0]))')
  max_us=$(python3 -c 'import json; print(json.load(open("/tmp/bench-check-produce.json"))["latency"]["max_us"])')
  consistent=$(python3 -c 'import json; print(json.load(open("/tmp/bench-check.json"))["consistent"])')
  echo "products $P, backlog $n: check ${took[*]} ms (consistent: $consistent); longest Redis call ${stall} us; reservation max latency ${max_us} us"
done
redis-cli config set slowlog-log-slower-than 10000 >/dev/null
