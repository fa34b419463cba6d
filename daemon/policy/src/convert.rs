//! Between the model's types and the WIT contracts': what a policy is given and what
//! it answers, checked for well-formed prefixes. One module per contract version.
//!
//! `remap:policy@0.2.0` ([`v2`]) carries both families. `remap:policy@0.1.0` ([`v1`])
//! carries IPv4 only: a 0.1.0 policy is given the IPv4 part of its input, and a peering
//! whose remote has an IPv6 CIDR cannot be decided by it, which it says.

use remapd_model::model::{Decision, Mapping, Strategy};
use remapd_model::validate;

/// Refuses an answer with more mappings than a decision may hold, before converting it.
fn check_size(count: usize) -> Result<(), String> {
    if count > validate::MAX_MAPPINGS {
        return Err(format!(
            "{count} mappings, more than the {} allowed",
            validate::MAX_MAPPINGS
        ));
    }
    Ok(())
}

/// A decision from converted parts.
fn decision(strategy: Strategy, mappings: Vec<Mapping>) -> Decision {
    Decision { strategy, mappings }
}

/// `remap:policy@0.2.0`: IPv4 and IPv6.
pub(crate) mod v2 {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use ipnet::IpNet;
    use remapd_model::model::{Decision, Mapping, PolicyInput, Strategy};

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

    /// The whole input, both families.
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
            wit::IpAddress::Ipv4((a, b, c, d)) => {
                (IpAddr::V4(Ipv4Addr::new(a, b, c, d)), "IPv4", 32)
            }
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

    pub(crate) fn from_wit(d: wit::Decision) -> Result<Decision, String> {
        super::check_size(d.mappings.len())?;
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
        Ok(super::decision(strategy, mappings))
    }
}

/// `remap:policy@0.1.0`: IPv4 only, addresses as host-order u32.
pub(crate) mod v1 {
    use ipnet::{IpNet, Ipv4Net};
    use remapd_model::model::{Decision, Mapping, PolicyInput, Strategy};

    use crate::bindings_v1::remap::policy::types as wit;

    fn cidr_out(n: &Ipv4Net) -> wit::Cidr {
        wit::Cidr {
            addr: u32::from(n.network()),
            prefix_len: n.prefix_len(),
        }
    }

    /// The IPv4 prefixes of `v`: what a 0.1.0 policy can be told.
    fn cidrs_out(v: &[IpNet]) -> Vec<wit::Cidr> {
        v.iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some(cidr_out(n)),
                IpNet::V6(_) => None,
            })
            .collect()
    }

    /// A 0.1.0 policy's input, or the first IPv6 CIDR of the remote it would have to
    /// map and cannot be told about.
    pub(crate) fn to_wit(input: &PolicyInput) -> Result<wit::DecisionInput, IpNet> {
        if let Some(v6) = input
            .remote
            .cidrs()
            .into_iter()
            .find(|n| matches!(n, IpNet::V6(_)))
        {
            return Err(v6);
        }
        Ok(wit::DecisionInput {
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
                view_of_local: input.remote.view_of_local.as_ref().map(|v| {
                    v.iter()
                        .filter_map(|m| match (m.real, m.remapped) {
                            (IpNet::V4(real), IpNet::V4(remapped)) => Some(wit::Mapping {
                                real: cidr_out(&real),
                                remapped: cidr_out(&remapped),
                            }),
                            _ => None,
                        })
                        .collect()
                }),
            },
            settings: input
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    pub(crate) fn cidr_in(c: &wit::Cidr) -> Result<IpNet, String> {
        Ipv4Net::new(c.addr.into(), c.prefix_len)
            .map(IpNet::V4)
            .map_err(|_| format!("prefix length {} is not valid for IPv4", c.prefix_len))
    }

    pub(crate) fn from_wit(d: wit::Decision) -> Result<Decision, String> {
        super::check_size(d.mappings.len())?;
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
        Ok(super::decision(strategy, mappings))
    }
}
