#!/usr/bin/env bash
# Slow and idle clients (issue 11): a release remapd in its own network namespace,
# /healthz latency with 2,000 idle and 2,000 1-byte/s connections held open, next to
# none held, and when the server closes them. Prints Markdown. Needs root and a release
# build of remapd (cargo build --release -p remapd).
set -euo pipefail
cd "$(dirname "$0")/.."
REMAPD=${REMAPD:-$PWD/target/release/remapd}
NS=rmb-slow
DIR=/tmp/rmb-slow
N=${SLOW_N:-2000}
cleanup() {
  [[ -f $DIR/pid ]] && kill "$(cat "$DIR/pid")" 2>/dev/null || true
  ip netns del $NS 2>/dev/null || true
  rm -rf "$DIR" /sys/fs/bpf/rmb-slow
}
trap cleanup EXIT
cleanup
mkdir -p "$DIR"
ip netns add $NS
ip -n $NS link set lo up
in_ns() { nsenter --net=/run/netns/$NS "$@"; }
nsenter --net=/run/netns/$NS "$REMAPD" --state-dir "$DIR/state" --pin-dir /sys/fs/bpf/rmb-slow \
  --run-dir "$DIR/run" --log warn >"$DIR/log" 2>&1 &
echo $! >"$DIR/pid"
for _ in $(seq 600); do in_ns curl -sf http://127.0.0.1:7878/healthz >/dev/null && break; sleep 0.1; done
in_ns python3 bench/slow_clients.py 127.0.0.1:7878 "$N" "${SLOW_OVER:-4500}"
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$DIR/pid")/status")
echo
echo "Against a release remapd with the default [api] limits (header_timeout_ms = 10000, max_connections = 4096; the soft open-files limit raised to $(awk '/Max open files/ {print $5}' "/proc/$(cat "$DIR/pid")/limits")). Daemon RSS afterwards: $((RSS / 1024)) MiB."
