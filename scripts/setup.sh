#!/usr/bin/env bash
# Installs everything remapd's build, tests, demo and benchmarks need on a fresh
# Debian machine with rustup. Idempotent: every step checks before it installs.
set -euo pipefail

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

APT_PACKAGES=(iproute2 nftables iptables iperf3 wireguard-go wireguard-tools tcpdump
              socat curl jq python3 python3-venv wrk procps psmisc iputils-ping traceroute util-linux gcc libc6-dev openssl
              chromium)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
# Node.js and npm build the JavaScript policies (scripts/build-policies.sh). Images that
# ship Node.js from elsewhere (e.g. NodeSource, npm included) keep theirs.
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

for c in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$c"; then
    log "rustup component add $c"
    rustup component add "$c"
  fi
done
if ! rustup toolchain list | grep -q '^nightly'; then
  log "rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi
for t in wasm32-unknown-unknown; do
  if ! rustup target list --installed | grep -q "^$t\$"; then
    log "rustup target add $t"
    rustup target add "$t"
  fi
done

if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q '0\.10\.0'; then
  log "cargo install bpf-linker@0.10.0"
  cargo install bpf-linker@0.10.0 --locked
fi

# Schemathesis for the API contract test, in a venv of its own under target/ (so no
# system Python is touched).
SCHEMATHESIS_VERSION=4.32.5
ST_VENV="$(cd "$(dirname "$0")/.." && pwd)/target/py/schemathesis"
if ! "$ST_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "schemathesis $SCHEMATHESIS_VERSION into $ST_VENV"
  # --clear: a venv that moved or broke is made again, not patched.
  python3 -m venv --clear "$ST_VENV"
  "$ST_VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# playwright-core for the /ui browser test (it drives the chromium above; it downloads
# no browser of its own), pinned by tests/ui/package-lock.json.
UI_DIR="$(cd "$(dirname "$0")/.." && pwd)/target/node/ui"
UI_SRC="$(cd "$(dirname "$0")/.." && pwd)/tests/ui"
if ! cmp -s "$UI_SRC/package-lock.json" "$UI_DIR/package-lock.json" || [[ ! -d $UI_DIR/node_modules ]]; then
  log "playwright-core (tests/ui/package-lock.json) into $UI_DIR"
  rm -rf "$UI_DIR"
  mkdir -p "$UI_DIR"
  cp "$UI_SRC/package.json" "$UI_SRC/package-lock.json" "$UI_DIR/"
  (cd "$UI_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)
fi

# bpffs for pinned maps and links.
if ! mountpoint -q /sys/fs/bpf; then
  log "mount bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
log "ready"
