//! The host's domain model: clusters, peerings' remote side, policy decisions. These are
//! the types the API, the policy host, the validator and the plan compiler share.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The pattern of a resource name (cluster, peering, policy): 1-63 of `a-z`, `0-9`,
/// `-`, not starting with `-`.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";

/// The pattern of an IPv4 prefix in CIDR notation (the schema's `Ipv4Cidr`).
pub const IPV4_CIDR_PATTERN: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/([0-9]|[12][0-9]|3[0-2])$";

/// An IPv4 prefix in CIDR notation, as the OpenAPI schema describes it (the Rust side
/// is `ipnet::Ipv4Net`). Host bits must be zero, which a pattern cannot say.
pub struct Ipv4Cidr;

impl utoipa::PartialSchema for Ipv4Cidr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(IPV4_CIDR_PATTERN))
            .description(Some("An IPv4 prefix, host bits zero"))
            .examples([serde_json::json!("10.1.0.0/16")])
            .into()
    }
}

impl ToSchema for Ipv4Cidr {}

/// The cluster this gateway belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalCluster {
    /// Cluster name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "cluster-1")]
    pub name: String,
    /// Real pod CIDRs.
    #[schema(value_type = Vec<Ipv4Cidr>, example = json!(["10.1.0.0/16"]))]
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Real service CIDRs.
    #[serde(default)]
    #[schema(value_type = Vec<Ipv4Cidr>, example = json!(["10.1.0.0/16"]))]
    pub service_cidrs: Vec<Ipv4Net>,
    /// Address space never to be used for remapped CIDRs and never routed into a tunnel
    /// (node and management networks, etc.).
    #[serde(default)]
    #[schema(value_type = Vec<Ipv4Cidr>, example = json!(["10.1.0.0/16"]))]
    pub reserved_cidrs: Vec<Ipv4Net>,
    /// Where remapped CIDRs are allocated from.
    #[serde(default)]
    #[schema(value_type = Vec<Ipv4Cidr>, example = json!(["10.1.0.0/16"]))]
    pub remap_pool: Vec<Ipv4Net>,
}

impl LocalCluster {
    /// Pod then service CIDRs: everything a peer must be able to reach.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
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
    #[schema(value_type = Ipv4Cidr)]
    pub real: Ipv4Net,
    /// How it is seen.
    #[schema(value_type = Ipv4Cidr)]
    pub remapped: Ipv4Net,
}

impl Mapping {
    /// Maps an address inside `real` to its remapped address, keeping host bits.
    pub fn apply(&self, addr: std::net::Ipv4Addr) -> Option<std::net::Ipv4Addr> {
        if !self.real.contains(&addr) {
            return None;
        }
        let mask = u32::from(self.real.netmask());
        Some((u32::from(self.remapped.network()) | (u32::from(addr) & !mask)).into())
    }
}

/// The remote end of a peering, as the remote describes itself (its exports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteCluster {
    /// Remote cluster name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "cluster-2")]
    pub name: String,
    /// Its real pod CIDRs.
    #[schema(value_type = Vec<Ipv4Cidr>, example = json!(["10.1.0.0/16"]))]
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Its real service CIDRs.
    #[serde(default)]
    #[schema(value_type = Vec<Ipv4Cidr>, example = json!(["10.1.0.0/16"]))]
    pub service_cidrs: Vec<Ipv4Net>,
    /// What its gateway can do.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// How it sees our CIDRs (our real -> its view), when it has told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_of_local: Option<Vec<Mapping>>,
}

impl RemoteCluster {
    /// Pod then service CIDRs.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
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
    #[schema(value_type = Vec<Ipv4Cidr>, example = json!(["10.1.0.0/16"]))]
    pub allocated: Vec<Ipv4Net>,
    /// The peer.
    pub remote: RemoteCluster,
    /// Free-form settings of the peering.
    pub settings: BTreeMap<String, String>,
}

/// The policy a peering uses when it names none (the built-in `auto`).
pub const DEFAULT_POLICY: &str = "auto";
