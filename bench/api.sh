#!/usr/bin/env bash
# API latency and throughput under concurrent load: wrk against a real remapd on the
# loopback of its own network namespace, for a peering status GET and an (idempotent)
# peering PUT. Prints Markdown. Needs root, wrk, a release build of remapd.
set -euo pipefail
cd "$(dirname "$0")/.."
REMAPD=${REMAPD:-$PWD/target/release/remapd}
NS=rmb-api
DIR=/tmp/rmb-api
DUR=${API_DUR:-5}
cleanup() {
  [[ -f $DIR/pid ]] && kill "$(cat "$DIR/pid")" 2>/dev/null || true
  for p in "$DIR"/run/*.pid; do [[ -f $p ]] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
  ip netns del $NS 2>/dev/null || true
  rm -rf "$DIR" /sys/fs/bpf/rmb-api /var/run/wireguard/rmd-bench.sock
}
trap cleanup EXIT
cleanup
mkdir -p "$DIR"
ip netns add $NS
ip -n $NS link set lo up
(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$DIR/token")
TOKEN=$(cat "$DIR/token")
nsenter --net=/run/netns/$NS "$REMAPD" --state-dir "$DIR/state" --pin-dir /sys/fs/bpf/rmb-api \
  --run-dir "$DIR/run" --token-file "$DIR/token" --log warn >"$DIR/log" 2>&1 &
echo $! >"$DIR/pid"
in_ns() { nsenter --net=/run/netns/$NS "$@"; }
for _ in $(seq 100); do in_ns curl -sf http://127.0.0.1:7878/healthz >/dev/null && break; sleep 0.1; done
H=(-H "Authorization: Bearer $TOKEN" -H 'content-type: application/json')
in_ns curl -sf -X PUT "${H[@]}" http://127.0.0.1:7878/v1/cluster \
  -d '{"name": "hub", "pod_cidrs": ["40.0.0.0/24"], "remap_pool": ["30.0.0.0/16"]}' >/dev/null
BODY='{"remote": {"name": "spoke", "pod_cidrs": ["40.0.0.0/24"], "capabilities": {"nat_dataplane": true}}, "tunnel": {"listen_port": 51820}}'
in_ns curl -sf -X PUT "${H[@]}" http://127.0.0.1:7878/v1/peerings/bench -d "$BODY" >/dev/null
cat >"$DIR/put.lua" <<LUA
wrk.method = "PUT"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
run() { # label connections wrk-args...
  local label=$1 conns=$2; shift 2
  local out
  out=$(in_ns taskset -c 1 wrk -t1 -c"$conns" -d"${DUR}s" --latency "$@" 2>&1)
  local p50 p99 rps non2xx
  p50=$(awk '/^ +50%/ {print $2}' <<<"$out")
  p99=$(awk '/^ +99%/ {print $2}' <<<"$out")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  echo "| $label | ${rps} | ${p50} | ${p99} | ${non2xx:-0} |"
}
echo "| request (1 wrk thread on CPU 1) | connections | requests/s | p50 | p99 | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|"
run "GET /v1/peerings/bench (status: decision, plan, counters, tunnel) | 8" 8 http://127.0.0.1:7878/v1/peerings/bench
run "PUT /v1/peerings/bench (validate, dry-run decide, fsync'd save, reconcile: rules in the kernel on return) | 1" 1 -s "$DIR/put.lua" http://127.0.0.1:7878/v1/peerings/bench
run "PUT /v1/peerings/bench, concurrent | 8" 8 -s "$DIR/put.lua" http://127.0.0.1:7878/v1/peerings/bench
run "GET /healthz | 8" 8 http://127.0.0.1:7878/healthz
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$DIR/pid")/status")
echo
echo "wrk ran ${DUR} s per row against a release remapd with one peering (its userspace WireGuard running). Daemon RSS afterwards: $((RSS / 1024)) MiB."
