//! Operations: health and readiness probes, Prometheus metrics, address translation
//! lookup, full teardown, and the docs page.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::problem::Problem;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(translate))
        .routes(routes!(teardown))
        .routes(routes!(status))
}

/// The daemon's overall state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DaemonStatus {
    /// The last reconcile applied everything.
    pub ready: bool,
    /// What the last reconcile did (a restart that adopts everything shows no changes).
    pub last_reconcile: Option<remapd_engine::reconcile::ReconcileReport>,
    /// The dataplane was adopted from pinned objects rather than loaded.
    pub dataplane_adopted: bool,
    /// Kernel program ids of the dataplane.
    pub program_ids: std::collections::BTreeMap<String, u32>,
    /// Program attachments.
    #[schema(value_type = Vec<Object>)]
    pub attachments: Vec<remapd_dataplane::Attachment>,
    /// Packets dropped by the dataplane, by reason, summed over every hook (reasons
    /// with no drops are left out).
    pub dropped_packets: std::collections::BTreeMap<String, u64>,
}

/// Overall state: readiness, the last reconcile's report, the dataplane's programs.
#[utoipa::path(get, path = "/v1/status", tag = "ops",
    responses((status = 200, description = "Daemon status", body = DaemonStatus)))]
async fn status(State(state): State<AppState>) -> Result<Json<DaemonStatus>, Problem> {
    let dp = state.daemon.dataplane_status().await?;
    Ok(Json(DaemonStatus {
        ready: state.daemon.ready(),
        last_reconcile: state.daemon.last_report(),
        dataplane_adopted: dp.adopted,
        program_ids: dp.program_ids,
        attachments: dp.attachments,
        dropped_packets: dp.hooks.iter().fold(Default::default(), |mut sum, hook| {
            for (reason, n) in &hook.dropped {
                *sum.entry(reason.clone()).or_default() += n;
            }
            sum
        }),
    }))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, description = "Alive", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the last reconcile applied everything without errors.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses(
        (status = 200, description = "Ready", body = String),
        (status = 503, description = "Not (yet) applied", body = Problem, content_type = "application/problem+json"),
    ))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, Problem> {
    if state.daemon.ready() {
        Ok("ready\n")
    } else {
        Err(Problem::unavailable(
            "the last reconcile has not applied everything yet",
        ))
    }
}

