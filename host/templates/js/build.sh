#!/usr/bin/env bash
# Builds {{name}}.wasm with componentize-js (needs Node.js >= 20.19 and npm).
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules ] || npm install --no-audit --no-fund
npm run --silent build
echo "built {{name}}.wasm"
