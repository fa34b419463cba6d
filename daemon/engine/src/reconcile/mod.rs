//! The reconciler: from the desired state, asks each peering's policy for a decision,
//! validates and compiles it, and applies the union of all plans with the appliers —
//! tunnels first (created or updated, nothing removed), then routes, then dataplane
//! rules (both full-set diffs), and only then removes tunnels no longer wanted. New
//! state is in place before old state goes (make-before-break), and a peering whose
//! policy fails keeps the plan it last had: a rejected decision changes nothing.
//!
//! By concern: [`system`] (what one plan produces and what one apply reports),
//! `plan.rs` (decisions → one desired system), `apply.rs` (the system → the appliers,
//! make-before-break), [`protected`] (what no change may route into a tunnel).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use remapd_dataplane::{DataplaneApplier, DataplaneStatusReader};
use remapd_net::{RouteApplier, TunnelApplier};
use remapd_policy_host::PolicyRegistry;

use crate::decision_log::DecisionRecord;
use crate::store::DesiredState;

mod apply;
mod plan;
pub mod protected;
pub mod system;

pub use protected::{ProtectedCheck, ProtectedRoute, first_protected_route, subtract};
pub use system::{
    ApplyMode, ApplyStep, DesiredSystem, FailureKind, Keys, PeeringOutcome, PlanFailure,
    ReconcileReport, mark_key_errors,
};

/// Readers of live state, usable while a change holds the reconciler.
#[derive(Clone)]
pub struct StatusReaders {
    /// Rules, counters, attachments.
    pub dataplane: Arc<dyn DataplaneStatusReader>,
    /// Live tunnel state.
    pub tunnels: Arc<dyn remapd_net::TunnelStatusReader>,
    /// The dataplane's trace maps.
    pub trace: Arc<dyn remapd_dataplane::trace::TraceSource>,
}

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ReconcileCounters {
    /// Decisions by policy name and outcome ("ok"/"error").
    pub decisions: BTreeMap<(String, &'static str), u64>,
    /// Reconciles run.
    pub reconciles: u64,
    /// Durations of reconciles.
    pub last_duration: Duration,
    /// Total time spent reconciling.
    pub total_duration: Duration,
}

/// The one reconciler of a daemon.
pub struct Reconciler {
    registry: Arc<PolicyRegistry>,
    dataplane: Box<dyn DataplaneApplier>,
    routes: Box<dyn RouteApplier>,
    tunnels: Box<dyn TunnelApplier>,
    outcomes: BTreeMap<String, PeeringOutcome>,
    committed: DesiredSystem,
    /// Decisions made since they were last taken (see [`Reconciler::take_decisions`]).
    decisions: Vec<DecisionRecord>,
    /// Counters for metrics.
    pub counters: ReconcileCounters,
}

impl Reconciler {
    /// A reconciler over these appliers.
    pub fn new(
        registry: Arc<PolicyRegistry>,
        dataplane: Box<dyn DataplaneApplier>,
        routes: Box<dyn RouteApplier>,
        tunnels: Box<dyn TunnelApplier>,
    ) -> Self {
        Self {
            registry,
            dataplane,
            routes,
            tunnels,
            outcomes: BTreeMap::new(),
            committed: DesiredSystem::default(),
            decisions: Vec::new(),
            counters: ReconcileCounters::default(),
        }
    }

    /// The decisions [`Reconciler::plan`] made since the last call, oldest first; valid
    /// ones say [`crate::decision_log::DecisionOutcome::Applied`] until the caller knows better.
    pub fn take_decisions(&mut self) -> Vec<DecisionRecord> {
        std::mem::take(&mut self.decisions)
    }

    /// The policy registry.
    pub fn registry(&self) -> &Arc<PolicyRegistry> {
        &self.registry
    }

    /// Outcomes of the last reconcile by peering.
    pub fn outcomes(&self) -> &BTreeMap<String, PeeringOutcome> {
        &self.outcomes
    }

    /// The private key each tunnel of the committed system runs with, by interface: what
    /// a peering whose key file became unreadable keeps using.
    pub fn committed_keys(&self) -> BTreeMap<String, String> {
        self.committed
            .tunnels
            .iter()
            .map(|t| (t.interface.clone(), t.private_key.clone()))
            .collect()
    }

    /// Readers of dataplane and tunnel state that do not need the reconciler.
    pub fn status_readers(&self) -> StatusReaders {
        StatusReaders {
            dataplane: self.dataplane.status_reader(),
            tunnels: self.tunnels.status_reader(),
            trace: self.dataplane.trace_source(),
        }
    }

    /// Brings the system to `state` as well as it can (start-up and periodic resync):
    /// plans, applies every step even after one fails, and keeps the plan whatever the
    /// appliers said, so the next resync retries it. Never panics; errors are recorded
    /// per peering and in the report. Its decisions are not kept for
    /// [`Reconciler::take_decisions`] (the daemon logs its own passes).
    pub fn reconcile(&mut self, state: &DesiredState, keys: &Keys) -> ReconcileReport {
        let system = self.plan(state, keys);
        self.decisions.clear();
        let report = self.apply(&system, ApplyMode::BestEffort);
        self.commit(system);
        report
    }

    /// Re-applies the last committed system (after a failed [`Reconciler::apply`] of a
    /// change), so the kernel holds again what was last acknowledged. Returns that
    /// apply's report.
    pub fn roll_back(&mut self) -> ReconcileReport {
        let previous = std::mem::take(&mut self.committed);
        let report = self.apply(&previous, ApplyMode::BestEffort);
        self.committed = previous;
        report
    }

    /// Makes `system` the one in force: its outcomes are what status reports and what
    /// the next plan starts from; a failed later change rolls back to it.
    pub fn commit(&mut self, system: DesiredSystem) {
        self.outcomes = system.outcomes.clone();
        self.committed = system;
    }

    /// Removes every rule, route and tunnel remapd made.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.dataplane.teardown() {
            errors.push(format!("dataplane: {e}"));
        }
        if let Err(e) = self.routes.teardown() {
            errors.push(format!("routes: {e}"));
        }
        if let Err(e) = self.tunnels.teardown() {
            errors.push(format!("tunnels: {e}"));
        }
        self.outcomes.clear();
        self.committed = DesiredSystem::default();
        errors
    }
}
