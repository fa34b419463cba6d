//! Hostile and careless input (issue 11, items 1 and 2): a peering or cluster whose
//! CIDRs would route the gateway's own traffic into a tunnel, special-purpose space,
//! and tunnel settings that cannot work are refused with a problem naming the field,
//! and nothing changes: state, routes, tunnels, rules.
//!
//! Where each finding of issue 11 is held (this file has the table for 1 and 2; the
//! others need a clock, races, a restart or a real socket, so they live with those):
//!
//! | finding | tests |
//! |---|---|
//! | 1 routes that hijack the gateway | `nothing_may_hijack_the_gateway_or_fail_later`, `reserved_ranges_are_never_routed_into_a_tunnel`; kernel: `netns_net::protected_addresses_are_read_from_the_kernel`, `netns_daemons::peerings_that_would_hijack_the_gateway_are_refused` (tunnels keep carrying traffic) |
//! | 2 accepted but broken (busy port, zero key, bad endpoint) | `nothing_may_hijack_the_gateway_or_fail_later`; `netns_net::invalid_keys_are_refused_before_anything_starts` |
//! | 3 one broken peering blocks the others | `transactions::a_broken_tunnel_holds_back_only_its_own_peering`, `transactions::a_corrupt_key_file_hurts_only_its_own_peering`, `transactions::a_failed_apply_answers_a_problem_and_changes_nothing` |
//! | 4 changes that silently break peerings, races | `transactions::a_policy_replacement_its_peerings_refuse_changes_nothing`, `…a_cluster_change_that_leaves_a_peering_without_a_plan_is_refused`, `…a_forced_cluster_change_drops_the_peerings_it_leaves_undecidable`, `…deleting_a_policy_racing_a_put_that_uses_it_leaves_no_dangling_name`, `…uploads_racing_deletes_never_lose_an_acknowledged_component` |
//! | 5 API server limits and envelope | `api_limits::*` (idle, trickling and excess connections, 408/413/414/415/431/503, parser refusals, duplicate key); `bench/slow_clients.sh` for 2,000 held connections |
//! | 6 auth defaults | `cli::bad_configuration_exits_64_with_a_reason` (generated 0600 token, group-readable token refused with 64), `api::cluster_round_trip_and_bad_input` (401 without it) |
//! | 7 state and key files | `cli::a_lost_state_file_is_not_taken_for_a_fresh_start`, `netns_daemons::a_lost_state_file_is_refused_until_adopt_and_clear`, `transactions::a_deleted_key_file_is_not_silently_replaced`, `…a_corrupt_key_file_hurts_only_its_own_peering` |
//! | 8 spec vs behaviour | `api_contract::every_operation_matches_the_spec_under_generated_requests` (Schemathesis), `api::committed_openapi_matches_the_code` |
//! | 9 memory of deleted policies | `policy_memory::deleted_uploads_free_their_compiled_code` |
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::*;

/// What the fakes hold and the API shows: compared before and after each refusal.
async fn everything(app: &App) -> Value {
    json!({
        "cluster": call(app, "GET", "/v1/cluster", None, None).await.body,
        "peerings": call(app, "GET", "/v1/peerings", None, None).await.body.as_array().unwrap().iter().map(|p| {
            json!({"name": p["name"], "spec": p["spec"], "decision": p["decision"], "plan": p["plan"]})
        }).collect::<Vec<_>>(),
        "routes": format!("{:?}", app.routes.routes.lock().unwrap()),
        "tunnels": format!("{:?}", app.tunnels.tunnels.lock().unwrap().keys().collect::<Vec<_>>()),
        "rules": format!("{:?}", app.dataplane.state.lock().unwrap()),
        "state_file": std::fs::read_to_string(app.dir.join("state.json")).unwrap_or_default(),
    })
}

/// (what, path, body, status, problem type, pointer, detail fragment)
type Case = (
    &'static str,
    &'static str,
    Value,
    StatusCode,
    &'static str,
    Option<&'static str>,
    &'static str,
);

fn peering_to(remote_pods: &[&str], endpoint: &str, port: u16) -> Value {
    json!({
        "policy": "auto",
        "remote": {"name": "cluster-x", "pod_cidrs": remote_pods, "capabilities": {"nat_dataplane": true}},
        "tunnel": {"listen_port": port, "endpoint": endpoint, "remote_public_key": key()}
    })
}

