//! remapd: lets clusters whose pod CIDRs overlap reach each other through gateways, by
//! stateless prefix translation in eBPF on the tunnel device, after routing.
//!
//! Modules, by concern:
//! - [`dataplane`] (the `remapd-dataplane` crate): the eBPF programs and maps — load/adopt, attach, apply rules, counters.
//! - [`model`], [`plan`] (re-exported from the `remapd-model` crate, which also holds
//!   decision validation and the rule types): the pure model and plan compiler.
//! - [`policy`] (the `remapd-policy-host` crate): the WASM policy host (wasmtime) and its
//!   registry.
//! - [`net`] (the `remapd-net` crate): routes (rtnetlink) and WireGuard tunnels, behind
//!   traits with fakes.
//! - [`api`] (routes, problems) served by [`http`] (connection limits and timeouts).
#![deny(missing_docs)]

pub use remapd_dataplane as dataplane;
pub use remapd_model::{model, plan};
pub use remapd_net as net;
pub use remapd_policy_host as policy;

pub mod api;
pub mod config;
pub mod daemon;
pub mod http;
pub mod reconcile;
pub mod server;
pub mod store;
