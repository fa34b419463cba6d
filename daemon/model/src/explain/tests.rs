//! The explainer on the seed pair: both clusters on 40.0.0.0/24; cluster-1 sees
//! cluster-2 at 30.0.0.0/24, cluster-2 sees cluster-1 at 60.0.0.0/24.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn local() -> LocalCluster {
    LocalCluster {
        name: "cluster-1".into(),
        pod_cidrs: vec![net("40.0.0.0/24")],
        service_cidrs: vec![],
        reserved_cidrs: vec![net("192.168.0.0/24")],
        remap_pool: vec![net("30.0.0.0/16")],
    }
}

fn remote(view: Option<Vec<Mapping>>) -> RemoteCluster {
    RemoteCluster {
        name: "cluster-2".into(),
        pod_cidrs: vec![net("40.0.0.0/24")],
        service_cidrs: vec![],
        capabilities: Capabilities {
            nat_dataplane: true,
        },
        view_of_local: view,
    }
}

fn map(real: &str, remapped: &str) -> Mapping {
    Mapping {
        real: net(real),
        remapped: net(remapped),
    }
}

fn seed_view() -> Option<Vec<Mapping>> {
    Some(vec![map("40.0.0.0/24", "60.0.0.0/24")])
}

fn plan_for(strategy: Strategy, remote: &RemoteCluster) -> GatewayPlan {
    compile(
        &local(),
        Capabilities {
            nat_dataplane: true,
        },
        remote,
        "wg-c2",
        &Decision {
            strategy,
            mappings: vec![map("40.0.0.0/24", "30.0.0.0/24")],
        },
    )
    .unwrap()
}

fn path<'a>(remote: &'a RemoteCluster, plan: Option<&'a GatewayPlan>) -> PeeringPath<'a> {
    PeeringPath {
        name: "c2",
        remote,
        interface: "wg-c2",
        plan,
        problem: None,
        peer_public_key: Some("KEY"),
        endpoint: Some("192.0.2.2:51820".into()),
    }
}

fn addrs(source: &str, destination: &str) -> Addresses {
    Addresses {
        source: ip(source),
        destination: ip(destination),
    }
}

fn kinds(leg: &Leg) -> Vec<(Gateway, StepKind)> {
    leg.steps.iter().map(|s| (s.gateway, s.kind)).collect()
}

use Gateway::{Local as L, Peer as P};
use StepKind::*;

#[test]
fn split_outbound_names_every_rewrite_on_both_sides_and_the_reply() {
    let remote = remote(seed_view());
    let plan = plan_for(Strategy::Split, &remote);
    let paths = [path(&remote, Some(&plan))];
    let got = explain(&local(), &paths, ip("40.0.0.5"), ip("30.0.0.7"), None).unwrap();
    assert_eq!(got.len(), 1);
    let e = &got[0];
    assert_eq!(e.direction, PathDirection::Outbound);
    assert_eq!(e.strategy, Some(Strategy::Split));
    assert_eq!(e.peer_public_key.as_deref(), Some("KEY"));
    assert_eq!(
        kinds(&e.request),
        [
            (L, Route),
            (L, EgressRewrite),
            (L, WireguardSend),
            (P, WireguardReceive),
            (P, IngressRewrite),
            (P, Border),
            (P, Deliver)
        ]
    );
    // The tunnel carries real addresses: after our egress, before the peer's ingress.
    assert_eq!(e.request.steps[1].packet, addrs("40.0.0.5", "40.0.0.7"));
    let rule = e.request.steps[1].rule.as_ref().unwrap();
    assert_eq!(
        (rule.direction, rule.field),
        (Direction::Egress, AddressField::Destination)
    );
    assert_eq!(
        (rule.from, rule.to),
        (net("30.0.0.0/24"), net("40.0.0.0/24"))
    );
    assert_eq!(e.request.verdict.outcome, Outcome::Delivered);
    assert_eq!(e.request.received, Some(addrs("60.0.0.5", "40.0.0.7")));
    let reply = e.reply.as_ref().unwrap();
    assert_eq!(reply.sent, addrs("40.0.0.7", "60.0.0.5"));
    assert_eq!(
        kinds(reply),
        [
            (P, Route),
            (P, EgressRewrite),
            (P, WireguardSend),
            (L, WireguardReceive),
            (L, IngressRewrite),
            (L, Border),
            (L, Deliver)
        ]
    );
    assert_eq!(reply.received, Some(addrs("30.0.0.7", "40.0.0.5")));
}