/// Prometheus metrics: per-rule and per-peering packets/bytes from the eBPF counters,
/// policy decisions and errors, reconcile duration.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "OpenMetrics text format (Prometheus scrapes it)", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
async fn metrics(State(state): State<AppState>) -> Result<Response, Problem> {
    let desired = state.daemon.state();
    let by_interface: std::collections::BTreeMap<String, String> = desired
        .peerings
        .iter()
        .map(|(n, p)| (p.interface(n), n.clone()))
        .collect();
    let snapshot = state.daemon.snapshot();
    let counters = &snapshot.counters;
    let failed_tunnels = snapshot
        .last_report
        .as_ref()
        .map(|r| r.tunnels.failed.clone())
        .unwrap_or_default();
    let peerings_with_errors = snapshot
        .outcomes
        .values()
        .filter(|o| {
            o.last_error.is_some()
                || o.key_error.is_some()
                || failed_tunnels.contains_key(&o.interface)
        })
        .count();
    let status = state.daemon.dataplane_status().await.ok();
    let mut registry = Registry::with_prefix("remapd");
    type Labels = Vec<(String, String)>;
    let rule_packets = Family::<Labels, Counter>::default();
    let rule_bytes = Family::<Labels, Counter>::default();
    let peering_packets = Family::<Labels, Counter>::default();
    let peering_bytes = Family::<Labels, Counter>::default();
    registry.register(
        "rule_packets",
        "Packets rewritten by a translation rule",
        rule_packets.clone(),
    );
    registry.register(
        "rule_bytes",
        "Bytes of packets rewritten by a translation rule",
        rule_bytes.clone(),
    );
    registry.register(
        "peering_packets",
        "Packets a peering's tunnel let through, per direction (each packet once, translated or not)",
        peering_packets.clone(),
    );
    registry.register(
        "peering_bytes",
        "Bytes of the packets a peering's tunnel let through, per direction",
        peering_bytes.clone(),
    );
    let peering_translated = Family::<Labels, Counter>::default();
    registry.register(
        "peering_translated_packets",
        "Packets of a peering with at least one address rewritten, per direction",
        peering_translated.clone(),
    );
    let mss_clamped = Family::<Labels, Counter>::default();
    registry.register(
        "peering_mss_clamped_packets",
        "TCP SYNs of a peering whose MSS option was lowered to its mss_clamp, per direction",
        mss_clamped.clone(),
    );
    let dropped = Family::<Labels, Counter>::default();
    registry.register(
        "dropped_packets",
        "Packets the dataplane dropped on a peering's tunnel, by direction and reason",
        dropped.clone(),
    );
    if let Some(status) = &status {
        for hook in &status.hooks {
            let peering = by_interface
                .get(&hook.interface)
                .cloned()
                .unwrap_or_default();
            let labels = vec![
                ("peering".to_owned(), peering),
                ("interface".to_owned(), hook.interface.clone()),
                ("direction".to_owned(), hook.direction.to_string()),
            ];
            peering_packets.get_or_create(&labels).inc_by(hook.packets);
            peering_bytes.get_or_create(&labels).inc_by(hook.bytes);
            peering_translated
                .get_or_create(&labels)
                .inc_by(hook.translated);
            if hook.mss_clamped > 0 {
                mss_clamped.get_or_create(&labels).inc_by(hook.mss_clamped);
            }
            for (reason, n) in &hook.dropped {
                let mut labels = labels.clone();
                labels.push(("reason".to_owned(), reason.clone()));
                dropped.get_or_create(&labels).inc_by(*n);
            }
        }
        for r in &status.rules {
            let peering = by_interface
                .get(&r.rule.interface)
                .cloned()
                .unwrap_or_default();
            let labels = vec![
                ("peering".to_owned(), peering.clone()),
                ("interface".to_owned(), r.rule.interface.clone()),
                ("direction".to_owned(), r.rule.direction.to_string()),
                ("field".to_owned(), r.rule.field.to_string()),
                ("from".to_owned(), r.rule.from.to_string()),
                ("to".to_owned(), r.rule.to.to_string()),
            ];
            rule_packets.get_or_create(&labels).inc_by(r.packets);
            rule_bytes.get_or_create(&labels).inc_by(r.bytes);
        }
    }
    let decisions = Family::<Labels, Counter>::default();
    registry.register(
        "policy_decisions",
        "Policy decisions by policy and outcome",
        decisions.clone(),
    );
    for ((policy, outcome), n) in &counters.decisions {
        decisions
            .get_or_create(&vec![
                ("policy".to_owned(), policy.clone()),
                ("outcome".to_owned(), (*outcome).to_owned()),
            ])
            .inc_by(*n);
    }
    registry.register(
        "policy_decision_duration_seconds",
        "Time each policy decision took (a fresh sandbox, the call and validation)",
        DecisionDurations(state.daemon.decisions().durations()),
    );
    let reconciles = Counter::<u64>::default();
    reconciles.inc_by(counters.reconciles);
    registry.register("reconciles", "Reconciles run", reconciles);
    let last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    last.set(counters.last_duration.as_secs_f64());
    registry.register(
        "reconcile_last_duration_seconds",
        "Duration of the last reconcile",
        last,
    );
    let total = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    total.set(counters.total_duration.as_secs_f64());
    registry.register(
        "reconcile_duration_seconds_sum",
        "Time spent reconciling",
        total,
    );
    let peerings = Gauge::<i64>::default();
    peerings.set(desired.peerings.len() as i64);
    registry.register("peerings", "Peerings configured", peerings);
    let errors = Gauge::<i64>::default();
    errors.set(peerings_with_errors as i64);
    registry.register(
        "peerings_with_errors",
        "Peerings whose latest decision failed, whose key file is unusable or whose tunnel failed",
        errors,
    );
    let mut body = String::new();
    encode(&mut body, &registry)
        .map_err(|e| Problem::internal(format!("encoding metrics: {e}")))?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// The address to translate.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TranslateQuery {
    /// An IPv4 address: a remote pod's real address, a local view of one, or a local
    /// pod's address.
    pub address: String,
}

