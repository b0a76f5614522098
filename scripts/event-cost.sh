#!/usr/bin/env bash
# What one event costs Redis through the real binary: a private redis-server under callgrind
# (instruction counts repeat to about 1% where times move two- or threefold on a shared
# machine), `stockq produce` reserving N events with a buyer each, then two `stockq worker`
# processes draining them. Prints reserve, drain (claim and settle) and total, in thousands of
# instructions per event, everything Redis did (protocol included).
#
#   bash scripts/event-cost.sh [hot|uniform|spread] [N] [STOCKQ_BINARY]
#     hot: one product; uniform: 100; spread: one product spread over the two buckets of a
#     two-shard queue (both shards on this one server, so that their work is counted
#     together: what two cores would share). N: 20000 by default. The binary:
#     target/release/stockq (built when missing), or another build to compare with.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-hot}"
events="${2:-20000}"
bin="${3:-${CARGO_TARGET_DIR:-target}/release/stockq}"
port="${EVENT_COST_PORT:-6395}"
shards=1
case "$mode" in hot) products=1; hot=(--hot) ;; uniform) products=100; hot=() ;;
  spread) products=1; hot=(--hot); shards=2 ;;
  *) echo "event-cost: the mode is hot, uniform or spread, not $mode" >&2; exit 2 ;; esac
command -v valgrind >/dev/null || { echo "event-cost: valgrind is missing (apt-get install -y valgrind)" >&2; exit 1; }
bash scripts/services.sh >/dev/null
[ -x "$bin" ] || cargo build --release --locked --quiet

work="$(mktemp -d)"
database="stockq_event_cost_$$"
valgrind --tool=callgrind --callgrind-out-file="$work/cg" \
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$work/valgrind.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true
  mariadb -ustockq -pstockq -h127.0.0.1 -e "DROP DATABASE IF EXISTS $database" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 150); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done

export REDIS_URL="redis://127.0.0.1:$port" STOCKQ_QUEUE=event-cost STOCKQ_SHARDS=$shards RUST_LOG=warn
export DATABASE_URL="mysql://stockq:stockq@127.0.0.1:3306/$database"
"$bin" migrate >/dev/null
for p in $(seq 1 "$products"); do "$bin" stock set "$p" 100000000 >/dev/null; done
[ "$mode" = spread ] && "$bin" stock spread 1 2 >/dev/null

# instructions since the last zeroing, then zero again
counted() {
  callgrind_control -d "$server" >/dev/null 2>&1
  sleep 0.5
  awk '/^summary:|^totals:/ { print $2; exit }' "$(ls -t "$work"/cg* | head -1)"
  callgrind_control -z "$server" >/dev/null 2>&1
}
callgrind_control -z "$server" >/dev/null 2>&1
"$bin" produce --events "$events" --products "$products" --buyers 100000 "${hot[@]}" >/dev/null
reserve=$(counted)
"$bin" worker >/dev/null 2>&1 & w1=$!
"$bin" worker >/dev/null 2>&1 & w2=$!
for _ in $(seq 1 2400); do
  left=0
  for q in $( [ "$shards" = 1 ] && echo event-cost || seq -f 'event-cost:%g' 0 $((shards - 1)) ); do
    left=$(( left + $(redis-cli -p "$port" llen "{$q}:pending") + $(redis-cli -p "$port" llen "{$q}:processing") ))
  done
  [ "$left" = 0 ] && break
  sleep 0.5
done
kill -TERM "$w1" "$w2"; wait "$w1" "$w2" 2>/dev/null || true
drain=$(counted)
awk -v m="$mode" -v n="$events" -v r="$reserve" -v d="$drain" 'BEGIN {
  printf "event-cost: mode=%s events=%d reserve=%.1fk drain=%.1fk total=%.1fk instructions per event\n",
    m, n, r / n / 1000, d / n / 1000, (r + d) / n / 1000 }'
