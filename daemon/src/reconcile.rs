//! The reconciler: from the desired state, asks each peering's policy for a decision,
//! validates and compiles it, and applies the union of all plans with the appliers —
//! tunnels first (created or updated, nothing removed), then routes, then dataplane
//! rules (both full-set diffs), and only then removes tunnels no longer wanted. New
//! state is in place before old state goes (make-before-break), and a peering whose
//! policy fails keeps the plan it last had: a rejected decision changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::Serialize;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::dataplane::{
    ApplyReport, Dataplane, DataplaneError, DataplaneStatus, DesiredDataplane, IngressBorder,
};
use crate::model::{Capabilities, Decision, PolicyInput};
use crate::net::{RouteApplier, RouteReport, RouteSpec, TunnelApplier, TunnelReport, TunnelSpec};
use crate::plan::{GatewayPlan, compile};
use crate::policy::PolicyRegistry;
use crate::store::{DesiredState, public_key};

/// The eBPF dataplane as the reconciler uses it.
pub trait DataplaneApplier: Send {
    /// Makes the maps hold exactly `desired` (rules and ingress borders).
    fn apply(&mut self, desired: &DesiredDataplane) -> Result<ApplyReport, DataplaneError>;
    /// Rules, counters, attachments.
    fn status(&self) -> Result<DataplaneStatus, DataplaneError>;
    /// Removes everything (translation stops).
    fn teardown(&mut self) -> Result<(), DataplaneError>;
}

/// The real dataplane; opened lazily so a daemon without rules loads nothing.
pub struct KernelDataplane {
    config: crate::dataplane::DataplaneConfig,
    dataplane: Option<Dataplane>,
}

impl KernelDataplane {
    /// A dataplane under `config.pin_dir`; adopts what is pinned there on first use.
    pub fn new(config: crate::dataplane::DataplaneConfig) -> Self {
        Self {
            config,
            dataplane: None,
        }
    }

    fn get(&mut self) -> Result<&mut Dataplane, DataplaneError> {
        if self.dataplane.is_none() {
            self.dataplane = Some(Dataplane::open(&self.config)?);
        }
        self.dataplane.as_mut().ok_or(DataplaneError::ObjectMissing)
    }
}

impl DataplaneApplier for KernelDataplane {
    fn apply(&mut self, desired: &DesiredDataplane) -> Result<ApplyReport, DataplaneError> {
        // Nothing wanted and nothing loaded yet: stay unloaded.
        if self.dataplane.is_none() && desired.rules.is_empty() && desired.borders.is_empty() {
            let pinned = Dataplane::open_existing(&self.config);
            if matches!(pinned, Err(DataplaneError::NotPinned { .. })) {
                return Ok(ApplyReport::default());
            }
        }
        self.get()?.apply(desired)
    }

    fn status(&self) -> Result<DataplaneStatus, DataplaneError> {
        match &self.dataplane {
            Some(d) => d.status(),
            None => match Dataplane::open_existing(&self.config) {
                Ok(d) => d.status(),
                Err(DataplaneError::NotPinned { .. }) => Ok(DataplaneStatus {
                    adopted: false,
                    program_ids: BTreeMap::new(),
                    attachments: vec![],
                    rules: vec![],
                    hooks: vec![],
                }),
                Err(e) => Err(e),
            },
        }
    }

