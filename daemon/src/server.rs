//! Wiring: builds the policy engine, the appliers, the reconciler and the API from a
//! validated [`Config`], restores and re-applies the saved state, and serves until a
//! shutdown signal. Stopping leaves the dataplane, routes and tunnels in place.

use std::sync::Arc;

use tracing::{info, warn};

use crate::api::{AppState, router};
use crate::config::Config;
use crate::daemon::Daemon;
use crate::dataplane::DataplaneConfig;
use crate::dataplane::KernelDataplane;
use crate::http::serve_http;
use crate::net::routes::NetlinkRoutes;
use crate::net::wireguard::{WireGuardConfig, WireGuardTunnels};
use crate::policy::{CompiledCache, PolicyEngine, PolicyRegistry};
use crate::reconcile::Reconciler;
use crate::store::Store;

/// How often the daemon re-applies its state without being asked.
pub const RESYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// On SIGTERM, how long open requests get to finish, and then how long a change still
/// being applied gets (it is never cut: a change is applied and saved, or not at all).
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Setting up failed.
    #[error("{0}")]
    Setup(String),
    /// The state file is gone but a previous remapd's dataplane or tunnels are not.
    #[error(
        "{} does not exist, but a previous remapd left {} in place; starting now would remove it all. Restore the state file (from a backup of the state directory), or run `remapd teardown` to remove what is left, or start once with --adopt-and-clear to start empty and remove it",
        state_file.display(),
        found.join(" and ")
    )]
    LostState {
        /// The missing state file.
        state_file: std::path::PathBuf,
        /// What was found.
        found: Vec<String>,
    },
    /// The listener failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// What a previous remapd left in place that starting empty would remove: translation
/// rules in its pinned dataplane, and tunnels it started (pid files in the run
/// directory). A pinned dataplane without rules (every peering was deleted) is nothing
/// to lose.
pub fn leftovers(config: &Config) -> Vec<String> {
    let f = &config.file;
    let mut out = Vec::new();
    let pinned = crate::dataplane::Dataplane::open_existing(&DataplaneConfig {
        pin_dir: f.pin_dir.clone(),
        attach_mode: f.attach_mode,
        without_trace: false,
    })
    .and_then(|d| d.status());
    if let Ok(status) = pinned
        && !status.rules.is_empty()
    {
        out.push(format!(
            "its pinned dataplane in {} ({} translation rules)",
            f.pin_dir.display(),
            status.rules.len()
        ));
    }
    let tunnels: Vec<String> = std::fs::read_dir(&f.wireguard.run_dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".pid")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    if !tunnels.is_empty() {
        out.push(format!(
            "its tunnels {} (pid files in {})",
            tunnels.join(", "),
            f.wireguard.run_dir.display()
        ));
    }
    out
}

/// Refuses to start on a lost state: with no state file, a daemon starts empty and its
/// first reconcile removes every tunnel, route and rule. That is right on a fresh
/// gateway and wrong when the file was deleted or the state directory reset while a
/// previous remapd's dataplane or tunnels are in place, unless the operator says so
/// (`--adopt-and-clear`). On a fresh start the (empty) state file is written at once,
/// so its absence later always means it was lost.
pub fn guard_lost_state(config: &Config) -> Result<(), ServeError> {
    let store =
        Store::open(&config.file.state_dir).map_err(|e| ServeError::Setup(e.to_string()))?;
    if store.has_state() {
        return match store.load() {
            Ok(_) => Ok(()),
            Err(e @ crate::store::StoreError::Corrupt { .. }) => Err(ServeError::Setup(format!(
                "{e}. Restore it from a backup of the state directory; or, to start empty, move it away and start once with --adopt-and-clear (which removes what a previous remapd left)"
            ))),
            Err(e) => Err(ServeError::Setup(e.to_string())),
        };
    }
    let found = leftovers(config);
    if !found.is_empty() {
        if !config.adopt_and_clear {
            return Err(ServeError::LostState {
                state_file: config.file.state_dir.join("state.json"),
                found,
            });
        }
        warn!(
            ?found,
            "--adopt-and-clear: starting with an empty state; what a previous remapd left is removed"
        );
    }
    store
        .save(&crate::store::DesiredState::default())
        .map_err(|e| ServeError::Setup(e.to_string()))
}

/// The reconciler with the real appliers of `config`.
pub fn kernel_reconciler(config: &Config, registry: Arc<PolicyRegistry>) -> Reconciler {
    let f = &config.file;
    // A process killed while streaming a trace leaves the programs writing events no
    // one reads; no trace runs before this one starts any.
    match crate::dataplane::trace::stop_orphaned_trace(&DataplaneConfig {
        pin_dir: f.pin_dir.clone(),
        attach_mode: f.attach_mode,
        without_trace: false,
    }) {
        Ok(true) => info!("stopped a trace an earlier remapd left running"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "could not check for a trace left running"),
    }
    Reconciler::new(
        registry,
        Box::new(KernelDataplane::new(DataplaneConfig {
            pin_dir: f.pin_dir.clone(),
            attach_mode: f.attach_mode,
            without_trace: false,
        })),
        Box::new(NetlinkRoutes::new(config.route_target())),
        Box::new(WireGuardTunnels::new(WireGuardConfig {
            userspace_program: f.wireguard.userspace_program.clone(),
            socket_dir: f.wireguard.socket_dir.clone(),
            run_dir: f.wireguard.run_dir.clone(),
        })),
    )
}

