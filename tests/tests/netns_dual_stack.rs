//! End-to-end, dual-stack: both clusters use 40.0.0.0/24 *and* fd00:40::/56 for pods
//! (the seed, in both families). One remapd per gateway, configured only through their
//! HTTP APIs, each side's exports piped into the other, for `split`, `both-on-2` and
//! `auto`. Ping, TCP and UDP cross the userspace WireGuard tunnel in both directions in
//! both families, and each server sees the source it should: cluster 1 sees cluster 2
//! at 30.0.0.0/24 and fd00:30::/56, cluster 2 sees cluster 1 at 60.0.0.0/24 and
//! fd00:60::/56. Under `split`, an IPv6 TCP transfer limited by a 1280-byte link inside
//! cluster 2 completes (the router's packet-too-big crosses the remap, quote and all),
//! and traceroute6 shows that router at its view. Deleting the peerings removes every
//! route of both families. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use remapd_tests::daemons::{Pair, PairSpec, explained_as_seen, reachable, strategy_of};
use remapd_tests::netns::{Netns, ping, tcp_transfer};
use remapd_tests::topology::{Network, dual_stack_cluster};
use serde_json::Value;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const PODS: [&str; 2] = ["40.0.0.0/24", "fd00:40::/56"];

/// Two daemons on the dual-stack seed, clusters configured, the peering set up through
/// exports.
fn pair(policy: &str) -> Pair {
    Pair::connect(
        Network::build(&dual_stack_cluster(), &dual_stack_cluster()),
        &PairSpec {
            policy,
            pods: &PODS,
            pools: [
                &["30.0.0.0/24", "fd00:30::/48"],
                &["60.0.0.0/24", "fd00:60::/48"],
            ],
            upload: None,
        },
    )
}

/// Every direction, both families.
fn traffic_flows(p: &Pair) {
    for (from, server, target, seen_as, port) in [
        (&p.net.pod1, &p.net.pod2, "30.0.0.1", "60.0.0.1", 7200),
        (&p.net.pod2, &p.net.pod1, "60.0.0.1", "30.0.0.1", 7300),
        (&p.net.pod1, &p.net.pod2, "fd00:30::1", "fd00:60::1", 7400),
        (&p.net.pod2, &p.net.pod1, "fd00:60::1", "fd00:30::1", 7500),
    ] {
        let real = if target.contains(':') {
            "fd00:40::1"
        } else {
            "40.0.0.1"
        };
        reachable(from, server, target, real, seen_as, port);
    }
}

/// Deleting the peerings leaves no route of either family behind (remapd's policy rules
/// stay while it runs, as with IPv4 alone).
fn delete_and_check_clean(p: &Pair) {
    for (d, ns, side) in [(&p.d1, &p.net.gw1, 1u8), (&p.d2, &p.net.gw2, 2)] {
        d.expect(
            "DELETE",
            &format!("/v1/peerings/{}", p.peering(side)),
            None,
            204,
        );
        let v6 = String::from_utf8_lossy(
            &ns.ip(&["-6", "route", "show", "table", "all", "proto", "78"])
                .stdout,
        )
        .into_owned();
        assert!(v6.trim().is_empty(), "IPv6 routes left: {v6}");
        let v4 = ns.table_routes(7878);
        assert!(v4.trim().is_empty(), "IPv4 routes left: {v4}");
    }
    let (_, rx) = ping(&p.net.pod1, ip("fd00:30::1"), 2, "0.2");
    assert_eq!(rx, 0, "after deletion nothing crosses");
}

