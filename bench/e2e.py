#!/usr/bin/env python3
"""End-to-end benchmark, side by side in one run, on the seed topology in network
namespaces (pod1 - gw1 - link - gw2 - pod2, both clusters 40.0.0.0/24), over (a) a plain
veth link between the gateways and (b) a WireGuard tunnel (wireguard-go) over it:

  plain      plain routing, cluster 2 renumbered to 50.0.0.0/24 (the physical limit)
  split      remapd, split (gw1 egress dst 30->40, ingress src 40->30; gw2 the mirror)
  both-on-2  remapd, both-on-2 (gw1 only routes; gw2 does every rewrite)
  iptables   the prototype's problem worked around: mangle mark + ip rule fwmark into
             the link, NETMAP in nat PREROUTING (gw1) / POSTROUTING (gw2), connmark
             and fwmark to route gw2's replies back into the link
  nftables   the same with nftables prefix NAT (dnat/snat ip prefix to)
  split-agent  (WireGuard only, on request) split's rules and borders put by
             dataplane-agent on tunnels started like plain's: no daemons
  split-agent-rule  split-agent with the routes in table 7878 behind one `ip rule`,
             as remapd routes by default
  split-main, both-on-2-main  (WireGuard only, on request) split and both-on-2 with
             the daemons started with `--route-placement main-table`: remapd's routes
             in the main table, no `ip rule`

  plain-v6, split-v6, both-on-2-v6, iptables-v6, nftables-v6  (veth only, on request)
             the same over IPv6 (the workarounds with ip6tables NETMAP and nftables
             `ip6 prefix` NAT): both
             clusters also on fd00:40::/64 (cluster 2 renumbered to fd00:50::/64 for
             plain-v6), views fd00:30::/64 and fd00:60::/64; the gateways hold the rules
             of both families (dual-stack) and the traffic is IPv6. Each is compared
             with plain-v6 of the same round.

For each: TCP throughput (1 and 4 streams), 64-byte UDP packets/s delivered and loss,
ping latency (median, p99), CPU busy during the 1-stream TCP run. iperf3 client and
server are pinned to one core each. Medians of RUNS runs; ratios against plain routing
over the same link, measured in this same run.

Over WireGuard, the remapd configurations run two real `remapd` daemons configured
through their HTTP APIs with curl (exports piped across, as in the README): the daemons
start their own wireguard-go, routes and rules. A veth link is not something the API
manages (it knows WireGuard peerings), so over veth the same rules are applied by
`dataplane-agent`, a small binary on the daemon's dataplane module. Needs root. Writes
Markdown to stdout.
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

NS = "rmb"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "target/release/dataplane-agent")
REMAPD = os.path.join(ROOT, "target/release/remapd")
RUNS = int(os.environ.get("RUNS", "5"))
DUR = int(os.environ.get("DUR", "10"))
# INTERLEAVE=1: rounds of every configuration in turn, paired ratios (see interleaved()).
INTERLEAVE = os.environ.get("INTERLEAVE", "0") == "1"
SCRATCH = "/tmp/rmb-e2e"
PROCS = []


def sh(cmd, check=True, capture=False):
    r = subprocess.run(cmd, shell=True, text=True, capture_output=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}\n{r.stdout}\n{r.stderr}")
    return r.stdout if capture else r


def ns(name):
    return f"nsenter --net=/run/netns/{NS}-{name}"


def cleanup():
    for p in PROCS:
        try:
            p.kill()
            p.wait(timeout=5)
        except Exception:
            pass
    PROCS.clear()
    sh(f"pkill -f 'wireguard-go -f wgb' ", check=False)
    for gw in ["gw1", "gw2"]:
        run_dir = f"{SCRATCH}/{gw}/run"
        if os.path.isdir(run_dir):
            for f in os.listdir(run_dir):
                if f.endswith(".pid"):
                    sh(f"kill -9 $(cat {run_dir}/{f})", check=False)
                    sh(f"rm -f /var/run/wireguard/{f[:-4]}.sock", check=False)
    sh("pkill -f 'iperf3 -s -p 52' ", check=False)
    for n in ["pod1", "gw1", "gw2", "pod2"]:
        sh(f"ip netns del {NS}-{n}", check=False)
    sh("rm -f /var/run/wireguard/wgb1.sock /var/run/wireguard/wgb2.sock", check=False)
    sh(f"rm -rf /sys/fs/bpf/{NS}-gw1 /sys/fs/bpf/{NS}-gw2 {SCRATCH}", check=False)


def spawn(cmd):
    # exec: the child is the program itself, so killing it kills the program (sh would
    # otherwise be killed and leave the program running).
    p = subprocess.Popen("exec " + cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(p)
    return p


def wait_for(what, cond, timeout=10):
    start = time.time()
    while not cond():
        if time.time() - start > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def agent(gw, rules, border):
    """Applies `rules` and the ingress border (iface, sources, destinations) on `gw`."""
    os.makedirs(SCRATCH, exist_ok=True)
    rf = f"{SCRATCH}/{gw}-rules.json"
    st = f"{SCRATCH}/{gw}-status.json"
    iface, sources, destinations = border
    with open(rf, "w") as f:
        json.dump({"rules": rules,
                   "borders": [{"interface": iface, "sources": sources, "destinations": destinations}]}, f)
    spawn(f"{ns(gw)} {AGENT} /sys/fs/bpf/{NS}-{gw} {rf} {st}")
    wait_for(f"dataplane-agent on {gw}", lambda: os.path.exists(st))


TOKEN = "remapd-bench-token-0123456789"


def api(gw, method, path, body=None):
    """curl against the daemon on a gateway's loopback; returns the parsed JSON."""
    cmd = (f"{ns(gw)} curl -sS -w '\\n%{{http_code}}' -X {method} -H 'Authorization: Bearer {TOKEN}' "
           f"-H 'content-type: application/json' http://127.0.0.1:7878{path}")
    if body is not None:
        cmd += " --data-binary @-"
    r = subprocess.run(cmd, shell=True, input=json.dumps(body) if body is not None else None,
                       text=True, capture_output=True)
    text, _, code = r.stdout.rpartition("\n")
    if r.returncode != 0 or not code.startswith("2"):
        raise RuntimeError(f"{method} {path} on {gw}: {code} {text} {r.stderr}")
    return json.loads(text) if text.strip() else None


