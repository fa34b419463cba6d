//! remapd: lets clusters whose pod CIDRs overlap reach each other through gateways, by
//! stateless prefix translation in eBPF on the tunnel device, after routing.
//!
//! This crate is the binary's: configuration ([`config`]) and wiring the parts into a
//! running daemon ([`server`]). The parts are crates by concern, re-exported here under
//! the names the binary and the tests use:
//! - [`model`], [`plan`] (`remapd-model`): the pure model, decision validation, the plan
//!   compiler and the rule/route types.
//! - [`dataplane`] (`remapd-dataplane`): the eBPF programs and maps — load/adopt,
//!   attach, apply rules, counters — and its fake.
//! - [`net`] (`remapd-net`): routes (rtnetlink) and WireGuard tunnels, with fakes.
//! - [`policy`] (`remapd-policy-host`): the WASM policy host (wasmtime) and registry.
//! - [`daemon`], [`reconcile`], [`store`] (`remapd-engine`): the desired state, the
//!   reconciler and the transactional change API.
//! - [`api`] (`remapd-api`): the HTTP API (routes, problems) served by [`http`]
//!   (connection limits, timeouts, the parser's refusals).
#![deny(missing_docs)]

pub use remapd_api as api;
pub use remapd_api::http;
pub use remapd_dataplane as dataplane;
pub use remapd_engine::{daemon, reconcile, store};
pub use remapd_model::{explain, model, plan};
pub use remapd_net as net;
pub use remapd_policy_host as policy;

pub mod config;
pub mod policy_cli;
pub mod server;
