//! Property tests of the plan compiler: for random pairs of clusters (overlapping and
//! not, CIDRs of different sizes and bases), decide both sides, validate, compile, and
//! run packets through a pure model of the path pod1 -> gw1 egress -> WireGuard (send
//! and receive allowed-ips) -> gw2 ingress -> pod2, the reply back, and the other
//! direction. Every strategy, IPv4-only and dual-stack pairs (IPv6 pods, views from an
//! IPv6 pool; packets of one family at a time). No root needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use remapd::dataplane::{AddressField, Direction, TranslationRule};
use remapd::model::{
    Capabilities, Decision, LocalCluster, Mapping, PolicyInput, RemoteCluster,
    Strategy as RemapStrategy,
};
use remapd::plan::{GatewayPlan, compile, view_of};
use remapd::policy::validate::validate;
use remapd_policy_sdk as sdk;

fn to_sdk(n: &IpNet) -> sdk::Cidr {
    sdk::Cidr::new(n.network(), n.prefix_len()).unwrap()
}

fn from_sdk(c: &sdk::Cidr) -> IpNet {
    IpNet::new(c.addr, c.prefix_len).unwrap()
}

/// The views a side allocates for the remote's CIDRs, with the SDK's allocator (what the
/// built-in policies use).
fn views(local: &LocalCluster, remote: &RemoteCluster) -> Vec<Mapping> {
    let input = sdk::DecisionInput {
        local: sdk::LocalCluster {
            name: local.name.clone(),
            pod_cidrs: local.pod_cidrs.iter().map(to_sdk).collect(),
            service_cidrs: local.service_cidrs.iter().map(to_sdk).collect(),
            reserved_cidrs: local.reserved_cidrs.iter().map(to_sdk).collect(),
            remap_pool: local.remap_pool.iter().map(to_sdk).collect(),
            allocated: vec![],
            capabilities: sdk::Capabilities {
                nat_dataplane: true,
            },
        },
        remote: sdk::RemoteCluster {
            name: remote.name.clone(),
            pod_cidrs: remote.pod_cidrs.iter().map(to_sdk).collect(),
            service_cidrs: remote.service_cidrs.iter().map(to_sdk).collect(),
            capabilities: sdk::Capabilities {
                nat_dataplane: true,
            },
            view_of_local: None,
        },
        settings: vec![],
    };
    sdk::allocate_views(&input)
        .expect("pool large enough")
        .iter()
        .map(|m| Mapping {
            real: from_sdk(&m.real),
            remapped: from_sdk(&m.remapped),
        })
        .collect()
}

fn describe(c: &LocalCluster) -> RemoteCluster {
    RemoteCluster {
        name: c.name.clone(),
        pod_cidrs: c.pod_cidrs.clone(),
        service_cidrs: c.service_cidrs.clone(),
        capabilities: Capabilities {
            nat_dataplane: true,
        },
        view_of_local: None,
    }
}

/// One gateway in the model: what is connected locally, and its plan.
struct Gateway {
    local: Vec<IpNet>,
    plan: GatewayPlan,
}

type Packet = (IpAddr, IpAddr);

fn translate(rules: &[TranslationRule], direction: Direction, (src, dst): Packet) -> Packet {
    let pick = |field: AddressField, addr: IpAddr| {
        rules
            .iter()
            .filter(|r| r.direction == direction && r.field == field && r.from.contains(&addr))
            .max_by_key(|r| r.from.prefix_len())
            .map(|r| {
                let m = Mapping {
                    real: r.from,
                    remapped: r.to,
                };
                m.apply(addr).unwrap()
            })
            .unwrap_or(addr)
    };
    (
        pick(AddressField::Source, src),
        pick(AddressField::Destination, dst),
    )
}

fn longest<'a>(nets: impl Iterator<Item = &'a IpNet>, addr: IpAddr) -> Option<u8> {
    nets.filter(|n| n.contains(&addr))
        .map(|n| n.prefix_len())
        .max()
}

