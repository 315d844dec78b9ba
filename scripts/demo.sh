#!/usr/bin/env bash
# The demo: builds the host and the plugins, then runs the order pipeline of
# examples/orders on the in-memory backend and prints a summary per plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-plugins.sh
cargo build --release -p runnel --bin runnel --example price_service
bin="${CARGO_TARGET_DIR:-target}/release"
# The price service the order enricher asks over HTTP (its only grant).
"$bin/examples/price_service" 127.0.0.1:18471 examples/orders/prices.json &
prices=$!
trap 'kill $prices 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/18471) 2>/dev/null && break
  sleep 0.1
done
RUNNEL_LOG="${RUNNEL_LOG:-info}" "$bin/runnel" run \
  --config examples/orders/runnel.toml \
  --input examples/orders/events.ndjson \
  --exit-when-idle
