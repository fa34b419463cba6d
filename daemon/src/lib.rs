//! remapd: lets clusters whose pod CIDRs overlap reach each other through gateways, by
//! stateless prefix translation in eBPF on the tunnel device, after routing.
//!
//! Modules, by concern:
//! - [`dataplane`]: the eBPF programs and maps — load/adopt, attach, apply rules, counters.
#![deny(missing_docs)]

pub mod dataplane;
