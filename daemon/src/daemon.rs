//! The daemon's core, shared by the API handlers: the desired state (in memory and in
//! the store), the policy registry and the one reconciler. Every change is validated,
//! dry-run through the policy and the plan compiler, persisted, and then applied by the
//! reconciler; a change that fails any of that leaves state and system as they were.

use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::Mutex;
use tracing::info;

use crate::api::problem::Problem;
use crate::model::{Capabilities, PolicyInput};
use crate::plan::{GatewayPlan, compile};
use crate::policy::validate::DecisionError;
use crate::policy::{Evaluation, PolicyError, PolicyRegistry, RegistryError};
use crate::reconcile::{Keys, ReconcileReport, Reconciler};
use crate::store::{DesiredState, Store};

/// Shared daemon state.
pub struct Daemon {
    store: Store,
    state: Arc<Mutex<DesiredState>>,
    /// Views each peering holds, published after every reconcile, so a dry run can see
    /// them without waiting for the reconciler.
    held: Arc<StdMutex<std::collections::BTreeMap<String, Vec<ipnet::Ipv4Net>>>>,
    reconciler: Arc<StdMutex<Reconciler>>,
    registry: Arc<PolicyRegistry>,
    ready: std::sync::atomic::AtomicBool,
    last_report: StdMutex<Option<ReconcileReport>>,
}

/// Maps a policy failure to the API: conflicts with other peerings are 409, everything
/// else the policy or its decision got wrong is 422.
pub fn policy_problem(e: &RegistryError) -> Problem {
    match e {
        RegistryError::Policy(PolicyError::Rejected(DecisionError::OverlapsAllocation {
            ..
        })) => Problem::conflict(e.to_string()),
        RegistryError::NotFound(_) => Problem::bad_request(e.to_string()).at("/policy"),
        _ => Problem::policy_rejected(e.to_string()),
    }
}

