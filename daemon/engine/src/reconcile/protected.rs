//! What no change may route into a tunnel: the gateway's own addresses, its peers'
//! endpoints and the next hops towards them; and UDP ports other processes hold.

use ipnet::IpNet;

use super::{DesiredSystem, ReconcileReport, Reconciler};
use crate::store::DesiredState;

/// `set` without the addresses of `hole` (prefixes that contain it are split).
pub fn subtract(set: &[IpNet], hole: IpNet) -> Vec<IpNet> {
    let mut out = Vec::new();
    for net in set {
        if hole.contains(net) {
            continue;
        }
        if !net.contains(&hole) {
            out.push(*net);
            continue;
        }
        // Walk down from `net` to `hole`, keeping the sibling at each level.
        let mut cur = *net;
        while cur.prefix_len() < hole.prefix_len() {
            let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
                break;
            };
            let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
                break;
            };
            let (keep, down) = if a.contains(&hole) { (b, a) } else { (a, b) };
            out.push(keep);
            cur = down;
        }
    }
    out
}

/// A new tunnel route that would cover an address this gateway must keep reaching
/// outside the tunnels.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "peering {peering:?} would route {prefix} into {interface}, which covers {address} ({what}); the gateway would lose it"
)]
pub struct ProtectedRoute {
    /// The peering whose route it is.
    pub peering: String,
    /// The route's prefix.
    pub prefix: IpNet,
    /// Its tunnel.
    pub interface: String,
    /// The covered address.
    pub address: std::net::IpAddr,
    /// What that address is.
    pub what: String,
}

/// The peering whose tunnel is `interface` (empty if none).
fn peering_of_interface(state: &DesiredState, interface: &str) -> String {
    state
        .peerings
        .iter()
        .find(|(name, spec)| spec.interface(name) == interface)
        .map(|(name, _)| name.clone())
        .unwrap_or_default()
}

/// The first of `routes` that covers one of `protected`, with the peering it belongs to
/// (by interface, from `state`).
pub fn first_protected_route(
    routes: &[&remapd_net::RouteSpec],
    protected: &[remapd_net::ProtectedAddress],
    state: &DesiredState,
) -> Option<ProtectedRoute> {
    routes.iter().find_map(|route| {
        let hit = protected
            .iter()
            .find(|p| route.prefix.contains(&p.address))?;
        let peering = peering_of_interface(state, &route.interface);
        Some(ProtectedRoute {
            peering,
            prefix: route.prefix,
            interface: route.interface.clone(),
            address: hit.address,
            what: hit.what.clone(),
        })
    })
}

/// Why [`Reconciler::check_protected`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtectedCheck {
    /// A new route covers a protected address.
    #[error(transparent)]
    Covered(ProtectedRoute),
    /// A new tunnel's UDP port is bound by another process.
    #[error(
        "peering {peering:?}: UDP port {port} is already bound by another process on this gateway"
    )]
    PortInUse {
        /// The peering.
        peering: String,
        /// The port.
        port: u16,
    },
    /// The gateway's addresses, routes or ports could not be read.
    #[error("reading this gateway's addresses, routes or ports: {0}")]
    Unreadable(String),
}

