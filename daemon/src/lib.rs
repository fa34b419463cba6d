//! remapd: lets clusters whose pod CIDRs overlap reach each other through gateways, by
//! stateless prefix translation in eBPF on the tunnel device, after routing.
//!
//! Modules, by concern:
//! - [`dataplane`]: the eBPF programs and maps — load/adopt, attach, apply rules, counters.
//! - [`model`]: clusters, peerings' remote side, decisions.
//! - [`policy`]: the WASM policy host (wasmtime) and decision validation.
//! - [`plan`]: the plan compiler (decision -> rules, routes, allowed-ips, exports).
//! - [`net`]: routes (rtnetlink) and WireGuard tunnels, behind traits with fakes.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod model;
pub mod net;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod server;
pub mod store;
