//! `/v1/decisions`: the decision log — every policy decision, what it decided and what
//! became of it, newest first.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{AppState, check_name};
use remapd_engine::decision_log::{DecisionRecord, RING};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_decisions))
}

/// Which decisions.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DecisionQuery {
    /// Only this peering's (`-dry-run` for dry runs).
    #[param(pattern = "^(-dry-run|[a-z0-9][a-z0-9-]{0,62})$")]
    pub peering: Option<String>,
    /// At most this many, newest first (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The most recent policy decisions (kept in memory, the last 1,000, and in
/// `decisions.jsonl` in the state directory): peering, policy name and digest, input
/// digest, strategy and views, outcome (`applied`, `not-applied`, `dry-run`, `rejected`,
/// `policy-error`) with the reason, duration and fuel.
#[utoipa::path(get, path = "/v1/decisions", tag = "ops",
    params(DecisionQuery),
    responses(
        (status = 200, description = "Decisions, newest first", body = Vec<DecisionRecord>),
        (status = 400, description = "A bad peering name or limit", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_decisions(
    State(state): State<AppState>,
    Query(q): Query<DecisionQuery>,
) -> Result<Json<Vec<DecisionRecord>>, Problem> {
    if let Some(p) = q.peering.as_deref()
        && p != "-dry-run"
    {
        check_name(p, "/query/peering")?;
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > RING {
        return Err(
            Problem::bad_request(format!("limit must be between 1 and {RING}")).at("/query/limit"),
        );
    }
    Ok(Json(
        state.daemon.decisions().recent(q.peering.as_deref(), limit),
    ))
}