/// While the peering is up, gw1 holds an IPv6 route to the view and the IPv6 rule that
/// reaches remapd's table, next to the IPv4 ones; the peer's allowed-ips hold both.
fn routes_and_rules_of_both_families(p: &Pair) {
    let v6 = String::from_utf8_lossy(
        &p.net
            .gw1
            .ip(&["-6", "route", "show", "table", "7878"])
            .stdout,
    )
    .into_owned();
    assert!(v6.contains("fd00:30::/56 dev rmd-"), "{v6}");
    let rules = String::from_utf8_lossy(&p.net.gw1.ip(&["-6", "rule"]).stdout).into_owned();
    assert!(rules.contains("lookup 7878"), "{rules}");
    let st =
        p.d1.expect("GET", &format!("/v1/peerings/{}", p.peering(1)), None, 200);
    let allowed: Vec<&str> = st["plan"]["allowed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(allowed.iter().any(|a| a.contains(':')), "{st}");
}

/// Cluster 2 gets an IPv6 router inside it: pod2 forwards to pod3 (fd00:40:0:1::130, in
/// cluster 2's pod CIDR) over a link whose MTU on the router's side is 1280, the IPv6
/// minimum (the tunnel's is 1420).
fn add_router_and_pod3(net: &Network) -> Netns {
    let pod3 = Netns::new(&format!("{}-pod3", net.prefix));
    net.pod2.ip(&[
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
    net.pod2.ip(&["link", "set", "r3", "mtu", "1280", "up"]);
    net.pod2.sysctl("net.ipv6.conf.all.forwarding", "1");
    net.pod2
        .ip(&["addr", "add", "fd00:40:0:1::1/64", "dev", "r3", "nodad"]);
    pod3.ip(&["addr", "add", "fd00:40:0:1::130/64", "dev", "eth0", "nodad"]);
    pod3.ip(&["link", "set", "eth0", "up"]);
    pod3.ip(&["link", "set", "lo", "up"]);
    pod3.ip(&["-6", "route", "add", "default", "via", "fd00:40:0:1::1"]);
    net.gw2.ip(&[
        "-6",
        "route",
        "add",
        "fd00:40:0:1::/64",
        "via",
        "fd00:40::1",
        "dev",
        "lan",
    ]);
    // ICMPv6 errors are rate limited per destination (1/s by default); traceroute6
    // asks for several in a row.
    for ns in [&net.gw1, &net.gw2, &net.pod2, &pod3] {
        ns.sysctl("net.ipv6.icmp.ratelimit", "0");
    }
    pod3
}

/// A 256 KiB IPv6 TCP transfer from pod1 to pod3 at its view: only a packet-too-big
/// from the router in cluster 2, translated on its way back through both gateways, lets
/// it finish; pod1's route cache then holds the 1280-byte path MTU. traceroute6 shows
/// that router at its view and reaches pod3.
fn pmtu_and_traceroute6_across_the_remap(net: &Network) {
    let pod3 = add_router_and_pod3(net);
    let target = ip("fd00:30:0:1::130");
    let (_, rx) = ping(&net.pod1, target, 3, "0.2");
    assert!(rx >= 2, "pod3 reachable at its view: {rx}/3");

    let (sent, got) = tcp_transfer(&pod3, &net.pod1, target, 8600, 256 * 1024);
    assert_eq!(got, sent, "the whole transfer arrived");
    let route = net.pod1.ip(&["-6", "route", "get", "fd00:30:0:1::130"]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("mtu 1280"), "pod1's route cache: {route}");

    let out = net
        .pod1
        .command("traceroute6")
        .args(["-n", "-q", "1", "-w", "1", "-m", "6", "fd00:30:0:1::130"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" fd00:30::1 "),
        "the router in cluster 2 at its view: {text}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.contains("fd00:30:0:1::130"),
        "destination reached: {text}"
    );
    drop(pod3);
}

fn run(policy: &str, expect1: &str, expect2: &str) -> Pair {
    let p = pair(policy);
    assert_eq!(
        strategy_of(&p.d1, &p.peering(1)),
        expect1,
        "{}",
        p.d1.log_text()
    );
    assert_eq!(
        strategy_of(&p.d2, &p.peering(2)),
        expect2,
        "{}",
        p.d2.log_text()
    );
    traffic_flows(&p);
    routes_and_rules_of_both_families(&p);
    // Explain agrees with the packets, in both families, at both gateways.
    for (d, to, seen_as) in [
        (&p.d1, "fd00:30::1", "fd00:60::1"),
        (&p.d2, "fd00:60::1", "fd00:30::1"),
        (&p.d1, "30.0.0.1", "60.0.0.1"),
    ] {
        let (from, real) = if to.contains(':') {
            ("fd00:40::1", "fd00:40::1")
        } else {
            ("40.0.0.1", "40.0.0.1")
        };
        explained_as_seen(d, from, to, real, seen_as);
    }
    p
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn dual_stack_split_with_pmtu_and_traceroute6() {
    let p = run("split", "split", "split");
    pmtu_and_traceroute6_across_the_remap(&p.net);
    delete_and_check_clean(&p);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn dual_stack_both_on_2() {
    let p = run("both-on-2", "both-on-remote", "both-on-local");
    delete_and_check_clean(&p);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn dual_stack_auto() {
    let p = run("auto", "split", "split");
    delete_and_check_clean(&p);
}
