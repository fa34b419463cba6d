//! The reconciler: from the desired state, asks each peering's policy for a decision,
//! validates and compiles it, and applies the union of all plans with the appliers —
//! tunnels first (created or updated, nothing removed), then routes, then dataplane
//! rules (both full-set diffs), and only then removes tunnels no longer wanted. New
//! state is in place before old state goes (make-before-break), and a peering whose
//! policy fails keeps the plan it last had: a rejected decision changes nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::Serialize;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::dataplane::{
    ApplyReport, DataplaneApplier, DataplaneStatusReader, DesiredDataplane, IngressBorder,
};
use crate::model::{Capabilities, Decision, PolicyInput};
use crate::net::{RouteApplier, RouteReport, RouteSpec, TunnelApplier, TunnelReport, TunnelSpec};
use crate::plan::{GatewayPlan, compile};
use crate::policy::validate::DecisionError;
use crate::policy::{PolicyError, PolicyRegistry, RegistryError};
use crate::store::{DesiredState, public_key};

/// Readers of live state, usable while a change holds the reconciler.
#[derive(Clone)]
pub struct StatusReaders {
    /// Rules, counters, attachments.
    pub dataplane: Arc<dyn DataplaneStatusReader>,
    /// Live tunnel state.
    pub tunnels: Arc<dyn crate::net::TunnelStatusReader>,
}

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
    fn fail(&mut self, step: ApplyStep, error: String) {
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
    fn from_registry(e: &RegistryError) -> Self {
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
    /// Routes in remapd's table.
    pub routes: Vec<RouteSpec>,
    /// Dataplane rules and ingress borders.
    pub dataplane: DesiredDataplane,
}

/// Every view held by a peering, aggregated. Identity views count: two peerings seeing
/// different remotes at the same prefix could not both be routed.
fn all_allocations(outcomes: &BTreeMap<String, PeeringOutcome>) -> Vec<Ipv4Net> {
    let all: Vec<Ipv4Net> = outcomes
        .values()
        .filter_map(|o| o.decision.as_ref())
        .flat_map(|d| d.mappings.iter().map(|m| m.remapped))
        .collect();
    Ipv4Net::aggregate(&all)
}

/// The views of `name` itself, which it may keep.
fn own_allocations(outcomes: &BTreeMap<String, PeeringOutcome>, name: &str) -> Vec<Ipv4Net> {
    outcomes
        .get(name)
        .and_then(|o| o.decision.as_ref())
        .map(|d| d.mappings.iter().map(|m| m.remapped).collect())
        .unwrap_or_default()
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
    /// Counters for metrics.
    pub counters: ReconcileCounters,
}

/// `set` without the addresses of `hole` (prefixes that contain it are split).
pub fn subtract(set: &[Ipv4Net], hole: Ipv4Net) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    for net in set {
        if hole.contains(net) {
            continue;
        }
        if !net.contains(&hole) {
            out.push(*net);
            continue;
        }
        // Walk down from `net` to `hole`, keeping the sibling at each level.
        let mut cur = *net;
        while cur.prefix_len() < hole.prefix_len() {
            let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
                break;
            };
            let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
                break;
            };
            let (keep, down) = if a.contains(&hole) { (b, a) } else { (a, b) };
            out.push(keep);
            cur = down;
        }
    }
    out
}

/// A new tunnel route that would cover an address this gateway must keep reaching
/// outside the tunnels.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "peering {peering:?} would route {prefix} into {interface}, which covers {address} ({what}); the gateway would lose it"
)]
pub struct ProtectedRoute {
    /// The peering whose route it is.
    pub peering: String,
    /// The route's prefix.
    pub prefix: Ipv4Net,
    /// Its tunnel.
    pub interface: String,
    /// The covered address.
    pub address: std::net::Ipv4Addr,
    /// What that address is.
    pub what: String,
}

/// The peering whose tunnel is `interface` (empty if none).
fn peering_of_interface(state: &DesiredState, interface: &str) -> String {
    state
        .peerings
        .iter()
        .find(|(name, spec)| spec.interface(name) == interface)
        .map(|(name, _)| name.clone())
        .unwrap_or_default()
}

