//! `/v1/trace`: a live stream of what the dataplane translated or dropped, as NDJSON
//! (one JSON object per line) or, for browsers that ask for `text/event-stream`, as
//! server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use ipnet::Ipv4Net;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{AppState, check_name};
use remapd_engine::trace::{TraceItem, TraceQuery, TraceStream, TraceVerdict, protocol_number};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(trace))
}

/// The longest a trace may run.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Highest `rate` (events per second) a trace may ask for.
const MAX_RATE: u32 = 100_000;

/// What to trace and for how long. Filters left out match everything.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TraceParams {
    /// Only packets on this peering's tunnel.
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub peering: Option<String>,
    /// Only packets with an address (before or after translation) in this IPv4 prefix
    /// (an address alone means /32). Trace events carry IPv4 addresses only: an IPv6
    /// prefix is refused, and IPv6 packets are traced without their addresses.
    #[param(example = "10.244.1.0/24")]
    pub prefix: Option<String>,
    /// Only this protocol: `tcp`, `udp`, `icmp`, `udplite`, `dccp`, or a number.
    #[param(example = "tcp")]
    pub protocol: Option<String>,
    /// Only `translated` or only `dropped` packets.
    pub verdict: Option<TraceVerdict>,
    /// Send one in `sample` matching packets (default 1: all).
    #[param(minimum = 1, maximum = 1000000)]
    pub sample: Option<u32>,
    /// At most this many events per second (default 1000); the rest are counted and
    /// reported as `lost` items with cause `rate_cap`.
    #[param(minimum = 1, maximum = 100000)]
    pub rate: Option<u32>,
    /// End after this many events.
    #[param(minimum = 1)]
    pub count: Option<u64>,
    /// End after this long (default `60s`, at most `1h`), e.g. `30s`, `5m`.
    #[param(example = "30s")]
    pub duration: Option<String>,
}

fn query(p: TraceParams) -> Result<TraceQuery, Problem> {
    let defaults = TraceQuery::default();
    if let Some(name) = p.peering.as_deref() {
        check_name(name, "/query/peering")?;
    }
    let prefix = p
        .prefix
        .as_deref()
        .map(|text| {
            if text.parse::<ipnet::Ipv6Net>().is_ok() || text.parse::<std::net::Ipv6Addr>().is_ok()
            {
                return Err(Problem::bad_request(format!(
                    "{text:?} is IPv6: a trace filters by IPv4 prefix only (its events carry IPv4 addresses; IPv6 packets are traced without them, so filter them by peering, protocol or verdict)"
                ))
                .at("/query/prefix"));
            }
            let net: Ipv4Net = match text.parse() {
                Ok(net) => net,
                Err(_) => text
                    .parse::<std::net::Ipv4Addr>()
                    .map(Ipv4Net::from)
                    .map_err(|_| {
                        Problem::bad_request(format!(
                            "{text:?} is not an IPv4 prefix (a.b.c.d/len) or address"
                        ))
                        .at("/query/prefix")
                    })?,
            };
            if net.trunc() != net {
                return Err(Problem::bad_request(format!(
                    "{text:?} has host bits set; did you mean {}?",
                    net.trunc()
                ))
                .at("/query/prefix"));
            }
            Ok(net)
        })
        .transpose()?;
    let protocol = p
        .protocol
        .as_deref()
        .map(|text| {
            protocol_number(text).filter(|p| *p != 0).ok_or_else(|| {
                Problem::bad_request(format!(
                    "{text:?} is not an IPv4 protocol: tcp, udp, icmp, udplite, dccp, or a number 1-255"
                ))
                .at("/query/protocol")
            })
        })
        .transpose()?;
    let sample = p.sample.unwrap_or(defaults.sample);
    if !(1..=1_000_000).contains(&sample) {
        return Err(Problem::bad_request("sample must be 1 to 1000000").at("/query/sample"));
    }
    let rate = p.rate.unwrap_or(defaults.rate);
    if !(1..=MAX_RATE).contains(&rate) {
        return Err(Problem::bad_request(format!(
            "rate must be 1 to {MAX_RATE} events per second"
        ))
        .at("/query/rate"));
    }
    if p.count == Some(0) {
        return Err(Problem::bad_request("count must be at least 1").at("/query/count"));
    }
    let duration = match p.duration.as_deref() {
        None => defaults.duration,
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            Problem::bad_request(format!("{text:?} is not a duration such as 30s or 5m: {e}"))
                .at("/query/duration")
        })?,
    };
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(
            Problem::bad_request("duration must be more than 0 and at most 1h")
                .at("/query/duration"),
        );
    }
    Ok(TraceQuery {
        peering: p.peering,
        prefix,
        protocol,
        verdict: p.verdict,
        sample,
        rate,
        count: p.count,
        duration,
    })
}

/// Streams what the dataplane does, one item per packet it translated or dropped on
/// remapd's hooks: time, interface and peering, direction, protocol, addresses and
/// ports before and after, the rules that fired, or the drop reason. Items of type
/// `lost` say how many matching events were not sent (kernel buffer full, over
/// `rate`, or a slow reader); the last item is of type `end`, with totals. After 15 s
/// with nothing to send, NDJSON gets a `keepalive` item (SSE a comment). The
/// programs write events only while a trace runs. NDJSON by default; server-sent
/// events when the request accepts `text/event-stream`.
#[utoipa::path(get, path = "/v1/trace", tag = "ops",
    params(TraceParams),
    responses(
        (status = 200, description = "The trace, one item per line (or SSE event) until it ends",
            content(
                (TraceItem = "application/x-ndjson"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "A filter or limit is malformed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such peering", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No dataplane is loaded yet (no peering has needed one): nothing to trace", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "As many traces as may run at once are running", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The dataplane's trace maps cannot be used", body = Problem, content_type = "application/problem+json"),
    ))]
async fn trace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<TraceParams>,
) -> Result<Response, Problem> {
    let query = query(params)?;
    let stream = state.daemon.tracer().start(query)?;
    let sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    let mut response = if sse {
        Sse::new(sse_events(stream))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let mut response = Body::from_stream(ndjson_lines(stream)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer responses would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// How long an NDJSON trace stays silent before a `keepalive` line: writing it is how
/// the server notices a client that went away (and frees its trace slot) before the
/// trace's `duration` is up.
pub const NDJSON_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

fn ndjson_lines(
    stream: TraceStream,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    stream::unfold(stream, |mut stream| async move {
        // `next` is cancel-safe: a keepalive loses nothing.
        let item = match tokio::time::timeout(NDJSON_KEEPALIVE, stream.next()).await {
            Ok(item) => item?,
            Err(_) => TraceItem::Keepalive,
        };
        let mut line = serde_json::to_vec(&item).unwrap_or_default();
        line.push(b'\n');
        Some((Ok(Bytes::from(line)), stream))
    })
}

fn sse_events(
    stream: TraceStream,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static {
    stream::unfold(stream, |mut stream| async move {
        let item = stream.next().await?;
        let data = serde_json::to_string(&item).unwrap_or_default();
        Some((Ok(Event::default().event(item.kind()).data(data)), stream))
    })
}
