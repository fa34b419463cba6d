//! What this gateway must keep reaching outside the tunnels: its own addresses and the
//! next hops towards the peers' WireGuard endpoints. A tunnel route that covered one of
//! them would send the gateway's own traffic — the encrypted tunnel packets included —
//! into a tunnel, and every tunnel behind it would go dark.
//!
//! Read with rtnetlink (address and main-table route dumps); the lookup of the route
//! towards an endpoint is a longest-prefix match over the main table, done here so it
//! is pure and tested without root.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};

use super::netlink::{links, netlink_error};
use super::routes::kernel::{destination, table_routes};
use super::{NetError, ProtectedAddress};

/// `RT_TABLE_MAIN`.
const MAIN_TABLE: u32 = 254;

/// One unicast route of the main table, as far as the lookup needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MainRoute {
    /// Destination (IPv4 or IPv6).
    pub destination: IpNet,
    /// Next hop, if the route has one (else the destination is on the link).
    pub gateway: Option<IpAddr>,
    /// Output interface name.
    pub interface: String,
}

/// The next hop towards `address`: the gateway of the longest matching main-table
/// route of its family that has one, else `None` (on-link, or no route).
pub fn next_hop(routes: &[MainRoute], address: IpAddr) -> Option<&MainRoute> {
    routes
        .iter()
        .filter(|r| r.destination.contains(&address))
        .max_by_key(|r| r.destination.prefix_len())
        .filter(|r| r.gateway.is_some())
}

/// This gateway's addresses of both families on interfaces other than remapd's tunnels
/// (`rmd-*`), and the next hops of the main-table routes towards `endpoints`. Loopback,
/// link-local and multicast addresses are left out: no tunnel route can cover them
/// (they are special-purpose space, which no CIDR may overlap).
pub(crate) async fn protected_addresses(
    handle: &Handle,
    endpoints: &[IpAddr],
) -> Result<Vec<ProtectedAddress>, NetError> {
    let names: BTreeMap<u32, String> = links(handle)
        .await?
        .into_iter()
        .map(|(name, link)| (link.index, name))
        .collect();
    let mut out = Vec::new();
    let mut addresses = handle.address().get().execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(|e| netlink_error("dumping addresses", &e))?
    {
        if !matches!(
            message.header.family,
            AddressFamily::Inet | AddressFamily::Inet6
        ) {
            continue;
        }
        let interface = names
            .get(&message.header.index)
            .cloned()
            .unwrap_or_default();
        if interface.starts_with("rmd-") {
            continue;
        }
        for attribute in &message.attributes {
            if let AddressAttribute::Local(a) | AddressAttribute::Address(a) = attribute {
                if !coverable(a) {
                    continue;
                }
                let what = format!("this gateway's address on {interface}");
                if !out
                    .iter()
                    .any(|p: &ProtectedAddress| p.address == *a && p.what == what)
                {
                    out.push(ProtectedAddress { address: *a, what });
                }
            }
        }
    }
    let routes = main_routes(handle, &names).await?;
    for endpoint in endpoints {
        if let Some(route) = next_hop(&routes, *endpoint)
            && let Some(gateway) = route.gateway.filter(coverable)
        {
            out.push(ProtectedAddress {
                address: gateway,
                what: format!(
                    "the next hop (via {}) towards the WireGuard endpoint {endpoint}",
                    route.interface
                ),
            });
        }
    }
    Ok(out)
}

/// Whether a tunnel route could ever cover `address`: not loopback, link-local,
/// multicast or unspecified (special-purpose space no CIDR may overlap).
fn coverable(address: &IpAddr) -> bool {
    let special = match address {
        IpAddr::V4(a) => a.is_loopback() || a.is_link_local() || a.is_multicast(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unicast_link_local() || a.is_multicast(),
    };
    !special && !address.is_unspecified()
}

/// The unicast routes of the main table, both families.
async fn main_routes(
    handle: &Handle,
    names: &BTreeMap<u32, String>,
) -> Result<Vec<MainRoute>, NetError> {
    let all = table_routes(handle, MAIN_TABLE).await?;
    Ok(all
        .iter()
        .filter(|m| m.header.kind == RouteType::Unicast)
        .filter_map(|m| {
            let destination = destination(m)?;
            let mut gateway = None;
            let mut oif = None;
            for attribute in &m.attributes {
                match attribute {
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some((*a).into()),
                    RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some((*a).into()),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            Some(MainRoute {
                destination,
                gateway,
                interface: oif.and_then(|i| names.get(&i).cloned()).unwrap_or_default(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gateway: Option<&str>, dev: &str) -> MainRoute {
        MainRoute {
            destination: dst.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            interface: dev.into(),
        }
    }

    #[test]
    fn the_longest_match_with_a_gateway_is_the_next_hop() {
        let routes = [
            route("0.0.0.0/0", Some("192.0.2.1"), "eth0"),
            route("192.0.2.0/24", None, "eth0"),
            route("203.0.113.0/24", Some("192.0.2.254"), "eth0"),
        ];
        let hop = |a: &str| next_hop(&routes, a.parse().unwrap()).and_then(|r| r.gateway);
        assert_eq!(hop("198.51.100.7"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(hop("203.0.113.9"), Some("192.0.2.254".parse().unwrap()));
        // On-link: no next hop to protect (the address itself is).
        assert_eq!(hop("192.0.2.77"), None);
        assert_eq!(next_hop(&routes[1..2], "10.0.0.1".parse().unwrap()), None);
    }

    /// Each address finds the route of its family: an IPv6 default route (listed after
    /// the IPv4 one, as the kernel dumps them) neither hides the IPv4 next hop nor
    /// answers for an IPv4 address, and IPv6 endpoints get their IPv6 next hop.
    #[test]
    fn next_hops_are_found_per_family() {
        let routes = [
            route("0.0.0.0/0", Some("192.0.2.1"), "eth0"),
            route("::/0", Some("2001:db8::1"), "eth0"),
            route("2001:db8:7::/48", Some("2001:db8::fe"), "eth1"),
        ];
        let hop = |a: &str| next_hop(&routes, a.parse().unwrap()).and_then(|r| r.gateway);
        assert_eq!(hop("198.51.100.7"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(hop("2001:db8:5::7"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(hop("2001:db8:7::9"), Some("2001:db8::fe".parse().unwrap()));
        assert!(!coverable(&"fe80::1".parse().unwrap()));
        assert!(!coverable(&"127.0.0.1".parse().unwrap()));
        assert!(coverable(&"2001:db8::1".parse().unwrap()));
    }
}