impl Reconciler {
    /// Refuses `system` if a route it adds (one the committed system does not have)
    /// covers this gateway's own address, a peer's WireGuard endpoint, or the next hop
    /// towards one. Routes already in force are not re-checked, so an address added
    /// later never blocks changes to other peerings.
    pub fn check_protected(
        &self,
        system: &DesiredSystem,
        state: &DesiredState,
    ) -> Result<(), ProtectedCheck> {
        let new: Vec<&remapd_net::RouteSpec> = system
            .routes
            .iter()
            .filter(|r| !self.committed.routes.contains(r))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        // The operator's own never-touch ranges (the cluster's `reserved_cidrs`: node
        // and management networks) are never routed into a tunnel either.
        let reserved = state
            .cluster
            .as_ref()
            .map(|c| c.reserved_cidrs.as_slice())
            .unwrap_or_default();
        for route in &new {
            if let Some(r) = reserved
                .iter()
                .find(|r| r.contains(&route.prefix) || route.prefix.contains(*r))
            {
                let address = if route.prefix.contains(r) {
                    r.network()
                } else {
                    route.prefix.network()
                };
                return Err(ProtectedCheck::Covered(ProtectedRoute {
                    peering: peering_of_interface(state, &route.interface),
                    prefix: route.prefix,
                    interface: route.interface.clone(),
                    address,
                    what: format!("in the cluster's reserved range {r}"),
                }));
            }
        }
        let endpoints: Vec<(String, std::net::IpAddr)> = state
            .peerings
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), p.tunnel.endpoint?.ip().to_canonical())))
            .collect();
        let addresses: Vec<std::net::IpAddr> = endpoints.iter().map(|(_, a)| *a).collect();
        let mut protected = self
            .routes
            .protected_addresses(&addresses)
            .map_err(|e| ProtectedCheck::Unreadable(e.to_string()))?;
        protected.extend(endpoints.into_iter().map(|(name, address)| {
            remapd_net::ProtectedAddress {
                address,
                what: format!("the WireGuard endpoint of peering {name:?}"),
            }
        }));
        match first_protected_route(&new, &protected, state) {
            Some(hit) => Err(ProtectedCheck::Covered(hit)),
            None => Ok(()),
        }
    }

    /// The tunnels of `report` that failed and that this change is to blame for: a
    /// target's, or one whose desired configuration differs from the committed one. A
    /// tunnel that fails with an unchanged configuration (its process died and cannot
    /// start again, say) is that peering's own trouble and does not refuse the change.
    pub fn failed_tunnels_of_change(
        &self,
        system: &DesiredSystem,
        report: &ReconcileReport,
        state: &DesiredState,
        targets: &[String],
    ) -> Vec<(String, String)> {
        report
            .tunnels
            .failed
            .iter()
            .filter(|(interface, _)| {
                let target = targets.contains(&peering_of_interface(state, interface));
                let desired = system.tunnels.iter().find(|t| &t.interface == *interface);
                let committed = self
                    .committed
                    .tunnels
                    .iter()
                    .find(|t| &t.interface == *interface);
                target || desired != committed
            })
            .map(|(i, e)| (i.clone(), e.clone()))
            .collect()
    }

    /// Refuses `system` if a tunnel it starts or moves to another port would listen on
    /// a UDP port something else holds. Ports remapd's committed tunnels hold are not
    /// probed (peerings never share one; the API checks that).
    pub fn check_ports(
        &self,
        system: &DesiredSystem,
        state: &DesiredState,
    ) -> Result<(), ProtectedCheck> {
        for tunnel in &system.tunnels {
            let ours = self
                .committed
                .tunnels
                .iter()
                .any(|c| c.listen_port == tunnel.listen_port);
            if ours {
                continue;
            }
            let free = self
                .tunnels
                .port_available(tunnel.listen_port)
                .map_err(|e| ProtectedCheck::Unreadable(e.to_string()))?;
            if !free {
                let peering = peering_of_interface(state, &tunnel.interface);
                return Err(ProtectedCheck::PortInUse {
                    peering,
                    port: tunnel.listen_port,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn subtracting_a_hole_keeps_everything_else() {
        let out = subtract(&[n("10.0.0.0/22")], n("10.0.1.0/24"));
        assert_eq!(out, vec![n("10.0.2.0/23"), n("10.0.0.0/24")]);
        assert_eq!(subtract(&[n("10.0.0.0/24")], n("10.0.0.0/16")), vec![]);
        assert_eq!(
            subtract(&[n("10.0.0.0/24")], n("10.1.0.0/24")),
            vec![n("10.0.0.0/24")]
        );
        let total: u64 = subtract(&[n("100.64.0.0/10")], n("100.64.7.0/24"))
            .iter()
            .map(|p| 1u64 << (32 - p.prefix_len()))
            .sum();
        assert_eq!(total, (1 << 22) - 256);
    }
}