/// Sends a packet from behind `from` to the other side: routing at `from` must choose
/// the tunnel, egress rules run, WireGuard checks allowed-ips on both ends, ingress rules
/// run at `to`, and routing there must deliver locally. Returns the delivered packet.
fn cross(from: &Gateway, to: &Gateway, pkt: Packet) -> Result<Packet, String> {
    let local = longest(from.local.iter(), pkt.1);
    let tunnel = longest(from.plan.routes.iter(), pkt.1);
    match (local, tunnel) {
        (_, None) => return Err(format!("{pkt:?}: no route into the tunnel")),
        (Some(l), Some(t)) if l >= t => {
            return Err(format!("{pkt:?}: routed locally, not into the tunnel"));
        }
        _ => {}
    }
    let sent = translate(&from.plan.rules, Direction::Egress, pkt);
    if !from.plan.allowed_ips.iter().any(|n| n.contains(&sent.1)) {
        return Err(format!(
            "{sent:?}: sender's allowed-ips do not cover the destination"
        ));
    }
    if !to.plan.allowed_ips.iter().any(|n| n.contains(&sent.0)) {
        return Err(format!(
            "{sent:?}: receiver's allowed-ips do not cover the source"
        ));
    }
    let got = translate(&to.plan.rules, Direction::Ingress, sent);
    if !border_admits(to, got) {
        return Err(format!("{got:?}: dropped by the receiver's ingress border"));
    }
    let local = longest(to.local.iter(), got.1);
    let tunnel = longest(to.plan.routes.iter(), got.1);
    match (local, tunnel) {
        (Some(l), t) if t.is_none_or(|t| l > t) => Ok(got),
        _ => Err(format!("{got:?}: not delivered locally at the receiver")),
    }
}

/// The receiver's border, as the dataplane checks it after ingress translation.
fn border_admits(to: &Gateway, (src, dst): Packet) -> bool {
    to.plan.border.sources.iter().any(|n| n.contains(&src))
        && to.plan.border.destinations.iter().any(|n| n.contains(&dst))
}

/// What the receiver's dataplane does with a packet the peer put on the wire: WireGuard
/// checks the source against allowed-ips, ingress rules run, the border decides.
/// `Some(delivered)` when it passes.
fn receive(to: &Gateway, wire: Packet) -> Option<Packet> {
    if !to.plan.allowed_ips.iter().any(|n| n.contains(&wire.0)) {
        return None;
    }
    let got = translate(&to.plan.rules, Direction::Ingress, wire);
    border_admits(to, got).then_some(got)
}

/// A hostile peer puts arbitrary addresses on the wire: remote and local real hosts,
/// views in both directions, node-network and stray addresses as source and destination.
/// Independently of the plan, the model says what may be delivered: a destination in
/// the receiver's own CIDRs and a source that is the receiver's view of a remote host.
/// Everything else must be dropped.
fn hostile_peer_is_contained(
    receiver: &Gateway,
    receiver_cluster: &LocalCluster,
    receiver_decision: &Decision,
    sender_cluster: &LocalCluster,
    sender_decision: &Decision,
    salt: u32,
) -> Result<(), String> {
    let node: IpAddr = "192.0.2.10".parse().unwrap();
    let stray: IpAddr = "203.0.113.7".parse().unwrap();
    let node6: IpAddr = "2001:db8::10".parse().unwrap();
    let stray6: IpAddr = "2001:db8:ffff::7".parse().unwrap();
    let mut candidates = vec![node, stray, node6, stray6];
    for n in receiver_cluster
        .cidrs()
        .iter()
        .chain(&sender_cluster.cidrs())
    {
        candidates.extend(hosts(n, salt));
    }
    for m in receiver_decision
        .mappings
        .iter()
        .chain(&sender_decision.mappings)
    {
        candidates.extend(hosts(&m.remapped, salt));
    }
    let remote_views: Vec<IpAddr> = sender_cluster
        .cidrs()
        .iter()
        .flat_map(|n| hosts(n, salt))
        .chain(candidates.iter().copied())
        .filter(|a| sender_cluster.cidrs().iter().any(|n| n.contains(a)))
        .filter_map(|a| view_of(&receiver_decision.mappings, a))
        .collect();
    for &src in &candidates {
        for &dst in &candidates {
            // A packet has one family.
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            let Some((s, d)) = receive(receiver, (src, dst)) else {
                continue;
            };
            if !receiver_cluster.cidrs().iter().any(|n| n.contains(&d)) {
                return Err(format!(
                    "wire ({src}, {dst}) delivered to {d}, which the receiver never exported"
                ));
            }
            let is_view = receiver_decision
                .mappings
                .iter()
                .any(|m| m.remapped.contains(&s));
            if !is_view {
                return Err(format!(
                    "wire ({src}, {dst}) delivered with source {s}, not a view of the peer"
                ));
            }
            if receiver_cluster.cidrs().iter().any(|n| n.contains(&s)) && !remote_views.contains(&s)
            {
                return Err(format!(
                    "wire ({src}, {dst}) delivered with a local-looking source {s}"
                ));
            }
        }
    }
    Ok(())
}

