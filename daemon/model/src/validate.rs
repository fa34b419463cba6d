//! Never trust a decision: the checks every policy answer passes before anything else
//! sees it. Pure; each error names the rule that was broken.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::model::{Decision, PolicyInput, Strategy};

/// Address space that is never a cluster's and never routed into a tunnel: a CIDR
/// (pod, service, pool, view) that overlaps one of these is refused. `0.0.0.0/0` and
/// `::/0` overlap them all. IPv6 link-local is here, so neighbor discovery and
/// link-local traffic are never translated or routed into a tunnel.
pub const SPECIAL_PURPOSE: [(IpNet, &str); 10] = [
    (net(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8)"),
    (net(127, 0, 0, 0, 8), "loopback (127.0.0.0/8)"),
    (net(169, 254, 0, 0, 16), "link-local (169.254.0.0/16)"),
    (net(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"),
    (net(240, 0, 0, 0, 4), "reserved and broadcast (240.0.0.0/4)"),
    (net6([0, 0], 128), "the unspecified address (::/128)"),
    (net6([0, 1], 128), "loopback (::1/128)"),
    (
        net6([0, 0x0000_ffff_0000_0000], 96),
        "IPv4-mapped (::ffff:0:0/96)",
    ),
    (net6([0xfe80 << 48, 0], 10), "link-local (fe80::/10)"),
    (net6([0xff00 << 48, 0], 8), "multicast (ff00::/8)"),
];

const fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len) {
        Ok(n) => IpNet::V4(n),
        Err(_) => panic!("a valid prefix length"),
    }
}

/// An IPv6 prefix from its address's high and low 64 bits.
const fn net6(halves: [u64; 2], len: u8) -> IpNet {
    let addr = Ipv6Addr::from_bits(((halves[0] as u128) << 64) | halves[1] as u128);
    match Ipv6Net::new(addr, len) {
        Ok(n) => IpNet::V6(n),
        Err(_) => panic!("a valid prefix length"),
    }
}

/// The special-purpose range `cidr` overlaps, if any, and what it is.
pub fn special_purpose_overlap(cidr: &IpNet) -> Option<&'static str> {
    SPECIAL_PURPOSE
        .iter()
        .find(|(special, _)| special.contains(cidr) || cidr.contains(special))
        .map(|(_, what)| *what)
}

/// Whether `a` and `b` are both IPv4 or both IPv6.
pub fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// Most mappings a decision may carry.
pub const MAX_MAPPINGS: usize = 1024;

