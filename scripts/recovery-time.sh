#!/usr/bin/env bash
# Measures how long a SIGKILLed worker's events take to be applied by another worker:
# a worker claims 100 events and is held (a MySQL row lock blocks its batch), it is killed
# with SIGKILL, and the clock runs until a second worker has applied all 100.
#
#   scripts/recovery-time.sh [visibility-timeout]   (default: stockq's default, 10s)
#
# Uses its own queue ({recovery}) and database (stockq_recovery); needs a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/stockq
[ -x "$B" ] || cargo build --release --locked --quiet
export STOCKQ_QUEUE=recovery DATABASE_URL=mysql://stockq:stockq@127.0.0.1:3306/stockq_recovery RUST_LOG=warn
[ $# -gt 0 ] && export STOCKQ_VISIBILITY_TIMEOUT=$1
q='{recovery}'
redis-cli --scan --pattern "$q:*" | xargs -r redis-cli del >/dev/null
$B migrate >/dev/null
mariadb -ustockq -pstockq -h127.0.0.1 stockq_recovery -e 'DELETE FROM stock_log; DELETE FROM products; DELETE FROM stock_adjustments'
$B stock set 1 1000000 >/dev/null
$B produce --events 100 --hot --json >/dev/null

# hold product 1 so the first worker's batch cannot commit
mariadb -ustockq -pstockq -h127.0.0.1 stockq_recovery -e 'BEGIN; SELECT * FROM products WHERE id = 1 FOR UPDATE; SELECT SLEEP(600)' >/dev/null 2>&1 &
LOCK=$!
sleep 0.5
$B janitor 2>/dev/null & JANITOR=$!
$B worker 2>/dev/null & VICTIM=$!
until [ "$(redis-cli llen "$q:processing")" = 100 ]; do sleep 0.01; done
kill -KILL $VICTIM
t0=$(date +%s.%N)
kill $LOCK 2>/dev/null || true
mariadb -uroot -e "SELECT GROUP_CONCAT(id) FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP(600)%'" -N | tr ',' '\n' | xargs -r -I{} mariadb -uroot -e 'KILL {}' 2>/dev/null || true
$B worker 2>/dev/null & RESCUER=$!
until [ "$(mariadb -ustockq -pstockq -h127.0.0.1 stockq_recovery -N -e 'SELECT COUNT(*) FROM stock_log')" = 100 ] \
   && [ "$(redis-cli llen "$q:processing")" = 0 ]; do sleep 0.01; done
t1=$(date +%s.%N)
kill -TERM $RESCUER $JANITOR; wait $RESCUER $JANITOR 2>/dev/null || true
echo "visibility timeout ${STOCKQ_VISIBILITY_TIMEOUT:-10s}: the killed worker's 100 events were applied $(echo "$t1 - $t0" | bc) s after the SIGKILL"
$B check
