//! Every change is a transaction: an applier failure, a refusing policy or a pool that
//! no longer fits answers a problem and leaves state, kernel (the fakes) and key files
//! as they were; concurrent changes never leave a mix; reads do not wait for a change in
//! progress; the policy runs once per change. No root needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use remapd::policy::builtin;
use serde_json::{Value, json};
use support::*;

/// Everything a failed change must leave as it was.
#[derive(Debug, PartialEq)]
struct World {
    peerings: Value,
    state_file: Vec<u8>,
    keys: BTreeSet<String>,
    routes: Vec<remapd::net::RouteSpec>,
    tunnels: Vec<String>,
    rules: usize,
    borders: usize,
}

async fn world(app: &App) -> World {
    let peerings = call(app, "GET", "/v1/peerings", None, None).await.body;
    let keys = std::fs::read_dir(app.dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let dataplane = app.dataplane.state.lock().unwrap().clone();
    World {
        peerings,
        state_file: std::fs::read(app.dir.join("state.json")).unwrap_or_default(),
        keys,
        routes: app.routes.routes.lock().unwrap().clone(),
        tunnels: app
            .tunnels
            .tunnels
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect(),
        rules: dataplane.rules.len(),
        borders: dataplane.borders.len(),
    }
}

fn remote(name: &str, nat: bool) -> Value {
    json!({"name": name, "pod_cidrs": ["40.0.0.0/24"], "capabilities": {"nat_dataplane": nat}})
}

fn decisions(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("remapd_policy_decisions_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn metrics(app: &App) -> String {
    match call(app, "GET", "/metrics", None, None).await.body {
        Value::String(s) => s,
        other => panic!("metrics: {other}"),
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Tunnels,
    Routes,
    Dataplane,
}

fn inject(app: &App, step: Step, reason: Option<&str>) {
    let reason = reason.map(str::to_owned);
    match step {
        Step::Tunnels => *app.tunnels.fail.lock().unwrap() = reason,
        Step::Routes => *app.routes.fail.lock().unwrap() = reason,
        Step::Dataplane => *app.dataplane.fail.lock().unwrap() = reason,
    }
}

#[tokio::test]
async fn a_failed_apply_answers_a_problem_and_changes_nothing() {
    for (step, name) in [
        (Step::Tunnels, "tunnels"),
        (Step::Routes, "routes"),
        (Step::Dataplane, "dataplane"),
    ] {
        let app = app("apply-fails");
        call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
        let r = call(
            &app,
            "PUT",
            "/v1/peerings/a",
            Some(peering(51820)),
            Some(TOKEN),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let before = world(&app).await;
        assert_eq!(before.tunnels.len(), 1);
        let keepalive = app.tunnels.tunnels.lock().unwrap()["rmd-a"].keepalive;
        assert_ne!(keepalive, Some(7));

        inject(&app, step, Some("injected for the test"));
        // A new peering, and a change to the existing one: both refused.
        let r = call(
            &app,
            "PUT",
            "/v1/peerings/b",
            Some(peering(51821)),
            Some(TOKEN),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{step:?}: {}",
            r.body
        );
        assert_eq!(r.content_type, "application/problem+json");
        assert_eq!(
            r.body["type"], "https://remapd.dev/problems/apply-failed",
            "{}",
            r.body
        );
        assert_eq!(r.body["step"], name, "{}", r.body);
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .contains("injected for the test"),
            "{}",
            r.body
        );
        let mut changed = peering(51820);
        changed["tunnel"]["keepalive"] = json!(7);
        let r = call(&app, "PUT", "/v1/peerings/a", Some(changed), Some(TOKEN)).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
        let r = call(&app, "DELETE", "/v1/peerings/a", None, Some(TOKEN)).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
        inject(&app, step, None);

        let after = world(&app).await;
        assert_eq!(after, before, "{step:?}: nothing changed");
        assert_eq!(
            app.tunnels.tunnels.lock().unwrap()["rmd-a"].keepalive,
            keepalive,
            "the old tunnel configuration is back"
        );
        // Not desired: a resync applies what was acknowledged, nothing else.
        app.daemon.reconcile().await.unwrap();
        assert_eq!(world(&app).await, before, "{step:?}: not retried");
        let r = call(&app, "GET", "/v1/peerings/b", None, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn the_policy_runs_once_per_change() {
    let app = app("decide-once");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    assert_eq!(decisions(&metrics(&app).await), 0);
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/a",
        Some(peering(51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        decisions(&metrics(&app).await),
        1,
        "one decision for one PUT"
    );
    // A change to another peering does not decide this one again; a resync decides
    // nothing.
    call(
        &app,
        "PUT",
        "/v1/peerings/b",
        Some(peering(51821)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(decisions(&metrics(&app).await), 2);
    app.daemon.reconcile().await.unwrap();
    assert_eq!(decisions(&metrics(&app).await), 2);
    // A tunnel-only change keeps the decision (its inputs did not change).
    let mut changed = peering(51820);
    changed["tunnel"]["keepalive"] = json!(5);
    call(&app, "PUT", "/v1/peerings/a", Some(changed), Some(TOKEN)).await;
    assert_eq!(decisions(&metrics(&app).await), 2);
    // A new cluster decides every peering again, once each.
    let mut c = cluster();
    c["remap_pool"] = json!(["31.0.0.0/16"]);
    let r = call(&app, "PUT", "/v1/cluster", Some(c), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(decisions(&metrics(&app).await), 4);
    // The evaluate endpoint is the dry run of the same plan: one decision, nothing applied.
    let before = world(&app).await;
    let r = call(
        &app,
        "POST",
        "/v1/policies/auto/evaluate",
        Some(json!({"remote": remote("cluster-3", true)})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(decisions(&metrics(&app).await), 5);
    assert_eq!(world(&app).await, before);
}

/// An app with policy `mine` uploaded as `auto` (its sha256 returned) and peering `a`
/// using it for a remote without a NAT dataplane: `auto` remaps both ways here, and
/// `split` would refuse it.
async fn mine_is_auto_and_deciding_a_peer_without_nat(name: &str) -> (App, Value) {
    let app = app(name);
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    let r = raw(
        &app,
        "PUT",
        "/v1/policies/mine",
        "application/wasm",
        builtin::AUTO.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let mut a = peering(51820);
    a["policy"] = json!("mine");
    a["remote"] = remote("cluster-2", false);
    a["remote"]["view_of_local"] = json!([
        {"real": "40.0.0.0/24", "remapped": "60.0.0.0/24"},
        {"real": "10.96.0.0/16", "remapped": "61.96.0.0/16"}
    ]);
    let created = call(&app, "PUT", "/v1/peerings/a", Some(a), Some(TOKEN)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    (app, r.body["sha256"].clone())
}

#[tokio::test]
async fn a_policy_replacement_its_peerings_refuse_changes_nothing() {
    let (app, auto_sha) = mine_is_auto_and_deciding_a_peer_without_nat("policy-refused").await;
    // A second peering of `mine` that the replacement alone would change (auto routes a
    // disjoint peer as-is, split would translate it): all of them change or none.
    let mut b = peering(51821);
    b["policy"] = json!("mine");
    b["remote"] = remote("cluster-3", true);
    b["remote"]["pod_cidrs"] = json!(["50.0.0.0/24"]);
    let created = call(&app, "PUT", "/v1/peerings/b", Some(b), Some(TOKEN)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["decision"]["strategy"], "none",
        "{}",
        created.body
    );
    let before = world(&app).await;
    let policy_files = |app: &App| -> BTreeSet<String> {
        std::fs::read_dir(app.dir.join("policies"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let files_before = policy_files(&app);

    let r = raw(
        &app,
        "PUT",
        "/v1/policies/mine",
        "application/wasm",
        builtin::SPLIT.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["peering"], "a", "{}", r.body);
    assert_eq!(
        call(&app, "GET", "/v1/policies/mine", None, None)
            .await
            .body["sha256"],
        auto_sha,
        "the old policy still decides"
    );
    assert_eq!(world(&app).await, before);
    let b = call(&app, "GET", "/v1/peerings/b", None, None).await;
    assert_eq!(
        b.body["decision"]["strategy"], "none",
        "b kept its decision: {}",
        b.body
    );
    assert_eq!(
        policy_files(&app),
        files_before,
        "the refused bytes are gone"
    );
    // And a restart decides with the old policy too.
    app.daemon.reconcile().await.unwrap();
    assert_eq!(world(&app).await, before);
    // Forced, the replacement goes in and the peering it refuses loses its plan.
    let r = raw(
        &app,
        "PUT",
        "/v1/policies/mine?force=true",
        "application/wasm",
        builtin::SPLIT.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let a = call(&app, "GET", "/v1/peerings/a", None, None).await;
    assert!(
        a.body["plan"].is_null() && a.body["last_error"].is_string(),
        "{}",
        a.body
    );
    // ... while the one it accepts is decided by it (a's tunnel is gone, b's stays).
    let b = call(&app, "GET", "/v1/peerings/b", None, None).await;
    assert_eq!(b.body["decision"]["strategy"], "split", "{}", b.body);
    assert_eq!(app.tunnels.tunnels.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_cluster_change_that_leaves_a_peering_without_a_plan_is_refused() {
    let app = app("cluster-refused");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/a",
        Some(peering(51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = world(&app).await;
    // A pool too small for the peer's /24.
    let mut c = cluster();
    c["remap_pool"] = json!(["30.0.0.0/25"]);
    let r = call(&app, "PUT", "/v1/cluster", Some(c), Some(TOKEN)).await;
    assert!(
        r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::CONFLICT,
        "{} {}",
        r.status,
        r.body
    );
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["peering"], "a", "{}", r.body);
    assert_eq!(
        call(&app, "GET", "/v1/cluster", None, None).await.body,
        cluster()
    );
    assert_eq!(world(&app).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_racing_a_put_never_changes_an_acknowledged_key() {
    let app = Arc::new(app("delete-put-race"));
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    for i in 0..60 {
        let r = call(
            &app,
            "PUT",
            "/v1/peerings/a",
            Some(peering(51820)),
            Some(TOKEN),
        )
        .await;
        assert!(r.status.is_success(), "{}", r.body);
        let (put, del) = {
            let (a, b) = (app.clone(), app.clone());
            tokio::join!(
                tokio::spawn(async move {
                    call(
                        &a,
                        "PUT",
                        "/v1/peerings/a",
                        Some(peering(51820)),
                        Some(TOKEN),
                    )
                    .await
                }),
                tokio::spawn(async move {
                    call(&b, "DELETE", "/v1/peerings/a", None, Some(TOKEN)).await
                }),
            )
        };
        let (put, del) = (put.unwrap(), del.unwrap());
        assert!(put.status.is_success(), "{}", put.body);
        assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.body);
        let now = call(&app, "GET", "/v1/peerings/a", None, None).await;
        let key_file = app.dir.join("keys/a.key").exists();
        if now.status == StatusCode::OK {
            // The PUT came last: what it answered is what holds.
            assert_eq!(
                now.body["public_key"], put.body["public_key"],
                "try {i}: the key a 2xx returned changed"
            );
            assert!(key_file, "try {i}: key file missing");
        } else {
            assert_eq!(now.status, StatusCode::NOT_FOUND);
            assert!(!key_file, "try {i}: key file of a deleted peering left");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_policy_racing_a_put_that_uses_it_leaves_no_dangling_name() {
    let app = Arc::new(app("policy-delete-race"));
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    for i in 0..40u16 {
        let r = raw(
            &app,
            "PUT",
            "/v1/policies/mine",
            "application/wasm",
            builtin::SPLIT.to_vec(),
        )
        .await;
        assert!(r.status.is_success(), "{}", r.body);
        let mut p = peering(52000 + i);
        p["policy"] = json!("mine");
        let name = format!("p{i}");
        let (a, b) = (app.clone(), app.clone());
        let (put, del) = tokio::join!(
            tokio::spawn(async move {
                call(
                    &a,
                    "PUT",
                    &format!("/v1/peerings/{name}"),
                    Some(p),
                    Some(TOKEN),
                )
                .await
            }),
            tokio::spawn(async move {
                call(&b, "DELETE", "/v1/policies/mine", None, Some(TOKEN)).await
            }),
        );
        let (put, del) = (put.unwrap(), del.unwrap());
        // Exactly one wins: the peering exists and the policy stays, or the policy is gone
        // and the peering was refused.
        let policy = call(&app, "GET", "/v1/policies/mine", None, None)
            .await
            .status;
        match (put.status.is_success(), del.status) {
            (true, StatusCode::CONFLICT) => assert_eq!(policy, StatusCode::OK),
            (false, StatusCode::NO_CONTENT) => {
                assert_eq!(put.status, StatusCode::BAD_REQUEST, "{}", put.body);
                assert_eq!(policy, StatusCode::NOT_FOUND);
            }
            other => panic!("try {i}: {other:?} {} {}", put.body, del.body),
        }
        for p in call(&app, "GET", "/v1/peerings", None, None)
            .await
            .body
            .as_array()
            .unwrap()
        {
            let used = p["spec"]["policy"].as_str().unwrap();
            assert_eq!(
                call(&app, "GET", &format!("/v1/policies/{used}"), None, None)
                    .await
                    .status,
                StatusCode::OK,
                "try {i}: {} names a missing policy",
                p["name"]
            );
        }
        // Free the policy for the next round.
        let names: Vec<String> = call(&app, "GET", "/v1/peerings", None, None)
            .await
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        for n in names {
            call(
                &app,
                "DELETE",
                &format!("/v1/peerings/{n}"),
                None,
                Some(TOKEN),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_racing_deletes_never_lose_an_acknowledged_component() {
    let app = Arc::new(app("policy-gc-race"));
    let variants = [builtin::SPLIT, builtin::BOTH_ON_2, builtin::AUTO];
    let mut tasks = Vec::new();
    for i in 0..24usize {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("p{i}");
            let r = raw(
                &app,
                "PUT",
                &format!("/v1/policies/{name}"),
                "application/wasm",
                variants[i % 3].to_vec(),
            )
            .await;
            assert!(r.status.is_success(), "{}", r.body);
            if i % 2 == 0 {
                let r = call(
                    &app,
                    "DELETE",
                    &format!("/v1/policies/{name}"),
                    None,
                    Some(TOKEN),
                )
                .await;
                assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every policy the state names has its component on disk: a restart restores them all.
    let state: Value =
        serde_json::from_slice(&std::fs::read(app.dir.join("state.json")).unwrap()).unwrap();
    let policies = state["policies"].as_object().unwrap();
    assert_eq!(policies.len(), 12);
    for (name, p) in policies {
        let file = app
            .dir
            .join("policies")
            .join(format!("{}.wasm", p["sha256"].as_str().unwrap()));
        assert!(file.exists(), "{name}: {} lost", file.display());
    }
    let restarted = app_in(app.dir.join("..").join(app.dir.file_name().unwrap()));
    let listed = call(&restarted, "GET", "/v1/policies", None, None)
        .await
        .body;
    assert_eq!(listed.as_array().unwrap().len(), 3 + 12);
    std::mem::forget(restarted); // the first app removes the directory
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_teardown_racing_puts_leaves_keys_only_for_peerings_that_exist() {
    let app = Arc::new(app("teardown-race"));
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    for round in 0..10u16 {
        let mut tasks = Vec::new();
        for i in 0..4u16 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let port = 50000 + round * 10 + i;
                call(
                    &app,
                    "PUT",
                    &format!("/v1/peerings/r{round}p{i}"),
                    Some(peering(port)),
                    Some(TOKEN),
                )
                .await
            }));
        }
        let a = app.clone();
        tasks.push(tokio::spawn(async move {
            call(&a, "POST", "/v1/teardown", None, Some(TOKEN)).await
        }));
        for t in tasks {
            let r = t.await.unwrap();
            assert!(r.status.is_success(), "{}", r.body);
        }
        let peerings: BTreeSet<String> = call(&app, "GET", "/v1/peerings", None, None)
            .await
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        let keys: BTreeSet<String> = std::fs::read_dir(app.dir.join("keys"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".key")
                    .to_owned()
            })
            .collect();
        assert_eq!(keys, peerings, "round {round}");
        let tunnels: BTreeSet<String> = app
            .tunnels
            .tunnels
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let expected: BTreeSet<String> = peerings.iter().map(|n| format!("rmd-{n}")).collect();
        assert_eq!(tunnels, expected, "round {round}: tunnels match the state");
    }
}

/// An app with peering `a`, and a `PUT` of peering `b` started and blocked inside the
/// fake dataplane's apply (returned: the app, the writer, the sender that releases it).
async fn put_b_blocked_in_the_dataplane(
    name: &str,
) -> (
    Arc<App>,
    tokio::task::JoinHandle<Reply>,
    std::sync::mpsc::Sender<()>,
) {
    let app = Arc::new(app(name));
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/a",
        Some(peering(51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    *app.dataplane.gate.lock().unwrap() = Some((started_tx, release_rx));
    let writer = {
        let app = app.clone();
        tokio::spawn(async move {
            call(
                &app,
                "PUT",
                "/v1/peerings/b",
                Some(peering(51821)),
                Some(TOKEN),
            )
            .await
        })
    };
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    (app, writer, release_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_answer_while_a_change_is_being_applied() {
    let (app, writer, release) = put_b_blocked_in_the_dataplane("slow-apply").await;
    // The apply is blocked inside the dataplane; every read still answers, showing the
    // state before the change.
    for path in [
        "/v1/peerings",
        "/v1/peerings/a",
        "/v1/status",
        "/metrics",
        "/v1/cluster",
    ] {
        let r = call(&app, "GET", path, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    let list = call(&app, "GET", "/v1/peerings", None, None).await.body;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "b is not acknowledged yet"
    );
    assert!(!writer.is_finished());
    release.send(()).unwrap();
    let r = writer.await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let list = call(&app, "GET", "/v1/peerings", None, None).await.body;
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_whose_client_goes_away_finishes_as_one() {
    let (app, writer, release) = put_b_blocked_in_the_dataplane("cancelled").await;
    // The client disconnects mid-apply: hyper drops the handler's future.
    writer.abort();
    assert!(writer.await.is_err_and(|e| e.is_cancelled()));
    release.send(()).unwrap();
    // The change still finishes as one (applied, saved and published) ...
    let mut shown = false;
    for _ in 0..500 {
        if call(&app, "GET", "/v1/peerings/b", None, None).await.status == StatusCode::OK {
            shown = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(shown, "the applied change was never published");
    // ... so the next change starts from it and keeps b.
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/c",
        Some(peering(51822)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let names: BTreeSet<String> = app
        .tunnels
        .tunnels
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        names,
        ["rmd-a", "rmd-b", "rmd-c"].map(String::from).into(),
        "b survived"
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(app.dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["peerings"].as_object().unwrap().len(), 3);
}

#[tokio::test]
async fn a_corrupt_key_file_hurts_only_its_own_peering() {
    let app = app("corrupt-key");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    let a = call(
        &app,
        "PUT",
        "/v1/peerings/a",
        Some(peering(51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let running_key = app.tunnels.tunnels.lock().unwrap()["rmd-a"]
        .private_key
        .clone();
    std::fs::write(app.dir.join("keys/a.key"), "not a key\n").unwrap();

    // Another peering's change goes through, and every read still answers.
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/b",
        Some(peering(51821)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let list = call(&app, "GET", "/v1/peerings", None, None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body.as_array().unwrap().len(), 2);
    let shown = call(&app, "GET", "/v1/peerings/a", None, None).await;
    assert_eq!(shown.body["public_key"], a.body["public_key"]);
    // a's tunnel keeps running with the key it had, through changes and resyncs.
    app.daemon.reconcile().await.unwrap();
    assert_eq!(
        app.tunnels.tunnels.lock().unwrap()["rmd-a"].private_key,
        running_key
    );
    assert!(app.tunnels.tunnels.lock().unwrap().contains_key("rmd-b"));

    // A change to a itself is refused, naming the file; nothing changes.
    let before = world(&app).await;
    let mut changed = peering(51820);
    changed["tunnel"]["keepalive"] = json!(9);
    let r = call(&app, "PUT", "/v1/peerings/a", Some(changed), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["type"], "https://remapd.dev/problems/key-unusable");
    assert!(
        r.body["detail"].as_str().unwrap().contains("a.key"),
        "{}",
        r.body
    );
    assert_eq!(world(&app).await, before);
    // Deleting it works and removes the file.
    let r = call(&app, "DELETE", "/v1/peerings/a", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(!app.dir.join("keys/a.key").exists());
    assert!(!app.tunnels.tunnels.lock().unwrap().contains_key("rmd-a"));
}

/// Issue 11 item 7: a deleted key file is never silently replaced by a new key (the
/// peer's handshakes would then fail with no error anywhere). The peering shows why,
/// in its status and the metrics, keeps its running tunnel's key, has no tunnel after
/// a restart, and never blocks the others or the reads.
#[tokio::test]
async fn a_deleted_key_file_is_not_silently_replaced() {
    let app = app("missing-key");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    add_peerings(&app, &[("a", 51820), ("b", 51821)]).await;
    let public_a = call(&app, "GET", "/v1/peerings/a", None, None).await.body["public_key"].clone();
    let running_key = app.tunnels.tunnels.lock().unwrap()["rmd-a"]
        .private_key
        .clone();
    std::fs::remove_file(app.dir.join("keys/a.key")).unwrap();

    // A resync and a change to b: no new key for a, and a says why.
    app.daemon.reconcile().await.unwrap();
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/c",
        Some(peering(51822)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(!app.dir.join("keys/a.key").exists(), "a new key was made");
    let a = call(&app, "GET", "/v1/peerings/a", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.body["key_error"].as_str().unwrap().contains("missing"),
        "{}",
        a.body
    );
    assert_eq!(a.body["public_key"], public_a, "still the key it runs with");
    assert_eq!(
        app.tunnels.tunnels.lock().unwrap()["rmd-a"].private_key,
        running_key
    );
    let b = call(&app, "GET", "/v1/peerings/b", None, None).await;
    assert!(b.body.get("key_error").is_none(), "{}", b.body);
    let metrics = call(&app, "GET", "/metrics", None, None).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("remapd_peerings_with_errors 1"),
        "{}",
        metrics.body
    );
    // A change to a is refused with the way out.
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/a",
        Some(peering(51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["type"], "https://remapd.dev/problems/key-unusable");
    assert!(
        r.body["detail"].as_str().unwrap().contains("re-create"),
        "{}",
        r.body
    );
    assert!(!app.dir.join("keys/a.key").exists());

    // After a restart nothing runs with a's key any more: a has no tunnel, the others
    // do, and every read answers.
    let dir = app.dir.clone();
    let restarted = app_in(dir.clone());
    restarted.daemon.reconcile().await.unwrap();
    assert!(
        !dir.join("keys/a.key").exists(),
        "a new key was made at restart"
    );
    let tunnels = restarted.tunnels.tunnels.lock().unwrap().clone();
    assert!(!tunnels.contains_key("rmd-a"), "{:?}", tunnels.keys());
    assert!(tunnels.contains_key("rmd-b") && tunnels.contains_key("rmd-c"));
    let list = call(&restarted, "GET", "/v1/peerings", None, None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    // The way out: delete and re-create (a new key, to hand to the peer).
    let r = call(&restarted, "DELETE", "/v1/peerings/a", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = call(
        &restarted,
        "PUT",
        "/v1/peerings/a",
        Some(peering(51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body.get("key_error").is_none(), "{}", r.body);
    assert_ne!(r.body["public_key"], public_a);
    std::mem::forget(app); // its directory belongs to `restarted` now
}

/// Issue 11 item 4: a cluster change that leaves peerings undecidable is refused naming
/// all of them, unless forced; forced, they lose their plan at once, and a restart
/// ends in the same place.
#[tokio::test]
async fn a_forced_cluster_change_drops_the_peerings_it_leaves_undecidable() {
    let app = app("cluster-forced");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    add_peerings(&app, &[("a", 51820), ("b", 51821)]).await;
    let mut small = cluster();
    small["remap_pool"] = json!(["30.0.0.0/25"]);
    let r = call(&app, "PUT", "/v1/cluster", Some(small.clone()), Some(TOKEN)).await;
    assert!(r.status.is_client_error(), "{}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("peering(s) b") && detail.contains("force=true"),
        "{detail}"
    );

    let r = call(
        &app,
        "PUT",
        "/v1/cluster?force=true",
        Some(small.clone()),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for name in ["a", "b"] {
        let p = call(&app, "GET", &format!("/v1/peerings/{name}"), None, None).await;
        assert!(p.body["last_error"].is_string(), "{}", p.body);
        assert!(p.body["plan"].is_null(), "{}", p.body);
    }
    assert!(app.routes.routes.lock().unwrap().is_empty());
    assert!(app.tunnels.tunnels.lock().unwrap().is_empty());
    assert!(app.dataplane.state.lock().unwrap().rules.is_empty());
    let after = world(&app).await;
    // A restart ends in the same place.
    let dir = app.dir.clone();
    let restarted = app_in(dir);
    restarted.daemon.reconcile().await.unwrap();
    assert!(restarted.routes.routes.lock().unwrap().is_empty());
    assert!(restarted.tunnels.tunnels.lock().unwrap().is_empty());
    assert!(restarted.dataplane.state.lock().unwrap().rules.is_empty());
    assert_eq!(
        call(&restarted, "GET", "/v1/cluster", None, None)
            .await
            .body,
        small
    );
    assert_eq!(world(&restarted).await, after, "the same after a restart");
    std::mem::forget(app);
    // A pool that fits again brings them back.
    let r = call(
        &restarted,
        "PUT",
        "/v1/cluster",
        Some(cluster()),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(restarted.tunnels.tunnels.lock().unwrap().len(), 2);
}

/// Issue 11 item 3: while one peering's tunnel cannot come up, changes to the other
/// peerings are applied; the broken one carries nothing, shows why, is retried by the
/// resync, and a change to it is refused naming its tunnel.
#[tokio::test]
async fn a_broken_tunnel_holds_back_only_its_own_peering() {
    let app = app("broken-tunnel");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    add_peerings(&app, &[("a", 51820), ("b", 51821)]).await;
    // a's tunnel process died and cannot start again.
    app.tunnels.tunnels.lock().unwrap().remove("rmd-a");
    app.tunnels
        .fail_interfaces
        .lock()
        .unwrap()
        .insert("rmd-a".into(), "UDP port 51820 is in use".into());
    app.daemon.reconcile().await.unwrap();
    let routes_of = |app: &App, interface: &str| {
        app.routes
            .routes
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.interface == interface)
            .count()
    };
    assert_eq!(routes_of(&app, "rmd-a"), 0, "a carries nothing");
    assert!(routes_of(&app, "rmd-b") > 0);

    // A new peering and a change to b both land.
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/c",
        Some(peering(51822)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut changed = peering(51821);
    changed["tunnel"]["keepalive"] = json!(7);
    let r = call(&app, "PUT", "/v1/peerings/b", Some(changed), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        app.tunnels.tunnels.lock().unwrap()["rmd-b"].keepalive,
        Some(7)
    );
    assert!(routes_of(&app, "rmd-c") > 0);
    let rules = app.dataplane.state.lock().unwrap().clone();
    assert!(rules.rules.iter().all(|r| r.interface != "rmd-a"));
    assert!(rules.borders.iter().all(|b| b.interface != "rmd-a"));
    // a says why; the metric counts it.
    let a = call(&app, "GET", "/v1/peerings/a", None, None).await;
    assert!(
        a.body["tunnel_error"].as_str().unwrap().contains("in use"),
        "{}",
        a.body
    );
    let metrics = call(&app, "GET", "/metrics", None, None).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("remapd_peerings_with_errors 1"),
        "{}",
        metrics.body
    );
    // A change to a is refused, naming its tunnel; nothing else moves.
    let before = world(&app).await;
    let mut changed = peering(51820);
    changed["tunnel"]["keepalive"] = json!(9);
    let r = call(&app, "PUT", "/v1/peerings/a", Some(changed), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.body["step"], "tunnels", "{}", r.body);
    assert!(
        r.body["detail"].as_str().unwrap().contains("rmd-a"),
        "{}",
        r.body
    );
    assert_eq!(world(&app).await, before);
    // Fixed: the resync brings it back.
    app.tunnels.fail_interfaces.lock().unwrap().clear();
    app.daemon.reconcile().await.unwrap();
    assert!(routes_of(&app, "rmd-a") > 0);
    let a = call(&app, "GET", "/v1/peerings/a", None, None).await;
    assert!(a.body.get("tunnel_error").is_none(), "{}", a.body);
}

/// A new tunnel carries nothing before its border is in place: while the dataplane step
/// of the change that creates it runs, its peer may use no source address (empty
/// allowed-ips, so WireGuard drops whatever the peer sends); afterwards it has the
/// planned allowed-ips. A tunnel that already has its border keeps its allowed-ips
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_tunnel_accepts_nothing_until_its_border_is_in_place() {
    let (app, writer, release) = put_b_blocked_in_the_dataplane("border-window").await;
    let tunnel = |name: &str| app.tunnels.tunnels.lock().unwrap().get(name).cloned();
    let b = tunnel("rmd-b").expect("b's tunnel is up before the dataplane step");
    assert!(
        b.allowed_ips.is_empty(),
        "b's peer may send before b's border exists: {:?}",
        b.allowed_ips
    );
    let a_before = tunnel("rmd-a").unwrap();
    assert!(!a_before.allowed_ips.is_empty());
    release.send(()).unwrap();
    let r = writer.await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let planned: Vec<String> = serde_json::from_value(r.body["plan"]["allowed_ips"].clone())
        .expect("the plan's allowed-ips");
    let b = tunnel("rmd-b").unwrap();
    assert!(!planned.is_empty());
    assert_eq!(
        b.allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        planned
    );
    assert_eq!(tunnel("rmd-a").unwrap(), a_before);
    // The border was in the dataplane before the tunnel opened.
    let borders = app.dataplane.state.lock().unwrap().borders.clone();
    assert!(
        borders.iter().any(|x| x.interface == "rmd-b"),
        "{borders:?}"
    );
}

/// `GET /v1/decisions{query}`, answered 200.
async fn decision_log(app: &App, query: &str) -> Vec<Value> {
    let r = call(app, "GET", &format!("/v1/decisions{query}"), None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body.as_array().unwrap().clone()
}

async fn put_peering(app: &App, name: &str, body: Value) -> Reply {
    call(
        app,
        "PUT",
        &format!("/v1/peerings/{name}"),
        Some(body),
        Some(TOKEN),
    )
    .await
}

/// Every decision is logged with what became of it — applied, not applied (and why),
/// dry run, rejected, policy error — queryable by peering, and the log survives a
/// restart; decision durations are a histogram in `/metrics`.
#[tokio::test]
async fn every_decision_is_logged_with_what_became_of_it() {
    let dir = fresh_dir("decision-log");
    let app = app_in(dir.clone());
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    // Applied.
    let r = put_peering(&app, "a", peering(51820)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let auto_sha = call(&app, "GET", "/v1/policies/auto", None, None)
        .await
        .body["sha256"]
        .clone();
    let a = &decision_log(&app, "?peering=a").await[0];
    assert_eq!(a["outcome"], "applied", "{a}");
    assert_eq!(a["policy"], "auto");
    assert_eq!(a["policy_sha256"], auto_sha);
    assert_eq!(a["input_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(a["strategy"], r.body["decision"]["strategy"]);
    assert_eq!(a["mappings"], r.body["decision"]["mappings"]);
    assert!(a["fuel_used"].as_u64().unwrap() > 0 && a["duration_us"].as_u64().unwrap() > 0);

    // A policy error: split refuses a peer that cannot translate.
    let mut refused = peering(51821);
    refused["policy"] = json!("split");
    refused["remote"] = remote("cluster-3", false);
    let r = put_peering(&app, "b", refused).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let b = &decision_log(&app, "?peering=b").await[0];
    assert_eq!(b["outcome"], "policy-error", "{b}");
    assert!(b["reason"].as_str().unwrap().contains("refused"), "{b}");

    // Rejected: auto decides both-on-local for a peer without NAT, which cannot be
    // compiled without the peer's exports.
    let mut no_exports = peering(51822);
    no_exports["remote"] = remote("cluster-4", false);
    let r = put_peering(&app, "c", no_exports).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let c = &decision_log(&app, "?peering=c").await[0];
    assert_eq!(c["outcome"], "rejected", "{c}");
    assert_eq!(c["strategy"], "both-on-local", "{c}");
    assert!(
        c["reason"].as_str().unwrap().contains("view_of_local"),
        "{c}"
    );

    // Not applied: a valid decision whose change failed to apply.
    inject(&app, Step::Dataplane, Some("injected"));
    let r = put_peering(&app, "d", peering(51823)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    inject(&app, Step::Dataplane, None);
    let d = &decision_log(&app, "?peering=d").await[0];
    assert_eq!(d["outcome"], "not-applied", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("injected"), "{d}");

    // Dry run.
    let r = call(
        &app,
        "POST",
        "/v1/policies/auto/evaluate",
        Some(json!({"remote": remote("cluster-5", true)})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let dry = &decision_log(&app, "?peering=-dry-run").await[0];
    assert_eq!(dry["outcome"], "dry-run", "{dry}");

    // Newest first, bounded, and bad queries are problems.
    let all = decision_log(&app, "").await;
    assert_eq!(all[0], *dry);
    assert_eq!(decision_log(&app, "?limit=2").await.len(), 2);
    for bad in ["?limit=0", "?limit=5000", "?peering=Not_A_Name", "?bogus=1"] {
        let r = call(&app, "GET", &format!("/v1/decisions{bad}"), None, None).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "", None);
    }
    let m = metrics(&app).await;
    assert!(
        m.contains("remapd_policy_decision_duration_seconds_count"),
        "{m}"
    );

    // The file survives a restart (the first daemon is forgotten, not dropped: dropping
    // an App removes its directory).
    std::mem::forget(app);
    let again = app_in(dir);
    assert_eq!(decision_log(&again, "").await.len(), all.len());
}

/// `PUT /v1/policies/{name}?dry_run=true` answers, per peering that uses the policy,
/// the decision in force and the new component's, with the rules, routes and
/// allowed-ips the replacement would add and remove — and changes nothing: not the
/// stored policy, not the state, not the kernel (fakes), not reads in the meantime.
#[tokio::test]
async fn a_policy_replacement_can_be_previewed_without_changing_anything() {
    let (app, auto_sha) = mine_is_auto_and_deciding_a_peer_without_nat("policy-preview").await;
    // b: a peer with NAT (auto and split both split); c: another policy.
    let mut b = peering(51821);
    b["policy"] = json!("mine");
    b["remote"] = remote("cluster-3", true);
    assert_eq!(put_peering(&app, "b", b).await.status, StatusCode::CREATED);
    assert_eq!(
        put_peering(&app, "c", peering(51822)).await.status,
        StatusCode::CREATED
    );
    let before = world(&app).await;

    let r = raw(
        &app,
        "PUT",
        "/v1/policies/mine?dry_run=true",
        "application/wasm",
        builtin::SPLIT.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let preview = &r.body;
    assert_eq!(preview["dry_run"], true);
    assert_eq!(preview["sha256"].as_str().unwrap().len(), 64);
    assert_ne!(preview["sha256"], auto_sha);
    let peerings = preview["peerings"].as_array().unwrap();
    let names: Vec<&str> = peerings
        .iter()
        .map(|p| p["peering"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "only the peerings that use it");
    // a: split refuses it — the real replacement would be refused; its whole plan goes.
    let pa = &peerings[0];
    assert_eq!(pa["old"]["strategy"], "both-on-local", "{pa}");
    assert!(pa["new"].is_null(), "{pa}");
    assert!(pa["error"].as_str().unwrap().contains("refused"), "{pa}");
    let a_now = call(&app, "GET", "/v1/peerings/a", None, None).await.body;
    let a_rules = a_now["plan"]["rules"].as_array().unwrap().len();
    assert_eq!(
        pa["rules"]["removed"].as_array().unwrap().len(),
        a_rules,
        "{pa}"
    );
    assert!(pa["rules"]["added"].as_array().unwrap().is_empty(), "{pa}");
    assert_eq!(
        pa["allowed_ips"]["removed"], a_now["plan"]["allowed_ips"],
        "{pa}"
    );
    // b: split decides as auto did: nothing would change.
    let pb = &peerings[1];
    assert_eq!(pb["old"], pb["new"], "{pb}");
    assert!(pb["error"].is_null(), "{pb}");
    for field in ["rules", "routes", "allowed_ips"] {
        assert_eq!(
            pb[field],
            json!({"added": [], "removed": []}),
            "{field}: {pb}"
        );
    }

    // Nothing changed, and the preview's decisions are logged as dry runs.
    assert_eq!(
        call(&app, "GET", "/v1/policies/mine", None, None)
            .await
            .body["sha256"],
        auto_sha
    );
    assert_eq!(world(&app).await, before);
    let logged = decision_log(&app, "?peering=a").await;
    assert_eq!(logged[0]["outcome"], "policy-error", "{}", logged[0]);
    assert_eq!(logged[0]["policy_sha256"], preview["sha256"]);
    let logged = decision_log(&app, "?peering=b").await;
    assert_eq!(logged[0]["outcome"], "dry-run", "{}", logged[0]);

    // A preview of a component that is no component is the upload's usual 400.
    let r = raw(
        &app,
        "PUT",
        "/v1/policies/mine?dry_run=true",
        "application/wasm",
        b"garbage".to_vec(),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::BAD_REQUEST,
        "not a WebAssembly binary",
        Some("/body"),
    );
    assert_eq!(world(&app).await, before);
}

/// A component at least `MIN_CACHED_BYTES` long: the built-in split with a custom
/// section padding it (custom sections cost nothing to compile).
fn big_component(tag: u8) -> Vec<u8> {
    let mut bytes = builtin::SPLIT.to_vec();
    let name = b"remapd-test-padding";
    let payload = vec![tag; remapd::policy::MIN_CACHED_BYTES];
    let size = 1 + name.len() + payload.len();
    bytes.push(0); // custom section id
    let mut n = size;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.push(u8::try_from(name.len()).unwrap());
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

fn cwasm_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".cwasm"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A preview compiles the component and, like an upload, keeps the compilation on disk;
/// nothing installs it, so it must not stay there. An upload's stays until the policy
/// goes.
#[tokio::test]
async fn a_preview_leaves_no_compiled_component_behind() {
    let (app, compiled) = app_with_compiled_cache("preview-cache");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    let r = raw(
        &app,
        "PUT",
        "/v1/policies/big?dry_run=true",
        "application/wasm",
        big_component(1),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(cwasm_files(&compiled), Vec::<String>::new());

    let r = raw(
        &app,
        "PUT",
        "/v1/policies/big",
        "application/wasm",
        big_component(2),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let installed = format!("{}.cwasm", r.body["sha256"].as_str().unwrap());
    assert_eq!(cwasm_files(&compiled), std::slice::from_ref(&installed));
    // A preview of other bytes removes only its own; one of the installed bytes keeps it.
    for tag in [3, 2] {
        let r = raw(
            &app,
            "PUT",
            "/v1/policies/big?dry_run=true",
            "application/wasm",
            big_component(tag),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(cwasm_files(&compiled), std::slice::from_ref(&installed));
    }
    let r = call(&app, "DELETE", "/v1/policies/big", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(cwasm_files(&compiled), Vec::<String>::new());
}

/// A peering may pin a policy version (`name@sha256:<hex>`): re-uploading the name
/// changes the unpinned peerings' decisions, never the pinned one's — also after a
/// restart and after the name is deleted — and a pin of a version the gateway does not
/// have is refused, changing nothing.
#[tokio::test]
async fn a_pinned_peering_keeps_its_policy_version() {
    let dir = fresh_dir("pinned");
    let app = app_in(dir.clone());
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    let upload = |bytes: &'static [u8]| {
        raw(
            &app,
            "PUT",
            "/v1/policies/mine",
            "application/wasm",
            bytes.to_vec(),
        )
    };
    let r = upload(builtin::AUTO).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v1 = r.body["sha256"].as_str().unwrap().to_owned();
    // Two peers with NAT: auto splits; both-on-2 (uploaded later) does both rewrites here.
    let mut pinned = peering(51820);
    pinned["policy"] = json!(format!("mine@sha256:{v1}"));
    pinned["remote"] = remote("cluster-2", true);
    let r = put_peering(&app, "pinned", pinned).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut floating = peering(51821);
    floating["policy"] = json!("mine");
    floating["remote"] = remote("cluster-3", true);
    assert_eq!(
        put_peering(&app, "floating", floating).await.status,
        StatusCode::CREATED
    );
    let decision = |name: &'static str| {
        let app = &app;
        async move {
            call(app, "GET", &format!("/v1/peerings/{name}"), None, None)
                .await
                .body["decision"]
                .clone()
        }
    };
    let pinned_before = decision("pinned").await;
    let floating_before = decision("floating").await;
    assert_eq!(pinned_before["strategy"], "split");

    // A pin of a version this gateway never had: refused, nothing changed.
    let before = world(&app).await;
    let mut unknown = peering(51822);
    unknown["policy"] = json!(format!("mine@sha256:{}", "0".repeat(64)));
    let r = put_peering(&app, "unknown", unknown.clone()).await;
    assert_problem(
        &r,
        StatusCode::BAD_REQUEST,
        "has no version sha256:000",
        Some("/policy"),
    );
    unknown["policy"] = json!("mine@sha256:xyz");
    let r = put_peering(&app, "unknown", unknown).await;
    assert_problem(
        &r,
        StatusCode::BAD_REQUEST,
        "not a policy reference",
        Some("/policy"),
    );
    assert_eq!(world(&app).await, before);

    // Re-upload: the floating peering changes, the pinned one does not.
    let r = upload(builtin::BOTH_ON_2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_ne!(r.body["sha256"], json!(v1));
    assert_ne!(
        decision("floating").await,
        floating_before,
        "the re-upload decides again"
    );
    assert_eq!(decision("pinned").await, pinned_before, "the pin holds");
    assert!(
        app.dir.join("policies").join(format!("{v1}.wasm")).exists(),
        "the pinned version's component is kept"
    );
    // Deleting the name: refused while the floating peering uses it; once it is gone,
    // the name can go and the pinned version stays.
    assert_eq!(
        call(&app, "DELETE", "/v1/peerings/floating", None, Some(TOKEN))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = call(&app, "DELETE", "/v1/policies/mine", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    app.daemon.reconcile().await.unwrap();
    assert_eq!(decision("pinned").await, pinned_before);

    // And after a restart.
    std::mem::forget(app);
    let again = app_in(dir);
    again.daemon.reconcile().await.unwrap();
    let r = call(&again, "GET", "/v1/peerings/pinned", None, None).await;
    assert_eq!(r.body["decision"], pinned_before, "{}", r.body);
    assert!(r.body["last_error"].is_null(), "{}", r.body);
}
