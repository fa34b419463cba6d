#!/usr/bin/env bash
# Builds the example policies written in Python (componentize-py) and JavaScript
# (componentize-js), and the test policies that probe the sandbox, into
# target/policies/*.wasm. Installs both toolchains first, pinned, under target/
# (nothing system-wide), and only when the pinned version is not there yet; rebuilds a
# component only when its source or the WIT contract is newer than it.
#
#   bash scripts/build-policies.sh          # or: make policies
#
# The Rust policies are built by cargo (daemon/policy/build.rs) and need none of this.
set -euo pipefail

log() { printf '\033[1m[policies]\033[0m %s\n' "$*"; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/target/policies"
WIT="policy-sdk/wit-0.1.0"
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0
PY_VENV="$ROOT/target/py/componentize-py"
JS_DIR="$ROOT/target/node/componentize-js"
mkdir -p "$OUT"

# --- toolchains -------------------------------------------------------------------
if ! "$PY_VENV/bin/componentize-py" --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
  log "componentize-py $COMPONENTIZE_PY_VERSION into $PY_VENV"
  python3 -m venv --clear "$PY_VENV"
  "$PY_VENV/bin/pip" install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
if ! command -v npm >/dev/null 2>&1; then
  log "npm is missing: run scripts/setup.sh first (make policies does)"
  exit 1
fi
# The JavaScript toolchain is pinned by scripts/node/package-lock.json; `npm ci`
# reinstalls exactly that whenever the lock changes.
if ! cmp -s "$ROOT/scripts/node/package-lock.json" "$JS_DIR/package-lock.json"; then
  log "componentize-js $COMPONENTIZE_JS_VERSION (scripts/node/package-lock.json) into $JS_DIR"
  rm -rf "$JS_DIR" && mkdir -p "$JS_DIR"
  cp "$ROOT/scripts/node/package.json" "$ROOT/scripts/node/package-lock.json" "$JS_DIR/"
  (cd "$JS_DIR" && npm ci --silent --no-audit --no-fund)
fi

# --- components -------------------------------------------------------------------
# fresh OUT SOURCE...: true when OUT exists and is newer than every SOURCE and the WIT.
fresh() {
  local out="$1"; shift
  [[ -f "$out" ]] || return 1
  [[ -z "$(find "$@" "$ROOT/$WIT" -newer "$out" -print -quit)" ]]
}

# build_py NAME DIR MODULE
build_py() {
  local out="$OUT/$1.wasm"
  if fresh "$out" "$ROOT/$2"; then return; fi
  log "$1: componentize-py ($2)"
  (cd "$ROOT" && "$PY_VENV/bin/componentize-py" -d "$WIT" -w policy componentize \
     -p "$2" "$3" -o "$out.tmp" >/dev/null)
  mv "$out.tmp" "$out"
}

# build_js NAME FILE
build_js() {
  local out="$OUT/$1.wasm"
  if fresh "$out" "$ROOT/$2"; then return; fi
  log "$1: componentize-js ($2)"
  # No wasi:http (fetch): remapd refuses components that import it.
  (cd "$ROOT" && "$JS_DIR/node_modules/.bin/componentize-js" "$2" -w "$WIT" -n policy \
     -d http fetch-event -o "$out.tmp" >/dev/null)
  mv "$out.tmp" "$out"
}

build_py split-py policies/split-py app
build_js split-js policies/split-js/split.js
build_py snoop-py tests/policies/snoop-py app
build_js snoop-js tests/policies/snoop-js/snoop.js

for f in "$OUT"/*.wasm; do
  log "$(basename "$f"): $(stat -c %s "$f") bytes, sha256 $(sha256sum "$f" | cut -c1-16)…"
done