/// `/v1/explain` walks the same path as the model above, from either gateway: asked at
/// gw1 about pod1 dialing pod2 (outbound) and at gw2 about the same packet (inbound), it
/// must say the request arrives as `delivered` and the reply comes back as the request
/// left. Each gateway knows the other only from its exports.
#[allow(clippy::too_many_arguments)]
fn explained_as_modelled(
    c1: &LocalCluster,
    c2: &LocalCluster,
    gw1: &Gateway,
    gw2: &Gateway,
    first1: &GatewayPlan,
    first2: &GatewayPlan,
    (a, v1b): Packet,
    delivered: Packet,
) -> Result<(), String> {
    use remapd::explain::{Outcome, PathDirection, PeeringPath, explain};
    let at = |local: &LocalCluster,
              gw: &Gateway,
              exports: &GatewayPlan,
              direction: PathDirection|
     -> Result<(Packet, Packet), String> {
        let paths = [PeeringPath {
            name: "pair",
            remote: &exports.exports.remote,
            interface: "wg",
            plan: Some(&gw.plan),
            problem: None,
            peer_public_key: None,
            endpoint: None,
        }];
        let all = explain(local, &paths, a, v1b, None).map_err(|e| e.to_string())?;
        let e = all
            .iter()
            .find(|e| e.direction == direction)
            .ok_or(format!(
                "explain {a} -> {v1b}: no {direction:?} path in {all:?}"
            ))?;
        let reply = e.reply.as_ref().ok_or(format!("no reply in {e:?}"))?;
        if e.request.verdict.outcome != Outcome::Delivered
            || reply.verdict.outcome != Outcome::Delivered
        {
            return Err(format!(
                "explain {a} -> {v1b} ({direction:?}): not delivered: {e:?}"
            ));
        }
        let got = |l: &remapd::explain::Leg| {
            l.received
                .map(|r| (r.source, r.destination))
                .unwrap_or((a, a))
        };
        Ok((got(&e.request), got(reply)))
    };
    for (local, gw, exports, direction) in [
        (c1, gw1, first2, PathDirection::Outbound),
        (c2, gw2, first1, PathDirection::Inbound),
    ] {
        let (request, reply) = at(local, gw, exports, direction)?;
        if request != delivered || reply != (v1b, a) {
            return Err(format!(
                "explain {a} -> {v1b} ({direction:?}) says {request:?}, reply {reply:?}; the model says {delivered:?}, reply {:?}",
                (v1b, a)
            ));
        }
    }
    Ok(())
}

