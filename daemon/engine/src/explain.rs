//! Path explanation over the state in force: the engine's side of `GET /v1/explain`.

use std::net::IpAddr;

use remapd_model::explain::{PathExplanation, PeeringPath, explain};

use crate::daemon::Snapshot;
use crate::error::EngineError;

impl Snapshot {
    /// What happens to `from -> to` and its reply through the peerings in force (only
    /// `peering`'s, when given), computed from the applied plans and the peers' exports;
    /// nothing is sent.
    pub fn explain(
        &self,
        from: IpAddr,
        to: IpAddr,
        peering: Option<&str>,
    ) -> Result<Vec<PathExplanation>, EngineError> {
        let local = self.state.cluster.as_ref().ok_or(EngineError::NoCluster)?;
        if let Some(name) = peering
            && !self.state.peerings.contains_key(name)
        {
            return Err(EngineError::PeeringNotFound(name.to_owned()));
        }
        let paths: Vec<PeeringPath<'_>> = self
            .state
            .peerings
            .iter()
            .map(|(name, spec)| {
                let outcome = self.outcomes.get(name);
                PeeringPath {
                    name,
                    remote: &spec.remote,
                    interface: outcome.map_or("", |o| o.interface.as_str()),
                    plan: outcome.and_then(|o| o.plan.as_ref()),
                    problem: outcome.and_then(|o| o.last_error.as_deref()),
                    peer_public_key: spec.tunnel.remote_public_key.as_deref(),
                    endpoint: spec.tunnel.endpoint.map(|e| e.to_string()),
                }
            })
            .collect();
        explain(local, &paths, from, to, peering).map_err(EngineError::Explain)
    }
}
