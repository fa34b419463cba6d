#!/usr/bin/env bash
# The two-cluster demo. Both clusters are dual-stack and use the same pod CIDRs,
# 40.0.0.0/24 and fd00:40::/56; each gateway runs one remapd, configured only through
# its HTTP API with curl, exactly as the README shows. For each policy (split,
# both-on-2, auto): set up the peering by piping each side's exports into the other,
# then ping, TCP and UDP pod1 -> 30.0.0.1 / fd00:30::1 and pod2 -> 60.0.0.1 /
# fd00:60::1, and show what each side sees. Exits non-zero if any check fails.
#
#   make demo                 # everything, then tear down
#   make demo KEEP=1          # leave the last strategy running to explore
#   STRATEGIES=split make demo
set -euo pipefail
cd "$(dirname "$0")/.."

KEEP=${KEEP:-0}
STRATEGIES=${STRATEGIES:-"split both-on-2 auto"}
REMAPD=${REMAPD:-$PWD/target/release/remapd}
DEMO=${DEMO_DIR:-/tmp/remapd-demo}
NS=remapd

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
pass=0
fail=0
SERVERS=()
check() {
  local what=$1 want=$2 got
  shift 2
  if got=$("$@" 2>&1) && [[ -z $want || $got == *"$want"* ]]; then
    printf '  \033[32m✔\033[0m %s%s\n' "$what" "${want:+ (got $want)}"
    pass=$((pass + 1))
  else
    printf '  \033[31m✘\033[0m %s: wanted %s, got: %s\n' "$what" "${want:-success}" "$(tail -n 3 <<<"$got")"
    fail=$((fail + 1))
  fi
}

# Run a command inside a namespace, keeping the mount namespace (bpffs stays visible).
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$NS-$ns" "$@"; }
gw1() { in_ns gw1 "$@"; }
gw2() { in_ns gw2 "$@"; }
pod1() { in_ns pod1 "$@"; }
pod2() { in_ns pod2 "$@"; }

stop_daemons() {
  for gw in gw1 gw2; do
    if [[ -f $DEMO/$gw.pid ]]; then
      local pid
      pid=$(cat "$DEMO/$gw.pid")
      kill "$pid" 2>/dev/null || true
      # SIGTERM drains gracefully; wait so the next daemon does not meet the old one.
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$DEMO/$gw.pid"
    fi
  done
  stop_servers 2>/dev/null || true
}

