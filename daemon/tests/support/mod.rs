//! The in-process API harness shared by the API test files: a daemon over fake
//! appliers in a temporary directory, and helpers to call it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use remapd::api::{AppState, router};
use remapd::daemon::Daemon;
use remapd::dataplane::FakeDataplane;
use remapd::net::fake::{FakeRoutes, FakeTunnels};
use remapd::policy::{PolicyEngine, PolicyLimits, PolicyRegistry};
use remapd::reconcile::Reconciler;
use remapd::store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const TOKEN: &str = "test-token-0123456789";

pub fn engine() -> Arc<PolicyEngine> {
    static ENGINE: OnceLock<Arc<PolicyEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Arc::new(PolicyEngine::new(PolicyLimits::default()).unwrap()))
        .clone()
}

pub struct App {
    pub router: Router,
    pub daemon: Arc<Daemon>,
    pub dataplane: FakeDataplane,
    pub routes: FakeRoutes,
    pub tunnels: FakeTunnels,
    pub dir: PathBuf,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn app_in(dir: PathBuf) -> App {
    app_with_body_timeout(dir, remapd::api::DEFAULT_BODY_TIMEOUT)
}

pub fn app_with_body_timeout(dir: PathBuf, body_timeout: std::time::Duration) -> App {
    app_with(dir, body_timeout, false)
}

/// An app whose reads need the token too (as when the daemon listens beyond loopback).
#[allow(dead_code)]
pub fn app_reading_with_token(name: &str) -> App {
    app_with(fresh_dir(name), remapd::api::DEFAULT_BODY_TIMEOUT, true)
}

fn app_with(dir: PathBuf, body_timeout: std::time::Duration, token_for_reads: bool) -> App {
    app_with_engine(dir, body_timeout, token_for_reads, engine())
}

/// An app whose policy engine keeps compiled components in `dir/compiled`, as the
/// daemon does; the directory is returned with it.
pub fn app_with_compiled_cache(name: &str) -> (App, PathBuf) {
    let dir = fresh_dir(name);
    let compiled = dir.join("compiled");
    std::fs::create_dir_all(&dir).unwrap();
    let engine = PolicyEngine::new(PolicyLimits::default())
        .unwrap()
        .with_compiled_cache(remapd::policy::CompiledCache::open(&compiled).unwrap());
    let app = app_with_engine(
        dir,
        remapd::api::DEFAULT_BODY_TIMEOUT,
        false,
        Arc::new(engine),
    );
    (app, compiled)
}

fn app_with_engine(
    dir: PathBuf,
    body_timeout: std::time::Duration,
    token_for_reads: bool,
    engine: Arc<PolicyEngine>,
) -> App {
    let registry = Arc::new(PolicyRegistry::with_builtins(engine).unwrap());
    let dataplane = FakeDataplane::default();
    let routes = FakeRoutes::default();
    let tunnels = FakeTunnels::default();
    let reconciler = Reconciler::new(
        registry.clone(),
        Box::new(dataplane.clone()),
        Box::new(routes.clone()),
        Box::new(tunnels.clone()),
    );
    let daemon = Arc::new(Daemon::new(Store::open(&dir).unwrap(), registry, reconciler).unwrap());
    let state = AppState {
        daemon: daemon.clone(),
        token: Some(Arc::from(TOKEN)),
        token_for_reads,
        advertise: Some("198.18.0.1".parse().unwrap()),
        body_timeout,
    };
    App {
        router: router(state),
        daemon,
        dataplane,
        routes,
        tunnels,
        dir,
    }
}

pub fn app(name: &str) -> App {
    app_in(fresh_dir(name))
}

/// An empty directory of its own under the temporary directory.
pub fn fresh_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("remapd-api-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

pub async fn call(
    app: &App,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&b).unwrap()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    send(app, req).await
}

pub async fn send(app: &App, req: Request<Body>) -> Reply {
    let res = app.router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        content_type,
        body,
    }
}

pub async fn raw(app: &App, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    send(app, req).await
}

pub fn assert_problem(r: &Reply, status: StatusCode, detail_has: &str, pointer: Option<&str>) {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert_eq!(
        r.content_type, "application/problem+json",
        "body: {}",
        r.body
    );
    assert_eq!(r.body["status"], status.as_u16());
    assert!(r.body["title"].is_string() && r.body["type"].is_string());
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_has),
        "{detail_has:?} not in {detail:?}"
    );
    if let Some(p) = pointer {
        assert_eq!(r.body["pointer"], p, "pointer of {}", r.body);
    }
}

pub fn cluster() -> Value {
    json!({
        "name": "cluster-1",
        "pod_cidrs": ["40.0.0.0/24"],
        "service_cidrs": ["10.96.0.0/16"],
        "reserved_cidrs": [],
        "remap_pool": ["30.0.0.0/16"]
    })
}

pub fn key() -> String {
    wireguard_control::Key::generate_private()
        .get_public()
        .to_base64()
}

pub fn peering(port: u16) -> Value {
    json!({
        "policy": "auto",
        "remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24"], "capabilities": {"nat_dataplane": true}},
        "tunnel": {"listen_port": port, "endpoint": "198.18.0.2:51820", "remote_public_key": key()}
    })
}

/// Creates peerings `(name, listen port)` with [`peering`], each answered 201.
pub async fn add_peerings(app: &App, peerings: &[(&str, u16)]) {
    for (name, port) in peerings {
        let r = call(
            app,
            "PUT",
            &format!("/v1/peerings/{name}"),
            Some(peering(*port)),
            Some(TOKEN),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.body);
    }
}
