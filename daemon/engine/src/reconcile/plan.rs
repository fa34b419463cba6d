//! Planning: every peering's policy decides (or keeps its last good decision), the
//! decision is validated and compiled, and the plans are assembled into one
//! [`DesiredSystem`] — computed once per change, then dry-run, applied and reported.

use std::collections::BTreeMap;

use ipnet::IpNet;

use remapd_model::model::{Capabilities, PolicyInput};
use remapd_model::plan::compile;
use remapd_policy_host::{Evaluation, PolicyError, PolicyRegistry, RegistryError};
use tracing::warn;

use super::protected::subtract;
use super::system::assemble;
use super::{DesiredSystem, FailureKind, Keys, PeeringOutcome, PlanFailure, Reconciler};
use crate::decision_log::{DecisionOutcome, DecisionRecord};
use crate::store::{DesiredState, public_key};

/// Every view held by a peering, aggregated. Identity views count: two peerings seeing
/// different remotes at the same prefix could not both be routed.
fn all_allocations(outcomes: &BTreeMap<String, PeeringOutcome>) -> Vec<IpNet> {
    let all: Vec<IpNet> = outcomes
        .values()
        .filter_map(|o| o.decision.as_ref())
        .flat_map(|d| d.mappings.iter().map(|m| m.remapped))
        .collect();
    IpNet::aggregate(&all)
}

/// The views of `name` itself, which it may keep.
fn own_allocations(outcomes: &BTreeMap<String, PeeringOutcome>, name: &str) -> Vec<IpNet> {
    outcomes
        .get(name)
        .and_then(|o| o.decision.as_ref())
        .map(|d| d.mappings.iter().map(|m| m.remapped).collect())
        .unwrap_or_default()
}

impl Reconciler {
    /// The desired system for `state`: each peering's decision (decided again only when
    /// its inputs changed or its views now collide; a failed attempt keeps the last good
    /// plan and is listed in `failures`), and the tunnels, routes and dataplane rules of
    /// all plans. Changes nothing but the decision counters; the same value is what a dry
    /// run reports, what [`Reconciler::apply`] applies and what [`Reconciler::commit`]
    /// keeps.
    pub fn plan(&mut self, state: &DesiredState, keys: &Keys) -> DesiredSystem {
        let registry = self.registry.clone();
        self.plan_with(&registry, state, keys)
    }

    /// [`Reconciler::plan`] with the policies of `registry` (e.g. an overlay holding a
    /// policy not installed yet, to preview its effect) instead of the live ones.
    pub fn plan_with(
        &mut self,
        registry: &PolicyRegistry,
        state: &DesiredState,
        keys: &Keys,
    ) -> DesiredSystem {
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
                let sha = registry
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
                let decided = registry.decide(&peering.policy, &input);
                self.decisions
                    .push(record(name, &peering.policy, &sha, &input, &decided));
                let attempt = decided
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
                        held = IpNet::aggregate(
                            &held.iter().copied().chain(views).collect::<Vec<_>>(),
                        );
                        outcome.decision = Some(eval.decision);
                        outcome.plan = Some(plan);
                        outcome.policy_log = eval.log;
                        outcome.elapsed = eval.elapsed;
                        outcome.fuel_used = eval.fuel_used;
                        outcome.last_error = None;
                        "ok"
                    }
                    Err(failure) => {
                        // A valid decision whose plan does not compile is rejected too.
                        if let Some(r) = self.decisions.last_mut()
                            && r.outcome == DecisionOutcome::Applied
                        {
                            r.outcome = DecisionOutcome::Rejected;
                            r.reason = Some(failure.message.clone());
                        }
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
}

/// The log record of one decision (valid ones as applied, until the change says
/// otherwise); a decision whose plan then fails to compile is marked in `plan`.
fn record(
    peering: &str,
    policy: &str,
    policy_sha256: &str,
    input: &PolicyInput,
    decided: &Result<Evaluation, RegistryError>,
) -> DecisionRecord {
    use sha2::Digest;
    let input_sha256 = serde_json::to_vec(input)
        .map(|bytes| hex::encode(sha2::Sha256::digest(bytes)))
        .unwrap_or_default();
    let mut r = DecisionRecord {
        time: DecisionRecord::now(),
        peering: peering.to_owned(),
        policy: policy.to_owned(),
        policy_sha256: policy_sha256.to_owned(),
        input_sha256,
        strategy: None,
        mappings: Vec::new(),
        outcome: DecisionOutcome::Applied,
        reason: None,
        duration_us: 0,
        fuel_used: 0,
    };
    match decided {
        Ok(eval) => {
            r.strategy = Some(eval.decision.strategy);
            r.mappings = eval.decision.mappings.clone();
            r.duration_us = eval.elapsed.as_micros() as u64;
            r.fuel_used = eval.fuel_used;
        }
        Err(e) => {
            let rejected = matches!(
                e,
                RegistryError::Policy(PolicyError::Rejected(_) | PolicyError::Malformed(_))
            );
            r.outcome = if rejected {
                DecisionOutcome::Rejected
            } else {
                DecisionOutcome::PolicyError
            };
            r.reason = Some(e.to_string());
        }
    }
    r
}
