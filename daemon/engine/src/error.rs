//! The engine's one error type: what a change or a read of the engine can fail with,
//! by kind. The API maps each kind to one problem+json status and type.

use crate::reconcile::{ApplyStep, FailureKind, ProtectedRoute};

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
    Protected(ProtectedRoute),
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
    /// An explained path goes through no peering, or through more than one answer holds.
    #[error(transparent)]
    Explain(remapd_model::explain::ExplainError),
    /// Nothing to trace: no dataplane is loaded yet (no peering has needed one).
    #[error(
        "nothing to trace: no dataplane is loaded yet (it loads with the first peering that needs translation or a border): {0}"
    )]
    NothingToTrace(String),
    /// A trace cannot run: the dataplane's trace maps cannot be used.
    #[error("tracing is not available: {0}")]
    TraceUnavailable(String),
    /// As many traces as may run at once are running.
    #[error("{0} traces are running already, the most at once; end one first")]
    TooManyTraces(usize),
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
