//! Between the model's types and the WIT contracts': what a policy is given and what
//! it answers, checked for well-formed prefixes.
//!
//! The model speaks `remap:policy@0.2.0` ([`to_wit`], [`from_wit`]), which carries both
//! families. A `remap:policy@0.1.0` component is called through an adapter ([`v1`])
//! between 0.2.0's types and its own: it is given the IPv4 part of the input, and a
//! peering whose remote has an IPv6 CIDR is refused before it is called
//! ([`ipv4_only_refusal`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use remapd_model::model::{Decision, Mapping, PolicyInput, Strategy};
use remapd_model::validate;

use crate::bindings::remap::policy::types as wit;

fn cidr_out(n: &IpNet) -> wit::Cidr {
    let addr = match n.network() {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            wit::IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(a) => {
            let [a, b, c, d, e, f, g, h] = a.segments();
            wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    };
    wit::Cidr {
        addr,
        prefix_len: n.prefix_len(),
    }
}

fn cidrs_out(v: &[IpNet]) -> Vec<wit::Cidr> {
    v.iter().map(cidr_out).collect()
}

fn mapping_out(m: &Mapping) -> wit::Mapping {
    wit::Mapping {
        real: cidr_out(&m.real),
        remapped: cidr_out(&m.remapped),
    }
}

/// A policy's whole input, both families.
pub(crate) fn to_wit(input: &PolicyInput) -> wit::DecisionInput {
    wit::DecisionInput {
        local: wit::LocalCluster {
            name: input.local.name.clone(),
            pod_cidrs: cidrs_out(&input.local.pod_cidrs),
            service_cidrs: cidrs_out(&input.local.service_cidrs),
            reserved_cidrs: cidrs_out(&input.local.reserved_cidrs),
            remap_pool: cidrs_out(&input.local.remap_pool),
            allocated: cidrs_out(&input.allocated),
            capabilities: wit::Capabilities {
                nat_dataplane: input.local_capabilities.nat_dataplane,
            },
        },
        remote: wit::RemoteCluster {
            name: input.remote.name.clone(),
            pod_cidrs: cidrs_out(&input.remote.pod_cidrs),
            service_cidrs: cidrs_out(&input.remote.service_cidrs),
            capabilities: wit::Capabilities {
                nat_dataplane: input.remote.capabilities.nat_dataplane,
            },
            view_of_local: input
                .remote
                .view_of_local
                .as_ref()
                .map(|v| v.iter().map(mapping_out).collect()),
        },
        settings: input
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub(crate) fn cidr_in(c: &wit::Cidr) -> Result<IpNet, String> {
    let (addr, family, max) = match c.addr {
        wit::IpAddress::Ipv4((a, b, c, d)) => (IpAddr::V4(Ipv4Addr::new(a, b, c, d)), "IPv4", 32),
        wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => (
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            "IPv6",
            128,
        ),
    };
    IpNet::new(addr, c.prefix_len).map_err(|_| {
        format!(
            "prefix length {} is not valid for {family} (0-{max})",
            c.prefix_len
        )
    })
}

/// A policy's answer, checked for size and well-formed prefixes.
pub(crate) fn from_wit(d: wit::Decision) -> Result<Decision, String> {
    if d.mappings.len() > validate::MAX_MAPPINGS {
        return Err(format!(
            "{} mappings, more than the {} allowed",
            d.mappings.len(),
            validate::MAX_MAPPINGS
        ));
    }
    let mappings = d
        .mappings
        .iter()
        .map(|m| {
            Ok(Mapping {
                real: cidr_in(&m.real)?,
                remapped: cidr_in(&m.remapped)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let strategy = match d.strategy {
        wit::Strategy::None => Strategy::None,
        wit::Strategy::Split => Strategy::Split,
        wit::Strategy::BothOnLocal => Strategy::BothOnLocal,
        wit::Strategy::BothOnRemote => Strategy::BothOnRemote,
    };
    Ok(Decision { strategy, mappings })
}

/// The first IPv6 CIDR of the remote, which a `remap:policy@0.1.0` policy would have to
/// map and cannot be told about; `None` when it can decide the peering.
pub(crate) fn ipv4_only_refusal(input: &PolicyInput) -> Option<IpNet> {
    input
        .remote
        .cidrs()
        .into_iter()
        .find(|n| matches!(n, IpNet::V6(_)))
}

/// `remap:policy@0.1.0`'s types from and to 0.2.0's: IPv4 only, addresses as host-order
/// `u32`.
pub(crate) mod v1 {
    use super::wit;
    use crate::bindings_v1::remap::policy::types as old;

    fn cidr(c: &wit::Cidr) -> Option<old::Cidr> {
        match c.addr {
            wit::IpAddress::Ipv4((a, b, c2, d)) => Some(old::Cidr {
                addr: u32::from_be_bytes([a, b, c2, d]),
                prefix_len: c.prefix_len,
            }),
            wit::IpAddress::Ipv6(_) => None,
        }
    }

    /// The IPv4 prefixes of `v`.
    fn cidrs(v: &[wit::Cidr]) -> Vec<old::Cidr> {
        v.iter().filter_map(cidr).collect()
    }

    fn capabilities(c: &wit::Capabilities) -> old::Capabilities {
        old::Capabilities {
            nat_dataplane: c.nat_dataplane,
        }
    }

    /// The IPv4 part of an input (mappings with an IPv6 side left out).
    pub(crate) fn input(i: &wit::DecisionInput) -> old::DecisionInput {
        old::DecisionInput {
            local: old::LocalCluster {
                name: i.local.name.clone(),
                pod_cidrs: cidrs(&i.local.pod_cidrs),
                service_cidrs: cidrs(&i.local.service_cidrs),
                reserved_cidrs: cidrs(&i.local.reserved_cidrs),
                remap_pool: cidrs(&i.local.remap_pool),
                allocated: cidrs(&i.local.allocated),
                capabilities: capabilities(&i.local.capabilities),
            },
            remote: old::RemoteCluster {
                name: i.remote.name.clone(),
                pod_cidrs: cidrs(&i.remote.pod_cidrs),
                service_cidrs: cidrs(&i.remote.service_cidrs),
                capabilities: capabilities(&i.remote.capabilities),
                view_of_local: i.remote.view_of_local.as_ref().map(|v| {
                    v.iter()
                        .filter_map(|m| {
                            Some(old::Mapping {
                                real: cidr(&m.real)?,
                                remapped: cidr(&m.remapped)?,
                            })
                        })
                        .collect()
                }),
            },
            settings: i.settings.clone(),
        }
    }

    fn cidr_back(c: &old::Cidr) -> wit::Cidr {
        let [a, b, c2, d] = c.addr.to_be_bytes();
        wit::Cidr {
            addr: wit::IpAddress::Ipv4((a, b, c2, d)),
            prefix_len: c.prefix_len,
        }
    }

    /// A 0.1.0 answer in 0.2.0's types (prefixes are checked after, as for any).
    pub(crate) fn decision(d: old::Decision) -> wit::Decision {
        wit::Decision {
            strategy: match d.strategy {
                old::Strategy::None => wit::Strategy::None,
                old::Strategy::Split => wit::Strategy::Split,
                old::Strategy::BothOnLocal => wit::Strategy::BothOnLocal,
                old::Strategy::BothOnRemote => wit::Strategy::BothOnRemote,
            },
            mappings: d
                .mappings
                .iter()
                .map(|m| wit::Mapping {
                    real: cidr_back(&m.real),
                    remapped: cidr_back(&m.remapped),
                })
                .collect(),
        }
    }
}
