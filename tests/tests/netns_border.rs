//! The tunnel ingress as a border, end to end over userspace WireGuard in namespaces:
//! a hostile peer gateway that widens its allowed-ips and routes cannot reach the victim
//! gateway's node address, its underlay address or an unexported local CIDR (both
//! strategies, `rp_filter=0` on the victim); malformed packets it injects never reach a
//! pod; traceroute and a PMTU-limited TCP transfer still work across the remap through a
//! router with a smaller MTU inside the remote cluster; and the hook counters equal the
//! packets sent. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::process::Output;
use std::time::{Duration, Instant};

use remapd::dataplane::trace::{KernelTraceFilter, KernelTraceTap, TraceTap};
use remapd::dataplane::{DataplaneStatus, Direction, HookStatus};
use remapd_common::drop_reason;
use remapd_tests::netns::{Netns, ping, tcp_transfer};
use remapd_tests::topology::{
    GatewayPlan, Topology, UNDERLAY_GW1, seed_both_on_2, seed_cluster, seed_split,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A node-network address of gateway 1: outside everything cluster 1 exported.
const NODE_ADDR: &str = "10.99.0.1";
/// A local pod subnet cluster 1 did not export, behind gateway 1 (pod1 holds .1).
const UNEXPORTED_POD: &str = "40.0.1.1";

fn hook(status: &DataplaneStatus, interface: &str, direction: Direction) -> HookStatus {
    status
        .hooks
        .iter()
        .find(|h| h.interface == interface && h.direction == direction)
        .cloned()
        .unwrap_or_else(|| panic!("no {direction} hook on {interface}: {:?}", status.hooks))
}

fn dropped(status: &DataplaneStatus, interface: &str, reason: &str) -> u64 {
    hook(status, interface, Direction::Ingress)
        .dropped
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// Victim-side preparation on gateway 1: a node address, an unexported pod subnet, and
/// `rp_filter=0` everywhere (common with several CNIs), so only the dataplane stands
/// between the peer and these addresses.
fn prepare_victim(t: &Topology) {
    // (No dummy interfaces on every kernel: the node address sits on loopback.)
    t.gw1.ip(&["link", "set", "lo", "up"]);
    t.gw1
        .ip(&["addr", "add", &format!("{NODE_ADDR}/32"), "dev", "lo"]);
    t.pod1.ip(&[
        "addr",
        "add",
        &format!("{UNEXPORTED_POD}/24"),
        "dev",
        "eth0",
    ]);
    t.gw1.ip(&["addr", "add", "40.0.1.2/24", "dev", "lan"]);
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
        "net.ipv4.conf.lan.rp_filter",
    ] {
        t.gw1.sysctl(key, "0");
    }
    t.gw1
        .sysctl(&format!("net.ipv4.conf.{}.rp_filter", t.wg1.name), "0");
}

/// The hostile peer (gateway 2): widens its WireGuard allowed-ips to everything and
/// routes traffic from its cluster to `targets` into the tunnel (policy routing from its
/// LAN, so its own tunnel endpoint traffic keeps the underlay).
fn widen_attacker(t: &Topology, targets: &[&str]) {
    let wg = &t.wg2.name;
    let out = t
        .gw2
        .command("wg")
        .args(["show", wg, "peers"])
        .output()
        .unwrap();
    let peer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let status = t
        .gw2
        .command("wg")
        .args(["set", wg, "peer", &peer, "allowed-ips", "0.0.0.0/0"])
        .status()
        .unwrap();
    assert!(status.success(), "wg set on the attacker");
    t.gw2.ip(&[
        "rule", "add", "iif", "lan", "lookup", "4242", "priority", "100",
    ]);
    for target in targets {
        t.gw2
            .ip(&["route", "add", target, "dev", wg, "table", "4242"]);
    }
}

/// Sends `count` UDP datagrams from `client` to `target:port` and counts what a socket
/// bound to `0.0.0.0:port` in `server` receives within a second of the last one.
fn udp_received(server: &Netns, client: &Netns, target: Ipv4Addr, port: u16, count: u32) -> u32 {
    let sock = server.in_ns(move || UdpSocket::bind(("0.0.0.0", port)).expect("bind udp"));
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    client.in_ns(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind client");
        for i in 0..count {
            let _ = s.send_to(format!("probe {i}").as_bytes(), (target, port));
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if sock.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    got
}

/// Whether a TCP session from `client` to `target:port` (listener in `server`)
/// completes an exchange.
fn tcp_session(server: &Netns, client: &Netns, target: Ipv4Addr, port: u16) -> bool {
    let listener = server.in_ns(move || TcpListener::bind(("0.0.0.0", port)).expect("bind tcp"));
    listener.set_nonblocking(true).unwrap();
    let accepted = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = listener.accept() {
                s.set_nonblocking(false).unwrap();
                let _ = s.write_all(b"node service banner");
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let connected = client.in_ns(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&(target, port).into(), Duration::from_secs(2))
        else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    });
    accepted.join().unwrap() && connected
}

fn attack_targets() -> Vec<(&'static str, Ipv4Addr)> {
    vec![
        ("the node address", ip(NODE_ADDR)),
        ("the underlay address", ip(UNDERLAY_GW1)),
        ("an unexported local CIDR", ip(UNEXPORTED_POD)),
    ]
}

/// Runs the attack from pod2 through the widened gateway 2 and returns, per target, the
/// datagrams received on the victim side, and whether a TCP session to the node address
/// completed.
fn attack(t: &Topology, base_port: u16) -> (Vec<u32>, bool) {
    let mut got = Vec::new();
    for (i, (_, target)) in attack_targets().into_iter().enumerate() {
        let server = if target == ip(UNEXPORTED_POD) {
            &t.pod1
        } else {
            &t.gw1
        };
        got.push(udp_received(
            server,
            &t.pod2,
            target,
            base_port + i as u16,
            10,
        ));
    }
    let tcp = tcp_session(&t.gw1, &t.pod2, ip(NODE_ADDR), base_port + 10);
    (got, tcp)
}

fn hostile_peer_is_contained(plans: (GatewayPlan, GatewayPlan)) {
    let (plan1, plan2) = plans;
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    prepare_victim(&t);
    // The attacker runs no border of its own (it would drop the victim's replies).
    t.apply(
        2,
        &GatewayPlan {
            border: None,
            ..plan2.clone()
        },
    );
    // First without the border: the attack must work, or this test proves nothing.
    let no_border = GatewayPlan {
        border: None,
        ..plan1.clone()
    };
    t.apply(1, &no_border);
    let targets: Vec<String> = attack_targets()
        .iter()
        .map(|(_, a)| format!("{a}/32"))
        .collect();
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    widen_attacker(&t, &refs);
    let (got, tcp) = attack(&t, 8100);
    assert!(
        got.iter().all(|n| *n > 0) && tcp,
        "without a border the widened peer reaches every target ({got:?}, tcp {tcp}): the attack setup works"
    );

    // With the border: nothing arrives, and every datagram is counted as not exported.
    t.apply(1, &plan1);
    // The victim traces its drops meanwhile (the daemon's tap on the same pinned maps).
    let mut tap = KernelTraceTap::open_pinned(&t.dataplane_config(1)).unwrap();
    let drops_only = KernelTraceFilter {
        translated: Some(false),
        ..KernelTraceFilter::default()
    };
    tap.set(Some(&drops_only)).unwrap();
    let before = dropped(&t.status(1), &t.wg1.name, "not_exported");
    let (got, tcp) = attack(&t, 8200);
    for ((what, _), n) in attack_targets().iter().zip(&got) {
        assert_eq!(*n, 0, "the peer reached {what} through the border");
    }
    assert!(!tcp, "the peer opened a TCP session to a node service");
    let after = dropped(&t.status(1), &t.wg1.name, "not_exported");
    // 10 datagrams per target, plus the TCP SYN and its retransmissions.
    assert!(after - before >= 31, "drops counted: {before} -> {after}");
    // The trace shows each of those drops, with its reason and the target.
    let mut events = vec![];
    tap.drain(&mut events, usize::MAX);
    let lost = tap.lost().unwrap();
    tap.set(None).unwrap();
    let name = t.wg1.name.clone();
    let wg1 = t
        .gw1
        .in_ns(move || nix::net::if_::if_nametoindex(name.as_str()).unwrap());
    let not_exported: Vec<_> = events
        .iter()
        .filter(|e| e.ifindex == wg1 && usize::from(e.reason) == drop_reason::NOT_EXPORTED)
        .copied()
        .collect();
    assert_eq!(lost, 0);
    assert_eq!(
        not_exported.len() as u64,
        after - before,
        "one trace event per counted drop"
    );
    for (what, target) in attack_targets() {
        assert!(
            not_exported
                .iter()
                .any(|e| e.dst_before == u32::from(target)
                    && e.verdict == remapd_common::TRACE_DROPPED as u8),
            "no drop of the packets to {what} in the trace"
        );
    }
    // The peering itself still works.
    let (_, rx) = ping(&t.pod1, ip("30.0.0.1"), 3, "0.2");
    assert!(rx >= 2, "the peering still works: {rx}/3");
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn hostile_peer_is_contained_split() {
    hostile_peer_is_contained(seed_split());
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn hostile_peer_is_contained_both_on_2() {
    // Gateway 1 is the routing-only side here (no rules at all): its border alone
    // must stop the peer.
    hostile_peer_is_contained(seed_both_on_2());
}

/// Injects raw IPv4 packets (hex) from gateway 2 into the tunnel, as a hostile peer
/// would: a raw socket with a mark that policy routing sends into the tunnel.
fn inject(t: &Topology, packets: &[Vec<u8>]) -> Output {
    let hex: Vec<String> = packets
        .iter()
        .map(|p| p.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
         s.setsockopt(socket.SOL_SOCKET, 36, 0x4242)\n\
         for h in {hex:?}:\n\
         \x20   p = bytes.fromhex(h)\n\
         \x20   s.sendto(p, (socket.inet_ntoa(p[16:20]), 0))\n"
    );
    let out = t
        .gw2
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Counts the IPv4 packets pod1's stack receives from `src` (any protocol in `protos`)
/// while `during` runs, with raw sockets.
fn received_by_pod1(t: &Topology, src: &str, protos: &[u8], during: impl FnOnce()) -> u32 {
    let script = format!(
        "import socket, select, time\n\
         socks = [socket.socket(socket.AF_INET, socket.SOCK_RAW, p) for p in {protos:?}]\n\
         print('ready', flush=True)\n\
         n = 0\n\
         end = time.time() + 3\n\
         while time.time() < end:\n\
         \x20   r, _, _ = select.select(socks, [], [], 0.1)\n\
         \x20   for s in r:\n\
         \x20       d, a = s.recvfrom(65535)\n\
         \x20       if a[0] == '{src}': n += 1\n\
         print(n, flush=True)\n"
    );
    let mut child = t
        .pod1
        .command("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).unwrap();
    during();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    child.wait().unwrap();
    rest.trim().parse().unwrap()
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn injected_malformed_packets_never_reach_a_pod() {
    let (plan1, plan2) = seed_split();
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    prepare_victim(&t);
    t.apply(1, &plan1);
    t.apply(2, &plan2);
    t.gw2.ip(&[
        "rule", "add", "fwmark", "0x4242", "lookup", "4243", "priority", "100",
    ]);
    t.gw2.ip(&[
        "route",
        "add",
        "default",
        "dev",
        &t.wg2.name,
        "table",
        "4243",
    ]);
    // The peer's real pod address, which overlaps cluster 1's own pod CIDR: passed
    // untranslated it would reach pod1 as a local-looking source.
    let spoof = [40, 0, 0, 9];
    let pod1 = [40, 0, 0, 1];
    // A well-formed UDP datagram through the same path arrives, translated: the
    // injection path works, so the zero below means something.
    let mut good = vec![0x13, 0x88, 0x13, 0x89, 0, 12, 0, 0];
    good.extend_from_slice(b"good");
    let got = received_by_pod1(&t, "30.0.0.9", &[17], || {
        inject(&t, &[ipv4(spoof, pod1, 17, &good)]);
    });
    assert_eq!(
        got, 1,
        "a well-formed injected datagram arrives, translated"
    );

    let before = dropped(&t.status(1), &t.wg1.name, "malformed");
    let malformed = vec![
        // TCP cut before its checksum.
        ipv4(spoof, pod1, 6, &[0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0]),
        // UDP cut before its checksum.
        ipv4(spoof, pod1, 17, &[0x13, 0x88, 0x13]),
        // An ICMP error quoting a non-IPv4 header.
        ipv4(
            spoof,
            pod1,
            1,
            &[3, 1, 0, 0, 0, 0, 0, 0, 0x65, 0, 0, 20, 0, 0, 0, 0],
        ),
        // An ICMP error quoting nothing.
        ipv4(spoof, pod1, 1, &[11, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let got = received_by_pod1(&t, "40.0.0.9", &[1, 6, 17], || {
        inject(&t, &malformed);
    });
    assert_eq!(
        got, 0,
        "a malformed packet reached pod1 with a local-looking source"
    );
    let got_translated = received_by_pod1(&t, "30.0.0.9", &[1, 6, 17], || {
        inject(&t, &malformed);
    });
    assert_eq!(got_translated, 0, "a malformed packet reached pod1");
    let after = dropped(&t.status(1), &t.wg1.name, "malformed");
    assert_eq!(
        after - before,
        2 * malformed.len() as u64,
        "each one counted"
    );
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn counters_equal_the_packets_sent() {
    let (plan1, plan2) = seed_split();
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    t.apply(1, &plan1);
    t.apply(2, &plan2);
    // Only the pings may cross the tunnel while counting: no IPv6 link-local chatter.
    for (gw, wg) in [(&t.gw1, &t.wg1.name), (&t.gw2, &t.wg2.name)] {
        gw.sysctl(&format!("net.ipv6.conf.{wg}.disable_ipv6"), "1");
    }
    // Let the tunnel come up, then measure a clean burst.
    let (_, rx) = ping(&t.pod1, ip("30.0.0.1"), 3, "0.2");
    assert!(rx >= 2);
    let before = t.status(1);
    let sent = 20;
    let (tx, rx) = ping(&t.pod1, ip("30.0.0.1"), sent, "0.02");
    assert_eq!((tx, rx), (sent, sent), "all pings answered");
    let after = t.status(1);
    for direction in [Direction::Egress, Direction::Ingress] {
        let (b, a) = (
            hook(&before, &t.wg1.name, direction),
            hook(&after, &t.wg1.name, direction),
        );
        assert_eq!(
            a.packets - b.packets,
            u64::from(sent),
            "{direction} packets"
        );
        assert_eq!(
            a.translated - b.translated,
            u64::from(sent),
            "{direction} translated"
        );
        assert!(a.dropped.is_empty(), "{direction} drops: {:?}", a.dropped);
    }
    // Each rule counted each packet once.
    for (b, a) in before.rules.iter().zip(&after.rules) {
        assert_eq!(a.packets - b.packets, u64::from(sent), "rule {}", a.rule);
    }
}

/// Cluster 2 gets a router inside it: pod2 forwards to pod3 (40.0.0.130) over a link
/// whose MTU on the router's side is 1000.
fn add_router_and_pod3(t: &Topology) -> Netns {
    let pod3 = Netns::new(&format!("{}-pod3", t.prefix));
    t.pod2.ip(&[
        "link",
        "add",
        "r3",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod3.name(),
    ]);
    t.pod2.ip(&["link", "set", "r3", "mtu", "1000", "up"]);
    t.pod2.ip(&["route", "add", "40.0.0.130/32", "dev", "r3"]);
    t.pod2.sysctl("net.ipv4.ip_forward", "1");
    pod3.ip(&["addr", "add", "40.0.0.130/32", "dev", "eth0"]);
    pod3.ip(&["link", "set", "eth0", "up"]);
    pod3.ip(&["link", "set", "lo", "up"]);
    pod3.ip(&[
        "route", "add", "default", "via", "40.0.0.1", "dev", "eth0", "onlink",
    ]);
    t.gw2.ip(&[
        "route",
        "add",
        "40.0.0.130/32",
        "via",
        "40.0.0.1",
        "dev",
        "lan",
    ]);
    pod3
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn pmtu_and_traceroute_work_across_the_remap() {
    let (plan1, plan2) = seed_split();
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    t.apply(1, &plan1);
    t.apply(2, &plan2);
    let pod3 = add_router_and_pod3(&t);
    let (_, rx) = ping(&t.pod1, ip("30.0.0.130"), 3, "0.2");
    assert!(rx >= 2, "pod3 reachable at its view: {rx}/3");

    // A 256 KiB TCP transfer from pod1 to pod3: pod1 starts with full-size segments;
    // only a frag-needed from the router, translated on the way back, lets it finish.
    let (sent, got) = tcp_transfer(&pod3, &t.pod1, ip("30.0.0.130"), 8300, 256 * 1024);
    assert_eq!(got, sent, "the whole transfer arrived");
    // The router's frag-needed really crossed the remap: pod1 learnt the path MTU.
    let route = t.pod1.ip(&["route", "get", "30.0.0.130"]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("mtu 1000"), "pod1's route cache: {route}");

    // traceroute reaches pod3 and shows the router inside cluster 2 at its view.
    let out = t
        .pod1
        .command("traceroute")
        .args(["-n", "-q", "1", "-w", "1", "-m", "6", "30.0.0.130"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 30.0.0.1 "),
        "router hop at its view: {text}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(last.contains("30.0.0.130"), "destination reached: {text}");
    drop(pod3);
}
