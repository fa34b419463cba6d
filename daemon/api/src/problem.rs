//! The one error envelope of the API: RFC 7807 `application/problem+json`, with a JSON
//! pointer to the offending field where there is one; and the JSON body extractor that
//! produces it for bad JSON, unknown fields and invalid CIDRs.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use remapd_engine::daemon::EngineError;
use remapd_engine::reconcile::FailureKind;

/// An RFC 7807 problem.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong here.
    pub detail: String,
    /// JSON pointer (RFC 6901) to the field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// For `apply-failed`: the step that failed (`tunnels`, `routes`, `dataplane`,
    /// `prune`); the previous configuration was re-applied and nothing was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For `policy-rejected` and `conflict` from a decision: the peering concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peering: Option<String>,
}

impl Problem {
    fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://remapd.dev/problems/{kind}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            pointer: None,
            step: None,
            peering: None,
        }
    }

    /// With a JSON pointer.
    pub fn at(mut self, pointer: impl Into<String>) -> Self {
        self.pointer = Some(pointer.into());
        self
    }

    /// 400: malformed request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 401: missing or wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 409: conflicts with existing state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 415.
    pub fn unsupported_media(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    /// 422: the policy refused or its decision was rejected.
    pub fn policy_rejected(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy-rejected",
            "Policy rejected",
            detail,
        )
    }

    /// 413.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Payload too large",
            detail,
        )
    }

    /// 408: the request body did not arrive in time.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            detail,
        )
    }

    /// 414.
    pub fn uri_too_long(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI too long",
            detail,
        )
    }

    /// Any error status, its problem type named after its reason phrase
    /// (`method-not-allowed`, ...): for errors produced outside the handlers.
    pub fn from_status(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        let kind = title.to_ascii_lowercase().replace([' ', '\''], "-");
        Self::new(status, &kind, title, detail)
    }

    /// 500: the daemon failed (never caused by input).
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    /// 503.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Unavailable",
            detail,
        )
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        let detail = e.to_string();
        match e {
            EngineError::NoCluster => Self::conflict(detail),
            EngineError::PeeringNotFound(_) => Self::not_found(detail),
            EngineError::Decision { peering, kind, .. } => {
                let mut p = match kind {
                    FailureKind::Conflict | FailureKind::MissingPolicy => Self::conflict(detail),
                    FailureKind::Rejected => Self::policy_rejected(detail),
                };
                p.peering = Some(peering);
                p
            }
            EngineError::Apply { step, .. } => {
                let mut p = Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "apply-failed",
                    "Applying the change failed",
                    detail,
                );
                p.step = Some(step.to_string());
                p
            }
            EngineError::Protected(hit) => {
                let mut p = Self::new(
                    StatusCode::CONFLICT,
                    "protected-address",
                    "The change would route the gateway's own traffic into a tunnel",
                    detail,
                );
                p.peering = Some(hit.peering);
                p
            }
            EngineError::PortInUse { peering, .. } => {
                let mut p = Self::conflict(detail).at("/tunnel/listen_port");
                p.peering = Some(peering);
                p
            }
            EngineError::Key { peering, .. } => {
                let mut p = Self::new(
                    StatusCode::CONFLICT,
                    "key-unusable",
                    "The peering's WireGuard key file is unusable",
                    detail,
                );
                p.peering = Some(peering);
                p
            }
            EngineError::Persist(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "persist-failed",
                "Saving the change failed",
                detail,
            ),
            EngineError::Explain(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no-path",
                "No path through a peering",
                detail,
            ),
            EngineError::NothingToTrace(_) => Self::conflict(detail),
            EngineError::TraceUnavailable(_) => Self::unavailable(detail),
            EngineError::TooManyTraces(_) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-traces",
                "Too many traces",
                detail,
            ),
            EngineError::Internal(_) => Self::internal(detail),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// Whether `response` already is a problem document.
pub fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json")
}

/// Whether a content type is JSON: exactly `application/json`, in any case, with any
/// parameters (`; charset=utf-8`). `application/jsonp` and `text/json` are not.
pub fn is_json_media_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON body; rejects with a 400 problem naming the field (by JSON pointer) on bad
/// JSON, a wrong type, an unknown field or an invalid CIDR.
pub struct JsonBody<T>(pub T);

/// Bodies larger than this are refused.
pub const MAX_JSON_BODY: usize = 1 << 20;

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(is_json_media_type);
        if !is_json {
            return Err(Problem::unsupported_media(
                "expected content-type application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            Problem::from_status(status, format!("reading the body: {}", e.body_text()))
        })?;
        if bytes.len() > MAX_JSON_BODY {
            return Err(Problem::too_large(format!(
                "body over {MAX_JSON_BODY} bytes"
            )));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let mut pointer = pointer_of(e.path());
                // serde reports a duplicate key at the object holding it; point at the key.
                if let Some(key) = duplicate_key(&e.inner().to_string()) {
                    if pointer == "/" {
                        pointer.clear();
                    }
                    pointer.push('/');
                    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                }
                Problem::bad_request(format!("invalid JSON at {pointer}: {}", e.inner()))
                    .at(pointer)
            })
    }
}

/// The key of serde's "duplicate field `name`" error.
fn duplicate_key(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("duplicate field `")?;
    rest.split_once('`').map(|(key, _)| key)
}

/// A JSON pointer for a serde path (`remote.pod_cidrs[0]` -> `/remote/pod_cidrs/0`).
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        out.push('/');
        match seg {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"))
            }
            Segment::Unknown => out.push('?'),
        }
    }
    if out.is_empty() { "/".into() } else { out }
}