/// A rule a decision broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// The strategy needs a capability a side lacks.
    #[error(
        "strategy {strategy} needs the NAT dataplane on the {side} gateway, which does not have it"
    )]
    CapabilityMissing {
        /// Strategy.
        strategy: Strategy,
        /// "local" or "remote".
        side: &'static str,
    },
    /// `none` with overlapping CIDRs.
    #[error(
        "strategy none is only for CIDRs that do not overlap, but remote {real} overlaps local {local}"
    )]
    NoneWithOverlap {
        /// Remote CIDR.
        real: IpNet,
        /// Local CIDR.
        local: IpNet,
    },
    /// `none` must see every remote CIDR as itself.
    #[error(
        "strategy none maps {real} to {remapped}; with none every remote CIDR is seen as itself"
    )]
    NoneRemapped {
        /// Remote CIDR.
        real: IpNet,
        /// Its view.
        remapped: IpNet,
    },
    /// A remote CIDR has no mapping.
    #[error("no mapping for remote CIDR {real}")]
    MissingMapping {
        /// Remote CIDR.
        real: IpNet,
    },
    /// A mapping for something the remote does not have.
    #[error("mapping for {real}, which is not a CIDR of the remote cluster")]
    UnknownMapping {
        /// The mapped prefix.
        real: IpNet,
    },
    /// Two mappings for one remote CIDR.
    #[error("remote CIDR {real} is mapped twice")]
    DuplicateMapping {
        /// Remote CIDR.
        real: IpNet,
    },
    /// One side IPv4, the other IPv6.
    #[error(
        "mapping {real} -> {remapped}: families differ (an IPv4 prefix is seen as an IPv4 prefix, an IPv6 prefix as an IPv6 prefix)"
    )]
    FamilyMismatch {
        /// Remote CIDR.
        real: IpNet,
        /// Its view.
        remapped: IpNet,
    },
    /// Lengths differ.
    #[error("mapping {real} -> {remapped}: prefix lengths differ (a translation keeps host bits)")]
    PrefixLengthMismatch {
        /// Remote CIDR.
        real: IpNet,
        /// Its view.
        remapped: IpNet,
    },
    /// Host bits set.
    #[error("mapping {real} -> {remapped}: host bits set")]
    HostBits {
        /// Remote CIDR.
        real: IpNet,
        /// Its view.
        remapped: IpNet,
    },
    /// Outside the pool.
    #[error("mapping {real} -> {remapped}: {remapped} is outside the remap pool")]
    OutsidePool {
        /// Remote CIDR.
        real: IpNet,
        /// Its view.
        remapped: IpNet,
    },
    /// Overlaps the local cluster's own address space.
    #[error("mapping {real} -> {remapped}: {remapped} overlaps local {kind} CIDR {local}")]
    OverlapsLocal {
        /// Remote CIDR.
        real: IpNet,
        /// Its view.
        remapped: IpNet,
        /// "pod", "service" or "reserved".
        kind: &'static str,
        /// The local CIDR.
        local: IpNet,
    },
    /// Overlaps what another peering holds.
    #[error(
        "mapping {real} -> {remapped}: {remapped} overlaps {allocation}, held by another peering"
    )]
    OverlapsAllocation {
        /// Remote CIDR.
        real: IpNet,
        /// Its view.
        remapped: IpNet,
        /// The other peering's allocation.
        allocation: IpNet,
    },
    /// Two views overlap each other.
    #[error("views {first} and {second} overlap each other")]
    OverlapsSibling {
        /// One view.
        first: IpNet,
        /// Another.
        second: IpNet,
    },
    /// Too many mappings.
    #[error("decision has {count} mappings, more than the {max} allowed")]
    TooLarge {
        /// Count.
        count: usize,
        /// Limit.
        max: usize,
    },
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// Checks a decision against its input. `Ok` means it may be compiled and applied.
pub fn validate(input: &PolicyInput, decision: &Decision) -> Result<(), DecisionError> {
    if decision.mappings.len() > MAX_MAPPINGS {
        return Err(DecisionError::TooLarge {
            count: decision.mappings.len(),
            max: MAX_MAPPINGS,
        });
    }
    let strategy = decision.strategy;
    let (local_nat, remote_nat) = (
        input.local_capabilities.nat_dataplane,
        input.remote.capabilities.nat_dataplane,
    );
    let need = match strategy {
        Strategy::None => (false, false),
        Strategy::Split => (true, true),
        Strategy::BothOnLocal => (true, false),
        Strategy::BothOnRemote => (false, true),
    };
    if need.0 && !local_nat {
        return Err(DecisionError::CapabilityMissing {
            strategy,
            side: "local",
        });
    }
    if need.1 && !remote_nat {
        return Err(DecisionError::CapabilityMissing {
            strategy,
            side: "remote",
        });
    }

    let remote = input.remote.cidrs();
    let mut seen: Vec<IpNet> = Vec::new();
    for m in &decision.mappings {
        if !remote.contains(&m.real) {
            return Err(DecisionError::UnknownMapping { real: m.real });
        }
        if seen.contains(&m.real) {
            return Err(DecisionError::DuplicateMapping { real: m.real });
        }
        seen.push(m.real);
    }
    if let Some(real) = remote.iter().find(|r| !seen.contains(r)) {
        return Err(DecisionError::MissingMapping { real: *real });
    }

    let local_kinds: Vec<(&'static str, &Vec<IpNet>)> = vec![
        ("pod", &input.local.pod_cidrs),
        ("service", &input.local.service_cidrs),
        ("reserved", &input.local.reserved_cidrs),
    ];
    for (i, m) in decision.mappings.iter().enumerate() {
        let (real, remapped) = (m.real, m.remapped);
        if strategy == Strategy::None {
            if remapped != real {
                return Err(DecisionError::NoneRemapped { real, remapped });
            }
            for (_, list) in &local_kinds {
                if let Some(local) = list.iter().find(|l| overlaps(l, &real)) {
                    return Err(DecisionError::NoneWithOverlap {
                        real,
                        local: *local,
                    });
                }
            }
        }
        if !same_family(&real, &remapped) {
            return Err(DecisionError::FamilyMismatch { real, remapped });
        }
        if real.prefix_len() != remapped.prefix_len() {
            return Err(DecisionError::PrefixLengthMismatch { real, remapped });
        }
        if remapped.trunc() != remapped {
            return Err(DecisionError::HostBits { real, remapped });
        }
        for (kind, list) in &local_kinds {
            if let Some(local) = list.iter().find(|l| overlaps(l, &remapped)) {
                return Err(DecisionError::OverlapsLocal {
                    real,
                    remapped,
                    kind,
                    local: *local,
                });
            }
        }
        if let Some(allocation) = input.allocated.iter().find(|a| overlaps(a, &remapped)) {
            return Err(DecisionError::OverlapsAllocation {
                real,
                remapped,
                allocation: *allocation,
            });
        }
        // Last: a view that hits our own space says more than "outside the pool".
        if remapped != real && !input.local.remap_pool.iter().any(|p| p.contains(&remapped)) {
            return Err(DecisionError::OutsidePool { real, remapped });
        }
        if let Some(other) = decision.mappings[..i]
            .iter()
            .find(|o| overlaps(&o.remapped, &remapped))
        {
            return Err(DecisionError::OverlapsSibling {
                first: other.remapped,
                second: remapped,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Capabilities, LocalCluster, Mapping, RemoteCluster};

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn input() -> PolicyInput {
        PolicyInput {
            local: LocalCluster {
                name: "c1".into(),
                pod_cidrs: vec![n("40.0.0.0/24")],
                service_cidrs: vec![n("10.96.0.0/16")],
                reserved_cidrs: vec![n("192.168.0.0/16")],
                remap_pool: vec![n("30.0.0.0/16")],
            },
            local_capabilities: Capabilities {
                nat_dataplane: true,
            },
            allocated: vec![n("30.0.9.0/24")],
            remote: RemoteCluster {
                name: "c2".into(),
                pod_cidrs: vec![n("40.0.0.0/24")],
                service_cidrs: vec![n("10.97.0.0/16")],
                capabilities: Capabilities {
                    nat_dataplane: true,
                },
                view_of_local: None,
            },
            settings: Default::default(),
        }
    }

    fn decision(strategy: Strategy, pairs: &[(&str, &str)]) -> Decision {
        Decision {
            strategy,
            mappings: pairs
                .iter()
                .map(|(r, v)| Mapping {
                    real: n(r),
                    remapped: n(v),
                })
                .collect(),
        }
    }

    #[test]
    fn a_good_decision_passes() {
        let d = decision(
            Strategy::Split,
            &[
                ("40.0.0.0/24", "30.0.0.0/24"),
                ("10.97.0.0/16", "10.97.0.0/16"),
            ],
        );
        validate(&input(), &d).unwrap();
    }

    #[test]
    fn each_rule_is_named() {
        let i = input();
        let cases: Vec<(Decision, &str)> = vec![
            (
                decision(
                    Strategy::Split,
                    &[
                        ("40.0.0.0/24", "40.0.0.0/24"),
                        ("10.97.0.0/16", "10.97.0.0/16"),
                    ],
                ),
                "overlaps local pod CIDR 40.0.0.0/24",
            ),
            (
                decision(
                    Strategy::Split,
                    &[
                        ("40.0.0.0/24", "10.96.1.0/24"),
                        ("10.97.0.0/16", "10.97.0.0/16"),
                    ],
                ),
                "overlaps local service CIDR",
            ),
            (
                decision(
                    Strategy::Split,
                    &[
                        ("40.0.0.0/24", "30.0.9.0/24"),
                        ("10.97.0.0/16", "10.97.0.0/16"),
                    ],
                ),
                "held by another peering",
            ),
            (
                decision(
                    Strategy::Split,
                    &[
                        ("40.0.0.0/24", "31.0.0.0/24"),
                        ("10.97.0.0/16", "10.97.0.0/16"),
                    ],
                ),
                "outside the remap pool",
            ),
            (
                decision(
                    Strategy::Split,
                    &[
                        ("40.0.0.0/24", "30.0.0.0/16"),
                        ("10.97.0.0/16", "10.97.0.0/16"),
                    ],
                ),
                "prefix lengths differ",
            ),
            (
                decision(Strategy::Split, &[("40.0.0.0/24", "30.0.0.0/24")]),
                "no mapping for remote CIDR 10.97.0.0/16",
            ),
            (
                decision(
                    Strategy::Split,
                    &[
                        ("40.0.0.0/24", "30.0.0.0/24"),
                        ("10.97.0.0/16", "10.97.0.0/16"),
                        ("8.8.8.0/24", "30.0.1.0/24"),
                    ],
                ),
                "not a CIDR of the remote",
            ),
            (
                decision(
                    Strategy::Split,
                    &[
                        ("40.0.0.0/24", "30.0.0.0/24"),
                        ("40.0.0.0/24", "30.0.1.0/24"),
                    ],
                ),
                "mapped twice",
            ),
            (
                decision(
                    Strategy::None,
                    &[
                        ("40.0.0.0/24", "30.0.0.0/24"),
                        ("10.97.0.0/16", "10.97.0.0/16"),
                    ],
                ),
                "seen as itself",
            ),
            (
                decision(
                    Strategy::None,
                    &[
                        ("40.0.0.0/24", "40.0.0.0/24"),
                        ("10.97.0.0/16", "10.97.0.0/16"),
                    ],
                ),
                "only for CIDRs that do not overlap",
            ),
            (
                decision(
                    Strategy::Split,
                    &[
                        ("40.0.0.0/24", "30.0.0.0/24"),
                        ("10.97.0.0/16", "30.0.0.0/16"),
                    ],
                ),
                "held by another peering",
            ),
        ];
        for (d, expect) in cases {
            let err = validate(&i, &d).expect_err(expect).to_string();
            assert!(err.contains(expect), "expected {expect:?} in {err:?}");
        }
        let siblings = decision(
            Strategy::Split,
            &[
                ("40.0.0.0/24", "30.0.1.0/24"),
                ("10.97.0.0/16", "30.0.0.0/16"),
            ],
        );
        let mut wide = i.clone();
        wide.remote.service_cidrs = vec![n("10.97.0.0/16")];
        wide.allocated.clear();
        assert!(matches!(
            validate(&wide, &siblings),
            Err(DecisionError::OverlapsSibling { .. })
        ));
    }

    #[test]
    fn capabilities_are_enforced() {
        let mut i = input();
        i.remote.capabilities.nat_dataplane = false;
        let d = decision(
            Strategy::Split,
            &[
                ("40.0.0.0/24", "30.0.0.0/24"),
                ("10.97.0.0/16", "10.97.0.0/16"),
            ],
        );
        assert_eq!(
            validate(&i, &d),
            Err(DecisionError::CapabilityMissing {
                strategy: Strategy::Split,
                side: "remote"
            })
        );
        let d = decision(
            Strategy::BothOnLocal,
            &[
                ("40.0.0.0/24", "30.0.0.0/24"),
                ("10.97.0.0/16", "10.97.0.0/16"),
            ],
        );
        validate(&i, &d).unwrap();
    }

    /// `input()` with IPv6 pod CIDRs on both sides (the same one) and an IPv6 pool.
    fn dual_stack() -> PolicyInput {
        let mut i = input();
        i.local.pod_cidrs.push(n("fd00:40::/56"));
        i.local.remap_pool.push(n("fd00:30::/48"));
        i.remote.pod_cidrs.push(n("fd00:40::/56"));
        i
    }

    #[test]
    fn ipv6_mappings_pass_and_break_the_same_rules_as_ipv4() {
        let i = dual_stack();
        let with = |v6: (&str, &str)| {
            decision(
                Strategy::Split,
                &[
                    ("40.0.0.0/24", "30.0.0.0/24"),
                    ("10.97.0.0/16", "10.97.0.0/16"),
                    v6,
                ],
            )
        };
        validate(&i, &with(("fd00:40::/56", "fd00:30:0:100::/56"))).unwrap();
        for (view, expect) in [
            ("30.0.1.0/24", "families differ"),
            ("fd00:30::/64", "prefix lengths differ"),
            ("fd00:30::1/56", "host bits set"),
            ("fd00:40::/56", "overlaps local pod CIDR fd00:40::/56"),
            ("fd00:31::/56", "outside the remap pool"),
        ] {
            let err = validate(&i, &with(("fd00:40::/56", view)))
                .expect_err(view)
                .to_string();
            assert!(
                err.contains(expect),
                "{view}: expected {expect:?} in {err:?}"
            );
        }
        let missing = decision(
            Strategy::Split,
            &[
                ("40.0.0.0/24", "30.0.0.0/24"),
                ("10.97.0.0/16", "10.97.0.0/16"),
            ],
        );
        assert_eq!(
            validate(&i, &missing),
            Err(DecisionError::MissingMapping {
                real: n("fd00:40::/56")
            })
        );
    }

    #[test]
    fn special_purpose_space_of_both_families_is_named() {
        for (cidr, what) in [
            ("0.0.0.0/0", "\"this network\""),
            ("::/0", "the unspecified address"),
            ("fe80::/64", "link-local (fe80::/10)"),
            ("fe00::/7", "link-local (fe80::/10)"),
            ("ff02::/16", "multicast (ff00::/8)"),
            ("::1/128", "loopback (::1/128)"),
            ("::ffff:10.0.0.0/104", "IPv4-mapped"),
        ] {
            assert_eq!(
                special_purpose_overlap(&n(cidr)),
                described_as(what),
                "{cidr}"
            );
        }
        for cidr in ["fd00:10:244::/56", "2001:db8::/32", "10.0.0.0/8"] {
            assert_eq!(special_purpose_overlap(&n(cidr)), None, "{cidr}");
        }
    }

    /// The special-purpose description that starts with `prefix`.
    fn described_as(prefix: &str) -> Option<&'static str> {
        SPECIAL_PURPOSE
            .iter()
            .map(|(_, what)| *what)
            .find(|what| what.starts_with(prefix))
    }

    #[test]
    fn oversized_decisions_are_refused() {
        let many = Decision {
            strategy: Strategy::Split,
            mappings: vec![
                Mapping {
                    real: n("40.0.0.0/24"),
                    remapped: n("30.0.0.0/24")
                };
                MAX_MAPPINGS + 1
            ],
        };
        assert!(matches!(
            validate(&input(), &many),
            Err(DecisionError::TooLarge { .. })
        ));
    }
}
