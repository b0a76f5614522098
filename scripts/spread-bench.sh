#!/usr/bin/env bash
# One hot product's reservations per second spread over 2 buckets against 1 bucket, on a
# private two-master Redis Cluster (two redis-server processes, no replicas), alternated in
# one session so that the machine's drift falls on both alike; then one sale to the last
# unit over 2 buckets with a janitor running, counting the transfers between buckets.
#
#   bash scripts/spread-bench.sh [ROUNDS] [EVENTS] [IN_FLIGHT] [STOCKQ_BINARY]
#     ROUNDS: 3, EVENTS: 200000 a run, IN_FLIGHT: 256; the binary: target/release/stockq
#     (built when missing).
#
# Prints one line per run (`buckets=K rate=... p50=... p99=...`), then the sell-out's
# reserved, refused, transfers and transfers per 1,000 reservations, and the units left.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-3}"
events="${2:-200000}"
in_flight="${3:-256}"
bin="${4:-${CARGO_TARGET_DIR:-target}/release/stockq}"
base="${SPREAD_BENCH_PORT:-7460}"
bash scripts/services.sh >/dev/null
[ -x "$bin" ] || cargo build --release --locked --quiet

work="$(mktemp -d)"
databases=()
cleanup() {
  for p in "$base" $((base + 1)); do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  for d in "${databases[@]}"; do
    mariadb -ustockq -pstockq -h127.0.0.1 -e "DROP DATABASE IF EXISTS $d" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
for p in "$base" $((base + 1)); do
  mkdir -p "$work/$p"
  redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "nodes-$p.conf" \
    --dir "$work/$p" --save '' --appendonly no --maxmemory-policy noeviction \
    --daemonize yes --logfile "$work/$p/redis.log"
  for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
# `redis-cli --cluster create` wants three masters: two are joined and given half the slots
# each, split on the slot's bit 12. Names that differ in their last digit ({q:0}, {q:1}) have
# slots that differ by CRC16's polynomial, 0x1021, so a queue's two shards always differ in
# that bit: they land on different masters whatever the queue's name.
redis-cli -p "$base" cluster addslotsrange 0 4095 8192 12287 >/dev/null
redis-cli -p $((base + 1)) cluster addslotsrange 4096 8191 12288 16383 >/dev/null
redis-cli -p "$base" cluster meet 127.0.0.1 $((base + 1)) >/dev/null
for _ in $(seq 1 100); do
  redis-cli -p "$base" cluster info | grep -q cluster_state:ok \
    && redis-cli -p $((base + 1)) cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done
export REDIS_URL="redis://127.0.0.1:$base,redis://127.0.0.1:$((base + 1))" STOCKQ_SHARDS=2 RUST_LOG=warn

# a queue name whose two shards are on different masters (see above)
queue_for() {
  local name="sb$1" a b
  a=$(redis-cli -p "$base" cluster keyslot "{$name:0}:x")
  b=$(redis-cli -p "$base" cluster keyslot "{$name:1}:x")
  if [ $((a & 4096)) = $((b & 4096)) ]; then echo "spread-bench: $name's shards share a master" >&2; exit 1; fi
  echo "$name"
}

# a fresh queue and database with product 1 stocked, spread over $2 buckets
prepare() {
  local run=$1 buckets=$2 stock=$3
  export STOCKQ_QUEUE
  STOCKQ_QUEUE=$(queue_for "$run")
  local database="stockq_spread_bench_${$}_$run"
  databases+=("$database")
  export DATABASE_URL="mysql://stockq:stockq@127.0.0.1:3306/$database"
  "$bin" migrate >/dev/null
  "$bin" stock set 1 "$stock" >/dev/null
  if [ "$buckets" -gt 1 ]; then "$bin" stock spread 1 "$buckets" >/dev/null; fi
}

run=0
for round in $(seq 1 "$rounds"); do
  for buckets in 1 2; do
    run=$((run + 1))
    prepare "$run" "$buckets" 100000000
    "$bin" produce --events "$events" --hot --buyers 100000 --in-flight "$in_flight" --json >"$work/out.json"
    python3 - "$round" "$buckets" "$work/out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[3]))
lat = r["latency"]
answered = r["reserved"] + r["sold_out"] + r["limited"] + r["unknown_product"] + r["healing"]
print(f"round={sys.argv[1]} buckets={sys.argv[2]} rate={answered / r['elapsed']:.0f}/s "
      f"p50={lat['p50_us']}us p99={lat['p99_us']}us")
PY
    # the next run starts on empty servers
    for p in "$base" $((base + 1)); do redis-cli -p "$p" flushall >/dev/null; done
  done
done

# to the last unit: demand 10% above the stock, over 2 buckets, the janitor moving units ahead
run=$((run + 1))
stock=$((events / 2))
prepare "$run" 2 "$stock"
"$bin" janitor >/dev/null 2>&1 &
janitor=$!
"$bin" produce --events $((stock * 11 / 10)) --hot --buyers 100000 --in-flight "$in_flight" --json >"$work/out.json"
kill -TERM "$janitor"; wait "$janitor" 2>/dev/null || true
transfers=0
left=0
for s in 0 1; do
  key="{$STOCKQ_QUEUE:$s}"
  transfers=$((transfers + $(redis-cli -c -p "$base" hlen "$key:received")))
  left=$((left + $(redis-cli -c -p "$base" get "$key:stock:1")))
done
python3 - "$work/out.json" "$transfers" "$left" "$stock" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
transfers, left, stock = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
reserved = r["reserved"]
print(f"sell-out: stock={stock} reserved={reserved} sold_out={r['sold_out']} "
      f"transfers={transfers} per_1000={1000 * transfers / max(reserved, 1):.2f} units_left={left}")
PY
