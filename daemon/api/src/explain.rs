//! `/v1/explain`: the path of a packet and its reply between a local pod and a remote
//! one, as this gateway knows the pair, without sending anything.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{AppState, check_name};
use remapd_model::explain::PathExplanation;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(explain))
}

/// Which path.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// Where the packet comes from: a local pod's address, or a remote pod's real address.
    #[param(example = "10.244.1.5")]
    pub from: String,
    /// The address it dials: a remote pod as this cluster sees it, or a local pod as the
    /// remote cluster sees it.
    #[param(example = "100.64.1.7")]
    pub to: String,
    /// Only paths through this peering.
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub peering: Option<String>,
}

fn address(value: &str, pointer: &str) -> Result<IpAddr, Problem> {
    value.parse().map_err(|_| {
        Problem::bad_request(format!("{value:?} is not an IPv4 or IPv6 address")).at(pointer)
    })
}

/// Explains a path: for a local pod dialing out (`from` local, `to` routed into a
/// tunnel) or a remote pod dialing in (`from` a peer's real address, `to` how that peer
/// sees this cluster), each step of the request and of its reply — the route in
/// remapd's routes, the tunnel and WireGuard peer, every rewrite on this gateway and, from
/// the peer's exports, on the peer's, the border's verdict — what the destination pod
/// sees as source, and why a packet would be dropped. Nothing is sent. Overlapping
/// CIDRs can make both readings possible; both are answered.
#[utoipa::path(get, path = "/v1/explain", tag = "ops",
    params(ExplainQuery),
    responses(
        (status = 200, description = "The path through every peering it may take", body = Vec<PathExplanation>),
        (status = 400, description = "An address or the peering name is malformed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such peering", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No local cluster configured yet", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The addresses name no path through a peering, or fit more peerings than one answer holds (name one with `peering`)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn explain(
    State(state): State<AppState>,
    Query(q): Query<ExplainQuery>,
) -> Result<Json<Vec<PathExplanation>>, Problem> {
    let from = address(&q.from, "/query/from")?;
    let to = address(&q.to, "/query/to")?;
    if let Some(p) = q.peering.as_deref() {
        check_name(p, "/query/peering")?;
    }
    Ok(Json(state.daemon.snapshot().explain(
        from,
        to,
        q.peering.as_deref(),
    )?))
}