impl Daemon {
    /// A daemon over a store, a registry and a reconciler. Uploaded policies recorded in
    /// the state are compiled into the registry.
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
        Ok(Self {
            store,
            state: Arc::new(Mutex::new(state)),
            held: Arc::default(),
            reconciler: Arc::new(StdMutex::new(reconciler)),
            registry,
            ready: std::sync::atomic::AtomicBool::new(false),
            last_report: StdMutex::new(None),
        })
    }

    /// The policy registry.
    pub fn registry(&self) -> &Arc<PolicyRegistry> {
        &self.registry
    }

    /// A copy of the desired state.
    pub async fn state(&self) -> DesiredState {
        self.state.lock().await.clone()
    }

    /// True once a reconcile finished without applier errors.
    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The report of the last reconcile.
    pub fn last_report(&self) -> Option<ReconcileReport> {
        self.last_report.lock().ok().and_then(|r| r.clone())
    }

    /// Runs `f` against the reconciler on a blocking thread.
    pub async fn with_reconciler<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reconciler) -> T + Send + 'static,
    ) -> Result<T, Problem> {
        let reconciler = self.reconciler.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = reconciler
                .lock()
                .map_err(|_| Problem::internal("reconciler lock poisoned"))?;
            Ok(f(&mut guard))
        })
        .await
        .map_err(|e| Problem::internal(format!("reconciler task: {e}")))?
    }

    /// Applies the current desired state. The state is read while holding the
    /// reconciler, so reconciles apply states in the order they were saved: the last one
    /// to run always applies the newest state (no lost update between concurrent calls).
    pub async fn reconcile(&self) -> Result<ReconcileReport, Problem> {
        let state = self.state.clone();
        let store = self.store.clone();
        let held = self.held.clone();
        let report = self
            .with_reconciler(move |r| {
                let snapshot = state.blocking_lock().clone();
                let keys: Keys = snapshot
                    .peerings
                    .keys()
                    .map(|name| {
                        store
                            .private_key(name)
                            .map(|k| (name.clone(), k))
                            .map_err(|e| Problem::internal(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?;
                let report = r.reconcile(&snapshot, &keys);
                if let Ok(mut held) = held.lock() {
                    *held = r
                        .outcomes()
                        .iter()
                        .filter_map(|(n, o)| {
                            o.decision.as_ref().map(|d| {
                                (n.clone(), d.mappings.iter().map(|m| m.remapped).collect())
                            })
                        })
                        .collect();
                }
                Ok::<_, Problem>(report)
            })
            .await??;
        self.ready.store(
            report.errors.is_empty(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Ok(mut last) = self.last_report.lock() {
            *last = Some(report.clone());
        }
        Ok(report)
    }

    /// Changes the desired state with `change` (which validates and may refuse), checks
    /// the affected peerings' policies accept it, persists it and applies it. On any
    /// error nothing changes.
    pub async fn update<T>(
        &self,
        change: impl FnOnce(&mut DesiredState) -> Result<T, Problem>,
        dry_run_peering: Option<String>,
    ) -> Result<(T, ReconcileReport), Problem> {
        let mut guard = self.state.lock().await;
        let mut next = guard.clone();
        let value = change(&mut next)?;
        if let Some(name) = dry_run_peering {
            self.dry_run(&next, &name).await?;
        }
        self.save(&next).await?;
        *guard = next;
        drop(guard);
        let report = self.reconcile().await?;
        Ok((value, report))
    }

    /// Decides and compiles peering `name` against `state` without applying anything.
    pub async fn dry_run(
        &self,
        state: &DesiredState,
        name: &str,
    ) -> Result<(Evaluation, GatewayPlan), Problem> {
        let cluster = state.cluster.clone().ok_or_else(|| {
            Problem::conflict("configure the local cluster first (PUT /v1/cluster)")
        })?;
        let peering = state
            .peerings
            .get(name)
            .cloned()
            .ok_or_else(|| Problem::not_found(format!("no peering {name:?}")))?;
        let others: Vec<String> = state
            .peerings
            .keys()
            .filter(|n| *n != name)
            .cloned()
            .collect();
        let allocated: Vec<ipnet::Ipv4Net> = self
            .held
            .lock()
            .map(|held| {
                held.iter()
                    .filter(|(n, _)| others.contains(n))
                    .flat_map(|(_, views)| views.iter().copied())
                    .collect()
            })
            .unwrap_or_default();
        let allocated = ipnet::Ipv4Net::aggregate(&allocated);
        let input = PolicyInput {
            local: cluster.clone(),
            local_capabilities: Capabilities {
                nat_dataplane: true,
            },
            allocated,
            remote: peering.remote.clone(),
            settings: peering.settings.clone(),
        };
        let registry = self.registry.clone();
        let policy = peering.policy.clone();
        let eval = tokio::task::spawn_blocking(move || registry.decide(&policy, &input))
            .await
            .map_err(|e| Problem::internal(format!("policy task: {e}")))?
            .map_err(|e| policy_problem(&e))?;
        let plan = compile(
            &cluster,
            Capabilities {
                nat_dataplane: true,
            },
            &peering.remote,
            &peering.interface(name),
            &eval.decision,
        )
        .map_err(|e| Problem::policy_rejected(e.to_string()))?;
        Ok((eval, plan))
    }

    /// Saves `state` (an fsync'd atomic write) off the async runtime's threads.
    async fn save(&self, state: &DesiredState) -> Result<(), Problem> {
        let store = self.store.clone();
        let state = state.clone();
        tokio::task::spawn_blocking(move || store.save(&state))
            .await
            .map_err(|e| Problem::internal(format!("save task: {e}")))?
            .map_err(|e| Problem::internal(format!("saving state: {e}")))
    }

    /// The private key of peering `name` (generated and saved on first use), read off
    /// the async runtime's threads.
    pub async fn private_key(&self, name: &str) -> Result<String, Problem> {
        let store = self.store.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || store.private_key(&name))
            .await
            .map_err(|e| Problem::internal(format!("key task: {e}")))?
            .map_err(|e| Problem::internal(e.to_string()))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Removes every rule, route and tunnel and forgets the peerings (cluster and
    /// policies stay).
    pub async fn teardown(&self) -> Result<Vec<String>, Problem> {
        let mut guard = self.state.lock().await;
        let mut next = guard.clone();
        let names: Vec<String> = next.peerings.keys().cloned().collect();
        next.peerings.clear();
        self.save(&next).await?;
        *guard = next;
        drop(guard);
        for name in &names {
            let _ = self.store.remove_key(name);
        }
        let errors = self.with_reconciler(|r| r.teardown()).await?;
        info!(peerings = names.len(), "torn down");
        Ok(errors)
    }
}
