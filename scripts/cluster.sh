#!/usr/bin/env bash
# A local six-node Redis Cluster (three masters, three replicas) on loopback, for trying
# stockq against a cluster and for its cluster tests.
#
#   scripts/cluster.sh start [BASE_PORT]   nodes on BASE_PORT..BASE_PORT+5 (default 7000);
#                                          prints the REDIS_URL that names them
#   scripts/cluster.sh stop  [BASE_PORT]
#
# Node files live in ${TMPDIR:-/tmp}/stockq-cluster-BASE_PORT; nothing is persisted.
set -euo pipefail
cmd=${1:-start}
base=${2:-7000}
dir="${TMPDIR:-/tmp}/stockq-cluster-$base"
ports=$(seq "$base" $((base + 5)))

case "$cmd" in
  start)
    mkdir -p "$dir"
    for p in $ports; do
      mkdir -p "$dir/$p"
      redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "nodes-$p.conf" --cluster-node-timeout 2000 \
        --dir "$dir/$p" --save "" --appendonly no --maxmemory-policy noeviction \
        --daemonize yes --logfile "$dir/$p/redis.log"
    done
    for p in $ports; do
      for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    nodes=$(for p in $ports; do printf '127.0.0.1:%s ' "$p"; done)
    # shellcheck disable=SC2086
    redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1
    # ready when the cluster is ok and every node sees the three replicas
    for _ in $(seq 1 200); do
      ready=yes
      for p in $ports; do
        redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ready=no
        [ "$(redis-cli -p "$p" cluster nodes 2>/dev/null | grep -c slave)" = 3 ] || ready=no
      done
      [ $ready = yes ] && break
      sleep 0.1
    done
    echo "$(for p in $ports; do printf 'redis://127.0.0.1:%s,' "$p"; done)" | sed 's/,$//'
    ;;
  stop)
    for p in $ports; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
    rm -rf "$dir"
    ;;
  *)
    echo "usage: scripts/cluster.sh start|stop [BASE_PORT]" >&2; exit 2 ;;
esac
