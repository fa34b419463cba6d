//! `/v1/cluster`: the local cluster this gateway belongs to.

use axum::Json;
use axum::extract::{Query, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::{JsonBody, Problem};
use super::{AppState, ForceQuery, check_cidrs, check_disjoint, check_name, check_routable};
use remapd_model::model::LocalCluster;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_cluster, put_cluster))
}

/// Shows the local cluster.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The local cluster", body = LocalCluster),
        (status = 404, description = "Not configured yet", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_cluster(State(state): State<AppState>) -> Result<Json<LocalCluster>, Problem> {
    state.daemon.state().cluster.map(Json).ok_or_else(|| {
        Problem::not_found("the local cluster is not configured yet (PUT /v1/cluster)")
    })
}

/// Validates a cluster description.
pub fn validate_cluster(c: &LocalCluster) -> Result<(), Problem> {
    check_name(&c.name, "/name")?;
    if c.pod_cidrs.is_empty() {
        return Err(Problem::bad_request("a cluster needs at least one pod CIDR").at("/pod_cidrs"));
    }
    check_cidrs(&c.pod_cidrs, "/pod_cidrs")?;
    check_cidrs(&c.service_cidrs, "/service_cidrs")?;
    check_cidrs(&c.reserved_cidrs, "/reserved_cidrs")?;
    check_cidrs(&c.remap_pool, "/remap_pool")?;
    check_routable(&c.pod_cidrs, "/pod_cidrs")?;
    check_routable(&c.service_cidrs, "/service_cidrs")?;
    check_routable(&c.remap_pool, "/remap_pool")?;
    check_disjoint(&[
        ("/pod_cidrs", &c.pod_cidrs),
        ("/service_cidrs", &c.service_cidrs),
        ("/reserved_cidrs", &c.reserved_cidrs),
    ])?;
    check_disjoint(&[("/remap_pool", &c.remap_pool)])?;
    for (i, p) in c.remap_pool.iter().enumerate() {
        if let Some(own) = c
            .cidrs()
            .iter()
            .chain(&c.reserved_cidrs)
            .find(|o| o.contains(p) || p.contains(*o))
        {
            return Err(Problem::bad_request(format!(
                "remap pool {p} overlaps the cluster's own {own}"
            ))
            .at(format!("/remap_pool/{i}")));
        }
    }
    Ok(())
}

/// Sets the local cluster: name, pod/service/reserved CIDRs and the pool remapped CIDRs
/// are allocated from. Every peering is re-decided and re-applied.
#[utoipa::path(
    put,
    path = "/v1/cluster",
    tag = "cluster",
    params(ForceQuery),
    request_body = LocalCluster,
    responses(
        (status = 200, description = "Applied and saved (every peering re-decided where its inputs changed)", body = LocalCluster),
        (status = 400, description = "Bad JSON or CIDR", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A peering's views would collide (`peering` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A peering that had a plan would get none, e.g. the pool no longer fits it (`peering` names the first, the detail all); nothing changed. `?force=true` applies it anyway", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Applying (`apply-failed`, with the failed `step`) or saving (`persist-failed`) failed; the previous configuration was re-applied and nothing was saved", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn put_cluster(
    State(state): State<AppState>,
    Query(force): Query<ForceQuery>,
    JsonBody(cluster): JsonBody<LocalCluster>,
) -> Result<Json<LocalCluster>, Problem> {
    validate_cluster(&cluster)?;
    let saved = cluster.clone();
    state
        .daemon
        .update_or_force(
            move |s| {
                s.cluster = Some(cluster);
                Ok::<_, Problem>(())
            },
            vec![],
            None,
            force.force,
        )
        .await?;
    Ok(Json(saved))
}
