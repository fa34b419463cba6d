//! Network appliers for what the dataplane does not own: routes into the tunnels
//! (rtnetlink) and the WireGuard tunnels themselves (wireguard-control; a userspace
//! implementation run as its own process where the kernel has no WireGuard).
//!
//! Each applier takes a full desired set and makes the system match it, touching only
//! what remapd owns, and is safe to call again and again. Each sits behind a trait so
//! the reconciler is tested with fakes (`fake`).
#![deny(missing_docs)]

pub mod fake;
pub mod gateway;
pub mod netlink;
pub mod routes;
pub mod wireguard;

use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One route remapd wants: `prefix` into `interface`, in remapd's own table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Destination prefix.
    pub prefix: IpNet,
    /// Output interface (a tunnel).
    pub interface: String,
}

/// What a route apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouteReport {
    /// Routes added.
    pub added: usize,
    /// Routes removed.
    pub removed: usize,
    /// Routes already as desired.
    pub unchanged: usize,
}

/// One WireGuard tunnel (one interface, one peer) remapd wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSpec {
    /// Interface name (at most 15 bytes).
    pub interface: String,
    /// Local private key, base64 (never logged).
    #[serde(skip_serializing)]
    pub private_key: String,
    /// UDP listen port.
    pub listen_port: u16,
    /// The peer's public key, base64.
    pub peer_public_key: String,
    /// The peer's endpoint, when known.
    pub endpoint: Option<SocketAddr>,
    /// The peer's allowed-ips.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive, seconds.
    pub keepalive: Option<u16>,
}

/// Live state of a tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelStatus {
    /// Interface name.
    pub interface: String,
    /// Local public key, base64.
    pub public_key: Option<String>,
    /// Listen port.
    pub listen_port: Option<u16>,
    /// Last handshake with the peer.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Which implementation runs it: "kernel" or "userspace".
    pub backend: &'static str,
}

/// What a tunnel ensure/prune changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TunnelReport {
    /// Interfaces created (userspace processes started).
    pub created: usize,
    /// Interfaces whose configuration was updated.
    pub updated: usize,
    /// Interfaces adopted as they were.
    pub unchanged: usize,
    /// Interfaces removed.
    pub removed: usize,
    /// Tunnels that could not be created or updated, by interface, and why. The
    /// others were still brought up: one peering's broken tunnel does not hold back
    /// another's.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failed: std::collections::BTreeMap<String, String>,
}

/// Errors of the network appliers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink: {what}: {reason}")]
    Netlink {
        /// What was being done.
        what: String,
        /// Cause.
        reason: String,
    },
    /// A prefix remapd would route in the main table is already routed there, whole or
    /// in part (a more specific route), by a route remapd did not make.
    #[error(
        "{route} is already in the main table and is not remapd's: remapd does not take \
         over other routes; remove it, or keep remapd's routes in a table of its own \
         (route_placement = \"own-table\")"
    )]
    RouteTaken {
        /// The route found (`prefix dev name`, or `via ...`).
        route: String,
    },
    /// A route names an interface that does not exist.
    #[error("interface {0:?} not found")]
    InterfaceNotFound(String),
    /// WireGuard configuration failed.
    #[error("wireguard {interface}: {reason}")]
    WireGuard {
        /// Interface.
        interface: String,
        /// Cause.
        reason: String,
    },
    /// Starting the userspace WireGuard failed.
    #[error("starting {program} for {interface}: {reason}")]
    Spawn {
        /// Program.
        program: String,
        /// Interface.
        interface: String,
        /// Cause.
        reason: String,
    },
    /// A key is not valid base64 WireGuard key material.
    #[error("invalid WireGuard key for {interface}")]
    BadKey {
        /// Interface.
        interface: String,
    },
}

/// An address remapd must never route into a tunnel, and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProtectedAddress {
    /// The address (IPv4 or IPv6).
    pub address: std::net::IpAddr,
    /// What it is ("this gateway's address on eth0", ...).
    pub what: String,
}

/// Routes into the tunnels: in remapd's own table behind one policy rule, or in the
/// main table marked as remapd's (see [`routes::RoutePlacement`]).
pub trait RouteApplier: Send {
    /// This gateway's own addresses (on interfaces other than remapd's tunnels) and the
    /// next hops of its routes towards `endpoints`: what no tunnel route may cover.
    fn protected_addresses(
        &self,
        endpoints: &[std::net::IpAddr],
    ) -> Result<Vec<ProtectedAddress>, NetError>;
    /// Makes remapd's routes exactly `routes` (in its own table: and ensures the rule
    /// that sends lookups there). Never touches other routes or rules.
    fn apply(&mut self, routes: &[RouteSpec]) -> Result<RouteReport, NetError>;
    /// Removes every route remapd made, in either placement, and the rule.
    fn teardown(&mut self) -> Result<(), NetError>;
}

/// WireGuard tunnels, one interface per peering.
pub trait TunnelApplier: Send {
    /// Creates missing tunnels (starting a userspace implementation where needed, or
    /// adopting one that already runs) and updates changed ones. Removes nothing. A
    /// tunnel that fails is listed in the report's `failed` and the others are still
    /// done; an error means nothing could be done (bad input, a broken run directory).
    fn ensure(&mut self, tunnels: &[TunnelSpec]) -> Result<TunnelReport, NetError>;
    /// Whether UDP `port` is free for a new tunnel to listen on (nothing else, remapd's
    /// own running tunnels included, has it bound).
    fn port_available(&self, port: u16) -> Result<bool, NetError>;
    /// Removes managed tunnels whose interface is not in `keep`.
    fn prune(&mut self, keep: &[String]) -> Result<TunnelReport, NetError>;
    /// Live state of one tunnel, if it exists.
    fn status(&self, interface: &str) -> Result<Option<TunnelStatus>, NetError>;
    /// Removes every managed tunnel.
    fn teardown(&mut self) -> Result<(), NetError>;
    /// A reader of live tunnel state that does not need this applier, so reads never
    /// wait for a change in progress.
    fn status_reader(&self) -> std::sync::Arc<dyn TunnelStatusReader>;
}

/// Reads live tunnel state, shared by readers.
pub trait TunnelStatusReader: Send + Sync {
    /// Live state of one tunnel, if it exists.
    fn status(&self, interface: &str) -> Result<Option<TunnelStatus>, NetError>;
}
