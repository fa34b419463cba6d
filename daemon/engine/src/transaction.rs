//! One change, run on the reconciler's thread while the state lock is held: keys for
//! the new state, plan once, refuse what would hurt the gateway, apply, save; on any
//! failure re-apply the previous system and leave keys and state as they were.

use std::collections::BTreeMap;

use remapd_model::plan::GatewayPlan;
use remapd_policy_host::{Evaluation, PolicyRegistry};
use tracing::warn;

use crate::daemon::PolicyChange;
use crate::error::EngineError;
use crate::reconcile::{
    ApplyMode, ApplyStep, DesiredSystem, Keys, PeeringOutcome, PlanFailure, ProtectedCheck,
    ReconcileReport, Reconciler, mark_key_errors,
};
use crate::store::{DesiredState, Store, pins};

/// The dry run's answer for `name` from a planned system.
pub(crate) fn dry_run_result(
    system: DesiredSystem,
    name: String,
) -> Result<(Evaluation, GatewayPlan), EngineError> {
    if let Some(f) = system.failures.get(&name) {
        return Err(EngineError::Decision {
            peering: name,
            kind: f.kind,
            message: f.message.clone(),
        });
    }
    let outcome = system
        .outcomes
        .get(&name)
        .ok_or_else(|| EngineError::PeeringNotFound(name.clone()))?;
    match (&outcome.decision, &outcome.plan) {
        (Some(decision), Some(plan)) => Ok((
            Evaluation {
                decision: decision.clone(),
                log: outcome.policy_log.clone(),
                elapsed: outcome.elapsed,
                fuel_used: outcome.fuel_used,
            },
            plan.clone(),
        )),
        _ => Err(EngineError::PeeringNotFound(name)),
    }
}

/// Private keys of `state`'s peerings, and why some have none. A key is generated only
/// for a peering that is new (not in `previous`); its name is added to `created`
/// (removed again if the change is refused). An existing peering whose key file is
/// missing or unusable never gets a new key silently (its peer would stop accepting
/// handshakes with no error anywhere): it keeps the key its tunnel runs with
/// (`running`, by interface) or gets no tunnel, and the reason is returned for its
/// status. A change that targets such a peering is refused, naming the file.
pub(crate) fn keys_for(
    store: &Store,
    previous: &DesiredState,
    state: &DesiredState,
    created: &mut Vec<String>,
    running: &BTreeMap<String, String>,
    targets: &[String],
) -> Result<(Keys, BTreeMap<String, String>), EngineError> {
    let mut keys = Keys::new();
    let mut errors = BTreeMap::new();
    for (name, spec) in &state.peerings {
        let problem = match store.existing_key(name) {
            Ok(Some(key)) => {
                keys.insert(name.clone(), key);
                continue;
            }
            Ok(None) if !previous.peerings.contains_key(name) => {
                created.push(name.clone());
                let key = store
                    .private_key(name)
                    .map_err(|e| EngineError::Internal(format!("peering {name:?}: {e}")))?;
                keys.insert(name.clone(), key);
                continue;
            }
            Ok(None) => format!(
                "its WireGuard key file {} is missing; remapd does not make a new key for an existing peering (its peer would stop accepting handshakes): restore the file, or delete and re-create the peering and give the peer the new exports",
                store.key_path(name).display()
            ),
            Err(e) => format!(
                "{e}; restore the key file, or delete and re-create the peering and give the peer the new exports"
            ),
        };
        if targets.contains(name) {
            return Err(EngineError::Key {
                peering: name.clone(),
                message: problem,
            });
        }
        match running.get(&spec.interface(name)) {
            Some(key) => {
                warn!(peering = %name, problem = %problem, "key file unusable; the tunnel keeps the key it runs with");
                keys.insert(name.clone(), key.clone());
            }
            None => {
                warn!(peering = %name, problem = %problem, "key file unusable; the peering has no tunnel")
            }
        }
        errors.insert(name.clone(), problem);
    }
    Ok((keys, errors))
}

/// One change, on the reconciler's thread: see the module docs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transact(
    r: &mut Reconciler,
    store: &Store,
    registry: &PolicyRegistry,
    previous: &DesiredState,
    next: &DesiredState,
    targets: &[String],
    policy: Option<PolicyChange>,
    force: bool,
) -> Result<(BTreeMap<String, PeeringOutcome>, ReconcileReport), EngineError> {
    // Versions that peerings pin (before or after the change) are kept before the
    // registry changes: a re-upload never takes a pinned version away.
    let mut all_pins = pins(previous);
    all_pins.extend(pins(next));
    all_pins.sort();
    all_pins.dedup();
    for ((name, digest), why) in registry.keep_pinned(&all_pins, |d| store.policy_bytes(d).ok()) {
        warn!(policy = %name, %digest, reason = %why, "pinned policy version not available");
    }
    // The registry change goes in first, so the plan decides with it; undone on refusal.
    let undo_policy = match policy {
        None => None,
        Some(PolicyChange { name, install }) => {
            let before = match install {
                Some((named, bytes)) => {
                    store
                        .put_policy_bytes(&named.compiled.sha256, &bytes)
                        .map_err(|e| EngineError::Internal(e.to_string()))?;
                    registry
                        .install(named)
                        .map_err(|e| EngineError::Internal(e.to_string()))?
                }
                None => registry.remove(&name).ok(),
            };
            Some((name, before))
        }
    };
    let policy_changed = undo_policy.is_some();
    let mut created = Vec::new();
    let result = plan_apply_save(r, store, previous, next, targets, force, &mut created);
    if result.is_err() {
        for name in &created {
            if let Err(e) = store.remove_key(name) {
                warn!(peering = %name, error = %e, "removing the key of a refused change");
            }
        }
        if let Some((name, before)) = undo_policy {
            registry.restore(&name, before);
        }
    } else {
        for name in previous
            .peerings
            .keys()
            .filter(|n| !next.peerings.contains_key(*n))
        {
            if let Err(e) = store.remove_key(name) {
                warn!(peering = %name, error = %e, "removing the key of a deleted peering");
            }
        }
    }
    // Component files no state names: a replaced or deleted policy's, or a refused
    // upload's. Inside the lock, so a concurrent upload's bytes are never collected;
    // only a policy change can leave such files.
    if policy_changed {
        let current = if result.is_ok() { next } else { previous };
        if let Err(e) = store.gc_policies(current) {
            warn!(error = %e, "removing unused policy files");
        }
        retain_compiled(registry, current);
    }
    result
}