/// The first of `routes` that covers one of `protected`, with the peering it belongs to
/// (by interface, from `state`).
pub fn first_protected_route(
    routes: &[&crate::net::RouteSpec],
    protected: &[crate::net::ProtectedAddress],
    state: &DesiredState,
) -> Option<ProtectedRoute> {
    routes.iter().find_map(|route| {
        let hit = protected
            .iter()
            .find(|p| route.prefix.contains(&p.address))?;
        let peering = peering_of_interface(state, &route.interface);
        Some(ProtectedRoute {
            peering,
            prefix: route.prefix,
            interface: route.interface.clone(),
            address: hit.address,
            what: hit.what.clone(),
        })
    })
}

/// Why [`Reconciler::check_protected`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtectedCheck {
    /// A new route covers a protected address.
    #[error(transparent)]
    Covered(ProtectedRoute),
    /// A new tunnel's UDP port is bound by another process.
    #[error(
        "peering {peering:?}: UDP port {port} is already bound by another process on this gateway"
    )]
    PortInUse {
        /// The peering.
        peering: String,
        /// The port.
        port: u16,
    },
    /// The gateway's addresses, routes or ports could not be read.
    #[error("reading this gateway's addresses, routes or ports: {0}")]
    Unreadable(String),
}

/// The tunnels, routes and dataplane of every outcome that has a plan (and a key).
fn assemble(
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
        });
    }
    system.outcomes = outcomes;
    system
}

/// Private keys by peering name, given to the reconciler for one pass.
pub type Keys = BTreeMap<String, String>;

