//! The host's domain model: clusters, peerings' remote side, policy decisions. These are
//! the types the API, the policy host, the validator and the plan compiler share.

use std::collections::BTreeMap;
use std::fmt;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The pattern of a resource name (cluster, peering, policy): 1-63 of `a-z`, `0-9`,
/// `-`, not starting with `-`.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";

/// The pattern of an IPv4 prefix in CIDR notation.
pub const IPV4_CIDR_PATTERN: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/([0-9]|[12][0-9]|3[0-2])$";

/// The pattern of an IPv6 prefix in CIDR notation, loosely: hex digits and colons (an
/// embedded dotted quad allowed), a length of 0-128. The daemon parses it exactly.
pub const IPV6_CIDR_PATTERN: &str =
    "^[0-9a-fA-F:.]*:[0-9a-fA-F:.]*/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$";

/// An IPv4 or IPv6 prefix in CIDR notation, as the OpenAPI schema describes it (the
/// Rust side is `ipnet::IpNet`). Host bits must be zero, which a pattern cannot say.
pub struct Cidr;

impl utoipa::PartialSchema for Cidr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!("({IPV4_CIDR_PATTERN})|({IPV6_CIDR_PATTERN})")))
            .description(Some(
                "An IPv4 or IPv6 prefix, host bits zero. A real prefix and its view have the same family and length",
            ))
            .examples([
                serde_json::json!("10.1.0.0/16"),
                serde_json::json!("fd00:10:244::/56"),
            ])
            .into()
    }
}

impl ToSchema for Cidr {}

/// The cluster this gateway belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalCluster {
    /// Cluster name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "cluster-1")]
    pub name: String,
    /// Real pod CIDRs, IPv4 and IPv6.
    #[schema(value_type = Vec<Cidr>, example = json!(["10.1.0.0/16", "fd00:10:1::/56"]))]
    pub pod_cidrs: Vec<IpNet>,
    /// Real service CIDRs.
    #[serde(default)]
    #[schema(value_type = Vec<Cidr>, example = json!(["10.1.0.0/16"]))]
    pub service_cidrs: Vec<IpNet>,
    /// Address space never to be used for remapped CIDRs and never routed into a tunnel
    /// (node and management networks, etc.).
    #[serde(default)]
    #[schema(value_type = Vec<Cidr>, example = json!(["10.1.0.0/16"]))]
    pub reserved_cidrs: Vec<IpNet>,
    /// Where remapped CIDRs are allocated from.
    #[serde(default)]
    #[schema(value_type = Vec<Cidr>, example = json!(["10.1.0.0/16"]))]
    pub remap_pool: Vec<IpNet>,
}

impl LocalCluster {
    /// Pod then service CIDRs: everything a peer must be able to reach.
    pub fn cidrs(&self) -> Vec<IpNet> {
        self.pod_cidrs
            .iter()
            .chain(&self.service_cidrs)
            .copied()
            .collect()
    }
}

/// What a gateway can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Runs remapd's NAT dataplane.
    #[serde(default)]
    pub nat_dataplane: bool,
}

/// A real prefix and the prefix it is seen as from the other side.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Real prefix.
    #[schema(value_type = Cidr)]
    pub real: IpNet,
    /// How it is seen.
    #[schema(value_type = Cidr)]
    pub remapped: IpNet,
}

impl Mapping {
    /// Maps an address inside `real` to its remapped address, keeping host bits. `None`
    /// when `real` does not hold it (an address of the other family included) or when
    /// the mapping mixes families.
    pub fn apply(&self, addr: IpAddr) -> Option<IpAddr> {
        if !self.real.contains(&addr) {
            return None;
        }
        match (self.real.hostmask(), self.remapped.network(), addr) {
            (IpAddr::V4(host), IpAddr::V4(view), IpAddr::V4(addr)) => Some(IpAddr::V4(
                (u32::from(view) & !u32::from(host) | u32::from(addr) & u32::from(host)).into(),
            )),
            (IpAddr::V6(host), IpAddr::V6(view), IpAddr::V6(addr)) => Some(IpAddr::V6(
                (u128::from(view) & !u128::from(host) | u128::from(addr) & u128::from(host)).into(),
            )),
            _ => None,
        }
    }
}