def daemons(policy, extra=""):
    """Two remapd daemons (`extra`: more flags), configured over HTTP: clusters, then the
    peering set up by piping each side's exports into the other."""
    os.makedirs(SCRATCH, exist_ok=True)
    # The daemon refuses a token file others can read.
    fd = os.open(f"{SCRATCH}/token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(TOKEN)
    for side in (1, 2):
        gw = f"gw{side}"
        spawn(f"{ns(gw)} {REMAPD} --state-dir {SCRATCH}/{gw}/state --pin-dir /sys/fs/bpf/{NS}-{gw} "
              f"--run-dir {SCRATCH}/{gw}/run --token-file {SCRATCH}/token --advertise 198.18.0.{side} --log warn {extra}")
    for gw in ("gw1", "gw2"):
        wait_for(f"remapd on {gw}", lambda g=gw: sh(f"{ns(g)} curl -sf http://127.0.0.1:7878/healthz", check=False).returncode == 0)
    api("gw1", "PUT", "/v1/cluster", {"name": "cluster-1", "pod_cidrs": ["40.0.0.0/24"], "remap_pool": ["30.0.0.0/24"]})
    api("gw2", "PUT", "/v1/cluster", {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24"], "remap_pool": ["60.0.0.0/24"]})
    api("gw1", "PUT", "/v1/peerings/c2", {
        "policy": policy,
        "remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24"], "capabilities": {"nat_dataplane": True}},
        "tunnel": {"listen_port": 51820, "keepalive": 1}})
    api("gw2", "PUT", "/v1/peerings/c1", api("gw1", "GET", "/v1/peerings/c2/exports"))
    api("gw1", "PUT", "/v1/peerings/c2", api("gw2", "GET", "/v1/peerings/c1/exports"))


def rule(iface, direction, field, frm, to):
    return {"interface": iface, "direction": direction, "field": field, "from": frm, "to": to}


def base_of(cfg):
    """The plain-routing configuration `cfg` is compared with: plain, or plain-v6."""
    return "plain-v6" if cfg.endswith("-v6") else "plain"


def build(link, cfg):
    """Builds the topology for one configuration; returns the target address pod1 uses."""
    v6 = cfg.endswith("-v6")
    cfg = cfg.removesuffix("-v6")
    if v6 and (link != "veth" or cfg not in ("plain", "split", "both-on-2", "iptables", "nftables")):
        raise RuntimeError(f"{cfg}-v6 is measured over veth, for plain, split, both-on-2, iptables and nftables")
    remote_net = "50.0.0" if cfg in ("plain", "plain-border") else "40.0.0"
    remote_net6 = "fd00:50:" if cfg in ("plain", "plain-border") else "fd00:40:"
    for n in ["pod1", "gw1", "gw2", "pod2"]:
        sh(f"ip netns add {NS}-{n}")
        sh(f"ip -n {NS}-{n} link set lo up")
    for side, net, net6 in [(1, "40.0.0", "fd00:40:"), (2, remote_net, remote_net6)]:
        sh(f"ip -n {NS}-pod{side} link add eth0 type veth peer name lan netns {NS}-gw{side}")
        sh(f"ip -n {NS}-pod{side} addr add {net}.1/24 dev eth0")
        sh(f"ip -n {NS}-gw{side} addr add {net}.2/24 dev lan")
        sh(f"ip -n {NS}-pod{side} addr add {net6}:1/64 dev eth0 nodad")
        sh(f"ip -n {NS}-gw{side} addr add {net6}:2/64 dev lan nodad")
        sh(f"ip -n {NS}-pod{side} link set eth0 up")
        sh(f"ip -n {NS}-gw{side} link set lan up")
        sh(f"ip -n {NS}-pod{side} route add default via {net}.2")
        sh(f"ip -n {NS}-pod{side} -6 route add default via {net6}:2")
        sh(f"{ns('gw' + str(side))} sysctl -qw net.ipv6.conf.all.forwarding=1")
        # Loose reverse-path filtering everywhere: the iptables/nftables workarounds need
        # it, and the same setting for every configuration keeps the comparison fair.
        sh(f"{ns('gw' + str(side))} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.lan.rp_filter=0")
    sh(f"ip -n {NS}-gw1 link add under type veth peer name under netns {NS}-gw2")
    sh(f"ip -n {NS}-gw1 addr add 198.18.0.1/30 dev under")
    sh(f"ip -n {NS}-gw2 addr add 198.18.0.2/30 dev under")
    sh(f"ip -n {NS}-gw1 addr add fd00:198::1/64 dev under nodad")
    sh(f"ip -n {NS}-gw2 addr add fd00:198::2/64 dev under nodad")
    sh(f"ip -n {NS}-gw1 link set under up")
    sh(f"ip -n {NS}-gw2 link set under up")
    for gw in ["gw1", "gw2"]:
        sh(f"{ns(gw)} sysctl -qw net.ipv4.conf.under.rp_filter=0")

    # What crosses the link, per configuration (for WireGuard allowed-ips).
    allowed = {
        "plain": ("50.0.0.0/24", "40.0.0.0/24"),
        "plain-border": ("50.0.0.0/24", "40.0.0.0/24"),
        "split": ("40.0.0.0/24", "40.0.0.0/24"),
        "split-agent": ("40.0.0.0/24", "40.0.0.0/24"),
        "split-agent-rule": ("40.0.0.0/24", "40.0.0.0/24"),
        "both-on-2": ("30.0.0.0/24", "40.0.0.0/24"),
        "split-main": ("40.0.0.0/24", "40.0.0.0/24"),
        "both-on-2-main": ("30.0.0.0/24", "40.0.0.0/24"),
        "iptables": ("40.0.0.0/24", "40.0.0.0/24"),
        "nftables": ("40.0.0.0/24", "40.0.0.0/24"),
    }[cfg]
    if link == "wg" and cfg in ("split", "both-on-2"):
        daemons(cfg)
        return "30.0.0.1"
    if link == "wg" and cfg in ("split-main", "both-on-2-main"):
        daemons(cfg.removesuffix("-main"), "--route-placement main-table")
        return "30.0.0.1"
    # split-agent: over WireGuard, the split rules and borders put on the bench's own
    # wireguard-go tunnels by dataplane-agent (no daemons): tells what the programs
    # cost from what the daemons and the tunnels they start cost.
    # split-agent-rule: split-agent with the remote prefixes routed the way remapd routes
    # them (its own table 7878 behind one `ip rule`).
    own_table = cfg == "split-agent-rule"
    if cfg in ("split-agent", "split-agent-rule"):
        cfg = "split"
    if link == "wg":
        keys = {}
        for side in (1, 2):
            gw = f"gw{side}"
            spawn(f"{ns(gw)} wireguard-go -f wgb{side}")
            wait_for(f"wgb{side}", lambda s=side: os.path.exists(f"/var/run/wireguard/wgb{s}.sock"))
            priv = sh("wg genkey", capture=True).strip()
            pub = subprocess.run(["wg", "pubkey"], input=priv, text=True, capture_output=True).stdout.strip()
            os.makedirs(SCRATCH, exist_ok=True)
            with open(f"{SCRATCH}/wgb{side}.key", "w") as f:
                f.write(priv)
            keys[side] = pub
        for side, other in [(1, 2), (2, 1)]:
            sh(f"{ns('gw' + str(side))} wg set wgb{side} private-key {SCRATCH}/wgb{side}.key listen-port 51820 "
               f"peer {keys[other]} endpoint 198.18.0.{other}:51820 persistent-keepalive 1 allowed-ips {allowed[side - 1]}")
            sh(f"ip -n {NS}-gw{side} link set wgb{side} up")
            sh(f"{ns('gw' + str(side))} sysctl -qw net.ipv4.conf.wgb{side}.rp_filter=0")
        to2, to1 = "dev wgb1", "dev wgb2"
        l1, l2 = "wgb1", "wgb2"
    else:
        to2, to1 = "via 198.18.0.2 dev under", "via 198.18.0.1 dev under"
        l1, l2 = "under", "under"

    g1, g2 = f"ip -n {NS}-gw1", f"ip -n {NS}-gw2"
    if v6:
        return build_v6(cfg, g1, g2)
    if cfg in ("plain", "plain-border"):
        sh(f"{g1} route add 50.0.0.0/24 {to2}")
        sh(f"{g2} route add 40.0.0.0/24 {to1}")
        if cfg == "plain-border":
            # Diagnostic: plain routing with remapd's programs on both tunnel ends (no
            # rules; each ingress a border letting the pods' traffic through): what
            # having the programs on the path costs, without any translation.
            agent("gw1", [], (l1, ["50.0.0.0/24"], ["40.0.0.0/24"]))
            agent("gw2", [], (l2, ["40.0.0.0/24"], ["50.0.0.0/24"]))
        return "50.0.0.1"
    if cfg == "split":
        table = " table 7878" if own_table else ""
        sh(f"{g1} route add 30.0.0.0/24 {to2}{table}")
        sh(f"{g2} route add 60.0.0.0/24 {to1}{table}")
        if own_table:
            sh(f"{g1} rule add priority 7878 table 7878")
            sh(f"{g2} rule add priority 7878 table 7878")
        agent("gw1", [rule(l1, "egress", "destination", "30.0.0.0/24", "40.0.0.0/24"),
                      rule(l1, "ingress", "source", "40.0.0.0/24", "30.0.0.0/24")],
              (l1, ["30.0.0.0/24"], ["40.0.0.0/24"]))
        agent("gw2", [rule(l2, "ingress", "source", "40.0.0.0/24", "60.0.0.0/24"),
                      rule(l2, "egress", "destination", "60.0.0.0/24", "40.0.0.0/24")],
              (l2, ["60.0.0.0/24"], ["40.0.0.0/24"]))
        return "30.0.0.1"
    if cfg == "both-on-2":
        sh(f"{g1} route add 30.0.0.0/24 {to2}")
        sh(f"{g2} route add 60.0.0.0/24 {to1}")
        # gw1 only routes, but its ingress is still a border.
        agent("gw1", [], (l1, ["30.0.0.0/24"], ["40.0.0.0/24"]))
        agent("gw2", [rule(l2, "ingress", "destination", "30.0.0.0/24", "40.0.0.0/24"),
                      rule(l2, "ingress", "source", "40.0.0.0/24", "60.0.0.0/24"),
                      rule(l2, "egress", "source", "40.0.0.0/24", "30.0.0.0/24"),
                      rule(l2, "egress", "destination", "60.0.0.0/24", "40.0.0.0/24")],
              (l2, ["60.0.0.0/24"], ["40.0.0.0/24"]))
        return "30.0.0.1"
    # The workaround: gw1 marks traffic to 30/24 before its DNAT and routes by mark into
    # the link; gw2 SNATs what arrives from the link to 60/24 and, by connmark, routes
    # the replies (whose destination conntrack turns back into 40/24) into the link.
    sh(f"{g1} rule add fwmark 0x30 lookup 130 priority 100")
    sh(f"{g1} route add default {to2} table 130")
    sh(f"{g2} rule add fwmark 0x60 lookup 160 priority 100")
    sh(f"{g2} route add default {to1} table 160")
    if cfg == "iptables":
        i1, i2 = f"{ns('gw1')} iptables", f"{ns('gw2')} iptables"
        sh(f"{i1} -t mangle -A PREROUTING -i lan -d 30.0.0.0/24 -j MARK --set-mark 0x30")
        sh(f"{i1} -t nat -A PREROUTING -i lan -d 30.0.0.0/24 -j NETMAP --to 40.0.0.0/24")
        sh(f"{i2} -t mangle -A PREROUTING -i {l2} -j CONNMARK --set-mark 0x60")
        sh(f"{i2} -t mangle -A PREROUTING -i lan -j CONNMARK --restore-mark")
        sh(f"{i2} -t nat -A POSTROUTING -o lan -m connmark --mark 0x60 -j NETMAP --to 60.0.0.0/24")
    else:
        nft1 = """table ip rmb {
  chain pre_mangle { type filter hook prerouting priority mangle; iifname "lan" ip daddr 30.0.0.0/24 meta mark set 0x30; }
  chain pre_nat { type nat hook prerouting priority dstnat; iifname "lan" ip daddr 30.0.0.0/24 dnat ip prefix to 40.0.0.0/24; }
}"""
        nft2 = f"""table ip rmb {{
  chain pre_mangle {{ type filter hook prerouting priority mangle; iifname "{l2}" ct mark set 0x60; iifname "lan" meta mark set ct mark; }}
  chain post_nat {{ type nat hook postrouting priority srcnat; ct mark 0x60 oifname "lan" snat ip prefix to 60.0.0.0/24; }}
}}"""
        for gw, text in [("gw1", nft1), ("gw2", nft2)]:
            r = subprocess.run(f"{ns(gw)} nft -f -", shell=True, input=text, text=True, capture_output=True)
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
    return "30.0.0.1"


def build_v6(cfg, g1, g2):
    """The IPv6 routes and (dual-stack) rules of `cfg` over veth; returns pod1's target."""
    to2, to1 = "via fd00:198::2 dev under", "via fd00:198::1 dev under"
    if cfg == "plain":
        sh(f"{g1} -6 route add fd00:50::/64 {to2}")
        sh(f"{g2} -6 route add fd00:40::/64 {to1}")
        return "fd00:50::1"
    if cfg in ("iptables", "nftables"):
        return build_v6_workaround(cfg, g1, g2, to2, to1)
    sh(f"{g1} -6 route add fd00:30::/64 {to2}")
    sh(f"{g2} -6 route add fd00:60::/64 {to1}")
    v4 = [("30.0.0.0/24", "40.0.0.0/24", "60.0.0.0/24")]
    v6 = [("fd00:30::/64", "fd00:40::/64", "fd00:60::/64")]
    if cfg == "split":
        rules1, rules2 = [], []
        for view1, real, view2 in v4 + v6:
            rules1 += [rule("under", "egress", "destination", view1, real),
                       rule("under", "ingress", "source", real, view1)]
            rules2 += [rule("under", "ingress", "source", real, view2),
                       rule("under", "egress", "destination", view2, real)]
        agent("gw1", rules1, ("under", ["30.0.0.0/24", "fd00:30::/64"], ["40.0.0.0/24", "fd00:40::/64"]))
        agent("gw2", rules2, ("under", ["60.0.0.0/24", "fd00:60::/64"], ["40.0.0.0/24", "fd00:40::/64"]))
        return "fd00:30::1"
    rules2 = []
    for view1, real, view2 in v4 + v6:
        rules2 += [rule("under", "ingress", "destination", view1, real),
                   rule("under", "ingress", "source", real, view2),
                   rule("under", "egress", "source", real, view1),
                   rule("under", "egress", "destination", view2, real)]
    agent("gw1", [], ("under", ["30.0.0.0/24", "fd00:30::/64"], ["40.0.0.0/24", "fd00:40::/64"]))
    agent("gw2", rules2, ("under", ["60.0.0.0/24", "fd00:60::/64"], ["40.0.0.0/24", "fd00:40::/64"]))
    return "fd00:30::1"


def build_v6_workaround(cfg, g1, g2, to2, to1):
    """The IPv4 workaround of `build`, in IPv6: marks and NETMAP / prefix NAT, routing by
    mark into the link, connmark to route gw2's replies back."""
    sh(f"{g1} -6 rule add fwmark 0x30 lookup 130 priority 100")
    sh(f"{g1} -6 route add default {to2} table 130")
    sh(f"{g2} -6 rule add fwmark 0x60 lookup 160 priority 100")
    sh(f"{g2} -6 route add default {to1} table 160")
    if cfg == "iptables":
        i1, i2 = f"{ns('gw1')} ip6tables", f"{ns('gw2')} ip6tables"
        sh(f"{i1} -t mangle -A PREROUTING -i lan -d fd00:30::/64 -j MARK --set-mark 0x30")
        sh(f"{i1} -t nat -A PREROUTING -i lan -d fd00:30::/64 -j NETMAP --to fd00:40::/64")
        sh(f"{i2} -t mangle -A PREROUTING -i under -j CONNMARK --set-mark 0x60")
        sh(f"{i2} -t mangle -A PREROUTING -i lan -j CONNMARK --restore-mark")
        sh(f"{i2} -t nat -A POSTROUTING -o lan -m connmark --mark 0x60 -j NETMAP --to fd00:60::/64")
        return "fd00:30::1"
    nft1 = """table ip6 rmb {
  chain pre_mangle { type filter hook prerouting priority mangle; iifname "lan" ip6 daddr fd00:30::/64 meta mark set 0x30; }
  chain pre_nat { type nat hook prerouting priority dstnat; iifname "lan" ip6 daddr fd00:30::/64 dnat ip6 prefix to fd00:40::/64; }
}"""
    nft2 = """table ip6 rmb {
  chain pre_mangle { type filter hook prerouting priority mangle; iifname "under" ct mark set 0x60; iifname "lan" meta mark set ct mark; }
  chain post_nat { type nat hook postrouting priority srcnat; ct mark 0x60 oifname "lan" snat ip6 prefix to fd00:60::/64; }
}"""
    for gw, text in [("gw1", nft1), ("gw2", nft2)]:
        r = subprocess.run(f"{ns(gw)} nft -f -", shell=True, input=text, text=True, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
    return "fd00:30::1"


def cpu_times():
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts), idle


def iperf(target, extra, port):
    out = sh(f"{ns('pod1')} taskset -c 1 iperf3 -c {target} -p {port} -t {DUR} -J {extra}", capture=True)
    return json.loads(out)


def measure(target):
    server_addr = {"50.0.0.1": "50.0.0.1", "fd00:50::1": "fd00:50::1",
                   "fd00:30::1": "fd00:40::1"}.get(target, "40.0.0.1")
    port = 5201
    spawn(f"{ns('pod2')} taskset -c 0 iperf3 -s -p {port} -B {server_addr}")
    time.sleep(0.5)
    # Warm up (handshake, ARP) and prove the path works.
    r = sh(f"{ns('pod1')} ping -c 3 -i 0.2 -W 2 {target}", check=False)
    if r.returncode != 0:
        sh(f"{ns('pod1')} ping -c 5 -i 0.2 -W 2 {target}")
    res = {"tcp1": [], "tcp4": [], "udp_pps": [], "udp_loss": [], "cpu": [], "p50": [], "p99": []}
    for _ in range(1 if INTERLEAVE else RUNS):
        t0, i0 = cpu_times()
        j = iperf(target, "", port)
        t1, i1 = cpu_times()
        res["tcp1"].append(j["end"]["sum_received"]["bits_per_second"] / 1e9)
        res["cpu"].append(100.0 * (1 - (i1 - i0) / max(1, t1 - t0)))
        j = iperf(target, "-P 4", port)
        res["tcp4"].append(j["end"]["sum_received"]["bits_per_second"] / 1e9)
        j = iperf(target, "-u -l 64 -b 0", port)
        s = j["end"]["sum"]
        got = s["packets"] - s["lost_packets"]
        res["udp_pps"].append(got / s["seconds"])
        res["udp_loss"].append(100.0 * s["lost_packets"] / max(1, s["packets"]))
        out = sh(f"{ns('pod1')} ping -c 200 -i 0.005 {target}", capture=True)
        rtts = sorted(float(x) for x in re.findall(r"time=([0-9.]+) ms", out))
        res["p50"].append(1000 * rtts[len(rtts) // 2])
        res["p99"].append(1000 * rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))])
    if INTERLEAVE:
        return {k: v[0] for k, v in res.items()}
    out = {k: statistics.median(v) for k, v in res.items()}
    for k in ("tcp1", "tcp4", "udp_pps"):
        out[k + "_range"] = (min(res[k]), max(res[k]))
    return out


