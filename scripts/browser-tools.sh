#!/usr/bin/env bash
# Installs what the dashboard's browser test needs and prints where:
# Debian's chromium (apt) and playwright-core, pinned by
# tests/browser/package-lock.json, in the tools cache. Safe to run again:
# each step checks before it acts. Prints the directory holding
# node_modules/playwright-core on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${RUNNEL_TOOLCHAINS:-$HOME/.cache/runnel/toolchains}
say() { echo "browser-tools: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v chromium >/dev/null; then
  say "installing chromium with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "installing nodejs and npm with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null 2>&1 ||
    { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
fi
lock=$(cat tests/browser/package.json tests/browser/package-lock.json | sha256sum | cut -c1-16)
dir=$TOOLS/playwright-$lock
if [ ! -f "$dir/node_modules/playwright-core/package.json" ]; then
  say "installing playwright-core into $dir (npm ci)"
  rm -rf "$dir" && mkdir -p "$dir"
  cp tests/browser/package.json tests/browser/package-lock.json "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
echo "$dir"