/// The remote end of a peering, as the remote describes itself (its exports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteCluster {
    /// Remote cluster name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "cluster-2")]
    pub name: String,
    /// Its real pod CIDRs, IPv4 and IPv6.
    #[schema(value_type = Vec<Cidr>, example = json!(["10.2.0.0/16", "fd00:10:2::/56"]))]
    pub pod_cidrs: Vec<IpNet>,
    /// Its real service CIDRs.
    #[serde(default)]
    #[schema(value_type = Vec<Cidr>, example = json!(["10.1.0.0/16"]))]
    pub service_cidrs: Vec<IpNet>,
    /// What its gateway can do.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// How it sees our CIDRs (our real -> its view), when it has told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_of_local: Option<Vec<Mapping>>,
}

impl RemoteCluster {
    /// Pod then service CIDRs.
    pub fn cidrs(&self) -> Vec<IpNet> {
        self.pod_cidrs
            .iter()
            .chain(&self.service_cidrs)
            .copied()
            .collect()
    }
}

/// How a pair of gateways translates, from this gateway's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// No overlap: plain routing.
    None,
    /// Each side translates the peer's addresses.
    Split,
    /// This gateway does every rewrite; the remote only routes.
    BothOnLocal,
    /// The remote does every rewrite; this gateway only routes.
    BothOnRemote,
}

impl Strategy {
    /// The same strategy seen from the other gateway.
    pub fn mirrored(self) -> Self {
        match self {
            Self::BothOnLocal => Self::BothOnRemote,
            Self::BothOnRemote => Self::BothOnLocal,
            other => other,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Split => "split",
            Self::BothOnLocal => "both-on-local",
            Self::BothOnRemote => "both-on-remote",
        })
    }
}

/// A policy's answer: the strategy and the local view of every remote CIDR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Strategy.
    pub strategy: Strategy,
    /// Remote real CIDR -> local view.
    pub mappings: Vec<Mapping>,
}

/// Everything a policy is asked about one peering.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyInput {
    /// This cluster.
    pub local: LocalCluster,
    /// What this gateway can do.
    pub local_capabilities: Capabilities,
    /// Remapped CIDRs held by other peerings of this gateway.
    #[schema(value_type = Vec<Cidr>, example = json!(["10.1.0.0/16"]))]
    pub allocated: Vec<IpNet>,
    /// The peer.
    pub remote: RemoteCluster,
    /// Free-form settings of the peering.
    pub settings: BTreeMap<String, String>,
}

/// The policy a peering uses when it names none (the built-in `auto`).
pub const DEFAULT_POLICY: &str = "auto";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_keeps_host_bits_in_both_families_and_never_crosses_them() {
        let m = |real: &str, remapped: &str| Mapping {
            real: real.parse().unwrap(),
            remapped: remapped.parse().unwrap(),
        };
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let v4 = m("40.0.0.0/24", "30.0.0.0/24");
        assert_eq!(v4.apply(ip("40.0.0.7")), Some(ip("30.0.0.7")));
        assert_eq!(v4.apply(ip("40.0.1.7")), None);
        assert_eq!(v4.apply(ip("::ffff:40.0.0.7")), None);
        let v6 = m("fd00:40::/56", "fd00:30:0:100::/56");
        assert_eq!(
            v6.apply(ip("fd00:40:0:ab::1234")),
            Some(ip("fd00:30:0:1ab::1234"))
        );
        assert_eq!(v6.apply(ip("40.0.0.7")), None);
        assert_eq!(m("40.0.0.0/24", "fd00::/24").apply(ip("40.0.0.7")), None);
    }
}