/// Removes compiled components on disk that `state` no longer names (as a policy or a
/// pinned version): a replaced or deleted policy's, a refused upload's, a preview's.
pub(crate) fn retain_compiled(registry: &PolicyRegistry, state: &DesiredState) {
    if let Some(compiled) = registry.engine().compiled_cache() {
        let pinned = pins(state);
        let keep: Vec<&str> = state
            .policies
            .values()
            .map(|p| p.sha256.as_str())
            .chain(pinned.iter().map(|(_, digest)| digest.as_str()))
            .collect();
        compiled.retain(&keep);
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_apply_save(
    r: &mut Reconciler,
    store: &Store,
    previous: &DesiredState,
    next: &DesiredState,
    targets: &[String],
    force: bool,
    created: &mut Vec<String>,
) -> Result<(BTreeMap<String, PeeringOutcome>, ReconcileReport), EngineError> {
    if !next.peerings.is_empty() && next.cluster.is_none() {
        return Err(EngineError::NoCluster);
    }
    let (keys, key_errors) =
        keys_for(store, previous, next, created, &r.committed_keys(), targets)?;
    let mut system: DesiredSystem = r.plan(next, &keys);
    mark_key_errors(&mut system, &key_errors);
    // Refused: a target without a plan, or a peering that had one (or is new) and would
    // lose it. A peering that was already failing does not block others. A caller may
    // force a change that leaves other peerings undecidable: they then lose their plan
    // at once, as a restart would have them.
    let blocking: Vec<(&String, &PlanFailure)> = system
        .failures
        .iter()
        .filter(|(name, _)| {
            targets.contains(name)
                || r.outcomes()
                    .get(*name)
                    .is_none_or(|o| o.last_error.is_none())
        })
        .collect();
    let target_failure = blocking.iter().find(|(name, _)| targets.contains(name));
    if let Some((name, failure)) = target_failure.or(if force { None } else { blocking.first() }) {
        let others: Vec<&str> = blocking
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != name.as_str())
            .collect();
        let mut message = failure.message.clone();
        if !others.is_empty() {
            message.push_str(&format!(
                "; the change would also leave peering(s) {} without a plan",
                others.join(", ")
            ));
        }
        if target_failure.is_none() {
            message.push_str(
                "; add ?force=true to apply it anyway (those peerings then lose their translation until they can be decided again)",
            );
        }
        return Err(EngineError::Decision {
            peering: (*name).clone(),
            kind: failure.kind,
            message,
        });
    }
    if !system.failures.is_empty() {
        // Forced (or only peerings that were already failing): the failed ones run
        // without a plan, exactly as after a restart.
        if force {
            warn!(peerings = ?system.failures.keys().collect::<Vec<_>>(), "forced: these peerings lose their plan");
            system = r.without_failed(system, next, &keys);
            mark_key_errors(&mut system, &key_errors);
        }
    }
    // Checked before anything is applied: what would hurt the gateway or cannot work.
    let refused = |e: ProtectedCheck, step: ApplyStep| match e {
        ProtectedCheck::Covered(hit) => EngineError::Protected(hit),
        ProtectedCheck::PortInUse { peering, port } => EngineError::PortInUse { peering, port },
        ProtectedCheck::Unreadable(message) => EngineError::Apply {
            step,
            message,
            rollback_errors: Vec::new(),
        },
    };
    r.check_protected(&system, next)
        .map_err(|e| refused(e, ApplyStep::Routes))?;
    r.check_ports(&system, next)
        .map_err(|e| refused(e, ApplyStep::Tunnels))?;
    let report = r.apply(&system, ApplyMode::StopAtFirstError);
    // One peering's tunnel failing refuses the change only if the change is to blame.
    let blamed = r.failed_tunnels_of_change(&system, &report, next, targets);
    if !blamed.is_empty() {
        let rollback = r.roll_back();
        warn!(tunnels = ?blamed, rollback_errors = ?rollback.errors, "change refused: its tunnels failed; previous system re-applied");
        return Err(EngineError::Apply {
            step: ApplyStep::Tunnels,
            message: blamed
                .iter()
                .map(|(i, e)| format!("{i}: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
            rollback_errors: rollback.errors,
        });
    }
    if let Some(step) = report.failed_steps.first() {
        let rollback = r.roll_back();
        warn!(%step, errors = ?report.errors, rollback_errors = ?rollback.errors, "change refused: applying failed; previous system re-applied");
        return Err(EngineError::Apply {
            step: *step,
            message: report.errors.join("; "),
            rollback_errors: rollback.errors,
        });
    }
    if let Err(e) = store.save(next) {
        let rollback = r.roll_back();
        warn!(error = %e, rollback_errors = ?rollback.errors, "change refused: saving failed; previous system re-applied");
        return Err(EngineError::Persist(e.to_string()));
    }
    r.commit(system);
    Ok((r.outcomes().clone(), report))
}
