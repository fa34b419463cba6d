//! `/v1/peerings`: peerings with remote clusters — create/replace, show (decision,
//! plan, what was applied with counters, tunnel state, exports), list, delete.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::{JsonBody, Problem};
use super::{
    AppState, check_cidr, check_cidrs, check_disjoint, check_name, check_routable,
    check_routable_one,
};
use remapd_dataplane::InstalledRule;
use remapd_engine::reconcile::PeeringOutcome;
use remapd_engine::store::{DesiredState, PeeringSpec, TunnelConfig};
use remapd_model::model::{Decision, RemoteCluster};
use remapd_model::plan::GatewayPlan;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_peerings))
        .routes(routes!(get_peering, put_peering, delete_peering))
        .routes(routes!(get_exports))
}

/// Live WireGuard state of a peering's tunnel.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TunnelState {
    /// Interface.
    pub interface: String,
    /// Last handshake, seconds since the Unix epoch.
    pub last_handshake_unix: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// "userspace", "kernel" or "fake".
    pub backend: String,
}

/// A rule as applied, with its counters.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AppliedRule {
    /// `<interface> <direction> <field> <from> -> <to>`.
    pub rule: String,
    /// Packets rewritten.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// A peering with everything known about it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PeeringStatus {
    /// Name.
    pub name: String,
    /// As declared.
    pub spec: PeeringSpec,
    /// Tunnel interface.
    pub interface: String,
    /// This gateway's WireGuard public key for the peering.
    pub public_key: Option<String>,
    /// The decision in force.
    #[schema(value_type = Option<Object>)]
    pub decision: Option<Decision>,
    /// The compiled plan in force.
    #[schema(value_type = Option<Object>)]
    pub plan: Option<GatewayPlan>,
    /// Dataplane rules on the tunnel, with counters.
    pub applied: Vec<AppliedRule>,
    /// Tunnel state.
    pub tunnel: Option<TunnelState>,
    /// The latest error, if the last attempt failed (the previous plan stays in force).
    pub last_error: Option<String>,
    /// Why the peering's WireGuard key file is unusable (missing, unreadable, not a
    /// key): the tunnel keeps a key it already runs with, or there is none. Restore the
    /// file, or delete and re-create the peering (a new key: give the peer the new
    /// exports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_error: Option<String>,
    /// Why the last apply could not bring the peering's tunnel up or update it (it then
    /// carries nothing: no routes, rules or border); the periodic resync retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_error: Option<String>,
    /// What the policy logged.
    pub policy_log: Vec<String>,
    /// The JSON to PUT on the remote daemon as its peering with us.
    #[schema(value_type = Option<Object>)]
    pub exports: Option<PeeringSpec>,
}

/// Validates a remote cluster description.
pub fn validate_remote(r: &RemoteCluster) -> Result<(), Problem> {
    check_name(&r.name, "/remote/name")?;
    if r.pod_cidrs.is_empty() {
        return Err(
            Problem::bad_request("the remote needs at least one pod CIDR").at("/remote/pod_cidrs"),
        );
    }
    check_cidrs(&r.pod_cidrs, "/remote/pod_cidrs")?;
    check_cidrs(&r.service_cidrs, "/remote/service_cidrs")?;
    check_routable(&r.pod_cidrs, "/remote/pod_cidrs")?;
    check_routable(&r.service_cidrs, "/remote/service_cidrs")?;
    check_disjoint(&[
        ("/remote/pod_cidrs", &r.pod_cidrs),
        ("/remote/service_cidrs", &r.service_cidrs),
    ])?;
    if let Some(view) = &r.view_of_local {
        for (i, m) in view.iter().enumerate() {
            if !remapd_model::validate::same_family(&m.real, &m.remapped) {
                return Err(Problem::bad_request(format!(
                    "{} and {} are of different families: an IPv4 prefix is seen as an IPv4 prefix, an IPv6 prefix as an IPv6 prefix",
                    m.real, m.remapped
                ))
                .at(format!("/remote/view_of_local/{i}/remapped")));
            }
            if m.real.prefix_len() != m.remapped.prefix_len() {
                return Err(Problem::bad_request(format!(
                    "{} and {} differ in length",
                    m.real, m.remapped
                ))
                .at(format!("/remote/view_of_local/{i}/remapped")));
            }
            check_cidr(&m.real, &format!("/remote/view_of_local/{i}/real"))?;
            check_cidr(&m.remapped, &format!("/remote/view_of_local/{i}/remapped"))?;
            check_routable_one(&m.remapped, &format!("/remote/view_of_local/{i}/remapped"))?;
        }
    }
    Ok(())
}