#[test]
fn split_inbound_says_what_the_local_pod_sees() {
    let remote = remote(seed_view());
    let plan = plan_for(Strategy::Split, &remote);
    let paths = [path(&remote, Some(&plan))];
    let got = explain(&local(), &paths, ip("40.0.0.7"), ip("60.0.0.5"), None).unwrap();
    assert_eq!(got.len(), 1);
    let e = &got[0];
    assert_eq!(e.direction, PathDirection::Inbound);
    assert_eq!(e.request.steps[0].kind, Route);
    assert_eq!(e.request.steps[0].gateway, P);
    assert_eq!(e.request.received, Some(addrs("30.0.0.7", "40.0.0.5")));
    assert_eq!(
        e.reply.as_ref().unwrap().received,
        Some(addrs("60.0.0.5", "40.0.0.7"))
    );
}

#[test]
fn both_on_local_rewrites_both_addresses_here_and_nothing_at_the_peer() {
    let remote = remote(seed_view());
    let plan = plan_for(Strategy::BothOnLocal, &remote);
    let paths = [path(&remote, Some(&plan))];
    let e = &explain(&local(), &paths, ip("40.0.0.5"), ip("30.0.0.7"), None).unwrap()[0];
    let rewrites: Vec<_> = e
        .request
        .steps
        .iter()
        .filter(|s| matches!(s.kind, EgressRewrite | IngressRewrite))
        .map(|s| (s.gateway, s.kind))
        .collect();
    assert_eq!(rewrites, [(L, EgressRewrite), (L, EgressRewrite)]);
    assert_eq!(e.request.steps[2].packet, addrs("60.0.0.5", "40.0.0.7"));
    assert_eq!(e.request.received, Some(addrs("60.0.0.5", "40.0.0.7")));
    let reply = e.reply.as_ref().unwrap();
    assert_eq!(reply.received, Some(addrs("30.0.0.7", "40.0.0.5")));
    assert!(
        reply
            .steps
            .iter()
            .filter(|s| s.rule.is_some())
            .all(|s| s.gateway == L)
    );
}

#[test]
fn both_on_remote_leaves_every_rewrite_to_the_peer() {
    let remote = remote(seed_view());
    let plan = plan_for(Strategy::BothOnRemote, &remote);
    let paths = [path(&remote, Some(&plan))];
    let e = &explain(&local(), &paths, ip("40.0.0.5"), ip("30.0.0.7"), None).unwrap()[0];
    assert!(
        e.request
            .steps
            .iter()
            .filter(|s| s.rule.is_some())
            .all(|s| s.gateway == P)
    );
    // The tunnel carries our real source and the peer's view of... our view of it.
    let sent = e
        .request
        .steps
        .iter()
        .find(|s| s.kind == WireguardSend)
        .unwrap();
    assert_eq!(sent.packet, addrs("40.0.0.5", "30.0.0.7"));
    assert_eq!(e.request.received, Some(addrs("60.0.0.5", "40.0.0.7")));
    assert_eq!(
        e.reply.as_ref().unwrap().received,
        Some(addrs("30.0.0.7", "40.0.0.5"))
    );
}

#[test]
fn a_destination_we_never_exported_is_dropped_at_our_border() {
    // The peer's (stale or hostile) exports claim a view of a prefix we do not have.
    let remote = remote(Some(vec![
        map("40.0.0.0/24", "60.0.0.0/24"),
        map("40.0.1.0/24", "60.0.1.0/24"),
    ]));
    let plan = plan_for(Strategy::Split, &remote);
    let paths = [path(&remote, Some(&plan))];
    let e = &explain(&local(), &paths, ip("40.0.0.7"), ip("60.0.1.9"), None).unwrap()[0];
    assert_eq!(e.request.verdict.outcome, Outcome::Dropped);
    assert_eq!(e.request.verdict.gateway, L);
    assert_eq!(e.request.verdict.reason, Some(DropReason::NotExported));
    assert!(e.request.verdict.detail.contains("40.0.1.9"), "{e:?}");
    assert!(e.reply.is_none());
}

#[test]
fn allowed_ips_that_miss_the_destination_drop_at_wireguard() {
    let remote = remote(seed_view());
    let mut plan = plan_for(Strategy::Split, &remote);
    plan.allowed_ips = vec![net("40.0.0.0/28")];
    let paths = [path(&remote, Some(&plan))];
    let e = &explain(&local(), &paths, ip("40.0.0.5"), ip("30.0.0.77"), None).unwrap()[0];
    assert_eq!(e.request.verdict.reason, Some(DropReason::AllowedIps));
    assert_eq!(e.request.verdict.gateway, L);
}

#[test]
fn without_the_peers_view_its_side_is_unknown() {
    let remote = remote(None);
    let plan = plan_for(Strategy::Split, &remote);
    let paths = [path(&remote, Some(&plan))];
    let e = &explain(&local(), &paths, ip("40.0.0.5"), ip("30.0.0.7"), None).unwrap()[0];
    assert_eq!(e.request.verdict.outcome, Outcome::Unknown);
    assert_eq!(
        kinds(&e.request),
        [(L, Route), (L, EgressRewrite), (L, WireguardSend)]
    );
    assert!(e.request.verdict.detail.contains("view_of_local"));
}

