//! The HTTP API (v1), axum + utoipa: one module per resource, every public route
//! registered through `OpenApiRouter` + `routes!` so it cannot exist without its spec
//! entry, one error envelope (`application/problem+json`), a bearer token for every
//! mutating call (and for everything on a non-loopback listener).

// A problem is built once per refused request and returned straight to the client;
// boxing it would only add an allocation to the error path.
#![allow(clippy::result_large_err)]
#![deny(missing_docs)]

pub mod cluster;
pub mod decisions;
pub mod explain;
pub mod http;
pub mod ops;
pub mod peerings;
pub mod policies;
pub mod problem;
pub mod trace;
mod ui;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use problem::Problem;
use remapd_engine::daemon::Daemon;

/// Largest request body accepted at all (a policy component of the default 32 MiB
/// limit plus slack); JSON bodies are further limited to 1 MiB.
pub const MAX_BODY: usize = 33 << 20;

/// How long a request body may take to arrive by default (`[api] body_timeout_ms`).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest request target (path and query) accepted; longer ones get a 414 problem.
/// (Beyond 64 KiB hyper itself answers 414 before any of this runs; `http::refusals`
/// makes that answer problem+json too.)
pub const MAX_URI: usize = 8 << 10;

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
    /// A request body must arrive completely within this long (else 408).
    pub body_timeout: Duration,
}

/// `?force=true` on a change to the cluster or a policy.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Apply the change even though it leaves other peerings without a plan (their
    /// policy refuses them, the pool no longer fits them): they lose their translation,
    /// as they would at the next restart, and show `last_error`. Without it such a
    /// change is refused, naming them.
    #[serde(default)]
    pub force: bool,
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

/// The responses the server itself may give on any operation, whatever the handler
/// does: 401 (every operation but the probes; reads only off loopback), 400 for a
/// malformed head, 414 for a long request target, 431 for a large head, 503 at the
/// connection limit, and for operations with a body 408, 413 and 415.
/// Documented on every operation so a spec-driven client knows them all; an
/// operation's own description of the same status is kept.
struct ServerResponses;

impl utoipa::Modify for ServerResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let probe = path == "/healthz" || path == "/readyz";
            for (operation, is_read) in [
                (&mut item.get, true),
                (&mut item.put, false),
                (&mut item.post, false),
                (&mut item.delete, false),
            ] {
                let Some(operation) = operation else { continue };
                // Reads need the token only off loopback: say it is optional there.
                if !probe && is_read {
                    use utoipa::openapi::security::SecurityRequirement;
                    operation.security = Some(vec![
                        SecurityRequirement::default(),
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                    ]);
                }
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                };
                if !probe {
                    add(
                        "401",
                        "Missing or wrong token (mutating calls; every call on a non-loopback listener)",
                    );
                }
                add("414", "The request target is over 8 KiB");
                add(
                    "431",
                    "The request head is over 64 KiB or has over 100 header fields",
                );
                add(
                    "503",
                    "The API is at its connection limit (`retry-after` says when to retry)",
                );
                if operation.request_body.is_some() {
                    add("400", "The body could not be read or parsed");
                    add(
                        "408",
                        "The body did not arrive within `[api] body_timeout_ms`",
                    );
                    add("413", "The body is over the size limit");
                    add(
                        "415",
                        "The content type is not the one this operation takes",
                    );
                }
                add("400", "The request line or a header field is malformed");
            }
        }
    }
}

/// All routes with their OpenAPI entries.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(cluster::router())
        .merge(policies::router())
        .merge(peerings::router())
        .merge(ops::router())
        .merge(decisions::router())
        .merge(explain::router())
        .merge(trace::router())
}

/// The generated OpenAPI document (what `/openapi.json` serves and
/// `openapi/openapi.json` must equal).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = split();
    api
}

/// The routes and their document, with the server's own responses added to every
/// operation (after the routes are merged: `modifiers` run before that).
fn split() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::Modify as _;
    let (router, mut api) = api_router().split_for_parts();
    ServerResponses.modify(&mut api);
    (router, api)
}

