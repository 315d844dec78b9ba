#!/usr/bin/env bash
# Every check and test, as CI runs them: formatting, lints (host and
# plugins), then all unit and end-to-end tests (which build the plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/build-plugins.sh
env -u CARGO_TARGET_DIR cargo clippy --manifest-path plugins/Cargo.toml \
  --target wasm32-wasip2 --target-dir plugins/target -- -D warnings
cargo test --workspace