def interleaved(links, configs):
    """RUNS rounds; in each, every configuration is built, measured once and torn down,
    in turn, so slow drift of the machine (other guests, thermal state) hits every
    configuration alike. Each remapd figure is compared with plain routing of the same
    round; the table gives the median of those paired ratios and their spread."""
    rounds = []
    for n in range(RUNS):
        got = {}
        for link in links:
            for cfg in configs:
                cleanup()
                try:
                    got[(link, cfg)] = measure(build(link, cfg))
                    print(f"round {n + 1}: {link} {cfg}: {got[(link, cfg)]}", file=sys.stderr)
                finally:
                    cleanup()
        rounds.append(got)
    keys = [("tcp1", "TCP 1 stream", 1.0, "Gbit/s"), ("tcp4", "TCP 4 streams", 1.0, "Gbit/s"),
            ("udp_pps", "UDP 64 B delivered", 1000.0, "kpps")]
    print("| link | configuration | " + " | ".join(f"{t} (median) | paired ratio, median (min–max)" for _, t, _, _ in keys) + " |")
    print("|---|---|" + "---:|---:|" * len(keys))
    for link in links:
        for cfg in configs:
            cells = []
            for k, _, scale, unit in keys:
                vals = [r[(link, cfg)][k] for r in rounds]
                base = base_of(cfg)
                ratios = [100 * r[(link, cfg)][k] / r[(link, base)][k] for r in rounds if r[(link, base)][k]]
                cells.append(f"{statistics.median(vals) / scale:.2f} {unit}")
                cells.append(f"{statistics.median(ratios):.0f}% ({min(ratios):.0f}–{max(ratios):.0f}%)")
            print(f"| {link} | {cfg} | " + " | ".join(cells) + " |")
    print()
    print(f"{RUNS} rounds of {DUR} s runs, configurations interleaved within each round; each ratio compares "
          "a configuration with plain routing of the same round. iperf3 server pinned to CPU 0, client to CPU 1.")


