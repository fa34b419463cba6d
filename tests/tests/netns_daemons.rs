//! End-to-end with two real daemons: the seed topology (both clusters 40.0.0.0/24), one
//! remapd per gateway, configured only through their HTTP APIs with curl — each side's
//! exports piped into the other — for the `split`, `both-on-2` and `auto` policies.
//! Traffic must flow both ways with the expected addresses; deleting the peerings must
//! remove every rule, route and tunnel the daemons made. And a SIGKILLed daemon must
//! come back without disturbing forwarding. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use remapd_tests::daemons::{Daemon, Pair, PairSpec, explained_as_seen, reachable, strategy_of};
use remapd_tests::netns::{Netns, parse_ping, ping};
use remapd_tests::topology::{Network, UNDERLAY_GW2, seed_cluster};
use serde_json::{Value, json};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Two daemons, clusters configured (both on 40.0.0.0/24; views from 30.0.0.0/24 and
/// 60.0.0.0/24), and the peering set up through exports.
fn pair(policy: &str) -> Pair {
    pair_uploading(policy, None)
}

/// [`pair`], with the component at `upload` uploaded to both daemons as `policy` first.
fn pair_uploading(policy: &str, upload: Option<&std::path::Path>) -> Pair {
    Pair::connect(
        Network::build(&seed_cluster(), &seed_cluster()),
        &PairSpec {
            policy,
            pods: &["40.0.0.0/24"],
            pools: [&["30.0.0.0/24"], &["60.0.0.0/24"]],
            upload,
        },
    )
}

fn peering(p: &Pair, side: u8) -> String {
    p.peering(side)
}

/// One hook's work on one packet: direction, addresses before and after, and the rules
/// (field, from, to) that fired.
type HookWork = (String, [String; 4], std::collections::BTreeSet<[String; 3]>);

/// What `GET /v1/explain?from=&to=` at `d` says this gateway's hooks do to the request
/// and its reply: one entry per hook that rewrites (consecutive rewrites on one hook are
/// one program run, so one trace event).
fn explained_rewrites(d: &Daemon, from: &str, to: &str) -> std::collections::BTreeSet<HookWork> {
    let body = d.expect(
        "GET",
        &format!("/v1/explain?from={from}&to={to}"),
        None,
        200,
    );
    let path = &body.as_array().unwrap()[0];
    let addresses = |p: &Value| {
        [
            p["source"].as_str().unwrap().to_owned(),
            p["destination"].as_str().unwrap().to_owned(),
        ]
    };
    let mut out = std::collections::BTreeSet::new();
    for leg in ["request", "reply"] {
        let leg = &path[leg];
        let mut before = addresses(&leg["sent"]);
        let mut current: Option<HookWork> = None;
        for step in leg["steps"].as_array().unwrap() {
            let kind = step["kind"].as_str().unwrap();
            let direction = match kind {
                "egress-rewrite" => Some("egress"),
                "ingress-rewrite" => Some("ingress"),
                _ => None,
            }
            .filter(|_| step["gateway"] == "local");
            let after = addresses(&step["packet"]);
            match direction {
                Some(dir) => {
                    let rule = &step["rule"];
                    let fired = [
                        rule["field"].as_str().unwrap().to_owned(),
                        rule["from"].as_str().unwrap().to_owned(),
                        rule["to"].as_str().unwrap().to_owned(),
                    ];
                    let work = current.get_or_insert_with(|| {
                        (
                            dir.to_owned(),
                            [
                                before[0].clone(),
                                before[1].clone(),
                                String::new(),
                                String::new(),
                            ],
                            Default::default(),
                        )
                    });
                    work.1[2] = after[0].clone();
                    work.1[3] = after[1].clone();
                    work.2.insert(fired);
                }
                None => out.extend(current.take()),
            }
            before = after;
        }
        out.extend(current.take());
    }
    out
}

/// The translated packets of a trace, as [`HookWork`]s (distinct).
fn traced_rewrites(events: &[Value]) -> std::collections::BTreeSet<HookWork> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    events
        .iter()
        .filter(|e| e["type"] == "event" && e["verdict"] == "translated")
        .map(|e| {
            let rules = e["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| [s(&r["field"]), s(&r["from"]), s(&r["to"])])
                .collect();
            (
                s(&e["direction"]),
                [
                    s(&e["before"]["src"]),
                    s(&e["before"]["dst"]),
                    s(&e["after"]["src"]),
                    s(&e["after"]["dst"]),
                ],
                rules,
            )
        })
        .collect()
}

/// Traces both gateways while `traffic` runs and checks that each one's trace shows
/// exactly the rewrites its `GET /v1/explain?from=&to=` predicts: the same hooks, the
/// same addresses before and after, the same rules, and nothing else translated.
fn traced_as_explained(p: &Pair, from: &str, to: &str, traffic: impl FnOnce()) {
    let traces = [p.d1.trace("duration=5m"), p.d2.trace("duration=5m")];
    traffic();
    let [t1, t2] = traces;
    let mut predicted_any = false;
    for (d, events) in [(&p.d1, t1.stop()), (&p.d2, t2.stop())] {
        let explained = explained_rewrites(d, from, to);
        predicted_any |= !explained.is_empty();
        let traced = traced_rewrites(&events);
        assert_eq!(
            traced, explained,
            "{}: the trace of {from} -> {to} differs from the explanation; events: {events:#?}",
            d.ns_name
        );
        let dropped: Vec<&Value> = events
            .iter()
            .filter(|e| e["verdict"] == "dropped")
            .collect();
        assert!(dropped.is_empty(), "{}: {dropped:#?}", d.ns_name);
    }
    assert!(
        predicted_any,
        "one gateway or the other rewrites {from} -> {to}"
    );
}

fn run(policy: &str, expect1: &str, expect2: &str) {
    run_pair(&pair(policy), expect1, expect2);
}

fn run_pair(p: &Pair, expect1: &str, expect2: &str) {
    assert_eq!(
        strategy_of(&p.d1, &peering(p, 1)),
        expect1,
        "{}",
        p.d1.log_text()
    );
    assert_eq!(
        strategy_of(&p.d2, &peering(p, 2)),
        expect2,
        "{}",
        p.d2.log_text()
    );
    // Real traffic both ways, traced at both gateways: each trace shows what explain
    // predicts for its gateway (ping, TCP and UDP share addresses, so one rewrite each).
    traced_as_explained(p, "40.0.0.1", "30.0.0.1", || {
        reachable(
            &p.net.pod1,
            &p.net.pod2,
            "30.0.0.1",
            "40.0.0.1",
            "60.0.0.1",
            7000,
        )
    });
    traced_as_explained(p, "40.0.0.1", "60.0.0.1", || {
        reachable(
            &p.net.pod2,
            &p.net.pod1,
            "60.0.0.1",
            "40.0.0.1",
            "30.0.0.1",
            7100,
        )
    });

    // Explain agrees with the packets above, at both gateways and in both directions:
    // what the destination pod saw as source, and the reply coming back from the
    // address that was dialed.
    for (d, from, to, seen_as) in [
        (&p.d1, "40.0.0.1", "30.0.0.1", "60.0.0.1"),
        (&p.d2, "40.0.0.1", "30.0.0.1", "60.0.0.1"),
        (&p.d2, "40.0.0.1", "60.0.0.1", "30.0.0.1"),
        (&p.d1, "40.0.0.1", "60.0.0.1", "30.0.0.1"),
    ] {
        explained_as_seen(d, from, to, "40.0.0.1", seen_as);
    }

    // The status shows counters and a handshake; metrics carry the rules.
    let st =
        p.d2.expect("GET", &format!("/v1/peerings/{}", peering(p, 2)), None, 200);
    assert!(
        st["tunnel"]["last_handshake_unix"].as_u64().unwrap_or(0) > 0,
        "{st}"
    );
    // gw2's rules: 2 in split, 4 when it does every rewrite, none when it only routes.
    let applied = st["applied"].as_array().unwrap();
    let want_rules = match expect2 {
        "both-on-remote" => 0,
        "both-on-local" => 4,
        _ => 2,
    };
    assert_eq!(applied.len(), want_rules, "{st}");
    assert!(
        applied.iter().all(|r| r["packets"].as_u64().unwrap() > 0),
        "{st}"
    );
    let metrics = p.d2.expect("GET", "/metrics", None, 200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("remapd_policy_decisions_total")
    );

    // Deleting the peerings removes every rule, route and tunnel the daemons made.
    for (d, ns, side) in [(&p.d1, &p.net.gw1, 1u8), (&p.d2, &p.net.gw2, 2)] {
        let pids = d.wireguard_pids();
        assert_eq!(pids.len(), 1, "one tunnel process: {pids:?}");
        d.expect(
            "DELETE",
            &format!("/v1/peerings/{}", peering(p, side)),
            None,
            204,
        );
        let status = d.expect("GET", "/v1/status", None, 200);
        assert!(
            status["attachments"].as_array().unwrap().is_empty(),
            "{status}"
        );
        let routes = ns.table_routes(7878);
        assert!(routes.trim().is_empty(), "routes left: {routes}");
        let links = String::from_utf8_lossy(&ns.ip(&["-o", "link"]).stdout).into_owned();
        assert!(!links.contains("rmd-"), "tunnel left: {links}");
        for (_, pid) in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "wireguard-go {pid} still running"
            );
        }
    }
    let (_, rx) = ping(&p.net.pod1, ip("30.0.0.1"), 2, "0.2");
    assert_eq!(rx, 0, "after deletion nothing translates");
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn two_daemons_split() {
    run("split", "split", "split");
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn two_daemons_both_on_2() {
    run("both-on-2", "both-on-remote", "both-on-local");
}

/// `split` written in Python (policies/split-py), uploaded to both daemons: the same
/// decisions as the built-in, traffic both ways, and the policy list says what it is.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn two_daemons_split_in_python() {
    two_daemons_with_language_policy("split-py", "Python");
}

