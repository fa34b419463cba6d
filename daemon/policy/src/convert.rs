//! Between the model's types and the WIT contract's: what a policy is given
//! ([`to_wit`]) and what it answers, checked for well-formed prefixes ([`from_wit`]).
//!
//! `remap:policy@0.1.0` carries IPv4 only. A 0.1.0 policy is given the IPv4 part of its
//! input; a peering whose remote has an IPv6 CIDR cannot be decided by it, and says so.

use ipnet::{IpNet, Ipv4Net};

use crate::bindings::remap::policy::types as wit;
use crate::validate;
use remapd_model::model::{Decision, Mapping, PolicyInput, Strategy};

pub(crate) fn cidr_out(n: &Ipv4Net) -> wit::Cidr {
    wit::Cidr {
        addr: u32::from(n.network()),
        prefix_len: n.prefix_len(),
    }
}

/// The IPv4 prefixes of `v`: what a 0.1.0 policy can be told.
pub(crate) fn cidrs_out(v: &[IpNet]) -> Vec<wit::Cidr> {
    v.iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(cidr_out(n)),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// A 0.1.0 policy's input, or the first IPv6 CIDR of the remote it would have to map
/// and cannot be told about.
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
    Ok(Decision {
        strategy: match d.strategy {
            wit::Strategy::None => Strategy::None,
            wit::Strategy::Split => Strategy::Split,
            wit::Strategy::BothOnLocal => Strategy::BothOnLocal,
            wit::Strategy::BothOnRemote => Strategy::BothOnRemote,
        },
        mappings,
    })
}
