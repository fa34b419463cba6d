#!/usr/bin/env bash
# Policies by language (issue 13): the same `split` logic in Rust (policies/split, the
# floor: the minimal program doing the work), Python (policies/split-py,
# componentize-py) and JavaScript (policies/split-js, componentize-js), measured side
# by side in one run with a release remapd: component size, compile time (cold, no
# cache), load time from the compiled cache, warm decision latency (each decision in a
# fresh store and instance, validation included, as the daemon runs them), fuel per
# decision and peak RSS of the compiling process. Prints Markdown.
#
#   cargo build --release -p remapd && bash scripts/build-policies.sh && bash bench/policy_languages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REMAPD=${REMAPD:-$PWD/target/release/remapd}
REPS=${REPS:-3}
CALLS=${CALLS:-1000}
WORK=$(mktemp -d /tmp/rmb-lang.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo run -q --release -p remapd-policy-build -- policies/split -o "$WORK/split-rust.wasm" >/dev/null
cp target/policies/split-py.wasm "$WORK/split-py.wasm"
cp target/policies/split-js.wasm "$WORK/split-js.wasm"
echo '{"name": "cluster-1", "pod_cidrs": ["40.0.0.0/24"], "remap_pool": ["30.0.0.0/16"]}' >"$WORK/cluster.json"
echo '{"remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24", "40.1.0.0/24"], "service_cidrs": ["10.96.0.0/12"], "capabilities": {"nat_dataplane": true}}}' >"$WORK/peer.json"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "| policy | size | compile, cold (median of $REPS) | load from the compiled cache | peak RSS compiling | fuel / decision | decision median | decision p99 | decision vs Rust | of which: instantiate | call in a live instance |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
rust_median=""
for lang in rust py js; do
  f="$WORK/split-$lang.wasm"
  size=$(stat -c %s "$f")
  compile=$(for _ in $(seq "$REPS"); do
    REMAPD_POLICY_CACHE=off "$REMAPD" policy check "$f" | jq .load_ms
  done | median)
  rss=$( { /usr/bin/time -f "%M" env REMAPD_POLICY_CACHE=off "$REMAPD" policy check "$f" >/dev/null; } 2>&1 | tail -1)
  REMAPD_POLICY_CACHE="$WORK/cache" "$REMAPD" policy check "$f" >/dev/null
  cached=$(for _ in $(seq "$REPS"); do
    REMAPD_POLICY_CACHE="$WORK/cache" "$REMAPD" policy check "$f" | jq .load_ms
  done | median)
  fuel=$(REMAPD_POLICY_CACHE="$WORK/cache" "$REMAPD" policy run "$f" --cluster "$WORK/cluster.json" "$WORK/peer.json" | jq .fuel_used)
  out=$(REMAPD_POLICY_CACHE="$WORK/cache" "$REMAPD" policy bench "$f" --cluster "$WORK/cluster.json" "$WORK/peer.json" --calls "$CALLS")
  bench=$(grep '^min ' <<<"$out")
  inst=$(sed -nE 's/^breakdown: instantiate ([0-9.]+) µs; a call in a live instance ([0-9.]+) µs/\1/p' <<<"$out")
  call=$(sed -nE 's/^breakdown: instantiate ([0-9.]+) µs; a call in a live instance ([0-9.]+) µs/\2/p' <<<"$out")
  med=$(sed -E 's/.*median ([0-9.]+) µs.*/\1/' <<<"$bench")
  p99=$(sed -E 's/.*p99 ([0-9.]+) µs.*/\1/' <<<"$bench")
  [[ $lang == rust ]] && rust_median=$med
  ratio=$(awk -v a="$med" -v b="$rust_median" 'BEGIN {printf "%.0f×", a / b}')
  [[ $f -ef "$WORK/split-rust.wasm" ]] && cached="— (under 1 MiB: not cached)"
  name=$(case $lang in rust) echo "Rust (policies/split)";; py) echo "Python (policies/split-py)";; js) echo "JavaScript (policies/split-js)";; esac)
  printf '| %s | %s | %s ms | %s | %d MiB | %s | %s µs | %s µs | %s | %s µs | %s µs |\n' \
    "$name" "$(awk -v s="$size" 'BEGIN {if (s < 1e6) printf "%.0f KB", s / 1e3; else printf "%.1f MB", s / 1e6}')" "$compile" \
    "$( [[ $lang == rust ]] && echo "$cached" || echo "$cached ms")" "$((rss / 1024))" "$fuel" "$med" "$p99" "$ratio" "$inst" "$call"
done
echo
echo "Release remapd, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $CALLS decisions per language, one peering with two pod CIDRs and a service CIDR (all remapped)."
