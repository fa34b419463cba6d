//! In-process API tests with fake appliers (no root): every endpoint, the documented
//! status and problem body for bad input, and that bad input changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use remapd::policy::builtin;
use serde_json::json;
use support::*;

#[tokio::test]
async fn cluster_round_trip_and_bad_input() {
    let app = app("cluster");
    assert_problem(
        &call(&app, "GET", "/v1/cluster", None, None).await,
        StatusCode::NOT_FOUND,
        "not configured",
        None,
    );
    let r = call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = call(&app, "GET", "/v1/cluster", None, None).await;
    assert_eq!(r.body["name"], "cluster-1");

    // Each bad request: the documented status, a problem with a pointer, nothing changed.
    let mut bad = cluster();
    bad["pod_cidrs"][0] = json!("40.0.0.0/33");
    assert_problem(
        &call(&app, "PUT", "/v1/cluster", Some(bad), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "invalid JSON",
        Some("/pod_cidrs/0"),
    );
    let mut bad = cluster();
    bad["pod_cidrs"][0] = json!("40.0.0.1/24");
    assert_problem(
        &call(&app, "PUT", "/v1/cluster", Some(bad), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "did you mean 40.0.0.0/24",
        Some("/pod_cidrs/0"),
    );
    let mut bad = cluster();
    bad["pod_cidr"] = json!(["1.0.0.0/8"]);
    assert_problem(
        &call(&app, "PUT", "/v1/cluster", Some(bad), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "unknown field `pod_cidr`",
        None,
    );
    let mut bad = cluster();
    bad["service_cidrs"] = json!(["40.0.0.0/16"]);
    assert_problem(
        &call(&app, "PUT", "/v1/cluster", Some(bad), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "overlaps",
        Some("/service_cidrs/0"),
    );
    let mut bad = cluster();
    bad["name"] = json!("Not A Name");
    assert_problem(
        &call(&app, "PUT", "/v1/cluster", Some(bad), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "not a valid name",
        Some("/name"),
    );
    let req = Request::builder()
        .method("PUT")
        .uri("/v1/cluster")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"name\": \"c\", "))
        .unwrap();
    assert_problem(
        &send(&app, req).await,
        StatusCode::BAD_REQUEST,
        "invalid JSON",
        None,
    );
    let mut other = cluster();
    other["name"] = json!("someone-else");
    assert_problem(
        &call(&app, "PUT", "/v1/cluster", Some(other.clone()), None).await,
        StatusCode::UNAUTHORIZED,
        "bearer token",
        None,
    );
    assert_problem(
        &call(
            &app,
            "PUT",
            "/v1/cluster",
            Some(other),
            Some("wrong-token-0123456789"),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "bearer token",
        None,
    );
    assert_eq!(
        call(&app, "GET", "/v1/cluster", None, None).await.body,
        cluster(),
        "nothing changed"
    );
    assert_problem(
        &call(&app, "GET", "/v1/nothing-here", None, None).await,
        StatusCode::NOT_FOUND,
        "no such endpoint",
        None,
    );
}

/// Every CIDR field takes IPv6 as well as IPv4; a bad IPv6 prefix or a view of the
/// other family is refused with a pointer, and nothing changes.
#[tokio::test]
async fn dual_stack_cidrs_are_accepted_and_bad_ones_refused() {
    let app = app("dual-stack");
    let mut dual = cluster();
    dual["pod_cidrs"] = json!(["40.0.0.0/24", "fd00:40::/56"]);
    dual["service_cidrs"] = json!(["10.96.0.0/16", "fd00:96::/108"]);
    dual["remap_pool"] = json!(["30.0.0.0/16", "fd00:30::/48"]);
    let r = call(&app, "PUT", "/v1/cluster", Some(dual.clone()), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let stored = call(&app, "GET", "/v1/cluster", None, None).await.body;
    assert_eq!(stored["pod_cidrs"], json!(["40.0.0.0/24", "fd00:40::/56"]));

    for (field, value, detail, pointer) in [
        (
            "pod_cidrs",
            "fd00:40::1/56",
            "did you mean fd00:40::/56",
            "/pod_cidrs/1",
        ),
        (
            "pod_cidrs",
            "fe80::/64",
            "link-local (fe80::/10)",
            "/pod_cidrs/1",
        ),
        ("pod_cidrs", "::/0", "never a cluster's", "/pod_cidrs/1"),
        ("pod_cidrs", "fd00:40::/129", "invalid JSON", "/pod_cidrs/1"),
        ("remap_pool", "fd00:40::/60", "overlaps", "/remap_pool/1"),
    ] {
        let mut bad = dual.clone();
        bad[field][1] = json!(value);
        assert_problem(
            &call(&app, "PUT", "/v1/cluster", Some(bad), Some(TOKEN)).await,
            StatusCode::BAD_REQUEST,
            detail,
            Some(pointer),
        );
    }
    assert_eq!(
        call(&app, "GET", "/v1/cluster", None, None).await.body,
        stored,
        "nothing changed"
    );

    // A peer's exports that see an IPv4 prefix of ours as an IPv6 one, or with another
    // length, are refused where they say so.
    for (real, remapped, detail) in [
        ("fd00:40::/56", "60.0.0.0/24", "different families"),
        ("40.0.0.0/24", "fd00:60::/24", "different families"),
        ("fd00:40::/56", "fd00:60::/64", "differ in length"),
    ] {
        let mut p = peering(51830);
        p["remote"]["view_of_local"] = json!([{"real": real, "remapped": remapped}]);
        assert_problem(
            &call(&app, "PUT", "/v1/peerings/c2", Some(p), Some(TOKEN)).await,
            StatusCode::BAD_REQUEST,
            detail,
            Some("/remote/view_of_local/0/remapped"),
        );
    }
    assert_eq!(
        call(&app, "GET", "/v1/peerings", None, None).await.body,
        json!([]),
        "no peering was created"
    );

    // A dual-stack peering with the default policy (0.2.0): a view of each family, IPv6
    // rules, routes, allowed-ips and border prefixes next to the IPv4 ones.
    let mut p = peering(51830);
    p["remote"]["pod_cidrs"] = json!(["40.0.0.0/24", "fd00:40::/56"]);
    let r = call(&app, "PUT", "/v1/peerings/c2", Some(p), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body["decision"]["mappings"],
        json!([
            {"real": "40.0.0.0/24", "remapped": "30.0.0.0/24"},
            {"real": "fd00:40::/56", "remapped": "fd00:30::/56"},
        ])
    );
    assert_eq!(
        r.body["plan"]["routes"],
        json!(["30.0.0.0/24", "fd00:30::/56"])
    );
    assert_eq!(
        r.body["plan"]["allowed_ips"],
        json!(["40.0.0.0/24", "fd00:40::/56"])
    );
    assert_eq!(
        r.body["plan"]["border"]["sources"],
        json!(["30.0.0.0/24", "fd00:30::/56"])
    );
    let rules = app.dataplane.state.lock().unwrap().rules.clone();
    assert_eq!(rules.len(), 4, "{rules:?}");
    assert!(
        rules
            .iter()
            .any(|r| r.from.to_string() == "fd00:30::/56" && r.to.to_string() == "fd00:40::/56"),
        "{rules:?}"
    );
    let routes: Vec<String> = app
        .routes
        .routes
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.prefix.to_string())
        .collect();
    assert_eq!(routes, ["30.0.0.0/24", "fd00:30::/56"]);

    // A remap:policy@0.1.0 component uploads, says it decides IPv4 only, and a
    // dual-stack peering that names it is refused; the peering above is untouched.
    let r = raw(
        &app,
        "PUT",
        "/v1/policies/old-split",
        "application/wasm",
        include_bytes!("fixtures/split-policy-0.1.0.wasm").to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["contract"], "remap:policy@0.1.0");
    assert_eq!(r.body["families"], json!(["ipv4"]));
    assert!(
        r.body["adapted"].as_str().unwrap().contains("IPv4 only"),
        "{}",
        r.body
    );
    let before = call(&app, "GET", "/v1/peerings", None, None).await.body;
    let mut p = peering(51831);
    p["policy"] = json!("old-split");
    p["remote"]["name"] = json!("cluster-3");
    p["remote"]["pod_cidrs"] = json!(["40.0.0.0/24", "fd00:40::/56"]);
    let r = call(&app, "PUT", "/v1/peerings/c3", Some(p), Some(TOKEN)).await;
    assert!(r.status.is_client_error(), "{}: {}", r.status, r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("carries IPv4 only"),
        "{}",
        r.body
    );
    assert_eq!(
        call(&app, "GET", "/v1/peerings", None, None).await.body,
        before,
        "nothing changed"
    );
}

#[tokio::test]
async fn policies_upload_replace_evaluate_delete() {
    let app = app("policies");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    let r = call(&app, "GET", "/v1/policies", None, None).await;
    let names: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["auto", "both-on-2", "split"]);
    assert!(r.body[0]["builtin"].as_bool().unwrap());

    assert_problem(
        &raw(
            &app,
            "PUT",
            "/v1/policies/mine",
            "application/wasm",
            b"garbage, not wasm".to_vec(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "not a WebAssembly binary",
        Some("/body"),
    );
    assert_problem(
        &raw(
            &app,
            "PUT",
            "/v1/policies/mine",
            "application/wasm",
            b"\0asm\x01\0\0\0".to_vec(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "not a component",
        None,
    );
    assert_problem(
        &raw(
            &app,
            "PUT",
            "/v1/policies/mine",
            "application/json",
            builtin::SPLIT.to_vec(),
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/wasm",
        None,
    );
    assert_problem(
        &raw(
            &app,
            "PUT",
            "/v1/policies/auto",
            "application/wasm",
            builtin::SPLIT.to_vec(),
        )
        .await,
        StatusCode::CONFLICT,
        "built-in",
        None,
    );
    assert_eq!(
        call(&app, "GET", "/v1/policies", None, None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        3,
        "nothing added"
    );

    let r = raw(
        &app,
        "PUT",
        "/v1/policies/mine",
        "application/wasm",
        builtin::SPLIT.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["size"], builtin::SPLIT.len());
    assert_eq!(r.body["sha256"].as_str().unwrap().len(), 64);
    let r = raw(
        &app,
        "PUT",
        "/v1/policies/mine",
        "application/wasm",
        builtin::BOTH_ON_2.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "replaced");
    assert_eq!(
        call(&app, "GET", "/v1/policies/mine", None, None)
            .await
            .body["size"],
        builtin::BOTH_ON_2.len()
    );

    let body = json!({"remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24"], "capabilities": {"nat_dataplane": true}}});
    let r = call(
        &app,
        "POST",
        "/v1/policies/mine/evaluate",
        Some(body.clone()),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["decision"]["strategy"], "both-on-remote");
    assert_eq!(r.body["plan"]["routes"], json!(["30.0.0.0/24"]));
    let r = call(
        &app,
        "POST",
        "/v1/policies/split/evaluate",
        Some(body),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.body["decision"]["mappings"][0]["remapped"], "30.0.0.0/24");
    assert!(
        app.dataplane.state.lock().unwrap().rules.is_empty(),
        "a dry run applies nothing"
    );
    assert!(
        app.tunnels.tunnels.lock().unwrap().is_empty(),
        "nor creates a tunnel"
    );
    assert_eq!(
        call(&app, "GET", "/v1/peerings", None, None).await.body,
        json!([]),
        "nor saves a peering"
    );
    let no_nat = json!({"remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24"]}});
    assert_problem(
        &call(
            &app,
            "POST",
            "/v1/policies/split/evaluate",
            Some(no_nat),
            Some(TOKEN),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "cannot run the NAT dataplane",
        None,
    );
    assert_problem(
        &call(
            &app,
            "POST",
            "/v1/policies/nope/evaluate",
            Some(json!({"remote": {"name": "x", "pod_cidrs": ["1.0.0.0/8"]}})),
            Some(TOKEN),
        )
        .await,
        StatusCode::NOT_FOUND,
        "no policy",
        None,
    );

    let mut p = peering(51820);
    p["policy"] = json!("mine");
    assert_eq!(
        call(&app, "PUT", "/v1/peerings/c2", Some(p), Some(TOKEN))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_problem(
        &call(&app, "DELETE", "/v1/policies/mine", None, Some(TOKEN)).await,
        StatusCode::CONFLICT,
        "used by peering(s) c2",
        None,
    );
    assert_problem(
        &call(&app, "DELETE", "/v1/policies/split", None, Some(TOKEN)).await,
        StatusCode::CONFLICT,
        "built in",
        None,
    );
    assert_eq!(
        call(&app, "DELETE", "/v1/peerings/c2", None, Some(TOKEN))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, "DELETE", "/v1/policies/mine", None, Some(TOKEN))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&app, "GET", "/v1/policies/mine", None, None).await,
        StatusCode::NOT_FOUND,
        "no policy",
        None,
    );
}

#[tokio::test]
async fn peerings_apply_report_and_remove_exactly() {
    let app = app("peerings");
    assert_problem(
        &call(
            &app,
            "PUT",
            "/v1/peerings/c2",
            Some(peering(51820)),
            Some(TOKEN),
        )
        .await,
        StatusCode::CONFLICT,
        "configure the local cluster first",
        None,
    );
    assert_problem(
        &call(
            &app,
            "GET",
            "/v1/explain?from=40.0.0.5&to=30.0.0.9",
            None,
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "configure the local cluster first",
        None,
    );
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/c2",
        Some(peering(51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["decision"]["strategy"], "split");
    assert_eq!(r.body["interface"], "rmd-c2");
    assert_eq!(r.body["plan"]["allowed_ips"], json!(["40.0.0.0/24"]));
    assert_eq!(r.body["applied"].as_array().unwrap().len(), 2);
    let exports = &r.body["exports"];
    assert_eq!(exports["remote"]["name"], "cluster-1");
    assert_eq!(
        exports["remote"]["view_of_local"][0]["remapped"],
        "30.0.0.0/24"
    );
    assert_eq!(exports["tunnel"]["endpoint"], "198.18.0.1:51820");
    assert_eq!(exports["tunnel"]["remote_public_key"], r.body["public_key"]);
    assert_eq!(app.dataplane.state.lock().unwrap().rules.len(), 2);
    // The tunnel's ingress is a border: the peer's view in, our exported CIDRs only.
    assert_eq!(
        r.body["plan"]["border"],
        json!({"sources": ["30.0.0.0/24"], "destinations": ["40.0.0.0/24", "10.96.0.0/16"]})
    );
    let borders = app.dataplane.state.lock().unwrap().borders.clone();
    assert_eq!(borders.len(), 1);
    assert_eq!(borders[0].interface, "rmd-c2");
    assert_eq!(borders[0].sources, vec!["30.0.0.0/24".parse().unwrap()]);
    assert_eq!(app.routes.routes.lock().unwrap().len(), 1);
    assert_eq!(app.tunnels.tunnels.lock().unwrap().len(), 1);
    // The exports endpoint gives exactly that JSON, and it is a valid peering spec.
    let ex = call(&app, "GET", "/v1/peerings/c2/exports", None, None).await;
    assert_eq!(&ex.body, exports);

    // Idempotent PUT: same result, nothing re-created.
    let same = r.body["spec"].clone();
    let again = call(&app, "PUT", "/v1/peerings/c2", Some(same), Some(TOKEN)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(app.tunnels.created.lock().unwrap()["rmd-c2"], 1);

    // Conflicts and bad input change nothing.
    let before = call(&app, "GET", "/v1/peerings", None, None).await.body;
    let mut p = peering(51820);
    p["remote"]["name"] = json!("cluster-3");
    assert_problem(
        &call(&app, "PUT", "/v1/peerings/c3", Some(p), Some(TOKEN)).await,
        StatusCode::CONFLICT,
        "listen port 51820 is already used",
        Some("/tunnel/listen_port"),
    );
    let mut p = peering(51821);
    p["tunnel"]["remote_public_key"] = json!("not-a-key");
    assert_problem(
        &call(&app, "PUT", "/v1/peerings/c3", Some(p), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "not a WireGuard public key",
        Some("/tunnel/remote_public_key"),
    );
    let mut p = peering(51821);
    p["remote"]["pod_cidrs"] = json!(["40.0.0.7/24"]);
    assert_problem(
        &call(&app, "PUT", "/v1/peerings/c3", Some(p), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "host bits",
        Some("/remote/pod_cidrs/0"),
    );
    let mut p = peering(51821);
    p["policy"] = json!("split");
    p["remote"]["capabilities"]["nat_dataplane"] = json!(false);
    assert_problem(
        &call(&app, "PUT", "/v1/peerings/c3", Some(p), Some(TOKEN)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "cannot run the NAT dataplane",
        None,
    );
    let mut p = peering(51821);
    p["policy"] = json!("missing");
    assert_problem(
        &call(&app, "PUT", "/v1/peerings/c3", Some(p), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "no policy named",
        Some("/policy"),
    );
    let mut p = peering(51821);
    p["tunnel"]["colour"] = json!("blue");
    assert_problem(
        &call(&app, "PUT", "/v1/peerings/c3", Some(p), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "unknown field `colour`",
        None,
    );
    assert_problem(
        &call(&app, "PUT", "/v1/peerings/c3", Some(peering(51821)), None).await,
        StatusCode::UNAUTHORIZED,
        "bearer",
        None,
    );
    assert_eq!(
        call(&app, "GET", "/v1/peerings", None, None).await.body,
        before,
        "nothing changed"
    );
    assert_eq!(app.tunnels.tunnels.lock().unwrap().len(), 1);

    // A second peering may not take what the first holds (the pool is the same /16).
    let mut p = peering(51821);
    p["remote"]["name"] = json!("cluster-3");
    let r = call(&app, "PUT", "/v1/peerings/c3", Some(p), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body["decision"]["mappings"][0]["remapped"], "30.0.1.0/24",
        "allocations never collide"
    );

    // Translation lookup.
    let t = call(&app, "GET", "/v1/translate?address=30.0.0.9", None, None).await;
    assert_eq!(t.body[0]["peering"], "c2");
    assert_eq!(t.body[0]["translated"], "40.0.0.9");
    assert_problem(
        &call(&app, "GET", "/v1/translate?address=nonsense", None, None).await,
        StatusCode::BAD_REQUEST,
        "not an IPv4 or IPv6 address",
        Some("/address"),
    );

    // Path explanation: the route, the tunnel and its peer; the peer's side is unknown
    // until its exports say how it sees us.
    let e = call(
        &app,
        "GET",
        "/v1/explain?from=40.0.0.5&to=30.0.0.9",
        None,
        None,
    )
    .await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.body);
    assert_eq!(e.body.as_array().unwrap().len(), 1, "{}", e.body);
    let path = &e.body[0];
    assert_eq!(path["peering"], "c2");
    assert_eq!(path["direction"], "outbound");
    assert_eq!(path["endpoint"], "198.18.0.2:51820");
    assert_eq!(path["request"]["steps"][0]["kind"], "route");
    assert_eq!(path["request"]["steps"][0]["gateway"], "local");
    assert_eq!(path["request"]["verdict"]["outcome"], "unknown", "{path}");
    let explain_problem = |query: &'static str, status, text: &'static str, at| {
        let app = &app;
        async move {
            assert_problem(
                &call(app, "GET", &format!("/v1/explain?{query}"), None, None).await,
                status,
                text,
                at,
            );
        }
    };
    explain_problem(
        "from=nonsense&to=30.0.0.9",
        StatusCode::BAD_REQUEST,
        "not an IPv4 or IPv6 address",
        Some("/query/from"),
    )
    .await;
    explain_problem(
        "from=40.0.0.5&to=30.0.0.999",
        StatusCode::BAD_REQUEST,
        "not an IPv4 or IPv6 address",
        Some("/query/to"),
    )
    .await;
    explain_problem(
        "from=40.0.0.5&to=30.0.0.9&peering=nope",
        StatusCode::NOT_FOUND,
        "no peering",
        None,
    )
    .await;
    explain_problem(
        "from=8.8.8.8&to=1.1.1.1",
        StatusCode::UNPROCESSABLE_ENTITY,
        "no path through a peering",
        None,
    )
    .await;

    // Deleting removes exactly what the peering made.
    assert_eq!(
        call(&app, "DELETE", "/v1/peerings/c2", None, Some(TOKEN))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&app, "GET", "/v1/peerings/c2", None, None).await,
        StatusCode::NOT_FOUND,
        "no peering",
        None,
    );
    assert_problem(
        &call(&app, "DELETE", "/v1/peerings/c2", None, Some(TOKEN)).await,
        StatusCode::NOT_FOUND,
        "no peering",
        None,
    );
    let tunnels = app
        .tunnels
        .tunnels
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(tunnels, ["rmd-c3"]);
    assert!(
        app.dataplane
            .state
            .lock()
            .unwrap()
            .rules
            .iter()
            .all(|r| r.interface == "rmd-c3")
    );
    assert!(
        app.routes
            .routes
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.interface == "rmd-c3")
    );

    // Teardown removes the rest.
    let r = call(&app, "POST", "/v1/teardown", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(app.tunnels.tunnels.lock().unwrap().is_empty());
    assert!(app.dataplane.state.lock().unwrap().rules.is_empty());
    assert!(app.routes.routes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn probes_metrics_and_docs() {
    let app = app("ops");
    assert_eq!(
        call(&app, "GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/readyz", None, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    call(
        &app,
        "PUT",
        "/v1/peerings/c2",
        Some(peering(51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        call(&app, "GET", "/readyz", None, None).await.status,
        StatusCode::OK
    );
    let m = call(&app, "GET", "/metrics", None, None).await;
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("remapd_rule_packets_total{peering=\"c2\""),
        "{text}"
    );
    assert!(
        text.contains("remapd_policy_decisions_total{policy=\"auto\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("remapd_reconcile_last_duration_seconds"),
        "{text}"
    );
    let spec = call(&app, "GET", "/openapi.json", None, None).await;
    assert!(spec.body["paths"]["/v1/peerings/{name}"]["put"].is_object());
    let docs = call(&app, "GET", "/docs", None, None).await;
    assert!(docs.body.as_str().unwrap().contains("/openapi.json"));
}

/// The status page's files are served without a token even where reads need one (the
/// page holds no data; its API calls carry the token), under a policy that allows only
/// its own script, style and API calls; the data it reads still needs the token.
#[tokio::test]
async fn the_status_page_is_static_and_its_data_needs_the_token() {
    let app = app_reading_with_token("ui");
    for (path, content_type, has) in [
        ("/ui", "text/html", "/ui/app.js"),
        ("/ui/app.js", "text/javascript", "textContent"),
        ("/ui/style.css", "text/css", ".peering"),
        ("/ui/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = tower::ServiceExt::oneshot(app.router.clone(), req)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers();
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(has), "{path}");
    }
    // Not a prefix match: nothing else under /ui/ is open.
    assert_eq!(
        call(&app, "GET", "/ui/../v1/peerings", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/v1/peerings", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/v1/peerings", None, Some(TOKEN))
            .await
            .status,
        StatusCode::OK
    );
}

#[test]
fn committed_openapi_matches_the_code() {
    let generated = remapd::api::openapi().to_pretty_json().unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p remapd --test api committed_openapi` (or `remapd openapi > openapi/openapi.json`)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_puts_all_land_once() {
    let app = Arc::new(app("concurrency"));
    call(
        &app,
        "PUT",
        "/v1/cluster",
        Some(json!({
            "name": "hub", "pod_cidrs": ["10.0.0.0/16"], "remap_pool": ["100.64.0.0/10"]
        })),
        Some(TOKEN),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..50u16 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({
                "remote": {"name": format!("spoke-{i}"), "pod_cidrs": ["10.0.0.0/16"], "capabilities": {"nat_dataplane": true}},
                "tunnel": {"listen_port": 40000 + i, "remote_public_key": key()}
            });
            call(&app, "PUT", &format!("/v1/peerings/p{i}"), Some(body), Some(TOKEN)).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let list = call(&app, "GET", "/v1/peerings", None, None).await.body;
    assert_eq!(list.as_array().unwrap().len(), 50, "no lost update");
    let created = app.tunnels.created.lock().unwrap().clone();
    assert_eq!(created.len(), 50);
    assert!(
        created.values().all(|n| *n == 1),
        "each applied once: {created:?}"
    );
    // Every peering got its own /16 from the pool.
    let views: std::collections::BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["decision"]["mappings"][0]["remapped"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(views.len(), 50);
    assert_eq!(app.dataplane.state.lock().unwrap().rules.len(), 100);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("remapd-api-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let public_key;
    {
        let app = app_in(dir.clone());
        call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
        raw(
            &app,
            "PUT",
            "/v1/policies/mine",
            "application/wasm",
            builtin::SPLIT.to_vec(),
        )
        .await;
        let mut p = peering(51820);
        p["policy"] = json!("mine");
        public_key = call(&app, "PUT", "/v1/peerings/c2", Some(p), Some(TOKEN))
            .await
            .body["public_key"]
            .clone();
        std::mem::forget(app); // keep the directory
    }
    let app = app_in(dir);
    assert_eq!(
        call(&app, "GET", "/v1/cluster", None, None).await.body,
        cluster()
    );
    assert_eq!(
        call(&app, "GET", "/v1/policies/mine", None, None)
            .await
            .status,
        StatusCode::OK
    );
    let p = call(&app, "GET", "/v1/peerings/c2", None, None).await;
    assert_eq!(p.body["public_key"], public_key, "the key pair is kept");
    let key_file = app.dir.join("keys/c2.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn peerings_never_share_a_prefix_or_take_over_an_interface() {
    let app = app("identity");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    // Two remotes both using 50.0.0.0/24, which does not overlap the local cluster: the
    // first is seen as itself, the second must get a view from the pool.
    let spoke = |name: &str, port: u16| {
        json!({
            "remote": {"name": name, "pod_cidrs": ["50.0.0.0/24"], "capabilities": {"nat_dataplane": true}},
            "tunnel": {"listen_port": port, "remote_public_key": key()}
        })
    };
    let a = call(
        &app,
        "PUT",
        "/v1/peerings/a",
        Some(spoke("spoke-a", 51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(a.body["decision"]["mappings"][0]["remapped"], "50.0.0.0/24");
    let b = call(
        &app,
        "PUT",
        "/v1/peerings/b",
        Some(spoke("spoke-b", 51821)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert_eq!(b.body["decision"]["mappings"][0]["remapped"], "30.0.0.0/24");
    let routes = app.routes.routes.lock().unwrap().clone();
    let prefixes: std::collections::BTreeSet<String> =
        routes.iter().map(|r| r.prefix.to_string()).collect();
    assert_eq!(
        prefixes.len(),
        routes.len(),
        "no prefix routed into two tunnels: {routes:?}"
    );

    let mut p = spoke("spoke-c", 51822);
    p["tunnel"]["interface"] = json!("eth0");
    assert_problem(
        &call(&app, "PUT", "/v1/peerings/c", Some(p), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST,
        "not a remapd tunnel name",
        Some("/tunnel/interface"),
    );
    let mut p = spoke("spoke-c", 51822);
    p["tunnel"]["interface"] = json!("rmd-custom");
    assert_eq!(
        call(&app, "PUT", "/v1/peerings/c", Some(p), Some(TOKEN))
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn policies_are_told_the_nat_capability_the_dataplane_has() {
    let app = app("nat-capability");
    call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    app.dataplane
        .no_nat
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // `split` needs this gateway to translate: refused, nothing changed.
    let mut p = peering(51820);
    p["policy"] = json!("split");
    let r = call(&app, "PUT", "/v1/peerings/a", Some(p), Some(TOKEN)).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "NAT", None);
    assert!(app.tunnels.tunnels.lock().unwrap().is_empty());
    // `auto` leaves every rewrite to the remote, which can translate.
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
        r.body["decision"]["strategy"], "both-on-remote",
        "{}",
        r.body
    );
    assert_eq!(r.body["plan"]["rules"], json!([]), "{}", r.body);
    // Once the dataplane can translate again, the peering is decided anew.
    app.dataplane
        .no_nat
        .store(false, std::sync::atomic::Ordering::Relaxed);
    app.daemon.reconcile().await.unwrap();
    let r = call(&app, "GET", "/v1/peerings/a", None, None).await;
    assert_ne!(
        r.body["decision"]["strategy"], "both-on-remote",
        "{}",
        r.body
    );
}

/// An upload may carry an RFC 9530 `Content-Digest`; a mismatch (an altered or truncated
/// upload) is a 400 that changes nothing. Every policy says the contract it implements
/// and the language its toolchain recorded.
#[tokio::test]
async fn uploads_are_checked_against_their_content_digest() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let app = app("content-digest");
    let upload = |name: &str, digest: &str, bytes: &[u8]| {
        let req = axum::http::Request::builder()
            .method("PUT")
            .uri(format!("/v1/policies/{name}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/wasm")
            .header("content-digest", digest)
            .body(axum::body::Body::from(bytes.to_vec()))
            .unwrap();
        send(&app, req)
    };
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let bytes = builtin::SPLIT;
    let sha256 = format!("sha-256=:{}:", b64(&sha2::Sha256::digest(bytes)));
    let sha512 = format!("sha-512=:{}:", b64(&sha2::Sha512::digest(bytes)));
    let other = format!(
        "sha-256=:{}:",
        b64(&sha2::Sha256::digest(b"something else"))
    );

    for (what, digest, detail) in [
        (
            "a digest of other bytes",
            other.as_str(),
            "does not match the body",
        ),
        (
            "a right sha-512 with a wrong sha-256",
            &format!("{sha512}, {other}"),
            "sha-256 does not match",
        ),
        (
            "only algorithms remapd does not check",
            "md5=:AAAA:",
            "names no algorithm",
        ),
        (
            "not a structured field",
            "sha-256=abc def",
            "not a structured-field dictionary",
        ),
        (
            "not a byte sequence",
            "sha-256=\"abc\"",
            "not a byte sequence",
        ),
    ] {
        let r = upload("checked", digest, bytes).await;
        assert_problem(
            &r,
            StatusCode::BAD_REQUEST,
            detail,
            Some("/headers/content-digest"),
        );
        let r = call(&app, "GET", "/v1/policies/checked", None, None).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{what}: nothing was stored"
        );
    }
    let r = upload("checked", &sha256, bytes).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = upload("checked", &format!("{sha256}, {sha512}"), bytes).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Contract, families and language, for uploads and built-ins alike.
    let list = call(&app, "GET", "/v1/policies", None, None).await.body;
    for p in list.as_array().unwrap() {
        assert_eq!(p["contract"], "remap:policy@0.2.0", "{p}");
        assert_eq!(p["families"], json!(["ipv4", "ipv6"]), "{p}");
        assert_eq!(p["language"], "Rust", "{p}");
    }
}

/// A translated TCP packet as the programs report it (loopback, which every
/// namespace has, so the interface name resolves).
fn traced_tcp() -> remapd::dataplane::trace::TraceEvent {
    remapd::dataplane::trace::TraceEvent {
        ifindex: 1,
        len: 60,
        src_before: u32::from_be_bytes([40, 0, 0, 5]),
        dst_before: u32::from_be_bytes([30, 0, 0, 9]),
        src_after: u32::from_be_bytes([40, 0, 0, 5]),
        dst_after: u32::from_be_bytes([40, 0, 0, 9]),
        src_rule: u32::MAX,
        dst_rule: 0,
        src_port: 40000,
        dst_port: 80,
        direction: remapd_common::DIRECTION_EGRESS,
        protocol: 6,
        verdict: remapd_common::TRACE_TRANSLATED as u8,
        flags: remapd_common::TRACE_FLAG_IPV4,
        time_ns: remapd::dataplane::trace::monotonic_now_ns(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_trace_streams_ndjson_or_sse_until_its_count_and_refuses_bad_filters() {
    let app = app("trace");
    // Other reads are open on loopback; a trace needs the token.
    let r = call(&app, "GET", "/v1/trace?count=1", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // Once the trace has started (the kernel side is on), packets arrive.
    let fake = app.dataplane.trace.clone();
    let feed = |n: usize| {
        let fake = fake.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                if fake.control().is_some() {
                    for _ in 0..n {
                        fake.push(traced_tcp());
                    }
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let feeder = feed(3);
    let r = call(
        &app,
        "GET",
        "/v1/trace?count=2&protocol=tcp",
        None,
        Some(TOKEN),
    )
    .await;
    feeder.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type, "application/x-ndjson");
    let text = r.body.as_str().expect("several JSON lines");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["type"], "event");
    assert_eq!(lines[0]["verdict"], "translated");
    assert_eq!(lines[0]["before"]["dst"], "30.0.0.9");
    assert_eq!(lines[0]["after"]["dst"], "40.0.0.9");
    assert_eq!(lines[0]["after"]["dst_port"], 80);
    assert_eq!(lines[0]["rules"][0]["field"], "destination");
    assert_eq!(lines[2]["type"], "end");
    assert_eq!(lines[2]["reason"], "count");
    assert_eq!(lines[2]["events"], 2);
    assert_eq!(fake.control(), None, "the kernel stopped tracing");

    // Server-sent events for browsers.
    let feeder = feed(1);
    let req = Request::builder()
        .uri("/v1/trace?count=1")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("accept", "text/event-stream")
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    feeder.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type.starts_with("text/event-stream"),
        "{}",
        r.content_type
    );
    let text = r.body.as_str().unwrap();
    assert!(text.contains("event: event\ndata: {"), "{text}");
    assert!(text.contains("event: end\ndata: {"), "{text}");

    // A trace that sees nothing ends at its duration.
    let r = call(&app, "GET", "/v1/trace?duration=200ms", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK);
    // One line: the reply reads as one JSON object.
    let end = &r.body;
    assert_eq!(
        (end["type"].as_str(), end["reason"].as_str()),
        (Some("end"), Some("duration"))
    );

    // A teardown ends a running trace at once, with its reason (the maps it read are
    // gone), and stops the kernel writing.
    let router = app.router.clone();
    let running = tokio::spawn(async move {
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;
        let req = Request::builder()
            .uri("/v1/trace?duration=30s")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let res = router.oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap().to_bytes()
    });
    for _ in 0..200 {
        if fake.control().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(fake.control().is_some(), "the trace started");
    let r = call(&app, "POST", "/v1/teardown", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), running)
        .await
        .expect("the trace ended with the teardown, not its duration")
        .unwrap();
    let end: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (end["type"].as_str(), end["reason"].as_str()),
        (Some("end"), Some("teardown"))
    );
    assert_eq!(fake.control(), None);

    for (query, status, text, at) in [
        (
            "prefix=10.0.0.1/8",
            StatusCode::BAD_REQUEST,
            "host bits",
            Some("/query/prefix"),
        ),
        (
            "prefix=fd00:40::/56",
            StatusCode::BAD_REQUEST,
            "is IPv6: a trace filters by IPv4 prefix only",
            Some("/query/prefix"),
        ),
        (
            "prefix=banana",
            StatusCode::BAD_REQUEST,
            "not an IPv4 prefix",
            Some("/query/prefix"),
        ),
        (
            "protocol=gre9",
            StatusCode::BAD_REQUEST,
            "not an IPv4 protocol",
            Some("/query/protocol"),
        ),
        (
            "protocol=0",
            StatusCode::BAD_REQUEST,
            "not an IPv4 protocol",
            Some("/query/protocol"),
        ),
        (
            "rate=0",
            StatusCode::BAD_REQUEST,
            "rate must be",
            Some("/query/rate"),
        ),
        (
            "sample=0",
            StatusCode::BAD_REQUEST,
            "sample must be",
            Some("/query/sample"),
        ),
        (
            "count=0",
            StatusCode::BAD_REQUEST,
            "count must be",
            Some("/query/count"),
        ),
        (
            "duration=2h",
            StatusCode::BAD_REQUEST,
            "at most 1h",
            Some("/query/duration"),
        ),
        (
            "duration=soon",
            StatusCode::BAD_REQUEST,
            "not a duration",
            Some("/query/duration"),
        ),
        ("peering=nope", StatusCode::NOT_FOUND, "no peering", None),
    ] {
        let r = call(
            &app,
            "GET",
            &format!("/v1/trace?{query}"),
            None,
            Some(TOKEN),
        )
        .await;
        assert_problem(&r, status, text, at);
    }
    let r = call(&app, "GET", "/v1/trace?verdict=maybe", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(
        fake.control(),
        None,
        "a refused trace leaves the kernel as it was"
    );

    // No dataplane loaded yet: 409 saying why, never an empty 200.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    fake.make_unavailable("not loaded");
    let r = call(&app, "GET", "/v1/trace", None, Some(TOKEN)).await;
    assert_problem(&r, StatusCode::CONFLICT, "nothing to trace", None);
}

/// A trace with nothing to send writes a `keepalive` line every 15 s (so the server
/// notices a client that went away), and still ends at its duration.
#[tokio::test(start_paused = true)]
async fn a_silent_ndjson_trace_sends_keepalives_until_its_duration() {
    let app = app("trace-keepalive");
    let r = call(&app, "GET", "/v1/trace?duration=40s", None, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().expect("several JSON lines");
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["keepalive", "keepalive", "end"], "{text}");
}
