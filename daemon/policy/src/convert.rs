//! Between the model's types and the WIT contract's: what a policy is given
//! ([`to_wit`]) and what it answers, checked for well-formed prefixes ([`from_wit`]).

use ipnet::Ipv4Net;

use crate::bindings::remap::policy::types as wit;
use crate::validate;
use remapd_model::model::{Decision, Mapping, PolicyInput, Strategy};

pub(crate) fn cidr_out(n: &Ipv4Net) -> wit::Cidr {
    wit::Cidr {
        addr: u32::from(n.network()),
        prefix_len: n.prefix_len(),
    }
}

pub(crate) fn cidrs_out(v: &[Ipv4Net]) -> Vec<wit::Cidr> {
    v.iter().map(cidr_out).collect()
}

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
            view_of_local: input.remote.view_of_local.as_ref().map(|v| {
                v.iter()
                    .map(|m| wit::Mapping {
                        real: cidr_out(&m.real),
                        remapped: cidr_out(&m.remapped),
                    })
                    .collect()
            }),
        },
        settings: input
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub(crate) fn cidr_in(c: &wit::Cidr) -> Result<Ipv4Net, String> {
    Ipv4Net::new(c.addr.into(), c.prefix_len)
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
