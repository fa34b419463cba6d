//! The daemon's core, shared by the API handlers: the desired state (in memory and in
//! the store), the policy registry and the one reconciler.
//!
//! Every change is one transaction, run while holding the state lock so changes never
//! interleave: validate → plan (the policy runs once) → apply → persist → publish. If a
//! peering the change touches (or one that was healthy) gets no plan, nothing is applied;
//! if an applier fails, the previous system is applied again; if the state cannot be
//! saved, the previous system is applied again too. In every failure the state, the
//! kernel and the key files stay as they were, and the caller gets an [`EngineError`]
//! naming the step. Reads never take the state lock: they see the [`Snapshot`] published
//! after the last change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tracing::{info, warn};

use crate::dataplane::DataplaneStatus;
use crate::net::TunnelStatus;
use crate::plan::GatewayPlan;
use crate::policy::{Evaluation, NamedPolicy, PolicyRegistry};
use crate::reconcile::{
    ApplyMode, ApplyStep, DesiredSystem, FailureKind, Keys, PeeringOutcome, PlanFailure,
    ProtectedCheck, ReconcileCounters, ReconcileReport, Reconciler, StatusReaders, mark_key_errors,
};
use crate::store::{DesiredState, Store};

/// Why a change or a read of the engine failed. The API maps each kind to one
/// problem+json status and type.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Peerings need the local cluster first.
    #[error("configure the local cluster first (PUT /v1/cluster)")]
    NoCluster,
    /// No such peering.
    #[error("no peering {0:?}")]
    PeeringNotFound(String),
    /// A peering the change touches, or one that had a plan, would get none: nothing
    /// was applied or saved.
    #[error("peering {peering:?}: {message}")]
    Decision {
        /// The peering.
        peering: String,
        /// Conflict, missing policy, or rejected.
        kind: FailureKind,
        /// What went wrong.
        message: String,
    },
    /// An applier failed; the previous system was applied again and nothing was saved.
    #[error("applying the change failed at step {step}: {message}{}", rollback_note(.rollback_errors))]
    Apply {
        /// The step that failed.
        step: ApplyStep,
        /// What it said.
        message: String,
        /// Errors while re-applying the previous system (empty when it is back).
        rollback_errors: Vec<String>,
    },
    /// A route the change adds would cover an address the gateway must keep reaching
    /// (its own, a peer's endpoint, the next hop towards one): nothing was applied.
    #[error("{0}; refused, nothing changed")]
    Protected(crate::reconcile::ProtectedRoute),
    /// A new tunnel's UDP port is bound by another process: nothing was applied.
    #[error(
        "peering {peering:?}: UDP port {port} is already bound by another process on this gateway; pick another listen_port"
    )]
    PortInUse {
        /// The peering.
        peering: String,
        /// The port.
        port: u16,
    },
    /// The state could not be saved; the previous system was applied again.
    #[error("saving the state failed (the change was rolled back): {0}")]
    Persist(String),
    /// A peering the change targets has no usable key file; nothing was applied.
    #[error("peering {peering:?}: {message}")]
    Key {
        /// The peering.
        peering: String,
        /// What is wrong and the way out.
        message: String,
    },
    /// The daemon itself failed (a task, a lock, a key file).
    #[error("{0}")]
    Internal(String),
}

fn rollback_note(errors: &[String]) -> String {
    if errors.is_empty() {
        "; the previous configuration was re-applied".into()
    } else {
        format!(
            "; re-applying the previous configuration also failed: {}",
            errors.join("; ")
        )
    }
}

/// What reads see: the state and outcomes of the last committed change (or resync) and
/// the report of the last apply. Replaced as a whole, never mutated.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The desired state in force.
    pub state: DesiredState,
    /// Each peering's decision and plan in force.
    pub outcomes: BTreeMap<String, PeeringOutcome>,
    /// What the last apply (change or resync) did.
    pub last_report: Option<ReconcileReport>,
    /// Decision and reconcile counters as of the last publish.
    pub counters: ReconcileCounters,
}