fn validate_spec(
    name: &str,
    spec: &PeeringSpec,
    state: &DesiredState,
    has_policy: bool,
) -> Result<(), Problem> {
    check_name(name, "/name")?;
    if !has_policy {
        let detail = match remapd_policy_host::parse_reference(&spec.policy) {
            None => format!(
                "{:?} is not a policy reference: use a name, or name@sha256:<64 hex digits> to pin a version",
                spec.policy
            ),
            Some((name, Some(digest))) => format!(
                "policy {name:?} has no version sha256:{digest} on this gateway: pin its current version (the sha256 GET /v1/policies/{name} shows) or one another peering pins"
            ),
            Some(_) => format!("no policy named {:?}", spec.policy),
        };
        return Err(Problem::bad_request(detail).at("/policy"));
    }
    validate_remote(&spec.remote)?;
    if let Some(k) = spec.tunnel.remote_public_key.as_deref() {
        match wireguard_control::Key::from_base64(k) {
            Err(_) => {
                return Err(
                    Problem::bad_request("not a WireGuard public key (32 bytes, base64)")
                        .at("/tunnel/remote_public_key"),
                );
            }
            // The all-zero key is what an unset key looks like; no handshake uses it.
            Ok(key) if key.as_bytes().iter().all(|b| *b == 0) => {
                return Err(Problem::bad_request(
                    "the all-zero key is not a WireGuard public key; paste the remote daemon's exports",
                )
                .at("/tunnel/remote_public_key"));
            }
            Ok(_) => {}
        }
    }
    if let Some(endpoint) = spec.tunnel.endpoint {
        let ip = endpoint.ip();
        let unusable = ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
        if endpoint.port() == 0 {
            return Err(
                Problem::bad_request("the endpoint's port must be 1-65535").at("/tunnel/endpoint")
            );
        }
        if unusable {
            return Err(Problem::bad_request(format!(
                "{ip} cannot be a remote gateway's address (unspecified, loopback, multicast or broadcast)"
            ))
            .at("/tunnel/endpoint"));
        }
    }
    if spec.tunnel.listen_port == 0 {
        return Err(Problem::bad_request("listen_port must be 1-65535").at("/tunnel/listen_port"));
    }
    if let Some(mss) = spec.tunnel.mss_clamp {
        use remapd_dataplane::rules::{MSS_CLAMP_MAX, MSS_CLAMP_MIN};
        if !(MSS_CLAMP_MIN..=MSS_CLAMP_MAX).contains(&mss) {
            return Err(Problem::bad_request(format!(
                "mss_clamp {mss} is outside {MSS_CLAMP_MIN}-{MSS_CLAMP_MAX} (e.g. 1360 for a 1420-byte tunnel MTU)"
            ))
            .at("/tunnel/mss_clamp"));
        }
    }
    let interface = spec.interface(name);
    // Only interfaces remapd creates: a peering must never take over eth0 or a wg0 it
    // did not start (it would rewrite its traffic and reconfigure or remove it).
    let valid = interface.len() <= 15
        && interface.starts_with("rmd-")
        && interface.len() > 4
        && interface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(Problem::bad_request(format!(
            "{interface:?} is not a remapd tunnel name: use rmd- followed by up to 11 of a-z, 0-9, '-', '_'"
        ))
        .at("/tunnel/interface"));
    }
    for (other, p) in state.peerings.iter().filter(|(n, _)| n.as_str() != name) {
        if p.tunnel.listen_port == spec.tunnel.listen_port {
            return Err(Problem::conflict(format!(
                "listen port {} is already used by peering {other:?}",
                spec.tunnel.listen_port
            ))
            .at("/tunnel/listen_port"));
        }
        if p.interface(other) == interface {
            return Err(Problem::conflict(format!(
                "interface {interface:?} is already used by peering {other:?}"
            ))
            .at("/tunnel/interface"));
        }
    }
    Ok(())
}

