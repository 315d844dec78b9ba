#!/usr/bin/env bash
# Builds every example and test plugin into plugins/target/wasm32-wasip2/release.
set -euo pipefail
cd "$(dirname "$0")/.."
env -u CARGO_TARGET_DIR cargo build --release --target wasm32-wasip2 \
  --manifest-path plugins/Cargo.toml --target-dir plugins/target
