#!/usr/bin/env bash
# Builds {{name}}.wasm with componentize-js (needs Node.js >= 20.19 and npm).
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules ] || npm install --no-audit --no-fund
# A plugin that sends HTTP requests (imports http.js) needs componentize-js's
# `http` feature (wasi:http); every other one imports no WASI at all.
if grep -q 'http\.js' app.js; then
  npm run --silent build-http
else
  npm run --silent build
fi
echo "built {{name}}.wasm"