/// The complete service.
pub fn router(state: AppState) -> Router {
    let (router, api) = split();
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
        .merge(ui::routes())
        .fallback(|| async { Problem::not_found("no such endpoint; see /openapi.json or /docs") })
        // Room for the largest policy component (checked precisely in the handler).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(limit_uri))
        .layer(middleware::from_fn(problem_for_every_error))
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

/// Bearer token check: mutating methods and `/v1/trace` always need it (when a token is
/// configured, which it must be off loopback); other reads need it on a non-loopback
/// listener. Health and readiness probes are always open.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // The probes, and the status page's static files (its data comes from API calls
    // that carry the token).
    let open = path == "/healthz" || path == "/readyz" || ui::is_ui_path(path);
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // A trace shows every translated packet's addresses and makes the programs do
    // work per packet: it needs the token wherever one is configured, like a change.
    let trace = path == "/v1/trace";
    let needs = !open && (mutating || trace || state.token_for_reads);
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

/// Reads the whole body before the handler runs, within [`AppState::body_timeout`] and
/// [`MAX_BODY`]: a client that trickles its body gets a 408, one that sends too much a
/// 413, and neither holds a handler (or the state lock) while it does. Runs after the
/// token check, so nobody unauthenticated makes the daemon buffer anything.
async fn read_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large().into_response();
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => Problem::timeout(format!(
            "the request body did not arrive within {:?}",
            state.body_timeout
        ))
        .into_response(),
        Ok(Err(e)) if is_length_limit(&e) => too_large().into_response(),
        Ok(Err(e)) => Problem::bad_request(format!("reading the body: {e}")).into_response(),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
    }
}

fn too_large() -> Problem {
    Problem::too_large(format!("the body is over {MAX_BODY} bytes"))
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// 414 for a request target over [`MAX_URI`].
async fn limit_uri(req: Request, next: Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_URI {
        return Problem::uri_too_long(format!(
            "the request target is {len} bytes; at most {MAX_URI} are accepted"
        ))
        .into_response();
    }
    next.run(req).await
}

/// Every error the server produces is `application/problem+json`: errors that axum's
/// extractors and routing produce as text or empty bodies (405, a bad query string,
/// ...) are rewritten, keeping their status, their text as the detail, and the headers
/// that belong to them (`Allow`, `WWW-Authenticate`, `Retry-After`).
async fn problem_for_every_error(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || problem::is_problem(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let detail = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    });
    let mut rewritten = Problem::from_status(status, detail).into_response();
    for name in [header::ALLOW, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
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
pub fn check_cidrs(list: &[ipnet::IpNet], pointer: &str) -> Result<(), Problem> {
    for (i, net) in list.iter().enumerate() {
        check_cidr(net, &format!("{pointer}/{i}"))?;
    }
    Ok(())
}

/// Checks one prefix for host bits; `pointer` points at it.
pub fn check_cidr(net: &ipnet::IpNet, pointer: &str) -> Result<(), Problem> {
    if net.trunc() != *net {
        return Err(Problem::bad_request(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ))
        .at(pointer));
    }
    Ok(())
}

/// Checks that no prefix overlaps special-purpose space (loopback, link-local,
/// multicast, `0.0.0.0/8`, `240.0.0.0/4`, IPv6 loopback, link-local, multicast and
/// IPv4-mapped; `0.0.0.0/0` and `::/0` overlap them all).
pub fn check_routable(list: &[ipnet::IpNet], pointer: &str) -> Result<(), Problem> {
    for (i, net) in list.iter().enumerate() {
        check_routable_one(net, &format!("{pointer}/{i}"))?;
    }
    Ok(())
}

/// [`check_routable`] for one prefix; `pointer` points at it.
pub fn check_routable_one(net: &ipnet::IpNet, pointer: &str) -> Result<(), Problem> {
    match remapd_model::validate::special_purpose_overlap(net) {
        Some(what) => Err(Problem::bad_request(format!(
            "{net} overlaps {what}, which is never a cluster's and never routed into a tunnel"
        ))
        .at(pointer)),
        None => Ok(()),
    }
}

/// Checks that no two prefixes in `lists` overlap.
pub fn check_disjoint(lists: &[(&str, &[ipnet::IpNet])]) -> Result<(), Problem> {
    let all: Vec<(String, ipnet::IpNet)> = lists
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
