//! `/v1/policies`: built-in and uploaded remapping policies, and dry-run evaluation.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::{JsonBody, Problem};
use super::{AppState, check_name};
use remapd_engine::daemon::PolicyChange;
use remapd_engine::store::{PeeringSpec, StoredPolicy, TunnelConfig};
use remapd_model::model::{Decision, RemoteCluster};
use remapd_model::plan::GatewayPlan;
use remapd_policy_host::NamedPolicy;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_policies))
        .routes(routes!(get_policy, put_policy, delete_policy))
        .routes(routes!(evaluate_policy))
}

/// A policy as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyInfo {
    /// Name.
    pub name: String,
    /// Shipped with remapd.
    pub builtin: bool,
    /// sha256 of the component.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// The contract version the component implements (`remap:policy@0.2.0`, or the
    /// IPv4-only `remap:policy@0.1.0`).
    pub contract: String,
    /// The address families it decides: `["ipv4", "ipv6"]`, or `["ipv4"]` for a
    /// `remap:policy@0.1.0` component.
    pub families: Vec<String>,
    /// How remapd adapts an older contract, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapted: Option<String>,
    /// The source language its toolchain recorded in the component, if it says (a hint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Peerings using it.
    pub used_by: Vec<String>,
}

fn info(p: &NamedPolicy, used_by: Vec<String>) -> PolicyInfo {
    PolicyInfo {
        name: p.name.clone(),
        builtin: p.builtin,
        sha256: p.compiled.sha256.clone(),
        size: p.compiled.size,
        contract: p.compiled.contract.to_owned(),
        families: p
            .compiled
            .families()
            .iter()
            .map(|f| (*f).to_owned())
            .collect(),
        adapted: p.compiled.adaptation(),
        language: p.compiled.language.clone(),
        used_by,
    }
}

fn users(state: &remapd_engine::store::DesiredState, name: &str) -> Vec<String> {
    state
        .peerings
        .iter()
        .filter(|(_, p)| p.policy == name)
        .map(|(n, _)| n.clone())
        .collect()
}

/// `PUT /v1/policies/{name}`'s query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutPolicyQuery {
    /// Replace it even though peerings that use it get no plan from the new component
    /// (they lose their translation and show `last_error`); see `ForceQuery`.
    #[serde(default)]
    pub force: bool,
    /// Change nothing: answer, for every peering that uses the policy, the decision in
    /// force and the new component's, and the rules, routes and allowed-ips the
    /// replacement would add and remove.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a replacement would do (`?dry_run=true`); nothing was changed.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PolicyPreview {
    /// Always true: nothing was installed, applied or saved.
    pub dry_run: bool,
    /// The policy's name.
    pub name: String,
    /// sha256 of the new component.
    pub sha256: String,
    /// Its size in bytes.
    pub size: usize,
    /// Per peering using the policy: old and new decision, and the plan's difference.
    pub peerings: Vec<remapd_engine::preview::PolicyImpact>,
}

/// The answer to `PUT /v1/policies/{name}`: the stored policy, or with `?dry_run=true`
/// the preview.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PutPolicyAnswer {
    /// Stored.
    Stored(PolicyInfo),
    /// Previewed; nothing changed.
    Preview(PolicyPreview),
}

/// Lists every policy, built-ins included.
#[utoipa::path(get, path = "/v1/policies", tag = "policies",
    responses((status = 200, description = "All policies", body = Vec<PolicyInfo>)))]
async fn list_policies(State(state): State<AppState>) -> Json<Vec<PolicyInfo>> {
    let desired = state.daemon.state();
    Json(
        state
            .daemon
            .registry()
            .list()
            .iter()
            .map(|p| info(p, users(&desired, &p.name)))
            .collect(),
    )
}

