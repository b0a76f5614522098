#!/usr/bin/env bash
# The cost of the lifecycle of a reservation (docs/lifecycle.md):
#
#   1. reservations/s and latency through `stockq produce`: plain, with --buyers (every
#      product under a per-buyer limit), and with --hold, alternating so each sees the same
#      machine, three rounds;
#   2. expiring a million holds: the janitor's pass, its longest single Redis call (SLOWLOG)
#      and the worst latency of reservations made meanwhile at 2,000/s;
#   3. cancels/s of queued reservations while a million events wait in the queue, and how
#      fast a worker then drops the cancelled entries (no MySQL deduction each).
#
#   scripts/bench-lifecycle.sh [events] [holds] [backlog]     (default 200000 1000000 1000000)
#   PARTS=2 scripts/bench-lifecycle.sh ...                     (only some of the parts)
#
# Uses its own queue ({benchlife}) and database (stockq_benchlife); needs a release build and
# about 1 GB of Redis memory. Nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/stockq
[ -x "$B" ] || cargo build --release --locked --quiet
EVENTS=${1:-200000}; HOLDS=${2:-1000000}; BACKLOG=${3:-1000000}
export STOCKQ_QUEUE=benchlife DATABASE_URL=mysql://stockq:stockq@127.0.0.1:3306/stockq_benchlife RUST_LOG=warn
q='{benchlife}'
P=100
STOCK=1000000000

reset() {
  redis-cli --scan --pattern "$q:*" | xargs -r -n 1000 redis-cli unlink >/dev/null
  mariadb -ustockq -pstockq -h127.0.0.1 stockq_benchlife -e 'DELETE FROM stock_log; DELETE FROM stock_adjustments; DELETE FROM products'
  for ((p = 1; p <= P; p++)); do $B stock set "$p" "$STOCK" >/dev/null; done
}
# field FILE a.b.c: a number from a JSON report, integers without decimals
field() { python3 -c "import json, sys; d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split('.'): d = d[k]
print(int(d) if isinstance(d, float) else d)" "$1" "$2"; }

$B migrate >/dev/null
PARTS=${PARTS:-123}
if [[ $PARTS == *1* ]]; then
echo "## 1. reservations: plain, with buyers under a limit, held ($EVENTS each, $P products)"
reset
limits() { for ((p = 1; p <= P; p++)); do $B stock limit "$p" "$1" >/dev/null; done; }
for round in 1 2 3; do
  for mode in plain buyers hold; do
    case $mode in
      plain) args=() ;;
      buyers) args=(--buyers 100000) ;;
      hold) args=(--hold 30m) ;;
    esac
    # every product under a limit only while buyers reserve (a limited product needs one)
    [ "$mode" = buyers ] && limits 1000000
    $B produce --events "$EVENTS" --products $P "${args[@]}" --json > /tmp/bench-life.json
    [ "$mode" = buyers ] && limits 0
    echo "round $round $mode: $(field /tmp/bench-life.json per_second) reservations/s, p50 $(field /tmp/bench-life.json latency.p50_us) us, p99 $(field /tmp/bench-life.json latency.p99_us) us, max $(field /tmp/bench-life.json latency.max_us) us (limited $(field /tmp/bench-life.json limited))"
  done
done

fi

if [[ $PARTS == *2* ]]; then
echo "## 2. expiring $HOLDS holds"
reset
t0=$(date +%s)
$B produce --events "$HOLDS" --products $P --hold 60s --in-flight 64 --json > /tmp/bench-life.json
made=$(( $(date +%s) - t0 ))
echo "made $HOLDS holds in ${made}s; waiting for their deadlines"
sleep $(( 62 - made > 0 ? 62 - made : 1 ))
redis-cli config set slowlog-log-slower-than 1000 >/dev/null
redis-cli config set slowlog-max-len 10000 >/dev/null
redis-cli slowlog reset >/dev/null
$B produce --events 20000 --rate 2000 --products $P --in-flight 1 --json > /tmp/bench-life-probe.json &
PROBE=$!
sleep 1
t0=$(date +%s%N)
STOCKQ_CHECK_INTERVAL=1h timeout 600 $B janitor --once >/dev/null 2>&1 || true
took=$(( ($(date +%s%N) - t0) / 1000000 ))
wait $PROBE
left=$(redis-cli zcard "$q:holds")
# the longest call stockq made (other clients' KEYS, say, are not its doing)
stall=$(redis-cli --json slowlog get 10000 | python3 -c 'import json, sys; print(max([e[2] for e in json.load(sys.stdin) if e[3][0].lower() == "evalsha"] or [0]))')
echo "janitor --once expired $((HOLDS - left)) holds (left $left) in ${took} ms: $(( (HOLDS - left) * 1000 / (took > 0 ? took : 1) )) holds/s; longest Redis call ${stall} us; reservations meanwhile: p99 $(field /tmp/bench-life-probe.json latency.p99_us) us, max $(field /tmp/bench-life-probe.json latency.max_us) us"
redis-cli config set slowlog-log-slower-than 10000 >/dev/null
$B check >/dev/null && echo "check: consistent after the expiry"

fi

if [[ $PARTS == *3* ]]; then
echo "## 3. cancels against a backlog of $BACKLOG"
reset
$B produce --events "$BACKLOG" --products $P --in-flight 64 --json > /dev/null
$B produce --events 100000 --products $P --cancel 100000 --json > /tmp/bench-life.json
echo "backlog $(redis-cli llen "$q:pending"): cancelled $(field /tmp/bench-life.json cancels.cancelled) at $(field /tmp/bench-life.json cancels.per_second) cancels/s, p50 $(field /tmp/bench-life.json cancels.latency.p50_us) us, p99 $(field /tmp/bench-life.json cancels.latency.p99_us) us"
t0=$(date +%s%N)
$B worker --batch 500 >/dev/null 2>&1 &
W=$!
while [ "$(redis-cli llen "$q:pending")" != 0 ] || [ "$(redis-cli llen "$q:processing")" != 0 ]; do sleep 0.2; done
took=$(( ($(date +%s%N) - t0) / 1000000 ))
kill -TERM $W; wait $W || true
rows=$(mariadb -ustockq -pstockq -h127.0.0.1 stockq_benchlife -N -e 'SELECT COUNT(*) FROM stock_log')
echo "one worker drained $((BACKLOG + 100000)) entries (100000 cancelled) in ${took} ms; stock_log rows: $rows (the cancelled ones cost none)"
$B check >/dev/null && echo "check: consistent after the drain"
fi
