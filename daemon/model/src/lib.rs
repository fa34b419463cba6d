//! remapd's model: the domain types (clusters, peerings' remote side, decisions), the
//! validation of a policy's decision, the translation rule types, and the pure plan
//! compiler (decision -> rules, routes, allowed-ips, border, exports).
//!
//! No kernel, no WebAssembly, no HTTP: everything here is pure and unit-tested without
//! root. The daemon's other crates (dataplane, network appliers, policy host, API)
//! build on these types.
#![deny(missing_docs)]

pub mod explain;
pub mod model;
pub mod plan;
pub mod rule;
pub mod validate;
