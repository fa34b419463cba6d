//! The plan compiler: a pure function from (local cluster, peering, validated decision)
//! to this gateway's desired state for that peering — translation rules on the tunnel
//! device, routes into the tunnel, the peer's WireGuard allowed-ips — and the exports
//! the remote gateway needs.
//!
//! Where the rewrites happen, per strategy (L = this gateway, R = the remote; `r` remote
//! real CIDRs, `v` L's view of them, `l` L's real CIDRs, `w` R's view of them):
//!
//! | strategy | L egress | L ingress | routes at L | allowed-ips at L |
//! |---|---|---|---|---|
//! | none | — | — | `r` | `r` |
//! | split | dst `v→r` | src `r→v` | `v` | `r` |
//! | both-on-local | dst `v→r`, src `l→w` | src `r→v`, dst `w→l` | `v` | `r` |
//! | both-on-remote | — | — | `v` | `v` |
//!
//! WireGuard checks allowed-ips after egress rewriting and before ingress rewriting, so
//! they hold what actually crosses the tunnel.
//!
//! The tunnel's ingress is a border, default deny. After ingress translation every packet
//! from the peer, whatever the strategy, has a source in L's view of the remote (`v`;
//! `r` when nothing is remapped) and a destination in L's real CIDRs (`l`), so the
//! allow-list is `v → l`. It is compiled from the same mappings as the rules, so the two
//! can never disagree.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Capabilities, Decision, LocalCluster, Mapping, RemoteCluster, Strategy};
use crate::rule::{AddressField, Direction, TranslationRule};

/// What the remote gateway must be told: the exact JSON to give the other daemon as the
/// `remote` of its peering with us.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Exports {
    /// This cluster, described for the remote (its `remote` block).
    pub remote: RemoteCluster,
    /// The strategy the remote must use for the pair to work.
    pub strategy: Strategy,
}

/// This gateway's desired state for one peering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GatewayPlan {
    /// Strategy from this gateway's point of view.
    pub strategy: Strategy,
    /// Rules on the tunnel device.
    pub rules: Vec<TranslationRule>,
    /// Prefixes routed into the tunnel device.
    #[schema(value_type = Vec<String>)]
    pub routes: Vec<IpNet>,
    /// The peer's WireGuard allowed-ips.
    #[schema(value_type = Vec<String>)]
    pub allowed_ips: Vec<IpNet>,
    /// What may cross the tunnel's ingress, after translation; everything else is dropped.
    pub border: Border,
    /// For the remote gateway.
    pub exports: Exports,
}

/// A tunnel ingress allow-list, as addresses look after ingress translation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Border {
    /// Sources the peer may use: this gateway's view of the remote's CIDRs.
    #[schema(value_type = Vec<String>)]
    pub sources: Vec<IpNet>,
    /// Destinations the peer may reach: this cluster's real pod and service CIDRs.
    #[schema(value_type = Vec<String>)]
    pub destinations: Vec<IpNet>,
}

/// Why a plan cannot be compiled (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// both-on-local needs the remote's view of our CIDRs.
    #[error(
        "strategy both-on-local needs to know how {remote} sees our CIDRs: give its exports (remote.view_of_local) to this peering"
    )]
    MissingRemoteView {
        /// Remote cluster.
        remote: String,
    },
    /// The remote's view does not cover one of our CIDRs.
    #[error("{remote}'s view of us has no mapping for our CIDR {cidr}")]
    IncompleteRemoteView {
        /// Remote cluster.
        remote: String,
        /// Our CIDR.
        cidr: IpNet,
    },
    /// The remote's view is malformed.
    #[error("{remote}'s view of us maps {real} to {remapped}, which differ in family or length")]
    BadRemoteView {
        /// Remote cluster.
        remote: String,
        /// Our CIDR.
        real: IpNet,
        /// Its view.
        remapped: IpNet,
    },
}

fn rule(
    tunnel: &str,
    direction: Direction,
    field: AddressField,
    from: IpNet,
    to: IpNet,
) -> TranslationRule {
    TranslationRule {
        interface: tunnel.to_owned(),
        direction,
        field,
        from,
        to,
    }
}

/// Compiles the plan for one peering. `decision` must have passed
/// [`crate::validate::validate`].
pub fn compile(
    local: &LocalCluster,
    local_capabilities: Capabilities,
    remote: &RemoteCluster,
    tunnel: &str,
    decision: &Decision,
) -> Result<GatewayPlan, PlanError> {
    use AddressField::{Destination, Source};
    use Direction::{Egress, Ingress};
    let mut rules = Vec::new();
    let views: Vec<IpNet> = decision.mappings.iter().map(|m| m.remapped).collect();
    let reals: Vec<IpNet> = decision.mappings.iter().map(|m| m.real).collect();
    let translate_remote = |rules: &mut Vec<TranslationRule>| {
        for m in decision.mappings.iter().filter(|m| m.real != m.remapped) {
            rules.push(rule(tunnel, Egress, Destination, m.remapped, m.real));
            rules.push(rule(tunnel, Ingress, Source, m.real, m.remapped));
        }
    };
    let (routes, allowed_ips) = match decision.strategy {
        Strategy::None => (reals.clone(), reals),
        Strategy::Split => {
            translate_remote(&mut rules);
            (views, reals)
        }
        Strategy::BothOnLocal => {
            translate_remote(&mut rules);
            let remote_view =
                remote
                    .view_of_local
                    .as_ref()
                    .ok_or_else(|| PlanError::MissingRemoteView {
                        remote: remote.name.clone(),
                    })?;
            for ours in local.cidrs() {
                let m = remote_view.iter().find(|m| m.real == ours).ok_or_else(|| {
                    PlanError::IncompleteRemoteView {
                        remote: remote.name.clone(),
                        cidr: ours,
                    }
                })?;
                if !crate::validate::same_family(&m.real, &m.remapped)
                    || m.real.prefix_len() != m.remapped.prefix_len()
                {
                    return Err(PlanError::BadRemoteView {
                        remote: remote.name.clone(),
                        real: m.real,
                        remapped: m.remapped,
                    });
                }
                if m.real != m.remapped {
                    rules.push(rule(tunnel, Egress, Source, m.real, m.remapped.trunc()));
                    rules.push(rule(
                        tunnel,
                        Ingress,
                        Destination,
                        m.remapped.trunc(),
                        m.real,
                    ));
                }
            }
            (views, reals)
        }
        Strategy::BothOnRemote => (views.clone(), views),
    };
    let border = Border {
        sources: decision
            .mappings
            .iter()
            .map(|m| m.remapped.trunc())
            .collect(),
        destinations: local.cidrs().iter().map(|c| c.trunc()).collect(),
    };
    Ok(GatewayPlan {
        strategy: decision.strategy,
        rules,
        routes,
        allowed_ips,
        border,
        exports: Exports {
            remote: RemoteCluster {
                name: local.name.clone(),
                pod_cidrs: local.pod_cidrs.clone(),
                service_cidrs: local.service_cidrs.clone(),
                capabilities: local_capabilities,
                view_of_local: Some(decision.mappings.clone()),
            },
            strategy: decision.strategy.mirrored(),
        },
    })
}

/// The remapped address of `addr` under `mappings`, if one covers it.
pub fn view_of(mappings: &[Mapping], addr: std::net::IpAddr) -> Option<std::net::IpAddr> {
    mappings.iter().find_map(|m| m.apply(addr))
}
