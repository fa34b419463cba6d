//! `/ui`: a status page served by the daemon itself — static HTML, CSS and JavaScript
//! compiled into the binary, nothing to build. The page reads the API like any client
//! (with the token given in the address's fragment or typed in, when reads need one), so
//! the page itself holds no data and is served without a token.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// What the page may do: its own script and style, API calls to this daemon, nothing
/// else (no inline script, no framing, no other origin).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Whether `path` is one of the page's files (served without a token).
pub(crate) fn is_ui_path(path: &str) -> bool {
    matches!(
        path,
        "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css" | "/ui/icon.svg"
    )
}

/// The page's routes (outside the OpenAPI document, like `/docs`).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let page = || async { asset("text/html; charset=utf-8", include_str!("ui/index.html")) };
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("ui/app.js")) }),
        )
        .route(
            "/ui/icon.svg",
            get(|| async { asset("image/svg+xml", include_str!("ui/icon.svg")) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("ui/style.css")) }),
        )
}
