#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback, for trying Runnel on a cluster and
# for `runnel bench --redis-cluster`: three masters on ports 7100-7102 (bus
# ports 17100-17102), no replicas, no persistence, files in /tmp.
#
#   scripts/local-cluster.sh start   # prints the seeds for --redis-cluster
#   scripts/local-cluster.sh stop
#
# (The tests start clusters of their own: tests/src/redis_cluster.rs.)
set -euo pipefail
dir=/tmp/runnel-local-cluster
ports=(7100 7101 7102)
case "${1:-}" in
  start)
    mkdir -p "$dir"
    for port in "${ports[@]}"; do
      redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 2000 \
        --save "" --appendonly no --dir "$dir" --daemonize yes \
        --logfile "$dir/$port.log" --pidfile "$dir/$port.pid"
    done
    for port in "${ports[@]}"; do
      until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
    done
    redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 \
      --cluster-yes >/dev/null
    for port in "${ports[@]}"; do
      until redis-cli -p "$port" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
    done
    seeds=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}")
    echo "${seeds%,}"
    ;;
  stop)
    for port in "${ports[@]}"; do
      redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
