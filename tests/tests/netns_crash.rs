//! Crash consistency: a real daemon in a namespace takes a burst of peering PUTs and
//! DELETEs and is SIGKILLed at a random point of it, 50 times. After each restart the
//! state is valid, every change acknowledged with 2xx is there (the one request that was
//! in flight may or may not be), and the kernel — tunnel interfaces, WireGuard
//! processes, routes in remapd's table, dataplane rules — and the key files match the
//! state exactly. Needs root. The seed is printed; `REMAPD_CRASH_SEED` replays a run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use remapd_tests::daemons::Daemon;
use remapd_tests::netns::{Netns, Scratch, unique_prefix};
use serde_json::{Value, json};

const KILLS: usize = 50;
const NAMES: usize = 5;

/// xorshift64*: enough randomness for choosing operations and kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One request of a burst and what the daemon answered (0: no answer).
#[derive(Debug, Clone)]
struct Op {
    name: String,
    /// `Some(keepalive)` for a PUT, `None` for a DELETE.
    put: Option<u64>,
    status: u16,
}

fn spec(i: usize, keepalive: u64) -> Value {
    json!({
        "policy": "auto",
        "remote": {"name": format!("remote-{i}"), "pod_cidrs": ["40.0.0.0/24"], "capabilities": {"nat_dataplane": true}},
        "tunnel": {"listen_port": 51900 + i, "keepalive": keepalive}
    })
}

/// What each name may be after the burst: the outcomes the answers allow.
fn allowed(
    ops: &[Op],
    known: &mut BTreeMap<String, Option<u64>>,
) -> BTreeMap<String, Vec<Option<u64>>> {
    let mut maybe: BTreeMap<String, Vec<Option<u64>>> = BTreeMap::new();
    for op in ops {
        let effect = op.put;
        match op.status {
            200 | 201 | 204 => {
                known.insert(op.name.clone(), effect);
                maybe.remove(&op.name);
            }
            // Refused (404 for a delete of nothing, or a refused change): no effect.
            400..=599 => {}
            // No answer: the request may or may not have been applied.
            _ => maybe.entry(op.name.clone()).or_default().push(effect),
        }
    }
    known
        .iter()
        .map(|(name, state)| {
            let mut options = vec![*state];
            options.extend(maybe.get(name).into_iter().flatten().copied());
            (name.clone(), options)
        })
        .collect()
}

