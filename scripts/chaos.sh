#!/usr/bin/env bash
# The seeded fault campaign: three runnel hosts in one group on a private
# Redis (loopback, its own port, an append-only file), a producer, and
# faults from a seeded schedule for SECONDS; then a checker prints one
# table. Exits 1 if anything was lost or left pending.
#   scripts/chaos.sh SECONDS [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: scripts/chaos.sh SECONDS [SEED]" >&2
  exit 2
fi
cargo build -p runnel-tests --bins
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/debug/chaos" "$@"
