//! What one plan produces — each peering's outcome, the failures, and the tunnels,
//! routes and dataplane of the whole gateway — and what one apply reports.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use remapd_dataplane::{ApplyReport, DesiredDataplane, IngressBorder};
use remapd_model::model::Decision;
use remapd_model::plan::GatewayPlan;
use remapd_net::{RouteReport, RouteSpec, TunnelReport, TunnelSpec};
use remapd_policy_host::validate::DecisionError;
use remapd_policy_host::{PolicyError, RegistryError};

use crate::store::DesiredState;

/// What happened to one peering in the last reconcile.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct PeeringOutcome {
    /// The decision in force (the last good one if the latest attempt failed).
    #[schema(value_type = Option<Object>)]
    pub decision: Option<Decision>,
    /// The plan in force.
    #[schema(value_type = Option<Object>)]
    pub plan: Option<GatewayPlan>,
    /// What the policy logged in the latest attempt.
    pub policy_log: Vec<String>,
    /// The latest error, if the latest attempt failed.
    pub last_error: Option<String>,
    /// Why the peering has no usable WireGuard key file (then it has no tunnel unless
    /// one still runs with its key); remapd never makes a new key for an existing
    /// peering on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_error: Option<String>,
    /// Tunnel interface.
    pub interface: String,
    /// Local WireGuard public key.
    pub public_key: Option<String>,
    /// What the last good decision was made from (policy sha256, interface, input), so
    /// an unchanged peering is not decided again.
    #[serde(skip)]
    pub decided_from: Option<String>,
    /// How long the policy took for the decision in force.
    #[serde(skip)]
    pub elapsed: Duration,
    /// Fuel the policy used for the decision in force.
    #[serde(skip)]
    pub fuel_used: u64,
}

/// What one reconcile did.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ReconcileReport {
    /// Tunnels created/updated/adopted/removed.
    #[schema(value_type = Object)]
    pub tunnels: TunnelReport,
    /// Routes added/removed.
    #[schema(value_type = Object)]
    pub routes: RouteReport,
    /// Dataplane rule changes.
    #[schema(value_type = Object)]
    pub dataplane: ApplyReport,
    /// Errors from appliers (empty when everything applied).
    pub errors: Vec<String>,
    /// The steps that failed, in order.
    pub failed_steps: Vec<ApplyStep>,
    /// How long it took.
    #[schema(value_type = f64)]
    pub duration_seconds: f64,
}

impl ReconcileReport {
    pub(super) fn fail(&mut self, step: ApplyStep, error: String) {
        self.errors.push(format!("{step}: {error}"));
        self.failed_steps.push(step);
    }
}

/// One step of applying a desired system, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApplyStep {
    /// Creating and updating WireGuard tunnels.
    Tunnels,
    /// Converging remapd's route table.
    Routes,
    /// Writing the dataplane's rules and borders.
    Dataplane,
    /// Removing tunnels no longer wanted.
    Prune,
}

impl std::fmt::Display for ApplyStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tunnels => "tunnels",
            Self::Routes => "routes",
            Self::Dataplane => "dataplane",
            Self::Prune => "prune",
        })
    }
}

/// Whether [`Reconciler::apply`] goes on after a failed step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyMode {
    /// Run every step (start-up and resync: converge as far as possible).
    BestEffort,
    /// Stop at the first failure (a change, which is then rolled back).
    StopAtFirstError,
}

/// Why a peering got no new plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Its views collide with what another peering holds.
    Conflict,
    /// It names a policy that does not exist.
    MissingPolicy,
    /// The policy refused, failed, or decided something invalid.
    Rejected,
}

/// A peering's failed decision in one plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What went wrong, for people.
    pub message: String,
}

impl PlanFailure {
    pub(super) fn from_registry(e: &RegistryError) -> Self {
        let kind = match e {
            RegistryError::Policy(PolicyError::Rejected(DecisionError::OverlapsAllocation {
                ..
            })) => FailureKind::Conflict,
            RegistryError::NotFound(_) => FailureKind::MissingPolicy,
            _ => FailureKind::Rejected,
        };
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

/// Everything the gateway should hold for one desired state, computed once per change
/// by [`Reconciler::plan`].
#[derive(Clone, Debug, Default)]
pub struct DesiredSystem {
    /// Each peering's decision and plan in force (a failed attempt keeps the last good
    /// plan, with `last_error`).
    pub outcomes: BTreeMap<String, PeeringOutcome>,
    /// Peerings whose decision was attempted in this plan and failed.
    pub failures: BTreeMap<String, PlanFailure>,
    /// Tunnels, one per peering with a plan and a key.
    pub tunnels: Vec<TunnelSpec>,
    /// remapd's routes into the tunnels.
    pub routes: Vec<RouteSpec>,
    /// Dataplane rules and ingress borders.
    pub dataplane: DesiredDataplane,
}

/// Private keys by peering name, given to the reconciler for one pass.
pub type Keys = BTreeMap<String, String>;

/// The tunnels, routes and dataplane of every outcome that has a plan (and a key).
pub(super) fn assemble(
    outcomes: BTreeMap<String, PeeringOutcome>,
    failures: BTreeMap<String, PlanFailure>,
    state: &DesiredState,
    keys: &Keys,
) -> DesiredSystem {
    let mut system = DesiredSystem {
        failures,
        ..DesiredSystem::default()
    };
    for (name, outcome) in &outcomes {
        let (Some(plan), Some(peering), Some(key)) =
            (&outcome.plan, state.peerings.get(name), keys.get(name))
        else {
            continue;
        };
        system.tunnels.push(TunnelSpec {
            interface: outcome.interface.clone(),
            private_key: key.clone(),
            listen_port: peering.tunnel.listen_port,
            // Empty while bootstrapping: the interface comes up without a peer.
            peer_public_key: peering.tunnel.remote_public_key.clone().unwrap_or_default(),
            endpoint: peering.tunnel.endpoint,
            allowed_ips: plan.allowed_ips.clone(),
            keepalive: (peering.tunnel.keepalive > 0).then_some(peering.tunnel.keepalive),
        });
        system
            .routes
            .extend(plan.routes.iter().map(|prefix| RouteSpec {
                prefix: *prefix,
                interface: outcome.interface.clone(),
            }));
        system.dataplane.rules.extend(plan.rules.iter().cloned());
        system.dataplane.borders.push(IngressBorder {
            interface: outcome.interface.clone(),
            sources: plan.border.sources.clone(),
            destinations: plan.border.destinations.clone(),
            mss_clamp: peering.tunnel.mss_clamp,
        });
    }
    system.outcomes = outcomes;
    system
}

/// Records on each outcome why its peering has no usable key file (clearing it where
/// the key is fine again).
pub fn mark_key_errors(system: &mut DesiredSystem, errors: &BTreeMap<String, String>) {
    for (name, outcome) in system.outcomes.iter_mut() {
        outcome.key_error = errors.get(name).cloned();
    }
}
