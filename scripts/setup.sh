#!/usr/bin/env bash
# Installs what building and testing Runnel needs on a fresh machine.
# Safe to run again: every step checks before it acts.
set -euo pipefail

# Guests are built for WebAssembly components. (Never `rustup update`: it
# would replace the toolchain under running builds.)
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

# Redis on 127.0.0.1:6379 for the Redis backend's tests: start it if it does
# not answer (the command the machine itself uses).
if command -v redis-cli >/dev/null && command -v redis-server >/dev/null; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 50); do
      redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
fi