/// Builds the daemon core from `config`.
pub fn build(config: &Config) -> Result<Arc<Daemon>, ServeError> {
    // The store first: it creates the state directory.
    let store =
        Store::open(&config.file.state_dir).map_err(|e| ServeError::Setup(e.to_string()))?;
    let compiled = CompiledCache::open(&config.file.state_dir.join("compiled"))
        .map_err(|e| ServeError::Setup(format!("compiled policy cache: {e}")))?;
    let engine = PolicyEngine::new(config.policy_limits())
        .map_err(|e| ServeError::Setup(e.to_string()))?
        .with_compiled_cache(compiled)
        .with_limits_by_name(config.policy_limits_by_name());
    let registry = Arc::new(
        PolicyRegistry::with_builtins(Arc::new(engine))
            .map_err(|e| ServeError::Setup(e.to_string()))?,
    );
    let reconciler = kernel_reconciler(config, registry.clone());
    let daemon = Daemon::new(store, registry, reconciler).map_err(ServeError::Setup)?;
    Ok(Arc::new(daemon))
}

/// Runs the daemon until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    guard_lost_state(&config)?;
    let daemon = build(&config)?;
    let listener =
        crate::http::listen(config.file.listen).map_err(|source| ServeError::Listen {
            addr: config.file.listen,
            source,
        })?;
    // Re-apply the saved state: idempotent, so a restart adopts what is running.
    match daemon.reconcile().await {
        Ok(report) if report.errors.is_empty() => info!(?report, "state restored"),
        Ok(report) => warn!(errors = ?report.errors, "state restored with errors"),
        Err(e) => warn!(error = %e, "restoring state failed"),
    }
    // Re-apply periodically too: a tunnel process that died, an interface someone
    // deleted, or an apply that failed comes back without waiting for an API call.
    // Unchanged peerings are not re-decided, so this is cheap.
    let resync = {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESYNC_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = daemon.reconcile().await {
                    warn!(error = %e, "periodic reconcile failed");
                }
            }
        })
    };
    let mut limits = config.file.api.limits();
    match crate::http::raise_open_files_limit() {
        Ok(open_files) => {
            let cap = crate::http::connection_cap(limits.max_connections, open_files);
            if cap < limits.max_connections {
                warn!(
                    open_files,
                    max_connections = cap,
                    "the open-files limit is too low for [api] max_connections; lowered"
                );
            }
            limits.max_connections = cap;
        }
        Err(e) => warn!(error = %e, "raising the open-files limit failed"),
    }
    let state = AppState {
        daemon: daemon.clone(),
        token: config.token.as_deref().map(Arc::from),
        token_for_reads: !config.file.listen.ip().is_loopback(),
        advertise: config.file.advertise,
        body_timeout: config.file.api.body_timeout(),
    };
    info!(listen = %config.file.listen, ?limits, body_timeout = ?config.file.api.body_timeout(), "remapd API listening");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(serve_http(listener, router(state), limits, async {
        let _ = stopped.await;
    }));
    tokio::pin!(shutdown);
    let served = tokio::select! {
        served = &mut server => Some(served),
        () = &mut shutdown => None,
    };
    let listen_error = |source| ServeError::Listen {
        addr: config.file.listen,
        source,
    };
    match served {
        // The server stopped on its own: an error of the listener.
        Some(Ok(result)) => result.map_err(listen_error)?,
        Some(Err(e)) => return Err(ServeError::Setup(format!("server task: {e}"))),
        None => {
            info!(timeout = ?DRAIN_TIMEOUT, "shutting down: no new connections; draining open requests");
            resync.abort();
            // Open traces end now, each with its end item, rather than hold the drain.
            daemon.tracer().close();
            let _ = stop.send(());
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                Ok(Ok(result)) => result.map_err(listen_error)?,
                Ok(Err(e)) => warn!(error = %e, "server task"),
                Err(_) => {
                    warn!("requests still open after {DRAIN_TIMEOUT:?}; closing them");
                    server.abort();
                }
            }
            // A change whose request was closed still runs to its end; wait for it.
            if daemon.quiesce(DRAIN_TIMEOUT).await {
                info!("no change in progress");
            } else {
                warn!(
                    "a change is still being applied after {DRAIN_TIMEOUT:?}; exiting (the next start re-applies the saved state)"
                );
            }
        }
    }
    info!(
        "stopped; the dataplane, routes and tunnels stay in place (remapd teardown removes them)"
    );
    Ok(())
}
