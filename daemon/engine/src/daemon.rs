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

use crate::decision_log::{DecisionLog, DecisionOutcome};
pub use crate::error::EngineError;
use crate::preview::{PolicyImpact, impact};
use crate::reconcile::{
    ApplyMode, Keys, PeeringOutcome, ReconcileCounters, ReconcileReport, Reconciler, StatusReaders,
    mark_key_errors,
};
use crate::store::{DesiredState, Store, pins};
use crate::transaction::{dry_run_result, keys_for, retain_compiled, transact};
use remapd_dataplane::DataplaneStatus;
use remapd_model::plan::GatewayPlan;
use remapd_net::TunnelStatus;
use remapd_policy_host::{Evaluation, NamedPolicy, PolicyRegistry};

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
    decisions: Arc<DecisionLog>,
    tracer: crate::trace::Tracer,
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
        // Versions peerings pin, from their stored components.
        for ((name, digest), why) in
            registry.keep_pinned(&pins(&state), |d| store.policy_bytes(d).ok())
        {
            warn!(policy = %name, %digest, reason = %why, "a pinned policy version is not available: peerings pinning it get no plan");
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
        let decisions = Arc::new(DecisionLog::open(&store.dir().join(DECISION_LOG)));
        let readers = reconciler.status_readers();
        let tracer = crate::trace::Tracer::new(
            readers.trace.clone(),
            readers.dataplane.clone(),
            snapshot.subscribe(),
        );
        Ok(Self {
            tracer,
            decisions,
            store,
            state: Arc::new(Mutex::new(state)),
            publisher: Arc::new(Publisher {
                snapshot,
                ready: AtomicBool::new(false),
            }),
            readers,
            reconciler: Arc::new(StdMutex::new(reconciler)),
            registry,
        })
    }

    /// The policy registry.
    pub fn registry(&self) -> &Arc<PolicyRegistry> {
        &self.registry
    }

    /// The decision log.
    pub fn decisions(&self) -> &Arc<DecisionLog> {
        &self.decisions
    }

    /// Live traces of the dataplane.
    pub fn tracer(&self) -> &crate::trace::Tracer {
        &self.tracer
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
        let decisions = self.decisions.clone();
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
            // Best effort: what was decided is in force, whatever else failed.
            log_decisions(r, &decisions, DecisionOutcome::Applied, None);
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
        let decisions = self.decisions.clone();
        let committed = self
            .locked(guard, move |state, r, publisher| {
                let result = transact(r, &store, &registry, state, &next, &targets, policy, force);
                match &result {
                    Ok(_) => log_decisions(r, &decisions, DecisionOutcome::Applied, None),
                    Err(e) => log_decisions(
                        r,
                        &decisions,
                        DecisionOutcome::NotApplied,
                        Some(e.to_string()),
                    ),
                }
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
        let decisions = self.decisions.clone();
        let (result, counters) = self
            .with_reconciler(move |r| {
                let system = r.plan(&state, &Keys::new());
                log_decisions(r, &decisions, DecisionOutcome::DryRun, None);
                (dry_run_result(system, name), r.counters.clone())
            })
            .await?;
        self.publisher.publish_counters(counters);
        result
    }

    /// What replacing (or adding) policy `named` would decide for every peering that
    /// names it, and how their rules, routes and allowed-ips would change. Nothing is
    /// installed, applied or saved: the new component is decided through an overlay
    /// registry (the live policy is never swapped, so concurrent reads never see it),
    /// under the state lock so no change interleaves. The decisions are logged as dry
    /// runs.
    #[tracing::instrument(name = "preview_policy", skip_all, fields(policy = %named.name))]
    pub async fn preview_policy(
        &self,
        named: NamedPolicy,
    ) -> Result<Vec<PolicyImpact>, EngineError> {
        let guard = self.state.clone().lock_owned().await;
        let registry = self.registry.clone();
        let decisions = self.decisions.clone();
        self.locked(guard, move |state, r, publisher| {
            let overlay = registry
                .with_policy(named.clone())
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            let system = r.plan_with(&overlay, state, &Keys::new());
            log_decisions(r, &decisions, DecisionOutcome::DryRun, None);
            publisher.publish_counters(r.counters.clone());
            let impacts = state
                .peerings
                .iter()
                .filter(|(_, p)| p.policy == named.name)
                .map(|(name, _)| impact(name, r.outcomes().get(name), &system))
                .collect();
            // The preview's compilation was kept on disk like an upload's; nothing
            // installs it, so it goes (unless the state already names the same bytes).
            drop(overlay);
            retain_compiled(&registry, state);
            Ok(impacts)
        })
        .await?
    }

    /// Removes every rule, route and tunnel and forgets the peerings (cluster and
    /// policies stay). The state is saved first, so a crash half-way leaves nothing to
    /// re-create on restart.
    #[tracing::instrument(name = "teardown", skip_all)]
    pub async fn teardown(&self) -> Result<Vec<String>, EngineError> {
        let guard = self.state.clone().lock_owned().await;
        let store = self.store.clone();
        let errors = self
            .locked(guard, move |state, r, publisher| {
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
            .await??;
        // The traces read maps the teardown unpinned (the next apply loads new ones):
        // they end now, and the next trace opens whatever is there then.
        self.tracer.stop_all("teardown");
        Ok(errors)
    }
}

/// The decision log's file in the state directory.
pub const DECISION_LOG: &str = "decisions.jsonl";

/// Logs the decisions `r` made since the last call: valid ones (provisionally
/// [`DecisionOutcome::Applied`]) become `outcome`, with `reason`; rejected and failed
/// ones keep theirs.
fn log_decisions(
    r: &mut Reconciler,
    log: &DecisionLog,
    outcome: DecisionOutcome,
    reason: Option<String>,
) {
    let mut made = r.take_decisions();
    for record in made
        .iter_mut()
        .filter(|record| record.outcome == DecisionOutcome::Applied)
    {
        record.outcome = outcome;
        record.reason.clone_from(&reason);
    }
    log.append(made);
}