/// Records on each outcome why its peering has no usable key file (clearing it where
/// the key is fine again).
pub fn mark_key_errors(system: &mut DesiredSystem, errors: &BTreeMap<String, String>) {
    for (name, outcome) in system.outcomes.iter_mut() {
        outcome.key_error = errors.get(name).cloned();
    }
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
            counters: ReconcileCounters::default(),
        }
    }

    /// Refuses `system` if a route it adds (one the committed system does not have)
    /// covers this gateway's own address, a peer's WireGuard endpoint, or the next hop
    /// towards one. Routes already in force are not re-checked, so an address added
    /// later never blocks changes to other peerings.
    pub fn check_protected(
        &self,
        system: &DesiredSystem,
        state: &DesiredState,
    ) -> Result<(), ProtectedCheck> {
        let new: Vec<&crate::net::RouteSpec> = system
            .routes
            .iter()
            .filter(|r| !self.committed.routes.contains(r))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        // The operator's own never-touch ranges (the cluster's `reserved_cidrs`: node
        // and management networks) are never routed into a tunnel either.
        let reserved = state
            .cluster
            .as_ref()
            .map(|c| c.reserved_cidrs.as_slice())
            .unwrap_or_default();
        for route in &new {
            if let Some(r) = reserved
                .iter()
                .find(|r| r.contains(&route.prefix) || route.prefix.contains(*r))
            {
                let address = if route.prefix.contains(r) {
                    r.network()
                } else {
                    route.prefix.network()
                };
                return Err(ProtectedCheck::Covered(ProtectedRoute {
                    peering: peering_of_interface(state, &route.interface),
                    prefix: route.prefix,
                    interface: route.interface.clone(),
                    address,
                    what: format!("in the cluster's reserved range {r}"),
                }));
            }
        }
        let endpoints: Vec<(String, std::net::Ipv4Addr)> = state
            .peerings
            .iter()
            .filter_map(|(name, p)| match p.tunnel.endpoint?.ip() {
                std::net::IpAddr::V4(a) => Some((name.clone(), a)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        let addresses: Vec<std::net::Ipv4Addr> = endpoints.iter().map(|(_, a)| *a).collect();
        let mut protected = self
            .routes
            .protected_addresses(&addresses)
            .map_err(|e| ProtectedCheck::Unreadable(e.to_string()))?;
        protected.extend(endpoints.into_iter().map(|(name, address)| {
            crate::net::ProtectedAddress {
                address,
                what: format!("the WireGuard endpoint of peering {name:?}"),
            }
        }));
        match first_protected_route(&new, &protected, state) {
            Some(hit) => Err(ProtectedCheck::Covered(hit)),
            None => Ok(()),
        }
    }

    /// The tunnels of `report` that failed and that this change is to blame for: a
    /// target's, or one whose desired configuration differs from the committed one. A
    /// tunnel that fails with an unchanged configuration (its process died and cannot
    /// start again, say) is that peering's own trouble and does not refuse the change.
    pub fn failed_tunnels_of_change(
        &self,
        system: &DesiredSystem,
        report: &ReconcileReport,
        state: &DesiredState,
        targets: &[String],
    ) -> Vec<(String, String)> {
        report
            .tunnels
            .failed
            .iter()
            .filter(|(interface, _)| {
                let target = targets.contains(&peering_of_interface(state, interface));
                let desired = system.tunnels.iter().find(|t| &t.interface == *interface);
                let committed = self
                    .committed
                    .tunnels
                    .iter()
                    .find(|t| &t.interface == *interface);
                target || desired != committed
            })
            .map(|(i, e)| (i.clone(), e.clone()))
            .collect()
    }

    /// Refuses `system` if a tunnel it starts or moves to another port would listen on
    /// a UDP port something else holds. Ports remapd's committed tunnels hold are not
    /// probed (peerings never share one; the API checks that).
    pub fn check_ports(
        &self,
        system: &DesiredSystem,
        state: &DesiredState,
    ) -> Result<(), ProtectedCheck> {
        for tunnel in &system.tunnels {
            let ours = self
                .committed
                .tunnels
                .iter()
                .any(|c| c.listen_port == tunnel.listen_port);
            if ours {
                continue;
            }
            let free = self
                .tunnels
                .port_available(tunnel.listen_port)
                .map_err(|e| ProtectedCheck::Unreadable(e.to_string()))?;
            if !free {
                let peering = peering_of_interface(state, &tunnel.interface);
                return Err(ProtectedCheck::PortInUse {
                    peering,
                    port: tunnel.listen_port,
                });
            }
        }
        Ok(())
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
        }
    }

    /// Brings the system to `state` as well as it can (start-up and periodic resync):
    /// plans, applies every step even after one fails, and keeps the plan whatever the
    /// appliers said, so the next resync retries it. Never panics; errors are recorded
    /// per peering and in the report.
    pub fn reconcile(&mut self, state: &DesiredState, keys: &Keys) -> ReconcileReport {
        let system = self.plan(state, keys);
        let report = self.apply(&system, ApplyMode::BestEffort);
        self.commit(system);
        report
    }

    /// The desired system for `state`: each peering's decision (decided again only when
    /// its inputs changed or its views now collide; a failed attempt keeps the last good
    /// plan and is listed in `failures`), and the tunnels, routes and dataplane rules of
    /// all plans. Changes nothing but the decision counters; the same value is what a dry
    /// run reports, what [`Reconciler::apply`] applies and what [`Reconciler::commit`]
    /// keeps.
    pub fn plan(&mut self, state: &DesiredState, keys: &Keys) -> DesiredSystem {
        let mut outcomes = self.outcomes.clone();
        outcomes.retain(|name, _| state.peerings.contains_key(name));
        let mut failures = BTreeMap::new();
        let local_caps = Capabilities {
            nat_dataplane: self.dataplane.nat_available(),
        };
        if let Some(cluster) = &state.cluster {
            // What other peerings hold is "all held" minus one's own views; kept
            // aggregated so a hub with thousands of peerings hands policies a short list.
            let mut held = all_allocations(&outcomes);
            for (name, peering) in &state.peerings {
                let interface = peering.interface(name);
                let input = PolicyInput {
                    local: cluster.clone(),
                    local_capabilities: local_caps,
                    allocated: own_allocations(&outcomes, name)
                        .into_iter()
                        .fold(held.clone(), |set, own| subtract(&set, own)),
                    remote: peering.remote.clone(),
                    settings: peering.settings.clone(),
                };
                let sha = self
                    .registry
                    .get(&peering.policy)
                    .map(|p| p.compiled.sha256.clone())
                    .unwrap_or_default();
                // Decisions are sticky: a peering keeps its decision (and so its
                // allocation) while its own inputs are unchanged and its views still
                // collide with nothing another peering holds.
                let decided_from = {
                    let own = PolicyInput {
                        allocated: Vec::new(),
                        ..input.clone()
                    };
                    serde_json::to_string(&(&sha, &interface, &own)).ok()
                };
                if let Some(o) = outcomes.get_mut(name)
                    && o.last_error.is_none()
                    && o.plan.is_some()
                    && decided_from.is_some()
                    && o.decided_from == decided_from
                    && o.decision.as_ref().is_some_and(|d| {
                        d.mappings.iter().all(|m| {
                            m.real == m.remapped
                                || !input
                                    .allocated
                                    .iter()
                                    .any(|a| a.contains(&m.remapped) || m.remapped.contains(a))
                        })
                    })
                {
                    o.public_key = keys.get(name).and_then(|k| public_key(k));
                    continue;
                }
                let _decide =
                    tracing::info_span!("decide", peering = %name, policy = %peering.policy)
                        .entered();
                let attempt = self
                    .registry
                    .decide(&peering.policy, &input)
                    .map_err(|e| PlanFailure::from_registry(&e))
                    .and_then(|eval| {
                        compile(
                            cluster,
                            local_caps,
                            &peering.remote,
                            &interface,
                            &eval.decision,
                        )
                        .map(|plan| (eval, plan))
                        .map_err(|e| PlanFailure {
                            kind: FailureKind::Rejected,
                            message: e.to_string(),
                        })
                    });
                let outcome = outcomes.entry(name.clone()).or_default();
                outcome.interface = interface;
                outcome.public_key = keys.get(name).and_then(|k| public_key(k));
                let status = match attempt {
                    Ok((eval, plan)) => {
                        outcome.decided_from = decided_from;
                        let views = eval.decision.mappings.iter().map(|m| m.remapped);
                        held = Ipv4Net::aggregate(
                            &held.iter().copied().chain(views).collect::<Vec<_>>(),
                        );
                        outcome.decision = Some(eval.decision);
                        outcome.plan = Some(plan);
                        outcome.policy_log = eval.log;
                        outcome.elapsed = eval.elapsed;
                        outcome.last_error = None;
                        "ok"
                    }
                    Err(failure) => {
                        warn!(peering = %name, error = %failure.message, "no new plan; keeping the last good one");
                        outcome.last_error = Some(failure.message.clone());
                        failures.insert(name.clone(), failure);
                        "error"
                    }
                };
                *self
                    .counters
                    .decisions
                    .entry((peering.policy.clone(), status))
                    .or_default() += 1;
            }
        } else {
            outcomes.clear();
        }

        assemble(outcomes, failures, state, keys)
    }

    /// `system` without the plans of its failed peerings: what a restart would run
    /// (deciding again, they would have none). For a change the caller forces through
    /// although it leaves other peerings undecidable; they keep `last_error`.
    pub fn without_failed(
        &self,
        system: DesiredSystem,
        state: &DesiredState,
        keys: &Keys,
    ) -> DesiredSystem {
        let DesiredSystem {
            mut outcomes,
            failures,
            ..
        } = system;
        for name in failures.keys() {
            if let Some(o) = outcomes.get_mut(name) {
                o.decision = None;
                o.plan = None;
                o.decided_from = None;
                o.policy_log.clear();
            }
        }
        assemble(outcomes, failures, state, keys)
    }

    /// Applies `system` in make-before-break order: tunnels created or updated, routes,
    /// dataplane rules and borders, then tunnels no longer wanted removed. In
    /// [`ApplyMode::StopAtFirstError`] nothing runs after a failed step.
    pub fn apply(&mut self, system: &DesiredSystem, mode: ApplyMode) -> ReconcileReport {
        let started = Instant::now();
        let mut report = ReconcileReport::default();
        let keep: Vec<String> = system.tunnels.iter().map(|t| t.interface.clone()).collect();
        let stop = |report: &ReconcileReport| {
            mode == ApplyMode::StopAtFirstError && !report.failed_steps.is_empty()
        };
        let step = |step: ApplyStep| tracing::info_span!("apply", %step);
        match step(ApplyStep::Tunnels).in_scope(|| self.tunnels.ensure(&system.tunnels)) {
            Ok(r) => report.tunnels = r,
            Err(e) => report.fail(ApplyStep::Tunnels, e.to_string()),
        }
        // A peering whose tunnel could not be brought to its desired configuration
        // carries nothing: its routes, rules and border are left out (fail closed), and
        // every other peering is applied as usual.
        let failed = &report.tunnels.failed;
        for (interface, error) in failed {
            report.errors.push(format!("tunnels: {interface}: {error}"));
        }
        // Borrowed as planned in the usual case: no copy of every rule on each apply.
        let (routes, dataplane): (Cow<'_, [RouteSpec]>, Cow<'_, DesiredDataplane>) =
            if failed.is_empty() {
                (
                    Cow::Borrowed(&system.routes),
                    Cow::Borrowed(&system.dataplane),
                )
            } else {
                let carries = |interface: &String| !failed.contains_key(interface);
                (
                    system
                        .routes
                        .iter()
                        .filter(|r| carries(&r.interface))
                        .cloned()
                        .collect(),
                    Cow::Owned(DesiredDataplane {
                        rules: system
                            .dataplane
                            .rules
                            .iter()
                            .filter(|r| carries(&r.interface))
                            .cloned()
                            .collect(),
                        borders: system
                            .dataplane
                            .borders
                            .iter()
                            .filter(|b| carries(&b.interface))
                            .cloned()
                            .collect(),
                    }),
                )
            };
        if !stop(&report) {
            match step(ApplyStep::Routes).in_scope(|| self.routes.apply(&routes)) {
                Ok(r) => report.routes = r,
                Err(e) => report.fail(ApplyStep::Routes, e.to_string()),
            }
        }
        if !stop(&report) {
            match step(ApplyStep::Dataplane).in_scope(|| self.dataplane.apply(&dataplane)) {
                Ok(r) => report.dataplane = r,
                Err(e) => report.fail(ApplyStep::Dataplane, e.to_string()),
            }
        }
        if !stop(&report) {
            match step(ApplyStep::Prune).in_scope(|| self.tunnels.prune(&keep)) {
                Ok(r) => report.tunnels.removed = r.removed,
                Err(e) => report.fail(ApplyStep::Prune, e.to_string()),
            }
        }
        let elapsed = started.elapsed();
        report.duration_seconds = elapsed.as_secs_f64();
        self.counters.reconciles += 1;
        self.counters.last_duration = elapsed;
        self.counters.total_duration += elapsed;
        if report.errors.is_empty() {
            info!(?elapsed, peerings = system.outcomes.len(), "applied");
        } else {
            warn!(errors = ?report.errors, "applied with errors");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subtracting_a_hole_keeps_everything_else() {
        let out = subtract(&[n("10.0.0.0/22")], n("10.0.1.0/24"));
        assert_eq!(out, vec![n("10.0.2.0/23"), n("10.0.0.0/24")]);
        assert_eq!(subtract(&[n("10.0.0.0/24")], n("10.0.0.0/16")), vec![]);
        assert_eq!(
            subtract(&[n("10.0.0.0/24")], n("10.1.0.0/24")),
            vec![n("10.0.0.0/24")]
        );
        let total: u64 = subtract(&[n("100.64.0.0/10")], n("100.64.7.0/24"))
            .iter()
            .map(|p| 1u64 << (32 - p.prefix_len()))
            .sum();
        assert_eq!(total, (1 << 22) - 256);
    }
}