fn mirror_settings(settings: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    settings
        .iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v.as_str()) {
                ("nat-side", "local") => "remote".to_owned(),
                ("nat-side", "remote") => "local".to_owned(),
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

async fn status_of(
    state: &AppState,
    name: &str,
    spec: &PeeringSpec,
    outcome: PeeringOutcome,
) -> Result<PeeringStatus, Problem> {
    let interface = spec.interface(name);
    // The key was made by the change that created the peering; a read never writes one.
    // An unusable key file hurts only this peering's status, not the whole list.
    let public_key = match outcome.public_key.clone() {
        Some(key) => Some(key),
        None => state
            .daemon
            .store()
            .existing_key(name)
            .ok()
            .flatten()
            .and_then(|k| remapd_engine::store::public_key(&k)),
    };
    let rules: Vec<InstalledRule> = state
        .daemon
        .dataplane_status()
        .await
        .map(|s| {
            s.rules
                .into_iter()
                .filter(|x| x.rule.interface == interface)
                .collect()
        })
        .unwrap_or_default();
    let tunnel = state.daemon.tunnel_status(&interface).await.ok().flatten();
    let tunnel_error = state
        .daemon
        .last_report()
        .and_then(|r| r.tunnels.failed.get(&interface).cloned());
    let exports = outcome.plan.as_ref().map(|plan| PeeringSpec {
        policy: spec.policy.clone(),
        remote: plan.exports.remote.clone(),
        settings: mirror_settings(&spec.settings),
        tunnel: TunnelConfig {
            listen_port: spec.tunnel.listen_port,
            endpoint: state
                .advertise
                .map(|ip| std::net::SocketAddr::new(ip, spec.tunnel.listen_port)),
            remote_public_key: public_key.clone(),
            keepalive: spec.tunnel.keepalive,
            // One side's clamp already covers both directions of its tunnel.
            mss_clamp: None,
            interface: None,
        },
    });
    Ok(PeeringStatus {
        name: name.to_owned(),
        spec: spec.clone(),
        interface,
        public_key,
        decision: outcome.decision,
        plan: outcome.plan,
        applied: rules
            .into_iter()
            .map(|r| AppliedRule {
                rule: r.rule.to_string(),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect(),
        tunnel: tunnel.map(|t| TunnelState {
            interface: t.interface,
            last_handshake_unix: t
                .last_handshake
                .and_then(|h| h.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            rx_bytes: t.rx_bytes,
            tx_bytes: t.tx_bytes,
            backend: t.backend.to_owned(),
        }),
        last_error: outcome.last_error,
        key_error: outcome.key_error,
        tunnel_error,
        policy_log: outcome.policy_log,
        exports,
    })
}

/// Lists peerings with their status.
#[utoipa::path(get, path = "/v1/peerings", tag = "peerings",
    responses((status = 200, description = "All peerings", body = Vec<PeeringStatus>)))]
async fn list_peerings(State(state): State<AppState>) -> Result<Json<Vec<PeeringStatus>>, Problem> {
    let snapshot = state.daemon.snapshot();
    let mut out = Vec::new();
    for (name, spec) in &snapshot.state.peerings {
        let outcome = snapshot.outcomes.get(name).cloned().unwrap_or_default();
        out.push(status_of(&state, name, spec, outcome).await?);
    }
    Ok(Json(out))
}

/// Shows a peering: decision, plan, applied rules with counters, tunnel state, the
/// last error, and the exports to give the remote daemon.
#[utoipa::path(get, path = "/v1/peerings/{name}", tag = "peerings",
    params(("name" = String, Path, description = "Peering name", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, description = "The peering", body = PeeringStatus),
        (status = 404, description = "No such peering", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_peering(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PeeringStatus>, Problem> {
    let snapshot = state.daemon.snapshot();
    let spec = snapshot
        .state
        .peerings
        .get(&name)
        .ok_or_else(|| Problem::not_found(format!("no peering {name:?}")))?;
    let outcome = snapshot.outcomes.get(&name).cloned().unwrap_or_default();
    Ok(Json(status_of(&state, &name, spec, outcome).await?))
}

/// The exact JSON to PUT on the remote daemon as its peering with this cluster.
#[utoipa::path(get, path = "/v1/peerings/{name}/exports", tag = "peerings",
    params(("name" = String, Path, description = "Peering name", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, description = "A peering spec for the remote side", body = PeeringSpec),
        (status = 404, description = "No such peering", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No plan yet (see the peering's last_error)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_exports(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PeeringSpec>, Problem> {
    let snapshot = state.daemon.snapshot();
    let spec = snapshot
        .state
        .peerings
        .get(&name)
        .ok_or_else(|| Problem::not_found(format!("no peering {name:?}")))?;
    let outcome = snapshot.outcomes.get(&name).cloned().unwrap_or_default();
    let status = status_of(&state, &name, spec, outcome).await?;
    status.exports.map(Json).ok_or_else(|| {
        Problem::conflict(format!(
            "peering {name:?} has no plan yet: {}",
            status.last_error.unwrap_or_else(|| "not decided".into())
        ))
    })
}

/// Creates or replaces a peering (idempotent). The policy decides and the plan is
/// compiled before anything is saved: a refused or rejected decision changes nothing.
#[utoipa::path(put, path = "/v1/peerings/{name}", tag = "peerings",
    params(("name" = String, Path, description = "Peering name", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    request_body = PeeringSpec,
    responses(
        (status = 200, description = "Replaced and applied", body = PeeringStatus),
        (status = 201, description = "Created and applied", body = PeeringStatus),
        (status = 400, description = "Bad JSON, CIDR, key or name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflicts with another peering (port, interface, allocation) or no local cluster", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The policy refused or its decision was rejected", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Applying (`apply-failed`, with the failed `step`) or saving (`persist-failed`) failed; the previous configuration was re-applied and nothing was saved", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_peering(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(spec): JsonBody<PeeringSpec>,
) -> Result<(StatusCode, Json<PeeringStatus>), Problem> {
    let registry = state.daemon.registry().clone();
    let target = name.clone();
    let (existed, snapshot) = state
        .daemon
        .update(
            move |s| {
                if s.cluster.is_none() {
                    return Err(Problem::conflict(
                        "configure the local cluster first (PUT /v1/cluster)",
                    ));
                }
                // Checked under the state lock: a policy deleted concurrently is either
                // gone before this check or refused as in use after it.
                let has_policy = registry.get(&spec.policy).is_some();
                validate_spec(&target, &spec, s, has_policy)?;
                Ok(s.peerings.insert(target, spec).is_some())
            },
            vec![name.clone()],
            None,
        )
        .await?;
    // As this change left it, even if a later change already replaced it.
    let spec =
        snapshot.state.peerings.get(&name).ok_or_else(|| {
            Problem::internal(format!("peering {name:?} missing after its change"))
        })?;
    let outcome = snapshot.outcomes.get(&name).cloned().unwrap_or_default();
    let status = status_of(&state, &name, spec, outcome).await?;
    Ok((
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(status),
    ))
}

/// Deletes a peering and exactly what it created (rules, routes, tunnel, key).
#[utoipa::path(delete, path = "/v1/peerings/{name}", tag = "peerings",
    params(("name" = String, Path, description = "Peering name", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such peering", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Applying (`apply-failed`, with the failed `step`) or saving (`persist-failed`) failed; the previous configuration was re-applied and nothing was saved", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_peering(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    let target = name.clone();
    state
        .daemon
        .update(
            move |s| {
                s.peerings
                    .remove(&target)
                    .map(|_| ())
                    .ok_or_else(|| Problem::not_found(format!("no peering {target:?}")))
            },
            vec![],
            None,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