#[tokio::test]
async fn nothing_may_hijack_the_gateway_or_fail_later() {
    let app = app("hostile");
    // This gateway: 198.18.0.1 on its underlay, its default route via 192.0.2.1.
    app.routes.protect(
        "198.18.0.1".parse().unwrap(),
        "this gateway's address on eth0",
    );
    app.routes.protect(
        "192.0.2.1".parse().unwrap(),
        "the next hop (via eth0) towards the WireGuard endpoint 203.0.113.5",
    );
    app.routes.protect(
        "2001:db8:ffff::1".parse::<std::net::IpAddr>().unwrap(),
        "this gateway's address on eth0",
    );
    app.tunnels.busy_ports.lock().unwrap().insert(51999);
    let r = call(&app, "PUT", "/v1/cluster", Some(cluster()), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // One healthy peering, with its endpoint at 203.0.113.5.
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/first",
        Some(peering_to(&["40.0.0.0/24"], "203.0.113.5:51820", 51820)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = everything(&app).await;

    let mut zero_key = peering_to(&["50.0.0.0/24"], "198.51.100.9:51820", 51821);
    zero_key["tunnel"]["remote_public_key"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let mut view_of_loopback = peering_to(&["40.0.0.0/24"], "198.51.100.9:51820", 51821);
    view_of_loopback["remote"]["view_of_local"] =
        json!([{"real": "40.0.0.0/24", "remapped": "127.0.0.0/24"}]);
    let mut pool_on_underlay = cluster();
    pool_on_underlay["remap_pool"] = json!(["198.18.0.0/16"]);
    let mut pool_loopback = cluster();
    pool_loopback["remap_pool"] = json!(["127.0.0.0/16"]);
    let mut pods_everywhere = cluster();
    pods_everywhere["pod_cidrs"] = json!(["0.0.0.0/0"]);

    let cases: Vec<Case> = vec![
        (
            "remote pods cover an eighth of the Internet, this gateway included",
            "/v1/peerings/wide",
            peering_to(&["192.0.0.0/3"], "198.51.100.9:51820", 51821),
            StatusCode::CONFLICT,
            "protected-address",
            None,
            "198.18.0.1",
        ),
        (
            "remote pods are the underlay /30",
            "/v1/peerings/underlay",
            peering_to(&["198.18.0.0/30"], "198.51.100.9:51820", 51821),
            StatusCode::CONFLICT,
            "protected-address",
            None,
            "198.18.0.1",
        ),
        (
            "remote pods cover another peering's endpoint",
            "/v1/peerings/steal",
            peering_to(&["203.0.113.0/24"], "198.51.100.9:51820", 51821),
            StatusCode::CONFLICT,
            "protected-address",
            None,
            "endpoint of peering \"first\"",
        ),
        (
            "remote pods cover the next hop towards an endpoint",
            "/v1/peerings/hop",
            peering_to(&["192.0.2.0/24"], "198.51.100.9:51820", 51821),
            StatusCode::CONFLICT,
            "protected-address",
            None,
            "192.0.2.1",
        ),
        (
            "remote pods cover its own endpoint",
            "/v1/peerings/self",
            peering_to(&["198.51.100.0/24"], "198.51.100.9:51820", 51821),
            StatusCode::CONFLICT,
            "protected-address",
            None,
            "198.51.100.9",
        ),
        (
            "remote IPv6 pods cover this gateway's IPv6 address",
            "/v1/peerings/wide6",
            peering_to(&["2001:db8:ffff::/48"], "198.51.100.9:51820", 51821),
            StatusCode::CONFLICT,
            "protected-address",
            None,
            "2001:db8:ffff::1",
        ),
        (
            "remote IPv6 pods cover its own IPv6 endpoint",
            "/v1/peerings/self6",
            peering_to(&["2001:db8:5::/48"], "[2001:db8:5::9]:51820", 51821),
            StatusCode::CONFLICT,
            "protected-address",
            None,
            "2001:db8:5::9",
        ),
        (
            "remote pods are IPv6 link-local",
            "/v1/peerings/ll6",
            peering_to(&["fe80::/64"], "198.51.100.9:51820", 51821),
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/remote/pod_cidrs/0"),
            "link-local (fe80::/10)",
        ),
        (
            "remote pods are loopback",
            "/v1/peerings/lo",
            peering_to(&["127.0.0.0/8"], "198.51.100.9:51820", 51821),
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/remote/pod_cidrs/0"),
            "loopback",
        ),
        (
            "remote pods are everything",
            "/v1/peerings/all",
            peering_to(&["0.0.0.0/0"], "198.51.100.9:51820", 51821),
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/remote/pod_cidrs/0"),
            "0.0.0.0/8",
        ),
        (
            "remote pods are link-local",
            "/v1/peerings/ll",
            peering_to(&["169.254.0.0/16"], "198.51.100.9:51820", 51821),
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/remote/pod_cidrs/0"),
            "link-local",
        ),
        (
            "remote pods are multicast",
            "/v1/peerings/mc",
            peering_to(&["239.1.0.0/16"], "198.51.100.9:51820", 51821),
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/remote/pod_cidrs/0"),
            "multicast",
        ),
        (
            "the remote sees us at loopback",
            "/v1/peerings/view",
            view_of_loopback,
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/remote/view_of_local/0/remapped"),
            "loopback",
        ),
        (
            "an all-zero key",
            "/v1/peerings/zero",
            zero_key,
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/tunnel/remote_public_key"),
            "all-zero",
        ),
        (
            "endpoint port 0",
            "/v1/peerings/port0",
            peering_to(&["50.0.0.0/24"], "198.51.100.9:0", 51821),
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/tunnel/endpoint"),
            "port",
        ),
        (
            "endpoint 0.0.0.0",
            "/v1/peerings/unspec",
            peering_to(&["50.0.0.0/24"], "0.0.0.0:51820", 51821),
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/tunnel/endpoint"),
            "0.0.0.0",
        ),
        (
            "endpoint on loopback",
            "/v1/peerings/loend",
            peering_to(&["50.0.0.0/24"], "127.0.0.1:51820", 51821),
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/tunnel/endpoint"),
            "127.0.0.1",
        ),
        (
            "a listen port another process holds",
            "/v1/peerings/busy",
            peering_to(&["50.0.0.0/24"], "198.51.100.9:51820", 51999),
            StatusCode::CONFLICT,
            "conflict",
            Some("/tunnel/listen_port"),
            "51999",
        ),
        (
            "a pool on the underlay (the first peering's view would cover 198.18.0.1)",
            "/v1/cluster",
            pool_on_underlay,
            StatusCode::CONFLICT,
            "protected-address",
            None,
            "198.18.0.1",
        ),
        (
            "a loopback pool",
            "/v1/cluster",
            pool_loopback,
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/remap_pool/0"),
            "loopback",
        ),
        (
            "pods everywhere",
            "/v1/cluster",
            pods_everywhere,
            StatusCode::BAD_REQUEST,
            "bad-request",
            Some("/pod_cidrs/0"),
            "0.0.0.0/8",
        ),
    ];
    for (what, path, body, status, kind, pointer, detail) in cases {
        let r = call(&app, "PUT", path, Some(body), Some(TOKEN)).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert_eq!(
            r.body["type"],
            format!("https://remapd.dev/problems/{kind}"),
            "{what}: {}",
            r.body
        );
        assert_problem(&r, status, detail, pointer);
        assert_eq!(everything(&app).await, before, "{what}: something changed");
    }

    // The healthy peering still is, and a valid change next to it still lands.
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/second",
        Some(peering_to(&["50.0.0.0/24"], "198.51.100.9:51820", 51821)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

/// The operator's own never-touch ranges (the cluster's `reserved_cidrs`: node and
/// management networks) are never routed into a tunnel, whatever a peer exports: a
/// remote there is remapped, also when the range is reserved after the fact. (The
/// decision validation refuses `none` over them, and the route check refuses any
/// route that would cover them, as defence in depth.)
#[tokio::test]
async fn reserved_ranges_are_never_routed_into_a_tunnel() {
    let app = app("reserved");
    let mut c = cluster();
    c["reserved_cidrs"] = json!(["50.0.0.0/16"]);
    let r = call(&app, "PUT", "/v1/cluster", Some(c.clone()), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let no_route_into = |app: &App, reserved: &[&str]| {
        let routes = app.routes.routes.lock().unwrap().clone();
        for r in &routes {
            for res in reserved {
                let res: ipnet::IpNet = res.parse().unwrap();
                assert!(
                    !r.prefix.contains(&res) && !res.contains(&r.prefix),
                    "{r:?} touches the reserved {res}"
                );
            }
        }
        assert!(!routes.is_empty());
    };
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/inside",
        Some(peering_to(&["50.0.7.0/24"], "198.51.100.9:51820", 51821)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["decision"]["strategy"], "split", "{}", r.body);
    no_route_into(&app, &["50.0.0.0/16"]);
    // Routed as itself while nothing reserved it...
    let r = call(
        &app,
        "PUT",
        "/v1/peerings/beside",
        Some(peering_to(&["51.0.0.0/24"], "198.51.100.10:51820", 51822)),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["decision"]["strategy"], "none", "{}", r.body);
    // ...and remapped once the operator reserves its range.
    c["reserved_cidrs"] = json!(["50.0.0.0/16", "51.0.0.0/16"]);
    let r = call(&app, "PUT", "/v1/cluster", Some(c), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let beside = call(&app, "GET", "/v1/peerings/beside", None, None).await;
    assert_eq!(
        beside.body["decision"]["strategy"], "split",
        "{}",
        beside.body
    );
    no_route_into(&app, &["50.0.0.0/16", "51.0.0.0/16"]);
}
