//! Uploaded policies leave nothing behind once deleted (issue 11, item 9): each
//! distinct upload used to keep its compiled code in the engine's cache forever.
//! Alone in its test binary, so the engine's counts and the RSS are this test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use remapd::policy::builtin;
use support::*;

/// The built-in `split` component made distinct by a trailing custom section.
fn distinct_component(i: u32) -> Vec<u8> {
    let mut bytes = builtin::SPLIT.to_vec();
    let name = b"remapd-test";
    let payload = i.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    bytes.push(0); // custom section
    bytes.push(u8::try_from(size).unwrap());
    bytes.push(u8::try_from(name.len()).unwrap());
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn upload_and_delete(app: &App, i: u32) {
    let r = raw(
        app,
        "PUT",
        "/v1/policies/churn",
        "application/wasm",
        distinct_component(i),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = call(app, "DELETE", "/v1/policies/churn", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

#[tokio::test]
async fn deleted_uploads_free_their_compiled_code() {
    let app = app("policy-memory");
    let engine = app.daemon.registry().engine().clone();
    let builtins = engine.compiled_alive();
    assert_eq!(builtins, 3, "the built-ins");
    // Warm up allocator arenas and lazily built engine state.
    for i in 0..20 {
        upload_and_delete(&app, i).await;
    }
    assert_eq!(
        engine.compiled_alive(),
        builtins,
        "nothing kept after a delete"
    );
    let before = rss_kib();
    for i in 20..220 {
        upload_and_delete(&app, i).await;
    }
    assert_eq!(
        engine.compiled_alive(),
        builtins,
        "nothing kept after 200 deletes"
    );
    let after = rss_kib();
    // Each kept compilation was ~180 KiB (200 of them: +36 MiB); allow 5 MiB of noise.
    assert!(
        after <= before + 5 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 200 distinct uploads and deletes"
    );
    // A re-upload of the same bytes still works (compiled again, not a dangling hit).
    upload_and_delete(&app, 7).await;
}
