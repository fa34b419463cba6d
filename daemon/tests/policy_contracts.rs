//! The two policy contracts side by side: `remap:policy@0.2.0` components (the
//! built-ins) decide dual-stack peerings, and a component built against
//! `remap:policy@0.1.0` (kept as a fixture, `fixtures/split-policy-0.1.0.wasm`: the
//! built-in `split` as it was built before 0.2.0) still uploads, says it is IPv4-only,
//! decides IPv4 peerings exactly as before, and refuses an IPv6 one by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ipnet::IpNet;
use remapd::model::{Capabilities, LocalCluster, Mapping, PolicyInput, RemoteCluster, Strategy};
use remapd::policy::{CONTRACT, CONTRACT_V1, PolicyEngine, PolicyLimits, PolicyRegistry};

const SPLIT_0_1_0: &[u8] = include_bytes!("fixtures/split-policy-0.1.0.wasm");

fn n(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn registry() -> PolicyRegistry {
    PolicyRegistry::with_builtins(Arc::new(
        PolicyEngine::new(PolicyLimits::default()).unwrap(),
    ))
    .unwrap()
}

/// Both clusters on 40.0.0.0/24; cluster 2 also on `remote_v6` when given, cluster 1
/// on fd00:40::/56 with an IPv6 pool.
fn input(remote_v6: Option<&str>) -> PolicyInput {
    PolicyInput {
        local: LocalCluster {
            name: "cluster-1".into(),
            pod_cidrs: vec![n("40.0.0.0/24"), n("fd00:40::/56")],
            service_cidrs: vec![],
            reserved_cidrs: vec![],
            remap_pool: vec![n("30.0.0.0/16"), n("fd00:30::/48")],
        },
        local_capabilities: Capabilities {
            nat_dataplane: true,
        },
        allocated: vec![n("30.0.0.0/24"), n("fd00:30::/56")],
        remote: RemoteCluster {
            name: "cluster-2".into(),
            pod_cidrs: [Some("40.0.0.0/24"), remote_v6]
                .into_iter()
                .flatten()
                .map(n)
                .collect(),
            service_cidrs: vec![],
            capabilities: Capabilities {
                nat_dataplane: true,
            },
            view_of_local: None,
        },
        settings: Default::default(),
    }
}

fn mapping(real: &str, remapped: &str) -> Mapping {
    Mapping {
        real: n(real),
        remapped: n(remapped),
    }
}

#[test]
fn the_builtins_speak_0_2_0_and_decide_both_families() {
    let reg = registry();
    for name in ["split", "auto", "both-on-2"] {
        let policy = reg.get(name).unwrap();
        assert_eq!(policy.compiled.contract, CONTRACT, "{name}");
        assert!(!policy.compiled.ipv4_only, "{name}");
    }
    let eval = reg.decide("split", &input(Some("fd00:40::/56"))).unwrap();
    assert_eq!(eval.decision.strategy, Strategy::Split);
    assert_eq!(
        eval.decision.mappings,
        vec![
            mapping("40.0.0.0/24", "30.0.1.0/24"),
            mapping("fd00:40::/56", "fd00:30:0:100::/56"),
        ],
        "each view from the pool of its family, past what other peerings hold"
    );
    let eval = reg.decide("auto", &input(Some("fd00:50::/56"))).unwrap();
    assert_eq!(
        eval.decision.mappings[1],
        mapping("fd00:50::/56", "fd00:50::/56"),
        "an IPv6 CIDR that is free locally is seen as itself"
    );
}

#[test]
fn a_0_1_0_component_still_uploads_and_decides_ipv4_peerings() {
    let reg = registry();
    let old = reg.put("split-0-1-0", SPLIT_0_1_0).unwrap();
    assert_eq!(old.compiled.contract, CONTRACT_V1);
    assert!(old.compiled.ipv4_only);

    // An IPv4 peering: the same answer as the 0.2.0 build of the same policy, although
    // the cluster has IPv6 CIDRs too (the old component is not told about them).
    let ipv4_peering = input(None);
    let then = reg.decide("split-0-1-0", &ipv4_peering).unwrap();
    let now = reg.decide("split", &ipv4_peering).unwrap();
    assert_eq!(then.decision, now.decision);
    assert_eq!(
        then.decision.mappings,
        vec![mapping("40.0.0.0/24", "30.0.1.0/24")]
    );

    // A remote with an IPv6 CIDR: refused, naming the contract and the CIDR.
    let err = reg
        .decide("split-0-1-0", &input(Some("fd00:40::/56")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("remap:policy@0.1.0, which carries IPv4 only")
            && err.contains("fd00:40::/56")
            && err.contains("remap:policy@0.2.0"),
        "{err}"
    );
}
