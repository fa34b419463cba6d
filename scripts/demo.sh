#!/usr/bin/env bash
# The two-cluster demo (see README). Builds, runs, and removes every namespace, tunnel
# process and bpffs pin it made — also on Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback
export REMAPD_NS_PREFIX=rmdmo
cleanup() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${REMAPD_NS_PREFIX}" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
  pkill -f "wireguard-go -f ${REMAPD_NS_PREFIX}" 2>/dev/null || true
  rm -f /var/run/wireguard/${REMAPD_NS_PREFIX}*.sock
  rm -rf /sys/fs/bpf/${REMAPD_NS_PREFIX}* /tmp/${REMAPD_NS_PREFIX}*
}
trap cleanup EXIT INT TERM
cleanup
echo "== building remapd (eBPF programs included)"
cargo build --release -p remapd-tests --bin demo 2>&1 | grep -E '^(error|warning: unused)' || true
target/release/demo