/// `split` written in JavaScript (policies/split-js), as above.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn two_daemons_split_in_javascript() {
    two_daemons_with_language_policy("split-js", "JavaScript");
}

fn two_daemons_with_language_policy(name: &str, language: &str) {
    let component = remapd_tests::daemons::language_policy(name);
    let p = pair_uploading(name, Some(&component));
    let mut compiled = Vec::new();
    for (d, side) in [(&p.d1, 1u8), (&p.d2, 2)] {
        let status = d.expect(
            "GET",
            &format!("/v1/peerings/{}", peering(&p, side)),
            None,
            200,
        );
        assert_eq!(status["spec"]["policy"], name, "{status}");
        assert_eq!(
            status["policy_log"][0].as_str().unwrap_or_default(),
            "split with cluster-2: 1 mapping(s)".replace('2', if side == 1 { "2" } else { "1" }),
            "the policy's own log line: {status}"
        );
        let list = d.expect("GET", "/v1/policies", None, 200);
        let info = list
            .as_array()
            .and_then(|l| l.iter().find(|i| i["name"] == name))
            .unwrap_or_else(|| panic!("{name} not listed: {list}"));
        assert!(
            info["language"]
                .as_str()
                .unwrap_or_default()
                .contains(language),
            "{info}"
        );
        let decisions = d.expect(
            "GET",
            &format!("/v1/decisions?peering={}", peering(&p, side)),
            None,
            200,
        );
        // The decision log names the component by digest and says it was applied.
        assert!(
            decisions
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["policy"] == name
                    && r["policy_sha256"] == info["sha256"]
                    && r["outcome"] == "applied"),
            "{decisions}"
        );
        // Its compiled form is kept, so a restart does not compile it again.
        let cwasm = d
            .state_dir
            .join("compiled")
            .join(format!("{}.cwasm", info["sha256"].as_str().unwrap()));
        assert!(cwasm.exists(), "{} missing", cwasm.display());
        compiled.push(cwasm);
    }
    run_pair(&p, "split", "split");
    // run_pair deleted the peerings; deleting the policy drops its compiled form too.
    for (d, cwasm) in [&p.d1, &p.d2].into_iter().zip(&compiled) {
        d.expect("DELETE", &format!("/v1/policies/{name}"), None, 204);
        assert!(!cwasm.exists(), "{} left behind", cwasm.display());
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn two_daemons_auto() {
    run("auto", "split", "split");
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn sigkill_and_restart_of_a_daemon() {
    let mut p = pair("split");
    reachable(
        &p.net.pod1,
        &p.net.pod2,
        "30.0.0.1",
        "40.0.0.1",
        "60.0.0.1",
        7200,
    );
    let name = peering(&p, 1);
    let before: Value =
        p.d1.expect("GET", &format!("/v1/peerings/{name}"), None, 200);
    let status_before = p.d1.expect("GET", "/v1/status", None, 200);
    let pids_before = p.d1.wireguard_pids();
    let pinger = p
        .net
        .pod1
        .command("ping")
        .args(["-n", "-q", "-c", "500", "-i", "0.01", "-W", "1", "30.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    p.d1.kill();
    std::thread::sleep(Duration::from_millis(300));
    let gw1 = Netns::new_handle(p.net.gw1.name());
    p.d1.spawn(&gw1);
    let out = pinger.wait_with_output().unwrap();
    let (tx, rx) = parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(tx, 500);
    assert!(
        tx - rx <= 1,
        "lost {} pings across the daemon restart",
        tx - rx
    );

    let after =
        p.d1.expect("GET", &format!("/v1/peerings/{name}"), None, 200);
    assert_eq!(after["decision"], before["decision"]);
    assert_eq!(after["public_key"], before["public_key"], "same key pair");
    let status_after = p.d1.expect("GET", "/v1/status", None, 200);
    assert_eq!(
        status_after["program_ids"], status_before["program_ids"],
        "programs adopted, not reloaded"
    );
    assert_eq!(status_after["dataplane_adopted"], true);
    let report = &status_after["last_reconcile"];
    assert_eq!(
        report["tunnels"]["created"], 0,
        "the tunnel was adopted: {report}"
    );
    assert_eq!(report["dataplane"]["inserted"], 0, "{report}");
    assert_eq!(report["routes"]["added"], 0, "{report}");
    assert_eq!(
        p.d1.wireguard_pids(),
        pids_before,
        "the same wireguard-go process"
    );
    let counters = |v: &Value| -> Vec<u64> {
        v["applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["packets"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(counters(&before).len(), 2, "{before}");
    assert_eq!(counters(&after).len(), 2, "{after}");
    for (a, b) in counters(&after).iter().zip(counters(&before)) {
        assert!(*a > b, "counters kept counting: {a} <= {b}");
    }
}

/// Issue 11: a peering whose remote CIDRs would cover the underlay, the peer's endpoint
/// or half the address space is refused before anything is applied; the gateway keeps
/// routing its tunnel packets on the underlay and the existing tunnel keeps working.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn peerings_that_would_hijack_the_gateway_are_refused() {
    let p = pair("split");
    reachable(
        &p.net.pod1,
        &p.net.pod2,
        "30.0.0.1",
        "40.0.0.1",
        "60.0.0.1",
        7400,
    );
    let route_to_peer = |ns: &Netns| {
        String::from_utf8_lossy(&ns.ip(&["route", "get", UNDERLAY_GW2]).stdout).into_owned()
    };
    let before = route_to_peer(&p.net.gw1);
    let names = |d: &Daemon| -> Vec<Value> {
        d.expect("GET", "/v1/peerings", None, 200)
            .as_array()
            .unwrap()
            .iter()
            .map(|p| json!([p["name"], p["spec"], p["plan"]]))
            .collect()
    };
    let peerings_before = names(&p.d1);
    for (remote_pods, what) in [
        (json!(["198.18.0.0/30"]), "the underlay"),
        (json!([format!("{UNDERLAY_GW2}/32")]), "the peer's endpoint"),
        (json!(["192.0.0.0/3"]), "an eighth of the address space"),
    ] {
        let hijack = json!({
            "policy": "auto",
            "remote": {"name": "cluster-3", "pod_cidrs": remote_pods, "capabilities": {"nat_dataplane": true}},
            "tunnel": {"listen_port": 51830, "endpoint": "203.0.113.9:51820", "remote_public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}
        });
        let (status, problem) = p.d1.call("PUT", "/v1/peerings/hijack", Some(&hijack));
        assert_eq!(status, 409, "{what}: {problem}");
        assert_eq!(
            problem["type"], "https://remapd.dev/problems/protected-address",
            "{what}: {problem}"
        );
        assert_eq!(
            route_to_peer(&p.net.gw1),
            before,
            "{what}: the underlay route changed"
        );
        assert!(!before.contains("rmd-"), "{before}");
    }
    assert_eq!(names(&p.d1), peerings_before);
    // The tunnel still carries traffic both ways.
    reachable(
        &p.net.pod1,
        &p.net.pod2,
        "30.0.0.1",
        "40.0.0.1",
        "60.0.0.1",
        7410,
    );
    reachable(
        &p.net.pod2,
        &p.net.pod1,
        "60.0.0.1",
        "40.0.0.1",
        "30.0.0.1",
        7420,
    );
}

/// Issue 11 item 7: the state file deleted while the daemon is down must not make the
/// next start remove the running translation and tunnel. It refuses, naming what it
/// found; forwarding goes on; `--adopt-and-clear` then starts empty and removes them.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_lost_state_file_is_refused_until_adopt_and_clear() {
    let mut p = pair("split");
    reachable(
        &p.net.pod1,
        &p.net.pod2,
        "30.0.0.1",
        "40.0.0.1",
        "60.0.0.1",
        7500,
    );
    p.d1.kill();
    std::fs::remove_file(p.d1.state_dir.join("state.json")).unwrap();
    let gw1 = Netns::new_handle(p.net.gw1.name());
    let (status, text) = p.d1.run_refused(&gw1, &[]);
    assert!(!status.success(), "{text}");
    for needle in [
        "pinned dataplane",
        "translation rules",
        "rmd-",
        "--adopt-and-clear",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert!(!p.d1.state_dir.join("state.json").exists());
    // Nothing was removed: the pods still talk through the translation.
    reachable(
        &p.net.pod1,
        &p.net.pod2,
        "30.0.0.1",
        "40.0.0.1",
        "60.0.0.1",
        7510,
    );
    // On purpose: start empty and clear what was left.
    p.d1.spawn_with(&gw1, &["--adopt-and-clear"]);
    assert_eq!(p.d1.expect("GET", "/v1/peerings", None, 200), json!([]));
    let status = p.d1.expect("GET", "/v1/status", None, 200);
    let report = &status["last_reconcile"];
    assert_eq!(report["dataplane"]["removed"], 2, "{report}");
    assert_eq!(report["tunnels"]["removed"], 1, "{report}");
    assert!(p.d1.wireguard_pids().is_empty(), "tunnels were not removed");
    assert!(p.d1.state_dir.join("state.json").exists());
}

/// `route_placement = "main-table"`: both daemons restarted with it move their routes
/// from their own table into the main table (protocol 78), remove their policy rule —
/// the gateways keep only the kernel's three rules — and the pods still talk both ways;
/// restarted in own-table mode, they move back. Deleting the peering removes the
/// main-table route.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn main_table_placement_routes_without_a_policy_rule() {
    let mut p = pair("split");
    let rules =
        |ns: &Netns| String::from_utf8_lossy(&ns.ip(&["-4", "rule", "show"]).stdout).into_owned();
    let ours_in_main = |ns: &Netns| {
        String::from_utf8_lossy(&ns.ip(&["-4", "route", "show", "proto", "78"]).stdout).into_owned()
    };
    let gw1 = Netns::new_handle(p.net.gw1.name());
    let gw2 = Netns::new_handle(p.net.gw2.name());
    assert!(rules(&gw1).contains("lookup 7878"), "{}", rules(&gw1));
    for (d, ns) in [(&mut p.d1, &gw1), (&mut p.d2, &gw2)] {
        d.terminate();
        d.spawn_with(ns, &["--route-placement", "main-table"]);
    }
    for (ns, view) in [(&gw1, "30.0.0.0/24"), (&gw2, "60.0.0.0/24")] {
        let rules = rules(ns);
        assert_eq!(rules.lines().count(), 3, "only the kernel's rules: {rules}");
        assert!(ns.table_routes(7878).trim().is_empty());
        let main = ours_in_main(ns);
        assert!(
            main.starts_with(view) && main.contains("dev rmd-") && main.lines().count() == 1,
            "{main}"
        );
    }
    reachable(
        &p.net.pod1,
        &p.net.pod2,
        "30.0.0.1",
        "40.0.0.1",
        "60.0.0.1",
        7600,
    );
    reachable(
        &p.net.pod2,
        &p.net.pod1,
        "60.0.0.1",
        "40.0.0.1",
        "30.0.0.1",
        7610,
    );
    // Back to own-table mode on gateway 1.
    p.d1.terminate();
    p.d1.spawn(&gw1);
    assert!(rules(&gw1).contains("lookup 7878"), "{}", rules(&gw1));
    assert!(
        ours_in_main(&gw1).trim().is_empty(),
        "{}",
        ours_in_main(&gw1)
    );
    assert!(gw1.table_routes(7878).starts_with("30.0.0.0/24"));
    reachable(
        &p.net.pod1,
        &p.net.pod2,
        "30.0.0.1",
        "40.0.0.1",
        "60.0.0.1",
        7620,
    );
    // Deleting the peering on gateway 2 (still in main-table mode) removes its route.
    p.d2.expect(
        "DELETE",
        &format!("/v1/peerings/{}", peering(&p, 2)),
        None,
        204,
    );
    assert!(
        ours_in_main(&gw2).trim().is_empty(),
        "{}",
        ours_in_main(&gw2)
    );
}

/// The MSS both ends of a TCP connection from `client` to `target` (served in
/// `server`) settle on: each side's `TCP_MAXSEG`, which follows the MSS option the
/// other side's SYN carried.
fn mss_of_a_connection(server: &Netns, client: &Netns, target: Ipv4Addr, port: u16) -> (u32, u32) {
    use nix::sys::socket::{getsockopt, sockopt::TcpMaxSeg};
    use std::net::{TcpListener, TcpStream};
    let listener = server.in_ns(move || TcpListener::bind(("0.0.0.0", port)).expect("bind"));
    let accept = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        getsockopt(&stream, TcpMaxSeg).expect("TCP_MAXSEG")
    });
    let client_mss = client.in_ns(move || {
        let stream = TcpStream::connect_timeout(&(target, port).into(), Duration::from_secs(5))
            .expect("connect");
        getsockopt(&stream, TcpMaxSeg).expect("TCP_MAXSEG")
    });
    (accept.join().expect("server"), client_mss)
}

/// A peering's `tunnel.mss_clamp`, set on gateway 1 only: SYNs crossing its tunnel both
/// ways carry at most that MSS, so both ends of a connection settle below it; the
/// metric counts them; removing the setting restores the path's own MSS.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn an_mss_clamp_lowers_the_mss_of_connections_across_the_tunnel() {
    let p = pair("split");
    let name = peering(&p, 1);
    let (server, client) = mss_of_a_connection(&p.net.pod2, &p.net.pod1, ip("30.0.0.1"), 7300);
    assert!(
        server > 1200 && client > 1200,
        "the path's own MSS first: {server}/{client}"
    );

    let mut spec =
        p.d1.expect("GET", &format!("/v1/peerings/{name}"), None, 200)["spec"].clone();
    spec["tunnel"]["mss_clamp"] = json!(100);
    let refused =
        p.d1.expect("PUT", &format!("/v1/peerings/{name}"), Some(&spec), 400);
    assert_eq!(refused["pointer"], "/tunnel/mss_clamp", "{refused}");
    spec["tunnel"]["mss_clamp"] = json!(1200);
    p.d1.expect("PUT", &format!("/v1/peerings/{name}"), Some(&spec), 200);
    let (server, client) = mss_of_a_connection(&p.net.pod2, &p.net.pod1, ip("30.0.0.1"), 7301);
    assert!(
        server <= 1200 && client <= 1200,
        "clamped: {server}/{client}"
    );
    // The other way round too (pod 2 dials pod 1): gateway 1 clamps its ingress SYN.
    let (server, client) = mss_of_a_connection(&p.net.pod1, &p.net.pod2, ip("60.0.0.1"), 7302);
    assert!(
        server <= 1200 && client <= 1200,
        "clamped: {server}/{client}"
    );
    let metrics = p.d1.expect("GET", "/metrics", None, 200);
    let clamped: u64 = metrics
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("remapd_peering_mss_clamped_packets_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(clamped, 4, "two SYNs and two SYN-ACKs: {metrics}");

    spec["tunnel"].as_object_mut().unwrap().remove("mss_clamp");
    p.d1.expect("PUT", &format!("/v1/peerings/{name}"), Some(&spec), 200);
    let (server, client) = mss_of_a_connection(&p.net.pod2, &p.net.pod1, ip("30.0.0.1"), 7303);
    assert!(
        server > 1200 && client > 1200,
        "unclamped again: {server}/{client}"
    );
}

/// A browser run whose whole process group (node, chromium and its helpers) is killed
/// and reaped when the test ends, passed or not.
struct BrowserRun(std::process::Child);

impl Drop for BrowserRun {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn the_status_page_draws_the_peering_and_counts_live_in_a_browser() {
    use std::io::BufRead as _;
    let p = pair("split");
    let name = peering(&p, 1);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // The driver runs next to its node_modules (scripts/setup.sh installs them there).
    let ui = root.join("target/node/ui");
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "run scripts/setup.sh (make test does): it installs playwright-core into {}",
        ui.display()
    );
    let script = ui.join("page_check.mjs");
    std::fs::copy(root.join("tests/ui/page_check.mjs"), &script).unwrap();
    // The page reads the API with the token from the fragment, as an operator opens it.
    let url = format!(
        "http://127.0.0.1:7878/ui#token={}",
        remapd_tests::daemons::TOKEN
    );
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", p.net.gw1.name(), "node"])
        .arg(&script)
        .args([url.as_str(), name.as_str()])
        .current_dir(&ui)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("node");
    let mut run = BrowserRun(child);
    let mut lines = std::io::BufReader::new(run.0.stdout.take().unwrap()).lines();
    // The driver's next report, or what it said on stderr when it gave up.
    let mut report = |what: &str| -> Value {
        match lines.next() {
            Some(Ok(line)) => serde_json::from_str(&line).unwrap(),
            other => {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(run.0.stderr.as_mut().unwrap(), &mut err);
                panic!("{what}: {other:?}; {err}");
            }
        }
    };
    let first = report(&format!("the page never showed {name}"));
    assert_eq!(first["cluster"], "cluster-1", "{first:#}");
    assert_eq!(first["ready"], "ready", "{first:#}");
    assert_eq!(first["error"], "", "{first:#}");
    assert_eq!(first["problems"], json!([]), "{first:#}");
    let texts: Vec<&str> = first["svg_texts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "this cluster: cluster-1",
        "remote: cluster-2",
        "real: 40.0.0.0/24",
        "we see them at: 40.0.0.0/24 → 30.0.0.0/24",
        "they see us at: 40.0.0.0/24 → 60.0.0.0/24",
        "strategy: split",
    ] {
        assert!(texts.contains(&want), "{want:?} not drawn: {texts:?}");
    }
    let before = first["packets"].as_u64().unwrap();
    // Traffic while the page is open: its counter must rise without a reload.
    let (_, rx) = ping(&p.net.pod1, ip("30.0.0.1"), 5, "0.2");
    assert!(rx >= 3, "ping 30.0.0.1: {rx}/5");
    let second = report(&format!("the counter never moved past {before}"));
    assert!(second["packets"].as_u64().unwrap() > before, "{second:#}");
    assert_eq!(second["problems"], json!([]), "{second:#}");
    // The page's live trace shows the translation of a ping as it happens.
    let third = report("the page's trace never started");
    assert_eq!(third["trace"], "running", "{third:#}");
    let (_, rx) = ping(&p.net.pod1, ip("30.0.0.1"), 3, "0.2");
    assert!(rx >= 2, "ping 30.0.0.1: {rx}/3");
    let fourth = report("the page's trace never showed the ping");
    let rows: Vec<Vec<String>> = serde_json::from_value(fourth["rows"].clone()).unwrap();
    let request = rows.iter().find(|r| r[2] == "egress");
    let request = request.unwrap_or_else(|| panic!("no egress row: {rows:?}"));
    assert_eq!(
        request[1..],
        [
            name.as_str(),
            "egress",
            "icmp 8/0",
            "40.0.0.1 → 30.0.0.1",
            "40.0.0.1 → 40.0.0.1",
            "translated",
            "destination 30.0.0.0/24 → 40.0.0.0/24"
        ],
        "{rows:?}"
    );
    assert_eq!(fourth["problems"], json!([]), "{fourth:#}");
    let status = run.0.wait().unwrap();
    assert!(status.success(), "{status}");
}