/// The second, the second-to-last and a salted host address of `net`.
fn hosts(net: &IpNet, salt: u32) -> Vec<IpAddr> {
    let (base, host_bits, v4) = match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            32 - n.prefix_len(),
            true,
        ),
        IpNet::V6(n) => (u128::from(n.network()), 128 - n.prefix_len(), false),
    };
    let size = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    let pick = |k: u128| -> IpAddr {
        let a = base + k % size;
        if v4 {
            IpAddr::V4(Ipv4Addr::from(a as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    vec![pick(1), pick(size - 2), pick(u128::from(salt) * 7919 + 3)]
}

#[derive(Clone, Copy, Debug)]
enum Pair {
    Split,
    BothOn1,
    BothOn2,
    None,
}

fn net_strategy(space: u32) -> impl Strategy<Value = IpNet> {
    // Prefixes of /12../26 inside a /8 chosen by `space` (10, 172, ...).
    (12u8..=26, any::<u32>()).prop_map(move |(len, bits)| {
        IpNet::from(
            Ipv4Net::new(Ipv4Addr::from((space << 24) | (bits & 0x00ff_ffff)), len)
                .unwrap()
                .trunc(),
        )
    })
}

fn net6_strategy(space: u16) -> impl Strategy<Value = IpNet> {
    // Prefixes of /40../120 inside the /16 `space` (fd00::/16, ...).
    (40u8..=120, any::<u128>()).prop_map(move |(len, bits)| {
        let addr = (u128::from(space) << 112) | (bits & (u128::MAX >> 16));
        IpNet::from(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc())
    })
}

/// A cluster's pods (IPv4, and IPv6 when given) and the services that do not overlap
/// them, with a pool of each family.
fn cluster(
    name: &str,
    pods: (IpNet, Option<IpNet>),
    services: (Option<IpNet>, Option<IpNet>),
    pools: [&str; 2],
) -> LocalCluster {
    let pod_cidrs: Vec<IpNet> = [Some(pods.0), pods.1].into_iter().flatten().collect();
    LocalCluster {
        name: name.into(),
        service_cidrs: [services.0, services.1]
            .into_iter()
            .flatten()
            .filter(|s| !pod_cidrs.iter().any(|p| s.contains(p) || p.contains(s)))
            .collect(),
        pod_cidrs,
        reserved_cidrs: vec![],
        remap_pool: pools.iter().map(|p| p.parse().unwrap()).collect(),
    }
}

fn cluster_pair() -> impl Strategy<Value = (LocalCluster, LocalCluster, u32)> {
    (
        (
            net_strategy(10),
            prop::option::of(net_strategy(172)),
            net_strategy(10),
            prop::option::of(net_strategy(172)),
        ),
        (
            prop::option::of(net6_strategy(0xfd00)),
            prop::option::of(net6_strategy(0xfd01)),
            prop::option::of(net6_strategy(0xfd00)),
            prop::option::of(net6_strategy(0xfd01)),
        ),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|((p1, s1, p2, s2), (p61, s61, p62, s62), same, salt)| {
            // Half the time cluster 2 reuses cluster 1's pod CIDRs exactly (the seed
            // case), of both families.
            let p2 = if same { p1 } else { p2 };
            let p62 = if same { p61.or(p62) } else { p62 };
            let c1 = cluster(
                "cluster-1",
                (p1, p61),
                (s1, s61),
                ["100.64.0.0/11", "fd64:1::/32"],
            );
            let c2 = cluster(
                "cluster-2",
                (p2, p62),
                (s2, s62),
                ["100.96.0.0/11", "fd64:2::/32"],
            );
            (c1, c2, salt)
        })
}

fn overlapping(a: &LocalCluster, b: &LocalCluster) -> bool {
    a.cidrs()
        .iter()
        .any(|x| b.cidrs().iter().any(|y| x.contains(y) || y.contains(x)))
}

fn run_pair(c1: &LocalCluster, c2: &LocalCluster, pair: Pair, salt: u32) -> Result<(), String> {
    let (s1, s2) = match pair {
        Pair::Split => (RemapStrategy::Split, RemapStrategy::Split),
        Pair::BothOn1 => (RemapStrategy::BothOnLocal, RemapStrategy::BothOnRemote),
        Pair::BothOn2 => (RemapStrategy::BothOnRemote, RemapStrategy::BothOnLocal),
        Pair::None => (RemapStrategy::None, RemapStrategy::None),
    };
    let nat = Capabilities {
        nat_dataplane: true,
    };
    let d1 = Decision {
        strategy: s1,
        mappings: views(c1, &describe(c2)),
    };
    let d2 = Decision {
        strategy: s2,
        mappings: views(c2, &describe(c1)),
    };
    for (local, remote, d) in [(c1, c2, &d1), (c2, c1, &d2)] {
        let input = PolicyInput {
            local: local.clone(),
            local_capabilities: nat,
            allocated: vec![],
            remote: describe(remote),
            settings: Default::default(),
        };
        validate(&input, d).map_err(|e| format!("validation: {e}"))?;
    }
    // Each side learns the other's view of it from the other's exports.
    let first2 = compile(
        c2,
        nat,
        &describe(c1),
        "wg",
        &Decision {
            strategy: RemapStrategy::Split,
            ..d2.clone()
        },
    )
    .map_err(|e| e.to_string())?;
    let first1 = compile(
        c1,
        nat,
        &describe(c2),
        "wg",
        &Decision {
            strategy: RemapStrategy::Split,
            ..d1.clone()
        },
    )
    .map_err(|e| e.to_string())?;
    let plan1 = compile(c1, nat, &first2.exports.remote, "wg", &d1).map_err(|e| e.to_string())?;
    let plan2 = compile(c2, nat, &first1.exports.remote, "wg", &d2).map_err(|e| e.to_string())?;
    // The dataplane takes the rules as they are: one family per rule, lengths equal.
    for plan in [&plan1, &plan2] {
        remapd::dataplane::rules::validate(&plan.rules).map_err(|e| e.to_string())?;
    }
    assert_eq!(
        plan1.exports.strategy, s2,
        "exports tell the remote its strategy"
    );
    let gw1 = Gateway {
        local: c1.cidrs(),
        plan: plan1,
    };
    let gw2 = Gateway {
        local: c2.cidrs(),
        plan: plan2,
    };

    let mut sent1 = Vec::new();
    let mut recv1 = Vec::new();
    for n1 in c1.cidrs() {
        for a in hosts(&n1, salt) {
            // Pods talk to the other cluster's pods of their own family.
            for n2 in c2
                .cidrs()
                .into_iter()
                .filter(|n2| n2.network().is_ipv4() == a.is_ipv4())
            {
                for b in hosts(&n2, salt.rotate_left(7)) {
                    let v1b = view_of(&d1.mappings, b).ok_or("no view of b")?;
                    let v2a = view_of(&d2.mappings, a).ok_or("no view of a")?;
                    // pod1 -> pod2 (at cluster 1's view of it).
                    let got = cross(&gw1, &gw2, (a, v1b))?;
                    if got != (v2a, b) {
                        return Err(format!(
                            "{a} -> {v1b} arrived as {got:?}, expected ({v2a}, {b})"
                        ));
                    }
                    sent1.push(translate(&gw1.plan.rules, Direction::Egress, (a, v1b)).1);
                    // The reply goes back to the address pod2 saw and comes from the one pod1 used.
                    let back = cross(&gw2, &gw1, (b, v2a))?;
                    if back != (v1b, a) {
                        return Err(format!(
                            "reply {b} -> {v2a} arrived as {back:?}, expected ({v1b}, {a})"
                        ));
                    }
                    recv1.push(translate(&gw2.plan.rules, Direction::Egress, (b, v2a)).0);
                    explained_as_modelled(
                        c1,
                        c2,
                        &gw1,
                        &gw2,
                        &first1,
                        &first2,
                        (a, v1b),
                        (v2a, b),
                    )?;
                }
            }
        }
    }
    // Allowed-ips admit exactly what crosses: every prefix is used, in both directions
    // (of a family both clusters have: an IPv4-only cluster's peer still gets its
    // IPv6 CIDRs routed and admitted, and nothing uses them).
    let both_have = |p: &IpNet| {
        [c1, c2].iter().all(|c| {
            c.cidrs()
                .iter()
                .any(|n| n.network().is_ipv4() == p.network().is_ipv4())
        })
    };
    for p in gw1.plan.allowed_ips.iter().filter(|p| both_have(p)) {
        if !sent1.iter().any(|a| p.contains(a)) || !recv1.iter().any(|a| p.contains(a)) {
            return Err(format!("gw1 allowed-ip {p} admits nothing that crosses"));
        }
    }
    let stray: IpAddr = "203.0.113.7".parse().unwrap();
    if gw1.plan.allowed_ips.iter().any(|p| p.contains(&stray)) {
        return Err("gw1 admits a stray address".into());
    }
    hostile_peer_is_contained(&gw1, c1, &d1, c2, &d2, salt).map_err(|e| format!("at gw1: {e}"))?;
    hostile_peer_is_contained(&gw2, c2, &d2, c1, &d1, salt).map_err(|e| format!("at gw2: {e}"))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_strategy_delivers_both_ways((c1, c2, salt) in cluster_pair(), which in 0u8..4) {
        let pair = match which {
            0 => Pair::Split,
            1 => Pair::BothOn1,
            2 => Pair::BothOn2,
            _ if !overlapping(&c1, &c2) => Pair::None,
            _ => Pair::Split,
        };
        if let Err(e) = run_pair(&c1, &c2, pair, salt) {
            prop_assert!(false, "{pair:?} with {c1:?} / {c2:?}: {e}");
        }
    }
}

#[test]
fn the_seed_in_every_strategy() {
    let seed = |name: &str, pool: &str| LocalCluster {
        name: name.into(),
        pod_cidrs: vec!["40.0.0.0/24".parse().unwrap()],
        remap_pool: vec![pool.parse().unwrap()],
        ..LocalCluster::default()
    };
    let (c1, c2) = (
        seed("cluster-1", "30.0.0.0/24"),
        seed("cluster-2", "60.0.0.0/24"),
    );
    for pair in [Pair::Split, Pair::BothOn1, Pair::BothOn2] {
        run_pair(&c1, &c2, pair, 1).unwrap_or_else(|e| panic!("{pair:?}: {e}"));
    }
    // A deliberately wrong plan is caught by the model: swap gw1's allowed-ips.
    let nat = Capabilities {
        nat_dataplane: true,
    };
    let d1 = Decision {
        strategy: RemapStrategy::Split,
        mappings: views(&c1, &describe(&c2)),
    };
    let mut plan1 = compile(&c1, nat, &describe(&c2), "wg", &d1).unwrap();
    plan1.allowed_ips = plan1.routes.clone();
    let d2 = Decision {
        strategy: RemapStrategy::Split,
        mappings: views(&c2, &describe(&c1)),
    };
    let plan2 = compile(&c2, nat, &describe(&c1), "wg", &d2).unwrap();
    let gw1 = Gateway {
        local: c1.cidrs(),
        plan: plan1,
    };
    let gw2 = Gateway {
        local: c2.cidrs(),
        plan: plan2,
    };
    let err = cross(
        &gw1,
        &gw2,
        ("40.0.0.1".parse().unwrap(), "30.0.0.1".parse().unwrap()),
    )
    .unwrap_err();
    assert!(err.contains("allowed-ips"), "{err}");

    // A border that admits every destination is caught too: the hostile peer reaches the
    // node network.
    let mut open = compile(&c1, nat, &describe(&c2), "wg", &d1).unwrap();
    open.border.destinations = vec!["0.0.0.0/0".parse().unwrap()];
    let open = Gateway {
        local: c1.cidrs(),
        plan: open,
    };
    let err = hostile_peer_is_contained(&open, &c1, &d1, &c2, &d2, 1).unwrap_err();
    assert!(err.contains("never exported"), "{err}");
    // And one that admits every source lets a local-looking source in.
    let mut open = compile(&c1, nat, &describe(&c2), "wg", &d1).unwrap();
    open.border.sources = vec!["0.0.0.0/0".parse().unwrap()];
    open.allowed_ips = vec!["0.0.0.0/0".parse().unwrap()];
    let open = Gateway {
        local: c1.cidrs(),
        plan: open,
    };
    let err = hostile_peer_is_contained(&open, &c1, &d1, &c2, &d2, 1).unwrap_err();
    assert!(err.contains("source"), "{err}");
    // A border that forgets a view drops legitimate traffic.
    let mut narrow = compile(&c1, nat, &describe(&c2), "wg", &d1).unwrap();
    narrow.border.sources.clear();
    let narrow = Gateway {
        local: c1.cidrs(),
        plan: narrow,
    };
    let plan2 = compile(&c2, nat, &describe(&c1), "wg", &d2).unwrap();
    let gw2 = Gateway {
        local: c2.cidrs(),
        plan: plan2,
    };
    let err = cross(
        &gw2,
        &narrow,
        ("40.0.0.1".parse().unwrap(), "60.0.0.1".parse().unwrap()),
    )
    .unwrap_err();
    assert!(err.contains("border"), "{err}");
}