fn lines(out: std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn sigkill_during_bursts_of_changes_converges_to_what_was_acknowledged() {
    let seed = std::env::var("REMAPD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("REMAPD_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let prefix = unique_prefix();
    let scratch = Scratch::new(&format!("{prefix}-crash"));
    let ns = Netns::new(&format!("{prefix}-gw"));
    let mut daemon = Daemon::start(&ns, "gw", &scratch.path, &prefix, "198.18.0.1");
    daemon.expect(
        "PUT",
        "/v1/cluster",
        Some(
            &json!({"name": "local", "pod_cidrs": ["40.0.0.0/24"], "remap_pool": ["30.0.0.0/16"]}),
        ),
        200,
    );
    let names: Vec<String> = (0..NAMES).map(|i| format!("{prefix}p{i}")).collect();
    let mut known: BTreeMap<String, Option<u64>> =
        names.iter().map(|n| (n.clone(), None)).collect();

    let (mut acknowledged, mut unanswered, mut in_flight_applied) = (0, 0, 0);
    for round in 0..KILLS {
        // A burst on its own thread; the daemon is killed at a random point of it.
        let stop = Arc::new(AtomicBool::new(false));
        let plan: Vec<(usize, Option<u64>)> = (0..40)
            .map(|_| {
                let i = rng.below(NAMES as u64) as usize;
                let put = (rng.below(3) != 0).then(|| 1 + rng.below(60));
                (i, put)
            })
            .collect();
        let burst = {
            let stop = stop.clone();
            let names = names.clone();
            let ns_name = ns.name().to_owned();
            std::thread::spawn(move || {
                let mut ops = Vec::new();
                for (i, put) in plan {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let path = format!("/v1/peerings/{}", names[i]);
                    let (status, _) = match put {
                        Some(k) => remapd_tests::daemons::curl_raw(
                            &ns_name,
                            "PUT",
                            &path,
                            Some(&spec(i, k).to_string()),
                        ),
                        None => remapd_tests::daemons::curl_raw(&ns_name, "DELETE", &path, None),
                    };
                    ops.push(Op {
                        name: names[i].clone(),
                        put,
                        status,
                    });
                }
                ops
            })
        };
        std::thread::sleep(Duration::from_millis(rng.below(600)));
        stop.store(true, Ordering::SeqCst);
        daemon.kill();
        let ops = burst.join().unwrap();
        for op in &ops {
            assert!(
                matches!(op.status, 0 | 200 | 201 | 204 | 404),
                "round {round}: unexpected answer {op:?}; log:\n{}",
                daemon.log_text()
            );
        }
        acknowledged += ops.iter().filter(|o| o.status != 0).count();
        unanswered += ops.iter().filter(|o| o.status == 0).count();
        let options = allowed(&ops, &mut known);

        let handle = Netns::new_handle(ns.name());
        daemon.spawn(&handle);
        let listed = daemon.expect("GET", "/v1/peerings", None, 200);
        let present: BTreeMap<String, Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone()))
            .collect();
        for (name, choices) in &options {
            let actual = present
                .get(name)
                .map(|p| p["spec"]["tunnel"]["keepalive"].as_u64().unwrap());
            assert!(
                choices.contains(&actual),
                "round {round} (seed {seed}): {name} is {actual:?}, the answers allow {choices:?}; ops: {ops:?}"
            );
            if choices.len() > 1 && actual != choices[0] {
                in_flight_applied += 1;
            }
            // What holds now is known again.
            known.insert(name.clone(), actual);
        }

        // The kernel and the key files match the state.
        let want_links: BTreeSet<String> = present
            .values()
            .map(|p| p["interface"].as_str().unwrap().to_owned())
            .collect();
        let links: BTreeSet<String> = lines(ns.ip(&["-o", "link", "show"]))
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_owned())
            .filter(|n| n.starts_with("rmd-"))
            .collect();
        assert_eq!(
            links, want_links,
            "round {round} (seed {seed}): tunnel links"
        );
        let pids: BTreeSet<String> = daemon
            .wireguard_pids()
            .into_iter()
            .map(|(iface, pid)| {
                assert!(
                    std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    "round {round}: wireguard-go for {iface} ({pid}) is gone"
                );
                iface
            })
            .collect();
        assert_eq!(
            pids, want_links,
            "round {round} (seed {seed}): wireguard processes"
        );
        let want_routes: BTreeSet<String> = present
            .values()
            .flat_map(|p| p["plan"]["routes"].as_array().unwrap().clone())
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        let routes: BTreeSet<String> = ns
            .table_routes(7878)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        assert_eq!(routes, want_routes, "round {round} (seed {seed}): routes");
        for p in present.values() {
            assert_eq!(
                p["applied"].as_array().unwrap().len(),
                p["plan"]["rules"].as_array().unwrap().len(),
                "round {round} (seed {seed}): dataplane rules of {}",
                p["name"]
            );
        }
        let keys: BTreeSet<String> = std::fs::read_dir(daemon.state_dir.join("keys"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".key")
                    .to_owned()
            })
            .collect();
        let want_keys: BTreeSet<String> = present.keys().cloned().collect();
        assert_eq!(keys, want_keys, "round {round} (seed {seed}): key files");
    }
    eprintln!(
        "{KILLS} kills: {acknowledged} answered requests, {unanswered} unanswered, \
         {in_flight_applied} unanswered changes found applied after the restart"
    );
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn sigterm_lets_a_change_in_flight_finish_and_exits_cleanly() {
    let prefix = unique_prefix();
    let scratch = Scratch::new(&format!("{prefix}-term"));
    let ns = Netns::new(&format!("{prefix}-gw"));
    let mut daemon = Daemon::start(&ns, "gw", &scratch.path, &prefix, "198.18.0.1");
    daemon.expect(
        "PUT",
        "/v1/cluster",
        Some(
            &json!({"name": "local", "pod_cidrs": ["40.0.0.0/24"], "remap_pool": ["30.0.0.0/16"]}),
        ),
        200,
    );
    // A PUT that loads the dataplane (seconds of verifier work) is in flight when the
    // daemon is told to stop.
    let name = format!("{prefix}p0");
    let put = {
        let ns_name = ns.name().to_owned();
        let path = format!("/v1/peerings/{name}");
        std::thread::spawn(move || {
            remapd_tests::daemons::curl_raw(&ns_name, "PUT", &path, Some(&spec(0, 5).to_string()))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let status = daemon.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        daemon.log_text()
    );
    let (code, body) = put.join().unwrap();
    let log = daemon.log_text();
    // The change was still being applied when the drain began, and finished.
    let draining = log.find("draining open requests").expect(&log);
    let applied = log.rfind(" applied").expect(&log);
    let stopped = log.find("stopped; the dataplane").expect(&log);
    assert!(draining < applied && applied < stopped, "{log}");
    // The request was answered (drained), and what it answered holds after a restart.
    assert_eq!(code, 201, "{body}\n{log}");
    let handle = Netns::new_handle(ns.name());
    daemon.spawn(&handle);
    let p = daemon.expect("GET", &format!("/v1/peerings/{name}"), None, 200);
    assert_eq!(p["spec"]["tunnel"]["keepalive"], 5);
    assert_eq!(
        p["applied"].as_array().unwrap().len(),
        p["plan"]["rules"].as_array().unwrap().len()
    );
}
