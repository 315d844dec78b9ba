#!/usr/bin/env bash
# Every check and test, as CI runs them: formatting, lints (host and
# plugins), the guest plugins of every language, then all unit and
# end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The library's docs: every intra-doc link resolves.
RUSTDOCFLAGS="-D warnings" cargo doc -p runnel --no-deps --quiet
scripts/build-plugins.sh
# Python, JavaScript and C guests for the conformance test (installs their
# pinned toolchains on first use).
scripts/build-guests.sh
env -u CARGO_TARGET_DIR cargo clippy --manifest-path plugins/Cargo.toml \
  --target wasm32-wasip2 --target-dir plugins/target -- -D warnings
cargo test --workspace