/// What a change or resync publishes: outcomes, the apply's report, counters.
type Published = (
    BTreeMap<String, PeeringOutcome>,
    ReconcileReport,
    ReconcileCounters,
);

/// A change to the policy registry that rides on a state change: installed before the
/// plan and put back if the change is refused.
pub struct PolicyChange {
    /// The policy's name.
    pub name: String,
    /// The compiled policy and its bytes (stored under their digest), or `None` to
    /// remove the policy.
    pub install: Option<(NamedPolicy, Vec<u8>)>,
}

/// Shared daemon state.
pub struct Daemon {
    store: Store,
    /// The writer lock: held for a whole change, so changes apply in order.
    state: Arc<Mutex<DesiredState>>,
    publisher: Arc<Publisher>,
    reconciler: Arc<StdMutex<Reconciler>>,
    registry: Arc<PolicyRegistry>,
    readers: StatusReaders,
}

/// Publishes what reads see. Used from the blocking task that runs a change, so a
/// change whose request is cancelled (a client that disconnects) still finishes as
/// one: applied, saved, committed and published, or none of it.
struct Publisher {
    snapshot: watch::Sender<Arc<Snapshot>>,
    ready: AtomicBool,
}

impl Publisher {
    fn publish(&self, state: DesiredState, published: Published) -> Arc<Snapshot> {
        let (outcomes, report, counters) = published;
        self.ready
            .store(report.errors.is_empty(), Ordering::Relaxed);
        let snapshot = Arc::new(Snapshot {
            state,
            outcomes,
            last_report: Some(report),
            counters,
        });
        self.snapshot.send_replace(snapshot.clone());
        snapshot
    }

    fn publish_counters(&self, counters: ReconcileCounters) {
        let total = |c: &ReconcileCounters| c.decisions.values().sum::<u64>() + c.reconciles;
        self.snapshot.send_modify(|snapshot| {
            // A dry run may publish after a later change did: counters never go back.
            if total(&counters) < total(&snapshot.counters) {
                return;
            }
            let mut next = Snapshot::clone(snapshot);
            next.counters = counters;
            *snapshot = Arc::new(next);
        });
    }
}

