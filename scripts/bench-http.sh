#!/usr/bin/env bash
# Reservation throughput and latency over HTTP: `stockq serve` under wrk (Debian's package),
# on its own queue ({bench-http}) and database (stockq_bench_http, recreated), 100 products
# (HOT=1: all requests on product 1).
#
#   scripts/bench-http.sh [seconds] [connections]     (default 10 s, 64 connections)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; conns=${2:-64}; port=${PORT:-18080}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; }
B=target/release/stockq
[ -x "$B" ] || cargo build --release --locked --quiet
export STOCKQ_QUEUE=bench-http DATABASE_URL=mysql://stockq:stockq@127.0.0.1:3306/stockq_bench_http RUST_LOG=warn
# wrk's connections all come from 127.0.0.1, as from one proxy
export STOCKQ_MAX_CONNECTIONS_PER_ADDRESS=1024
clean() { redis-cli --scan --pattern "{bench-http}:*" | xargs -r redis-cli del >/dev/null; }
clean
mariadb -ustockq -pstockq -h127.0.0.1 -e 'DROP DATABASE IF EXISTS stockq_bench_http'
$B migrate >/dev/null
for p in $(seq 1 100); do $B stock set "$p" 1000000000 >/dev/null; done
PORT=$port $B serve & server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; clean' EXIT
for _ in $(seq 1 50); do curl -sf "localhost:$port/healthz" >/dev/null && break; sleep 0.1; done
wrk -t2 -c"$conns" -d"${secs}s" --latency -s scripts/wrk-reserve.lua "http://127.0.0.1:$port" | sed -n '1,20p'
