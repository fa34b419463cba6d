//! remapd's engine, between the HTTP API and the appliers: the desired state and where
//! it is kept ([`store`]), the reconciler that turns it into one desired system per
//! change — policy decisions, plans, tunnels, routes, rules — and applies it
//! ([`reconcile`]), and the daemon whose every change is a transaction: validate, plan
//! once, apply, persist, answer; or roll back and say why ([`daemon`]).
//!
//! Nothing here speaks HTTP: errors are [`daemon::EngineError`], which the API maps to
//! problem+json in one place.
#![deny(missing_docs)]

pub mod daemon;
pub mod decision_log;
mod error;
mod explain;
pub mod preview;
pub mod reconcile;
pub mod store;
pub mod trace;
mod transaction;