/// Shows one policy.
#[utoipa::path(get, path = "/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, description = "The policy", body = PolicyInfo),
        (status = 404, description = "No such policy", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PolicyInfo>, Problem> {
    let p = state
        .daemon
        .registry()
        .get(&name)
        .ok_or_else(|| Problem::not_found(format!("no policy named {name:?}")))?;
    let desired = state.daemon.state();
    Ok(Json(info(&p, users(&desired, &name))))
}

/// Uploads (or atomically replaces) a policy: the body is a WebAssembly component
/// (`content-type: application/wasm`) implementing `remap:policy@0.2.0` (or the
/// IPv4-only `remap:policy@0.1.0`, which remapd adapts). It is checked
/// and compiled before it replaces anything; peerings using it are re-decided.
#[utoipa::path(put, path = "/v1/policies/{name}", tag = "policies",
    params(
        ("name" = String, Path, description = "Policy name", pattern = "^[a-z0-9][a-z0-9-]{0,62}$"),
        ("Content-Digest" = Option<String>, Header, description = "RFC 9530 digest of the body (`sha-256=:<base64>:` and/or `sha-512=...`); a mismatch is a 400 and changes nothing"),
        PutPolicyQuery,
    ),
    request_body(content = WasmComponent, content_type = "application/wasm", description = "The component"),
    responses(
        (status = 200, description = "Replaced (`PolicyInfo`), or with `?dry_run=true` what replacing it would do (`PolicyPreview`; nothing changed)", body = PutPolicyAnswer),
        (status = 201, description = "Created", body = PolicyInfo),
        (status = 400, description = "Not a component implementing the contract, a bad name, or a `Content-Digest` that does not match the body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A built-in policy of that name, or the new policy's decision collides for a peering using it", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The new policy refuses a peering that uses it (`peering` names the first, the detail all); the old policy stays. `?force=true` replaces it anyway", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/wasm", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Applying (`apply-failed`, with the failed `step`) or saving (`persist-failed`) failed; the previous configuration was re-applied and nothing was saved", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<PutPolicyQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PutPolicyAnswer>), Problem> {
    check_name(&name, "/name")?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype != "application/wasm" {
        return Err(Problem::unsupported_media(
            "upload the component with content-type application/wasm",
        ));
    }
    check_content_digest(&headers, &body)?;
    let max = state.daemon.registry().engine().limits().component_bytes;
    if body.len() > max {
        return Err(Problem::too_large(format!(
            "component is {} bytes, at most {max}",
            body.len()
        )));
    }
    let registry = state.daemon.registry().clone();
    if registry.get(&name).is_some_and(|p| p.builtin) {
        return Err(Problem::conflict(format!(
            "{name:?} is a built-in policy and cannot be replaced"
        )));
    }
    // Compile first (no state touched): a bad component changes nothing.
    let bytes = body.to_vec();
    let compiled = {
        let registry = registry.clone();
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || registry.engine().compile(&bytes))
            .await
            .map_err(|e| Problem::internal(format!("compile task: {e}")))?
            .map_err(|e| Problem::bad_request(e.to_string()).at("/body"))?
    };
    let named = NamedPolicy {
        name: name.clone(),
        builtin: false,
        compiled,
    };
    if query.dry_run {
        let peerings = state.daemon.preview_policy(named.clone()).await?;
        return Ok((
            StatusCode::OK,
            Json(PutPolicyAnswer::Preview(PolicyPreview {
                dry_run: true,
                name,
                sha256: named.compiled.sha256.clone(),
                size: named.compiled.size,
                peerings,
            })),
        ));
    }
    let sha = named.compiled.sha256.clone();
    let size = named.compiled.size;
    let policy_name = name.clone();
    // One transaction: the bytes are stored and the policy installed, every peering
    // using it is decided again and applied, and the state saved; a refusal by the new
    // policy, or a failed apply, puts the old policy back and changes nothing.
    let (existed, _) = state
        .daemon
        .update_or_force(
            move |s| {
                Ok::<_, Problem>(
                    s.policies
                        .insert(policy_name, StoredPolicy { sha256: sha, size })
                        .is_some(),
                )
            },
            vec![],
            Some(PolicyChange {
                name: name.clone(),
                install: Some((named.clone(), bytes)),
            }),
            query.force,
        )
        .await?;
    let desired = state.daemon.state();
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(PutPolicyAnswer::Stored(info(
            &named,
            users(&desired, &name),
        ))),
    ))
}