    fn teardown(&mut self) -> Result<(), DataplaneError> {
        let dataplane = match self.dataplane.take() {
            Some(d) => d,
            None => match Dataplane::open_existing(&self.config) {
                Ok(d) => d,
                Err(DataplaneError::NotPinned { .. }) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        dataplane.teardown()
    }
}

/// A dataplane kept in memory, for tests without root.
#[derive(Clone, Default)]
pub struct FakeDataplane {
    /// Current rules and borders.
    pub state: Arc<std::sync::Mutex<DesiredDataplane>>,
}

impl DataplaneApplier for FakeDataplane {
    fn apply(&mut self, desired: &DesiredDataplane) -> Result<ApplyReport, DataplaneError> {
        crate::dataplane::rules::validate(&desired.rules)?;
        crate::dataplane::rules::validate_borders(&desired.borders)?;
        let rules = &desired.rules;
        let mut current = self
            .state
            .lock()
            .map_err(|_| DataplaneError::ObjectMissing)?;
        let inserted = rules.iter().filter(|r| !current.rules.contains(r)).count();
        let removed = current.rules.iter().filter(|r| !rules.contains(r)).count();
        *current = desired.clone();
        Ok(ApplyReport {
            inserted,
            removed,
            unchanged: rules.len() - inserted,
            ..ApplyReport::default()
        })
    }

    fn status(&self) -> Result<DataplaneStatus, DataplaneError> {
        let current = self
            .state
            .lock()
            .map_err(|_| DataplaneError::ObjectMissing)?;
        Ok(DataplaneStatus {
            adopted: false,
            program_ids: BTreeMap::new(),
            attachments: vec![],
            rules: current
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| crate::dataplane::InstalledRule {
                    rule: r.clone(),
                    rule_id: i as u32,
                    packets: 0,
                    bytes: 0,
                })
                .collect(),
            hooks: vec![],
        })
    }

    fn teardown(&mut self) -> Result<(), DataplaneError> {
        *self
            .state
            .lock()
            .map_err(|_| DataplaneError::ObjectMissing)? = DesiredDataplane::default();
        Ok(())
    }
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
    /// Tunnel interface.
    pub interface: String,
    /// Local WireGuard public key.
    pub public_key: Option<String>,
    /// What the last good decision was made from (policy sha256, interface, input), so
    /// an unchanged peering is not decided again.
    #[serde(skip)]
    pub decided_from: Option<String>,
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
    /// How long it took.
    #[schema(value_type = f64)]
    pub duration_seconds: f64,
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

/// Private keys by peering name, given to the reconciler for one pass.
pub type Keys = BTreeMap<String, String>;

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
            counters: ReconcileCounters::default(),
        }
    }

    /// The policy registry.
    pub fn registry(&self) -> &Arc<PolicyRegistry> {
        &self.registry
    }

    /// Outcomes of the last reconcile by peering.
    pub fn outcomes(&self) -> &BTreeMap<String, PeeringOutcome> {
        &self.outcomes
    }

    /// Dataplane status (rules with counters).
    pub fn dataplane_status(&self) -> Result<DataplaneStatus, DataplaneError> {
        self.dataplane.status()
    }

    /// Live tunnel state.
    pub fn tunnel_status(&self, interface: &str) -> Option<crate::net::TunnelStatus> {
        self.tunnels.status(interface).ok().flatten()
    }

    /// Every view held by a peering, aggregated. Identity views count: two peerings
    /// seeing different remotes at the same prefix could not both be routed.
    fn all_allocations(&self) -> Vec<Ipv4Net> {
        let all: Vec<Ipv4Net> = self
            .outcomes
            .values()
            .filter_map(|o| o.decision.as_ref())
            .flat_map(|d| d.mappings.iter().map(|m| m.remapped))
            .collect();
        Ipv4Net::aggregate(&all)
    }

    /// The views of `name` itself, which it may keep.
    fn own_allocations(&self, name: &str) -> Vec<Ipv4Net> {
        self.outcomes
            .get(name)
            .and_then(|o| o.decision.as_ref())
            .map(|d| d.mappings.iter().map(|m| m.remapped).collect())
            .unwrap_or_default()
    }

    /// Brings the system to `state`. Never panics; errors are recorded per peering and
    /// in the report.
    pub fn reconcile(&mut self, state: &DesiredState, keys: &Keys) -> ReconcileReport {
        let started = Instant::now();
        let mut report = ReconcileReport::default();
        self.outcomes
            .retain(|name, _| state.peerings.contains_key(name));
        let local_caps = Capabilities {
            nat_dataplane: true,
        };
        if let Some(cluster) = &state.cluster {
            // What other peerings hold is "all held" minus one's own views; kept
            // aggregated so a hub with thousands of peerings hands policies a short list.
            let mut held = self.all_allocations();
            for (name, peering) in &state.peerings {
                let interface = peering.interface(name);
                let input = PolicyInput {
                    local: cluster.clone(),
                    local_capabilities: local_caps,
                    allocated: self
                        .own_allocations(name)
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
                if let Some(o) = self.outcomes.get_mut(name)
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
                let attempt = self
                    .registry
                    .decide(&peering.policy, &input)
                    .map_err(|e| e.to_string())
                    .and_then(|eval| {
                        compile(
                            cluster,
                            local_caps,
                            &peering.remote,
                            &interface,
                            &eval.decision,
                        )
                        .map(|plan| (eval, plan))
                        .map_err(|e| e.to_string())
                    });
                let outcome = self.outcomes.entry(name.clone()).or_default();
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
                        outcome.last_error = None;
                        "ok"
                    }
                    Err(e) => {
                        warn!(peering = %name, error = %e, "no new plan; keeping the last good one");
                        outcome.last_error = Some(e);
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
            self.outcomes.clear();
        }

        let mut tunnels = Vec::new();
        let mut routes = Vec::new();
        let mut dataplane = DesiredDataplane::default();
        for (name, outcome) in &self.outcomes {
            let (Some(plan), Some(peering), Some(key)) =
                (&outcome.plan, state.peerings.get(name), keys.get(name))
            else {
                continue;
            };
            tunnels.push(TunnelSpec {
                interface: outcome.interface.clone(),
                private_key: key.clone(),
                listen_port: peering.tunnel.listen_port,
                // Empty while bootstrapping: the interface comes up without a peer.
                peer_public_key: peering.tunnel.remote_public_key.clone().unwrap_or_default(),
                endpoint: peering.tunnel.endpoint,
                allowed_ips: plan.allowed_ips.clone(),
                keepalive: (peering.tunnel.keepalive > 0).then_some(peering.tunnel.keepalive),
            });
            routes.extend(plan.routes.iter().map(|prefix| RouteSpec {
                prefix: *prefix,
                interface: outcome.interface.clone(),
            }));
            dataplane.rules.extend(plan.rules.iter().cloned());
            dataplane.borders.push(IngressBorder {
                interface: outcome.interface.clone(),
                sources: plan.border.sources.clone(),
                destinations: plan.border.destinations.clone(),
            });
        }
        let keep: Vec<String> = tunnels.iter().map(|t| t.interface.clone()).collect();

        match self.tunnels.ensure(&tunnels) {
            Ok(r) => report.tunnels = r,
            Err(e) => report.errors.push(format!("tunnels: {e}")),
        }
        match self.routes.apply(&routes) {
            Ok(r) => report.routes = r,
            Err(e) => report.errors.push(format!("routes: {e}")),
        }
        match self.dataplane.apply(&dataplane) {
            Ok(r) => report.dataplane = r,
            Err(e) => report.errors.push(format!("dataplane: {e}")),
        }
        match self.tunnels.prune(&keep) {
            Ok(r) => report.tunnels.removed = r.removed,
            Err(e) => report.errors.push(format!("tunnels: {e}")),
        }
        let elapsed = started.elapsed();
        report.duration_seconds = elapsed.as_secs_f64();
        self.counters.reconciles += 1;
        self.counters.last_duration = elapsed;
        self.counters.total_duration += elapsed;
        if report.errors.is_empty() {
            info!(?elapsed, peerings = self.outcomes.len(), "reconciled");
        } else {
            warn!(errors = ?report.errors, "reconciled with errors");
        }
        report
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