def main():
    # A SIGTERM (`kill`, a CI timeout) unwinds like Ctrl-C, so the `finally` blocks
    # remove the namespaces, daemons and iperf3 servers this run made.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    for binary in (AGENT, REMAPD):
        if not os.path.exists(binary):
            sys.exit(f"{binary} missing: cargo build --release -p remapd -p remapd-tests")
    configs = os.environ.get("CONFIGS", "plain split both-on-2 iptables nftables").split()
    links = os.environ.get("LINKS", "veth wg").split()
    if INTERLEAVE:
        return interleaved(links, configs)
    results = {}
    for link in links:
        for cfg in configs:
            cleanup()
            try:
                target = build(link, cfg)
                results[(link, cfg)] = measure(target)
                print(f"measured {link} {cfg}: {results[(link, cfg)]}", file=sys.stderr)
            finally:
                cleanup()
    print("| link | configuration | TCP 1 stream | TCP 4 streams | UDP 64 B delivered | UDP loss | ping p50 / p99 | CPU busy (TCP 1) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for link in links:
        for cfg in configs:
            base = results.get((link, base_of(cfg)))
            r = results[(link, cfg)]
            ratio = lambda k: f" ({100 * r[k] / base[k]:.0f}%)" if base and base[k] else ""
            print(f"| {link} | {cfg} | {r['tcp1']:.2f} Gbit/s{ratio('tcp1')} | {r['tcp4']:.2f} Gbit/s{ratio('tcp4')} | "
                  f"{r['udp_pps'] / 1000:.0f} kpps{ratio('udp_pps')} | {r['udp_loss']:.1f}% | "
                  f"{r['p50']:.0f} / {r['p99']:.0f} µs | {r['cpu']:.0f}% |")
    print()
    print("Spread (min–max over the runs) of each row:")
    print()
    print("| link | configuration | TCP 1 stream, Gbit/s | TCP 4 streams, Gbit/s | UDP 64 B, kpps |")
    print("|---|---|---:|---:|---:|")
    for link in links:
        for cfg in configs:
            r = results[(link, cfg)]
            rng = lambda k, scale=1.0: f"{r[k + '_range'][0] / scale:.2f}–{r[k + '_range'][1] / scale:.2f}"
            print(f"| {link} | {cfg} | {rng('tcp1')} | {rng('tcp4')} | {rng('udp_pps', 1000.0)} |")
    print()
    print(f"Medians of {RUNS} runs of {DUR} s each; percentages are against plain routing over the same link in this run. "
          "iperf3 server pinned to CPU 0, client to CPU 1 (2 cores in all).")


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