/// Checks an RFC 9530 `Content-Digest` (when the client sent one) against `body`: every
/// `sha-256` and `sha-512` member must match, and at least one must be there.
fn check_content_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), Problem> {
    use sha2::Digest;
    let Some(value) = headers.get("content-digest") else {
        return Ok(());
    };
    let at = "/headers/content-digest";
    let bad = |detail: String| Problem::bad_request(detail).at(at);
    let text = value
        .to_str()
        .map_err(|_| bad("Content-Digest is not ASCII".into()))?;
    let members: sfv::Dictionary = sfv::Parser::new(text).parse().map_err(|e| {
        bad(format!(
            "Content-Digest is not a structured-field dictionary (RFC 9530, e.g. sha-256=:<base64>:): {e}"
        ))
    })?;
    let mut checked = 0;
    for (algorithm, member) in &members {
        let actual = match algorithm.as_str() {
            "sha-256" => sha2::Sha256::digest(body).to_vec(),
            "sha-512" => sha2::Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let sfv::ListEntry::Item(item) = member else {
            return Err(bad(format!(
                "Content-Digest {algorithm} is not a byte sequence"
            )));
        };
        let Some(expected) = item.bare_item.as_byte_sequence() else {
            return Err(bad(format!(
                "Content-Digest {algorithm} is not a byte sequence (:<base64>:)"
            )));
        };
        if expected != actual.as_slice() {
            return Err(bad(format!(
                "Content-Digest {algorithm} does not match the body: the upload was altered or truncated; nothing changed"
            )));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(bad(
            "Content-Digest names no algorithm remapd checks (sha-256, sha-512)".into(),
        ));
    }
    Ok(())
}

/// Deletes an uploaded policy; refused while a peering uses it, and for built-ins.
#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such policy", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "In use, or built in", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Applying (`apply-failed`, with the failed `step`) or saving (`persist-failed`) failed; the previous configuration was re-applied and nothing was saved", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    let registry = state.daemon.registry().clone();
    let policy = registry
        .get(&name)
        .ok_or_else(|| Problem::not_found(format!("no policy named {name:?}")))?;
    if policy.builtin {
        return Err(Problem::conflict(format!(
            "{name:?} is built in and cannot be deleted"
        )));
    }
    let target = name.clone();
    state
        .daemon
        .update(
            move |s| {
                let used = users(s, &target);
                if !used.is_empty() {
                    return Err(Problem::conflict(format!(
                        "policy {target:?} is used by peering(s) {}",
                        used.join(", ")
                    )));
                }
                s.policies.remove(&target);
                Ok(())
            },
            vec![],
            Some(PolicyChange {
                name: name.clone(),
                install: None,
            }),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A WebAssembly component implementing `remap:policy@0.2.0` (or the IPv4-only
/// `remap:policy@0.1.0`): the raw bytes.
pub struct WasmComponent;

impl utoipa::PartialSchema for WasmComponent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("The component's bytes"))
            .into()
    }
}

impl ToSchema for WasmComponent {}

/// A hypothetical peering to evaluate a policy against.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// The remote cluster.
    pub remote: RemoteCluster,
    /// Settings for the policy.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// The result of a dry run.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EvaluateResponse {
    /// The validated decision.
    pub decision: Decision,
    /// What would be applied.
    pub plan: GatewayPlan,
    /// What the policy logged.
    pub log: Vec<String>,
    /// Time the decision took, in microseconds.
    pub elapsed_us: u64,
}

/// Dry run: what this policy would decide and what would be applied for a hypothetical
/// peering. Nothing is applied or saved.
#[utoipa::path(post, path = "/v1/policies/{name}/evaluate", tag = "policies",
    params(("name" = String, Path, description = "Policy name", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    request_body = EvaluateRequest,
    responses(
        (status = 200, description = "Decision and plan", body = EvaluateResponse),
        (status = 400, description = "Bad JSON or CIDR", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such policy", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No local cluster yet, or a conflict with another peering", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The policy refused or its decision was rejected", body = Problem, content_type = "application/problem+json"),
    ))]
async fn evaluate_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<EvaluateRequest>,
) -> Result<Json<EvaluateResponse>, Problem> {
    if state.daemon.registry().get(&name).is_none() {
        return Err(Problem::not_found(format!("no policy named {name:?}")));
    }
    super::peerings::validate_remote(&req.remote)?;
    let mut hypothetical = state.daemon.state();
    // Not a valid peering name, so it can never shadow a real peering.
    let probe = "-dry-run".to_string();
    hypothetical.peerings.remove(&probe);
    hypothetical.peerings.insert(
        probe.clone(),
        PeeringSpec {
            policy: name,
            remote: req.remote,
            settings: req.settings,
            tunnel: TunnelConfig {
                listen_port: 0,
                endpoint: None,
                remote_public_key: None,
                keepalive: 0,
                mss_clamp: None,
                interface: Some("rmd-dry-run".into()),
            },
        },
    );
    let (eval, plan) = state.daemon.dry_run(hypothetical, &probe).await?;
    Ok(Json(EvaluateResponse {
        decision: eval.decision,
        plan,
        log: eval.log,
        elapsed_us: eval.elapsed.as_micros() as u64,
    }))
}