/// One answer of the translation lookup.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Translation {
    /// Peering.
    pub peering: String,
    /// What the address is: `remote-real`, `local-view-of-remote` or `local-real`.
    pub kind: String,
    /// The address it corresponds to.
    pub translated: String,
    /// What the translated address is.
    pub meaning: String,
}

/// Address translation lookup: what an address is called on the other side. Given a
/// remote pod's real address, its local view; given a local view, the remote's real
/// address; given a local pod's address, how the remote sees it (when it said so).
#[utoipa::path(get, path = "/v1/translate", tag = "ops", params(TranslateQuery),
    responses(
        (status = 200, description = "Every peering's answer", body = Vec<Translation>),
        (status = 400, description = "Not an IPv4 or IPv6 address", body = Problem, content_type = "application/problem+json"),
    ))]
async fn translate(
    State(state): State<AppState>,
    Query(q): Query<TranslateQuery>,
) -> Result<Json<Vec<Translation>>, Problem> {
    let addr: IpAddr = q.address.parse().map_err(|_| {
        Problem::bad_request(format!("{:?} is not an IPv4 or IPv6 address", q.address))
            .at("/address")
    })?;
    let snapshot = state.daemon.snapshot();
    let (desired, outcomes) = (&snapshot.state, &snapshot.outcomes);
    let mut out = Vec::new();
    for (name, spec) in &desired.peerings {
        if let Some(decision) = outcomes.get(name).and_then(|o| o.decision.as_ref()) {
            for m in &decision.mappings {
                if let Some(view) = m.apply(addr) {
                    out.push(Translation {
                        peering: name.clone(),
                        kind: "remote-real".into(),
                        translated: view.to_string(),
                        meaning: format!("how this cluster reaches {addr} of {}", spec.remote.name),
                    });
                }
                let back = remapd_model::model::Mapping {
                    real: m.remapped,
                    remapped: m.real,
                };
                if let Some(real) = back.apply(addr) {
                    out.push(Translation {
                        peering: name.clone(),
                        kind: "local-view-of-remote".into(),
                        translated: real.to_string(),
                        meaning: format!("the real address in {}", spec.remote.name),
                    });
                }
            }
        }
        for m in spec.remote.view_of_local.iter().flatten() {
            if let Some(view) = m.apply(addr) {
                out.push(Translation {
                    peering: name.clone(),
                    kind: "local-real".into(),
                    translated: view.to_string(),
                    meaning: format!("how {} sees this address", spec.remote.name),
                });
            }
        }
    }
    Ok(Json(out))
}

/// The result of a teardown.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TeardownResult {
    /// Errors met (empty when everything was removed).
    pub errors: Vec<String>,
}

/// Removes every rule, route and tunnel remapd made and forgets all peerings (the
/// cluster and uploaded policies stay). Translation stops.
#[utoipa::path(post, path = "/v1/teardown", tag = "ops",
    responses(
        (status = 200, description = "Torn down", body = TeardownResult),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn teardown(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<TeardownResult>), Problem> {
    let errors = state.daemon.teardown().await?;
    Ok((StatusCode::OK, Json(TeardownResult { errors })))
}

/// A small self-contained page that renders `/openapi.json` and lets you send requests.
pub async fn docs_page() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

/// The decision log's duration histogram, as counted by the engine.
#[derive(Debug)]
struct DecisionDurations(remapd_engine::decision_log::DurationHistogram);

impl prometheus_client::encoding::EncodeMetric for DecisionDurations {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        use remapd_engine::decision_log::DURATION_BUCKETS;
        let bounds = DURATION_BUCKETS.iter().copied().chain([f64::MAX]);
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.buckets.iter().copied()).collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum,
            self.0.count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}
