//! The HTTP API (v1), axum + utoipa: one module per resource, every public route
//! registered through `OpenApiRouter` + `routes!` so it cannot exist without its spec
//! entry, one error envelope (`application/problem+json`), a bearer token for every
//! mutating call (and for everything on a non-loopback listener).

// A problem is built once per refused request and returned straight to the client;
// boxing it would only add an allocation to the error path.
#![allow(clippy::result_large_err)]

pub mod cluster;
pub mod ops;
pub mod peerings;
pub mod policies;
pub mod problem;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::daemon::Daemon;
use problem::Problem;

/// Largest request body accepted at all (a policy component of the default 16 MiB
/// limit plus slack); JSON bodies are further limited to 1 MiB.
pub const MAX_BODY: usize = 17 << 20;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The daemon core.
    pub daemon: Arc<Daemon>,
    /// Bearer token; `None` only on a loopback listener with no token configured.
    pub token: Option<Arc<str>>,
    /// Require the token for reads too (non-loopback listener).
    pub token_for_reads: bool,
    /// Underlay address other gateways reach this one at, for exports.
    pub advertise: Option<IpAddr>,
}

/// The OpenAPI document's fixed parts.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "remapd",
        version = "1",
        description = "Stateless prefix translation between clusters whose pod CIDRs overlap. Every error is application/problem+json (RFC 7807) with a JSON pointer to the bad field where there is one. Mutating calls need `Authorization: Bearer <token>`."
    ),
    components(schemas(problem::Problem)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// All routes with their OpenAPI entries.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(cluster::router())
        .merge(policies::router())
        .merge(peerings::router())
        .merge(ops::router())
}

/// The generated OpenAPI document (what `/openapi.json` serves and
/// `openapi/openapi.json` must equal).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = api_router().split_for_parts();
    api
}

/// The complete service.
pub fn router(state: AppState) -> Router {
    let (router, api) = api_router().split_for_parts();
    let spec = Arc::new(api);
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let spec = spec.clone();
                async move { axum::Json((*spec).clone()) }
            }),
        )
        .route("/docs", axum::routing::get(ops::docs_page))
        .fallback(|| async { Problem::not_found("no such endpoint; see /openapi.json or /docs") })
        // Room for the largest policy component (checked precisely in the handler).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        // One span per request (method and path), so what a change logs, down to each
        // policy decision and apply step, says which request it belongs to.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
                },
            ),
        )
        .with_state(state)
}

/// Bearer token check: mutating methods always need it (when a token is configured,
/// which it must be off loopback); reads need it on a non-loopback listener. Health
/// and readiness probes are always open.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = path == "/healthz" || path == "/readyz";
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let needs = !open && (mutating || state.token_for_reads);
    if let (true, Some(token)) = (needs, state.token.as_deref()) {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()));
        if !ok {
            return Problem::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a resource name: 1-63 of `a-z`, `0-9`, `-`, not starting with `-`.
pub fn check_name(name: &str, pointer: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request(format!(
            "{name:?} is not a valid name: use 1-63 characters of a-z, 0-9 and '-'"
        ))
        .at(pointer))
    }
}

/// Checks prefixes for host bits (serde accepts `10.1.0.1/16`; remapd does not).
pub fn check_cidrs(list: &[ipnet::Ipv4Net], pointer: &str) -> Result<(), Problem> {
    for (i, net) in list.iter().enumerate() {
        if net.trunc() != *net {
            return Err(Problem::bad_request(format!(
                "{net} has host bits set; did you mean {}?",
                net.trunc()
            ))
            .at(format!("{pointer}/{i}")));
        }
    }
    Ok(())
}

/// Checks that no two prefixes in `lists` overlap.
pub fn check_disjoint(lists: &[(&str, &[ipnet::Ipv4Net])]) -> Result<(), Problem> {
    let all: Vec<(String, ipnet::Ipv4Net)> = lists
        .iter()
        .flat_map(|(p, l)| {
            l.iter()
                .enumerate()
                .map(move |(i, n)| (format!("{p}/{i}"), *n))
        })
        .collect();
    for (i, (pa, a)) in all.iter().enumerate() {
        for (pb, b) in &all[i + 1..] {
            if a.contains(b) || b.contains(a) {
                return Err(
                    Problem::bad_request(format!("{a} ({pa}) overlaps {b} ({pb})")).at(pb.clone()),
                );
            }
        }
    }
    Ok(())
}
