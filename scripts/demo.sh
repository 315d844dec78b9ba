#!/usr/bin/env bash
# The demo: builds the host and the plugins, then runs the order pipeline of
# examples/orders on the in-memory backend and prints a summary per plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-plugins.sh
cargo build --release -p runnel
RUNNEL_LOG="${RUNNEL_LOG:-info}" "${CARGO_TARGET_DIR:-target}/release/runnel" run \
  --config examples/orders/runnel.toml \
  --input examples/orders/events.ndjson \
  --exit-when-idle