#[test]
fn an_unrouted_destination_is_no_path_unless_a_peering_is_named() {
    let remote = remote(seed_view());
    let plan = plan_for(Strategy::Split, &remote);
    let paths = [path(&remote, Some(&plan))];
    let err = explain(&local(), &paths, ip("40.0.0.5"), ip("50.0.0.1"), None).unwrap_err();
    assert!(err.to_string().contains("no path"), "{err}");
    let e = &explain(&local(), &paths, ip("40.0.0.5"), ip("50.0.0.1"), Some("c2")).unwrap()[0];
    assert_eq!(e.request.verdict.reason, Some(DropReason::NoRoute));
    // Neither local nor any peer's: nothing to explain.
    assert!(explain(&local(), &paths, ip("8.8.8.8"), ip("1.1.1.1"), None).is_err());
}

#[test]
fn a_peering_without_a_plan_says_why() {
    let remote = remote(seed_view());
    let mut p = path(&remote, None);
    p.problem = Some("policy split rejected the decision");
    let paths = [p];
    let e = &explain(&local(), &paths, ip("40.0.0.7"), ip("60.0.0.5"), None).unwrap()[0];
    assert_eq!(e.request.verdict.reason, Some(DropReason::NotApplied));
    assert!(e.request.verdict.detail.contains("rejected"));
    let e = &explain(&local(), &paths, ip("40.0.0.5"), ip("30.0.0.7"), Some("c2")).unwrap()[0];
    assert_eq!(e.request.verdict.reason, Some(DropReason::NotApplied));
}

#[test]
fn a_more_specific_route_of_another_peering_takes_the_reply() {
    // c3's view of its cluster overlaps the view c2's pods are seen at here: the reply
    // to a c2 pod follows the longer route into c3's tunnel.
    let remote2 = remote(seed_view());
    let plan2 = plan_for(Strategy::Split, &remote2);
    let mut plan3 = plan_for(Strategy::Split, &remote2);
    plan3.routes = vec![net("30.0.0.0/25")];
    let mut p3 = path(&remote2, Some(&plan3));
    p3.name = "c3";
    p3.interface = "wg-c3";
    let paths = [path(&remote2, Some(&plan2)), p3];
    let got = explain(&local(), &paths, ip("40.0.0.7"), ip("60.0.0.5"), Some("c2")).unwrap();
    let reply = got[0].reply.as_ref().unwrap();
    assert_eq!(reply.verdict.reason, Some(DropReason::WrongTunnel));
    assert!(reply.verdict.detail.contains("wg-c3"));
    // Dialing out: the longer route wins; asked about c2, the answer says where it goes.
    let got = explain(&local(), &paths, ip("40.0.0.5"), ip("30.0.0.7"), None).unwrap();
    assert_eq!(got[0].peering, "c3");
    let got = explain(&local(), &paths, ip("40.0.0.5"), ip("30.0.0.7"), Some("c2")).unwrap();
    assert_eq!(got[0].request.verdict.reason, Some(DropReason::WrongTunnel));
    let got = explain(
        &local(),
        &paths,
        ip("40.0.0.5"),
        ip("30.0.0.200"),
        Some("c2"),
    )
    .unwrap();
    assert_eq!(got[0].request.verdict.outcome, Outcome::Delivered);
}

#[test]
fn an_address_every_peer_uses_needs_a_peering_named_past_the_cap() {
    let remote = remote(seed_view());
    let plan = plan_for(Strategy::Split, &remote);
    let names: Vec<String> = (0..=MAX_PATHS).map(|i| format!("p{i}")).collect();
    let paths: Vec<PeeringPath<'_>> = names
        .iter()
        .map(|n| PeeringPath {
            name: n,
            ..path(&remote, Some(&plan))
        })
        .collect();
    // A remote pod at 40.0.0.7 dialing 60.0.0.5: every peer could be it.
    let err = explain(&local(), &paths, ip("40.0.0.7"), ip("60.0.0.5"), None).unwrap_err();
    assert!(err.to_string().contains("name one with peering="), "{err}");
    let got = explain(&local(), &paths, ip("40.0.0.7"), ip("60.0.0.5"), Some("p3")).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].peering, "p3");
    let got = explain(
        &local(),
        &paths[..MAX_PATHS],
        ip("40.0.0.7"),
        ip("60.0.0.5"),
        None,
    )
    .unwrap();
    assert_eq!(got.len(), MAX_PATHS);
}
