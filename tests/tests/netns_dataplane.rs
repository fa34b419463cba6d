//! End-to-end: two clusters with the same pod CIDR (and, in the asymmetric test,
//! different ones) reach each other through gateways joined by a userspace WireGuard
//! tunnel, with translation rules put into the maps through the daemon's dataplane
//! module. Real packets cross real namespaces. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use remapd::dataplane::{AddressField, Direction};
use remapd_tests::netns::{ping, tcp_exchange, udp_exchange};
use remapd_tests::topology::{
    Cluster, GatewayPlan, Topology, seed_both_on_2, seed_cluster, seed_split,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// pod `from` reaches `target` (which is `real` in the other cluster) by ping, TCP and
/// UDP; the server namespace sees the client as `seen_as`, and replies come back from
/// `target`.
fn assert_reachable(t: &Topology, from: u8, target: &str, real: &str, seen_as: &str, port: u16) {
    let (client, server) = if from == 1 {
        (&t.pod1, &t.pod2)
    } else {
        (&t.pod2, &t.pod1)
    };
    let target = ip(target);
    let (tx, rx) = ping(client, target, 3, "0.2");
    assert!(
        tx == 3 && rx >= 2,
        "pod{from} -> {target}: ping {rx}/{tx} replies"
    );
    let tcp = tcp_exchange(server, client, target, port, b"hello over tcp");
    assert_eq!(tcp.reply, b"echo:hello over tcp");
    assert_eq!(
        tcp.server_saw_peer,
        ip(seen_as),
        "TCP: the server saw the client as"
    );
    assert_eq!(tcp.client_saw_reply_from, target);
    let udp = udp_exchange(
        server,
        ip(real),
        client,
        target,
        port + 1,
        b"hello over udp",
    );
    assert_eq!(udp.reply, b"echo:hello over udp");
    assert_eq!(
        udp.server_saw_peer,
        ip(seen_as),
        "UDP: the server saw the client as"
    );
    assert_eq!(
        udp.client_saw_reply_from, target,
        "UDP reply must come from the address pod{from} used"
    );
}

fn run_seed(plans: (GatewayPlan, GatewayPlan)) -> Topology {
    let (plan1, plan2) = plans;
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    // Before any rule exists the remapped address is unreachable: the test can fail.
    let (_, rx) = ping(&t.pod1, ip("30.0.0.1"), 2, "0.2");
    assert_eq!(rx, 0, "no translation yet, so 30.0.0.1 must not answer");
    let r1 = t.apply(1, &plan1);
    let r2 = t.apply(2, &plan2);
    assert_eq!(r1.inserted, plan1.rules.len());
    assert_eq!(r2.inserted, plan2.rules.len());
    assert_reachable(&t, 1, "30.0.0.1", "40.0.0.1", "60.0.0.1", 7000);
    assert_reachable(&t, 2, "60.0.0.1", "40.0.0.1", "30.0.0.1", 7100);
    // Re-applying the same rules changes nothing.
    assert!(t.apply(1, &plan1).is_noop());
    assert!(t.apply(2, &plan2).is_noop());
    // Every rule counted traffic.
    for (gw, plan) in [(1u8, &plan1), (2, &plan2)] {
        let status = t.status(gw);
        assert_eq!(status.rules.len(), plan.rules.len());
        for rule in &status.rules {
            assert!(
                rule.packets > 0 && rule.bytes > 0,
                "gw{gw} rule {} counted nothing",
                rule.rule
            );
        }
        for hook in &status.hooks {
            assert!(
                hook.dropped.is_empty(),
                "gw{gw} {} {} dropped legitimate traffic: {:?}",
                hook.interface,
                hook.direction,
                hook.dropped
            );
        }
    }
    t
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn seed_split_strategy() {
    let t = run_seed(seed_split());
    // Both gateways have programs only on their tunnel, in both directions.
    for gw in [1, 2] {
        let status = t.status(gw);
        assert_eq!(
            status.attachments.len(),
            2,
            "gw{gw}: {:?}",
            status.attachments
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn seed_both_on_2_strategy() {
    let t = run_seed(seed_both_on_2());
    // Gateway 1 only routes: no rules, and only its ingress border is attached.
    let status = t.status(1);
    assert!(status.rules.is_empty(), "gateway 1 only routes");
    assert_eq!(status.attachments.len(), 1, "{:?}", status.attachments);
    assert_eq!(status.attachments[0].direction, Direction::Ingress);
    assert!(status.hooks[0].border && status.hooks[0].packets > 0);
    assert_eq!(t.status(2).attachments.len(), 2);
}

/// Cluster 1: pods 10.1.0.0/16, seen by cluster 2 as 172.21.0.0/16. Cluster 2: pods
/// 10.1.0.0/16 and 10.2.0.0/24, seen by cluster 1 as 172.20.0.0/16 and 192.168.7.0/24.
fn asymmetric_clusters() -> (Cluster, Cluster) {
    (
        Cluster {
            subnets: vec![("10.1.0.1/16", "10.1.3.5/16")],
        },
        Cluster {
            subnets: vec![
                ("10.1.0.1/16", "10.1.0.7/16"),
                ("10.2.0.1/24", "10.2.0.9/24"),
            ],
        },
    )
}

fn asymmetric_checks(t: &Topology) {
    // pod1 reaches both of cluster 2's subnets through their remapped views, and is seen
    // as 172.21.3.5 (host bits kept across the /16).
    assert_reachable(t, 1, "172.20.0.7", "10.1.0.7", "172.21.3.5", 7200);
    assert_reachable(t, 1, "192.168.7.9", "10.2.0.9", "172.21.3.5", 7300);
    // pod2 reaches pod1 at 172.21.3.5 and is seen as 172.20.0.7.
    assert_reachable(t, 2, "172.21.3.5", "10.1.3.5", "172.20.0.7", 7400);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn asymmetric_cidrs_split() {
    use AddressField::*;
    use Direction::*;
    let (c1, c2) = asymmetric_clusters();
    let plan1 = GatewayPlan {
        rules: vec![
            (Egress, Destination, "172.20.0.0/16", "10.1.0.0/16"),
            (Egress, Destination, "192.168.7.0/24", "10.2.0.0/24"),
            (Ingress, Source, "10.1.0.0/16", "172.20.0.0/16"),
            (Ingress, Source, "10.2.0.0/24", "192.168.7.0/24"),
        ],
        routes: vec!["172.20.0.0/16", "192.168.7.0/24"],
        allowed_ips: vec!["10.1.0.0/16", "10.2.0.0/24"],
        border: Some((vec!["172.20.0.0/16", "192.168.7.0/24"], vec!["10.1.0.0/16"])),
    };
    let plan2 = GatewayPlan {
        rules: vec![
            (Ingress, Source, "10.1.0.0/16", "172.21.0.0/16"),
            (Egress, Destination, "172.21.0.0/16", "10.1.0.0/16"),
        ],
        routes: vec!["172.21.0.0/16"],
        allowed_ips: vec!["10.1.0.0/16"],
        border: Some((vec!["172.21.0.0/16"], vec!["10.1.0.0/16", "10.2.0.0/24"])),
    };
    let t = Topology::build(&c1, &c2, &plan1, &plan2);
    t.apply(1, &plan1);
    t.apply(2, &plan2);
    asymmetric_checks(&t);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn asymmetric_cidrs_both_on_2() {
    use AddressField::*;
    use Direction::*;
    let (c1, c2) = asymmetric_clusters();
    let plan1 = GatewayPlan {
        rules: vec![],
        routes: vec!["172.20.0.0/16", "192.168.7.0/24"],
        allowed_ips: vec!["172.20.0.0/16", "192.168.7.0/24"],
        border: Some((vec!["172.20.0.0/16", "192.168.7.0/24"], vec!["10.1.0.0/16"])),
    };
    let plan2 = GatewayPlan {
        rules: vec![
            (Ingress, Destination, "172.20.0.0/16", "10.1.0.0/16"),
            (Ingress, Destination, "192.168.7.0/24", "10.2.0.0/24"),
            (Ingress, Source, "10.1.0.0/16", "172.21.0.0/16"),
            (Egress, Source, "10.1.0.0/16", "172.20.0.0/16"),
            (Egress, Source, "10.2.0.0/24", "192.168.7.0/24"),
            (Egress, Destination, "172.21.0.0/16", "10.1.0.0/16"),
        ],
        routes: vec!["172.21.0.0/16"],
        allowed_ips: vec!["10.1.0.0/16"],
        border: Some((vec!["172.21.0.0/16"], vec!["10.1.0.0/16", "10.2.0.0/24"])),
    };
    let t = Topology::build(&c1, &c2, &plan1, &plan2);
    t.apply(1, &plan1);
    t.apply(2, &plan2);
    asymmetric_checks(&t);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn changing_and_removing_rules_is_exact() {
    let (plan1, plan2) = seed_split();
    let t = run_seed((plan1.clone(), plan2.clone()));
    // Remove everything on gateway 1: rules and attachments go, traffic stops.
    let report = t.apply(1, &GatewayPlan::default());
    assert_eq!(report.removed, plan1.rules.len());
    assert_eq!(report.detached, 2);
    let status = t.status(1);
    assert!(status.rules.is_empty() && status.attachments.is_empty());
    let (_, rx) = ping(&t.pod1, ip("30.0.0.1"), 2, "0.2");
    assert_eq!(rx, 0, "without rules 30.0.0.1 is unreachable again");
    // And back.
    t.apply(1, &plan1);
    let (_, rx) = ping(&t.pod1, ip("30.0.0.1"), 3, "0.2");
    assert!(rx >= 2, "translation restored");
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn netlink_clsact_fallback_attaches_and_detaches() {
    use remapd::dataplane::AttachMode;
    let (plan1, plan2) = seed_split();
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    let r1 = t.apply_with(1, &plan1, AttachMode::Netlink);
    assert_eq!(r1.attached, 2);
    t.apply_with(2, &plan2, AttachMode::Netlink);
    assert_reachable(&t, 1, "30.0.0.1", "40.0.0.1", "60.0.0.1", 7500);
    // The filters are classic clsact filters, visible to tc (kernel program names are
    // cut to 15 characters), and marked in the pin dir.
    let filters = |dir: &str| tc_filters(&t, dir);
    assert!(
        filters("egress").contains("remapd_l3_egres"),
        "{}",
        filters("egress")
    );
    assert!(filters("ingress").contains("remapd_l3_ingre"));
    let status = t.status(1);
    assert!(
        status.attachments.iter().all(|a| a.mechanism == "netlink"),
        "{:?}",
        status.attachments
    );
    // A second apply adopts the markers instead of attaching again.
    assert!(t.apply_with(1, &plan1, AttachMode::Netlink).is_noop());
    // Removing the rules removes the filters.
    let report = t.apply_with(1, &GatewayPlan::default(), AttachMode::Netlink);
    assert_eq!(report.detached, 2);
    assert!(
        !filters("egress").contains("remapd"),
        "{}",
        filters("egress")
    );
    assert!(!filters("ingress").contains("remapd"));
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn an_older_layout_is_retired_before_this_one_attaches() {
    // A gateway upgraded from an older remapd: its pins sit under an older layout
    // version, its netlink filters at the priority and handle this version uses. The
    // new dataplane detaches them before attaching its own (the kernel refuses a second
    // filter there, and two programs on a hook would translate twice).
    use remapd::dataplane::{AttachMode, PIN_LAYOUT_VERSION};
    let (plan1, plan2) = seed_split();
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    t.apply_with(1, &plan1, AttachMode::Netlink);
    t.apply_with(2, &plan2, AttachMode::Netlink);
    let pins = t.dataplane_config(1).pin_dir;
    // What an older version left: the same objects, under its layout directory.
    std::fs::rename(pins.join(PIN_LAYOUT_VERSION), pins.join("v2")).unwrap();
    let ids = |dir: &str| {
        tc_filters(&t, dir)
            .split_whitespace()
            .skip_while(|w| *w != "id")
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let old_egress = ids("egress");
    assert!(!old_egress.is_empty());

    let report = t.apply_with(1, &plan1, AttachMode::Netlink);
    assert_eq!(report.attached, 2, "{report:?}");
    assert!(!pins.join("v2").exists(), "the older layout is gone");
    assert!(pins.join(PIN_LAYOUT_VERSION).exists());
    let new_egress = ids("egress");
    assert!(
        !new_egress.is_empty() && new_egress != old_egress,
        "{old_egress} -> {new_egress}"
    );
    // One filter per hook, and traffic still crosses, translated once.
    let text = tc_filters(&t, "egress");
    assert_eq!(
        text.lines().filter(|l| l.contains(" handle ")).count(),
        1,
        "{text}"
    );
    assert_reachable(&t, 1, "30.0.0.1", "40.0.0.1", "60.0.0.1", 7501);
}

/// What `tc filter show` lists on gateway 1's tunnel in `dir` (`ingress`/`egress`).
fn tc_filters(t: &Topology, dir: &str) -> String {
    let out = t
        .gw1
        .command("tc")
        .args(["filter", "show", "dev", &t.wg1.name, dir])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