cleanup() {
  stop_daemons
  for gw in gw1 gw2; do
    for pidfile in "$DEMO/$gw/run"/*.pid; do
      [[ -f $pidfile ]] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
  done
  for ns in pod1 gw1 gw2 pod2; do ip netns del "$NS-$ns" 2>/dev/null || true; done
  rm -f /var/run/wireguard/rmd-cluster-1.sock /var/run/wireguard/rmd-cluster-2.sock
  rm -rf /sys/fs/bpf/remapd-demo-gw1 /sys/fs/bpf/remapd-demo-gw2 "$DEMO"
}

on_exit() {
  local code=$?
  if [[ $KEEP == 1 && $code == 0 ]]; then
    bold ""
    bold "The topology is still up (KEEP=1). Explore with, for example:"
    echo "  nsenter --net=/run/netns/$NS-pod1 ping 30.0.0.1"
    echo "  nsenter --net=/run/netns/$NS-gw1 curl -s http://127.0.0.1:7878/v1/peerings | jq"
    echo "  nsenter --net=/run/netns/$NS-gw1 bash      # a shell on gateway 1"
    echo "API token: $(cat "$DEMO/token")"
    echo "Clean up with: KEEP=0 bash scripts/demo.sh --cleanup"
  else
    cleanup
  fi
  exit "$code"
}

if [[ ${1:-} == --cleanup ]]; then
  cleanup
  exit 0
fi
trap on_exit EXIT
trap 'exit 130' INT TERM
cleanup

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  step "Building remapd"
  cargo build --release -p remapd 2>&1 | grep -E '^(error|warning: unused)' || true
fi
[[ -x $REMAPD ]] || { echo "no $REMAPD"; exit 1; }

step "Topology: pod1 — gw1 ══ veth (198.18.0.0/30) ══ gw2 — pod2, both clusters 40.0.0.0/24 and fd00:40::/56"
for ns in pod1 gw1 gw2 pod2; do ip netns add "$NS-$ns"; ip -n "$NS-$ns" link set lo up; done
for side in 1 2; do
  ip -n "$NS-pod$side" link add eth0 type veth peer name lan netns "$NS-gw$side"
  ip -n "$NS-pod$side" addr add 40.0.0.1/24 dev eth0
  ip -n "$NS-gw$side" addr add 40.0.0.2/24 dev lan
  ip -n "$NS-pod$side" addr add fd00:40::1/64 dev eth0 nodad
  ip -n "$NS-gw$side" addr add fd00:40::2/64 dev lan nodad
  ip -n "$NS-pod$side" link set eth0 up
  ip -n "$NS-gw$side" link set lan up
  ip -n "$NS-pod$side" route add default via 40.0.0.2
  ip -n "$NS-pod$side" -6 route add default via fd00:40::2
  in_ns "gw$side" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=1 net.ipv6.conf.all.forwarding=1
done
ip -n "$NS-gw1" link add under type veth peer name under netns "$NS-gw2"
ip -n "$NS-gw1" addr add 198.18.0.1/30 dev under
ip -n "$NS-gw2" addr add 198.18.0.2/30 dev under
ip -n "$NS-gw1" link set under up
ip -n "$NS-gw2" link set under up
mkdir -p "$DEMO"
(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$DEMO/token")
# socat gives an IPv6 peer as [fd00:0060:0000:...]: the IPv6 servers answer with it in
# its usual short form.
cat >"$DEMO/peer6" <<'PEER'
#!/usr/bin/env python3
import ipaddress, os
print(ipaddress.ip_address(os.environ["SOCAT_PEERADDR"].strip("[]")))
PEER
chmod +x "$DEMO/peer6"
TOKEN=$(cat "$DEMO/token")
echo "  namespaces $NS-{pod1,gw1,gw2,pod2}; pods 40.0.0.1 and fd00:40::1 behind gateways 40.0.0.2 and fd00:40::2"

start_daemons() {
  for side in 1 2; do
    local gw=gw$side
    mkdir -p "$DEMO/$gw"
    # nsenter execs remapd, so $! is the daemon itself.
    nsenter --net="/run/netns/$NS-$gw" "$REMAPD" --state-dir "$DEMO/$gw/state" --pin-dir "/sys/fs/bpf/remapd-demo-$gw" \
      --run-dir "$DEMO/$gw/run" --token-file "$DEMO/token" --advertise "198.18.0.$side" \
      >"$DEMO/$gw.log" 2>&1 &
    echo $! >"$DEMO/$gw.pid"
  done
  for gw in gw1 gw2; do
    for _ in $(seq 100); do in_ns "$gw" curl -sf http://127.0.0.1:7878/healthz >/dev/null && break; sleep 0.1; done
  done
}

serve() { # side port: TCP and UDP servers that answer with the address they see, on
  # port and port+1 over IPv4, port+10 and port+11 over IPv6
  local side=$1 port=$2
  nsenter --net="/run/netns/$NS-pod$side" socat TCP-LISTEN:"$port",reuseaddr,fork SYSTEM:'echo $SOCAT_PEERADDR' >/dev/null 2>&1 &
  SERVERS+=($!)
  nsenter --net="/run/netns/$NS-pod$side" socat UDP-RECVFROM:"$((port + 1))",bind=40.0.0.1,fork SYSTEM:'echo $SOCAT_PEERADDR' >/dev/null 2>&1 &
  SERVERS+=($!)
  nsenter --net="/run/netns/$NS-pod$side" socat TCP6-LISTEN:"$((port + 10))",reuseaddr,fork SYSTEM:"$DEMO/peer6" >/dev/null 2>&1 &
  SERVERS+=($!)
  nsenter --net="/run/netns/$NS-pod$side" socat UDP6-RECVFROM:"$((port + 11))",bind='[fd00:40::1]',fork SYSTEM:"$DEMO/peer6" >/dev/null 2>&1 &
  SERVERS+=($!)
  sleep 0.3
}
stop_servers() {
  for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; done
  SERVERS=()
}
tcp_from() { in_ns "pod$1" socat -T 3 - "TCP:$2:$3" </dev/null; }
udp_from() { echo hello | in_ns "pod$1" socat -T 3 - "UDP:$2:$(($3 + 1))"; }
tcp6_from() { in_ns "pod$1" socat -T 3 - "TCP6:[$2]:$(($3 + 10))" </dev/null; }
udp6_from() { echo hello | in_ns "pod$1" socat -T 3 - "UDP6:[$2]:$(($3 + 11))"; }

for POLICY in $STRATEGIES; do
  step "Policy $POLICY: two daemons, configured with curl"
  stop_daemons
  rm -rf "$DEMO/gw1" "$DEMO/gw2"
  start_daemons
  API=http://127.0.0.1:7878
  AUTH="Authorization: Bearer $TOKEN"
  JSON='content-type: application/json'

  # --- walkthrough (the README shows these commands) ---
  gw1 curl -sS -X PUT -H "$AUTH" -H "$JSON" $API/v1/cluster -d '{"name": "cluster-1", "pod_cidrs": ["40.0.0.0/24", "fd00:40::/56"], "remap_pool": ["30.0.0.0/24", "fd00:30::/48"]}'
  echo
  gw2 curl -sS -X PUT -H "$AUTH" -H "$JSON" $API/v1/cluster -d '{"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24", "fd00:40::/56"], "remap_pool": ["60.0.0.0/24", "fd00:60::/48"]}'
  echo
  gw1 curl -sS -X PUT -H "$AUTH" -H "$JSON" $API/v1/peerings/cluster-2 -d '{"policy": "'"$POLICY"'", "remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24", "fd00:40::/56"], "capabilities": {"nat_dataplane": true}}, "tunnel": {"listen_port": 51820}}' | jq -c '{strategy: .decision.strategy, plan: .plan.routes, public_key}'
  gw1 curl -sS $API/v1/peerings/cluster-2/exports | gw2 curl -sS -X PUT -H "$AUTH" -H "$JSON" --data-binary @- $API/v1/peerings/cluster-1 | jq -c '{strategy: .decision.strategy, rules: [.applied[].rule]}'
  gw2 curl -sS $API/v1/peerings/cluster-1/exports | gw1 curl -sS -X PUT -H "$AUTH" -H "$JSON" --data-binary @- $API/v1/peerings/cluster-2 | jq -c '{strategy: .decision.strategy, rules: [.applied[].rule]}'
  # --- end of walkthrough ---

  serve 2 7000
  serve 1 7100
  check "ping pod1 -> 30.0.0.1" "" pod1 ping -c 3 -i 0.2 -W 2 30.0.0.1
  check "TCP pod1 -> 30.0.0.1: pod2 sees the peer as" 60.0.0.1 tcp_from 1 30.0.0.1 7000
  check "UDP pod1 -> 30.0.0.1: pod2 sees the peer as" 60.0.0.1 udp_from 1 30.0.0.1 7000
  check "ping pod2 -> 60.0.0.1" "" pod2 ping -c 3 -i 0.2 -W 2 60.0.0.1
  check "TCP pod2 -> 60.0.0.1: pod1 sees the peer as" 30.0.0.1 tcp_from 2 60.0.0.1 7100
  check "UDP pod2 -> 60.0.0.1: pod1 sees the peer as" 30.0.0.1 udp_from 2 60.0.0.1 7100
  check "ping pod1 -> fd00:30::1" "" pod1 ping -c 3 -i 0.2 -W 2 fd00:30::1
  check "TCP pod1 -> fd00:30::1: pod2 sees the peer as" fd00:60::1 tcp6_from 1 fd00:30::1 7000
  check "UDP pod1 -> fd00:30::1: pod2 sees the peer as" fd00:60::1 udp6_from 1 fd00:30::1 7000
  check "ping pod2 -> fd00:60::1" "" pod2 ping -c 3 -i 0.2 -W 2 fd00:60::1
  check "TCP pod2 -> fd00:60::1: pod1 sees the peer as" fd00:30::1 tcp6_from 2 fd00:60::1 7100
  check "UDP pod2 -> fd00:60::1: pod1 sees the peer as" fd00:30::1 udp6_from 2 fd00:60::1 7100

  bold "  what each gateway did:"
  gw1 curl -sS $API/v1/peerings/cluster-2 | jq -r '"  gw1: \(.decision.strategy); tunnel \(.interface), last handshake \(.tunnel.last_handshake_unix)", (.applied[] | "    \(.rule): \(.packets) packets")'
  gw2 curl -sS $API/v1/peerings/cluster-1 | jq -r '"  gw2: \(.decision.strategy); tunnel \(.interface), last handshake \(.tunnel.last_handshake_unix)", (.applied[] | "    \(.rule): \(.packets) packets")'
  gw2 curl -sS "$API/v1/translate?address=40.0.0.1" | jq -r '.[] | "  gw2 translate 40.0.0.1 (\(.kind)): \(.translated), \(.meaning)"'
  gw1 curl -sS "$API/v1/explain?from=40.0.0.1&to=30.0.0.1" | jq -r '.[] | "  gw1 explain \(.request.sent.source) -> \(.request.sent.destination), via \(.interface) (\(.strategy)):", (.request.steps[] | "    \(.gateway) \(.kind): \(.detail)"), "    reply:", (.reply.steps[] | "    \(.gateway) \(.kind): \(.detail)")'
  gw1 curl -sS "$API/v1/explain?from=fd00:40::1&to=fd00:30::1" | jq -r '.[] | "  gw1 explain \(.request.sent.source) -> \(.request.sent.destination): \(.request.verdict.outcome), the pod sees \(.request.received.source); the reply comes from \(.reply.received.source)"'
  gw2 curl -sS $API/metrics | grep '^remapd_rule_packets_total' | sed 's/^/  /'
  # A live trace at gw2 (which rewrites in every strategy) while pod1 pings pod2 once:
  # the request and the reply, each with its addresses before and after and the rules
  # that fired. The trace has started when its response headers have arrived.
  rm -f "$DEMO/trace.h"
  gw2 curl -sSN -H "$AUTH" -D "$DEMO/trace.h" -o "$DEMO/trace.ndjson" "$API/v1/trace?protocol=icmp&count=2&duration=20s" &
  TRACE_PID=$!
  for _ in $(seq 100); do grep -q ' 200' "$DEMO/trace.h" 2>/dev/null && break; sleep 0.1; done
  pod1 ping -c 1 -W 2 30.0.0.1 >/dev/null
  wait $TRACE_PID
  jq -r 'select(.type == "event") | "  gw2 trace \(.direction) \(.protocol): \(.before.src) -> \(.before.dst) became \(.after.src) -> \(.after.dst) (\(.rules | map("\(.field) \(.from) -> \(.to)") | join(", ")))"' "$DEMO/trace.ndjson"
  stop_servers
  if [[ $KEEP == 1 && $POLICY == "${STRATEGIES##* }" ]]; then break; fi
  gw1 curl -sS -X DELETE -H "$AUTH" -o /dev/null -w '  DELETE gw1 peering: %{http_code}\n' $API/v1/peerings/cluster-2
  gw2 curl -sS -X DELETE -H "$AUTH" -o /dev/null -w '  DELETE gw2 peering: %{http_code}\n' $API/v1/peerings/cluster-1
  check "deleting the peerings removed every rule, route and tunnel" "" \
    bash -c "! ip -n $NS-gw1 -o link | grep -q rmd- && ! ip -n $NS-gw2 -o link | grep -q rmd- && [ -z \"\$(ip -n $NS-gw1 route show table 7878)\" ] && [ -z \"\$(ip -n $NS-gw1 -6 route show table 7878)\" ]"
done

step "Bring your own policy: build a component, upload it, dry-run it"
if [[ ${SKIP_POLICY:-0} != 1 ]]; then
  # POLICY_BUILD: the remapd-policy-build command (the test suite passes its binary).
  ${POLICY_BUILD:-cargo run -q --release -p remapd-policy-build --} policies/split -o "$DEMO/my-policy.wasm" 2>&1 | tail -n 1
  # The upload carries its RFC 9530 digest: remapd refuses bytes that do not match it.
  upload_my_policy() {
    gw1 curl -sS -X PUT -H "$AUTH" -H 'content-type: application/wasm' \
      -H "content-digest: sha-256=:$(openssl dgst -sha256 -binary "$DEMO/my-policy.wasm" | base64):" \
      --data-binary @"$DEMO/my-policy.wasm" $API/v1/policies/my-policy |
      jq -c '{name, sha256, size, contract, families, language}'
  }
  check "upload with its Content-Digest: stored, contract, families and language shown" \
    '"contract":"remap:policy@0.2.0","families":["ipv4","ipv6"],"language":"Rust"' upload_my_policy
  check "dry run of the uploaded policy decides split" split \
    gw1 curl -sS -X POST -H "$AUTH" -H "$JSON" $API/v1/policies/my-policy/evaluate -d '{"remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24"], "capabilities": {"nat_dataplane": true}}}'
fi

step "Summary"
echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