impl Daemon {
    /// A daemon over a store, a registry and a reconciler. Uploaded policies recorded in
    /// the state are compiled into the registry; key files of peerings the state does
    /// not hold are removed.
    pub fn new(
        store: Store,
        registry: Arc<PolicyRegistry>,
        reconciler: Reconciler,
    ) -> Result<Self, String> {
        let state = store.load().map_err(|e| e.to_string())?;
        for (name, policy) in &state.policies {
            let bytes = store
                .policy_bytes(&policy.sha256)
                .map_err(|e| e.to_string())?;
            registry
                .put(name, &bytes)
                .map_err(|e| format!("restoring policy {name}: {e}"))?;
        }
        match store.gc_temp_files() {
            Ok(removed) if !removed.is_empty() => {
                info!(
                    ?removed,
                    "removed the temporary files of writes a crash interrupted"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cleaning up temporary files"),
        }
        match store.gc_keys(&state) {
            Ok(removed) if !removed.is_empty() => {
                info!(peerings = ?removed, "removed key files of peerings that no longer exist")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cleaning up key files"),
        }
        let (snapshot, _) = watch::channel(Arc::new(Snapshot {
            state: state.clone(),
            ..Snapshot::default()
        }));
        Ok(Self {
            store,
            state: Arc::new(Mutex::new(state)),
            publisher: Arc::new(Publisher {
                snapshot,
                ready: AtomicBool::new(false),
            }),
            readers: reconciler.status_readers(),
            reconciler: Arc::new(StdMutex::new(reconciler)),
            registry,
        })
    }

    /// The policy registry.
    pub fn registry(&self) -> &Arc<PolicyRegistry> {
        &self.registry
    }

    /// What reads see (never waits for a change in progress).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.publisher.snapshot.borrow().clone()
    }

    /// A copy of the desired state in force.
    pub fn state(&self) -> DesiredState {
        self.snapshot().state.clone()
    }

    /// True once a reconcile finished without applier errors.
    pub fn ready(&self) -> bool {
        self.publisher.ready.load(Ordering::Relaxed)
    }

    /// The report of the last apply.
    pub fn last_report(&self) -> Option<ReconcileReport> {
        self.snapshot().last_report.clone()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The dataplane's rules, counters and attachments, read without waiting for a
    /// change in progress.
    pub async fn dataplane_status(&self) -> Result<DataplaneStatus, EngineError> {
        let reader = self.readers.dataplane.clone();
        tokio::task::spawn_blocking(move || reader.status())
            .await
            .map_err(|e| EngineError::Internal(format!("status task: {e}")))?
            .map_err(|e| EngineError::Internal(format!("reading the dataplane: {e}")))
    }

    /// Live state of one tunnel (`None` when it does not run), read without waiting for
    /// a change in progress.
    pub async fn tunnel_status(
        &self,
        interface: &str,
    ) -> Result<Option<TunnelStatus>, EngineError> {
        let reader = self.readers.tunnels.clone();
        let interface = interface.to_owned();
        tokio::task::spawn_blocking(move || reader.status(&interface))
            .await
            .map_err(|e| EngineError::Internal(format!("status task: {e}")))?
            .map_err(|e| EngineError::Internal(format!("reading tunnel state: {e}")))
    }

    /// Runs `f` against the reconciler on a blocking thread.
    pub async fn with_reconciler<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reconciler) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let reconciler = self.reconciler.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = reconciler
                .lock()
                .map_err(|_| EngineError::Internal("reconciler lock poisoned".into()))?;
            Ok(f(&mut guard))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("reconciler task: {e}")))?
    }

    /// Runs `f` with the state lock and the reconciler on a blocking thread. The task
    /// owns the lock, so it runs to the end even if the caller's future is dropped.
    async fn locked<T: Send + 'static>(
        &self,
        guard: OwnedMutexGuard<DesiredState>,
        f: impl FnOnce(&mut DesiredState, &mut Reconciler, &Publisher) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let reconciler = self.reconciler.clone();
        let publisher = self.publisher.clone();
        // The request's and the change's spans follow the work onto the blocking thread.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut guard = guard;
            let mut r = reconciler
                .lock()
                .map_err(|_| EngineError::Internal("reconciler lock poisoned".into()))?;
            Ok(f(&mut guard, &mut r, &publisher))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("change task: {e}")))?
    }

    /// Waits until no change is being applied (at most `timeout`); true if none is.
    /// Used on shutdown: a change runs to its end even when its request is gone.
    pub async fn quiesce(&self, timeout: std::time::Duration) -> bool {
        tokio::time::timeout(timeout, self.state.lock())
            .await
            .is_ok()
    }

    /// Re-applies the desired state in force (start-up and periodic resync): every step
    /// runs even after one fails, and nothing is refused, so what was acknowledged keeps
    /// converging.
    #[tracing::instrument(name = "resync", skip_all)]
    pub async fn reconcile(&self) -> Result<ReconcileReport, EngineError> {
        let guard = self.state.clone().lock_owned().await;
        let store = self.store.clone();
        self.locked(guard, move |state, r, publisher| {
            let (keys, key_errors) = keys_for(
                &store,
                state,
                state,
                &mut Vec::new(),
                &r.committed_keys(),
                &[],
            )?;
            let mut system = r.plan(state, &keys);
            mark_key_errors(&mut system, &key_errors);
            let report = r.apply(&system, ApplyMode::BestEffort);
            r.commit(system);
            publisher.publish(
                state.clone(),
                (r.outcomes().clone(), report.clone(), r.counters.clone()),
            );
            Ok(report)
        })
        .await?
    }

    /// Changes the desired state with `change` (which validates and may refuse with the
    /// caller's error) and runs the change as one transaction (see the module docs).
    /// `targets` are the peerings the change is about: a failed decision for one of
    /// them refuses the change even if it had failed before. Returns `change`'s value and
    /// the snapshot this change published (later changes may already have replaced it).
    pub async fn update<T, E: From<EngineError>>(
        &self,
        change: impl FnOnce(&mut DesiredState) -> Result<T, E>,
        targets: Vec<String>,
        policy: Option<PolicyChange>,
    ) -> Result<(T, Arc<Snapshot>), E> {
        self.update_or_force(change, targets, policy, false).await
    }

    /// [`Daemon::update`], and with `force` a change that would leave peerings other
    /// than `targets` undecidable is applied anyway: those lose their plan (as after a
    /// restart) and keep `last_error`. A failing target always refuses the change.
    #[tracing::instrument(name = "change", skip_all, fields(peerings = ?targets, policy = policy.as_ref().map(|p| p.name.as_str()), force))]
    pub async fn update_or_force<T, E: From<EngineError>>(
        &self,
        change: impl FnOnce(&mut DesiredState) -> Result<T, E>,
        targets: Vec<String>,
        policy: Option<PolicyChange>,
        force: bool,
    ) -> Result<(T, Arc<Snapshot>), E> {
        let guard = self.state.clone().lock_owned().await;
        let mut next = guard.clone();
        let value = change(&mut next)?;
        let store = self.store.clone();
        let registry = self.registry.clone();
        let committed = self
            .locked(guard, move |state, r, publisher| {
                let result = transact(r, &store, &registry, state, &next, &targets, policy, force);
                let counters = r.counters.clone();
                match result {
                    Ok((outcomes, report)) => {
                        *state = next.clone();
                        Ok(publisher.publish(next, (outcomes, report, counters)))
                    }
                    Err(e) => {
                        // Refused: only the counters (the decisions made) are news.
                        publisher.publish_counters(counters);
                        Err(e)
                    }
                }
            })
            .await
            .and_then(|result| result)?;
        Ok((value, committed))
    }

    /// What `state` would decide and compile for peering `name`, without applying or
    /// saving anything: the same [`Reconciler::plan`] a change runs. Other peerings keep
    /// their decisions.
    #[tracing::instrument(name = "dry_run", skip_all, fields(peering = name))]
    pub async fn dry_run(
        &self,
        state: DesiredState,
        name: &str,
    ) -> Result<(Evaluation, GatewayPlan), EngineError> {
        if state.cluster.is_none() {
            return Err(EngineError::NoCluster);
        }
        let name = name.to_owned();
        let (result, counters) = self
            .with_reconciler(move |r| {
                let system = r.plan(&state, &Keys::new());
                (dry_run_result(system, name), r.counters.clone())
            })
            .await?;
        self.publisher.publish_counters(counters);
        result
    }

    /// Removes every rule, route and tunnel and forgets the peerings (cluster and
    /// policies stay). The state is saved first, so a crash half-way leaves nothing to
    /// re-create on restart.
    #[tracing::instrument(name = "teardown", skip_all)]
    pub async fn teardown(&self) -> Result<Vec<String>, EngineError> {
        let guard = self.state.clone().lock_owned().await;
        let store = self.store.clone();
        self.locked(guard, move |state, r, publisher| {
            let mut next = state.clone();
            let names: Vec<String> = next.peerings.keys().cloned().collect();
            next.peerings.clear();
            store
                .save(&next)
                .map_err(|e| EngineError::Persist(e.to_string()))?;
            *state = next.clone();
            let errors = r.teardown();
            for name in &names {
                if let Err(e) = store.remove_key(name) {
                    warn!(peering = %name, error = %e, "removing key file");
                }
            }
            info!(errors = errors.len(), "torn down");
            publisher.publish(
                next,
                (
                    BTreeMap::new(),
                    ReconcileReport {
                        errors: errors.clone(),
                        ..ReconcileReport::default()
                    },
                    r.counters.clone(),
                ),
            );
            Ok(errors)
        })
        .await?
    }
}

/// The dry run's answer for `name` from a planned system.
fn dry_run_result(
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
fn keys_for(
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
fn transact(
    r: &mut Reconciler,
    store: &Store,
    registry: &PolicyRegistry,
    previous: &DesiredState,
    next: &DesiredState,
    targets: &[String],
    policy: Option<PolicyChange>,
    force: bool,
) -> Result<(BTreeMap<String, PeeringOutcome>, ReconcileReport), EngineError> {
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
    }
    result
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
