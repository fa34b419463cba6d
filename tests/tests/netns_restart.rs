//! Restart: a process built on the dataplane module applies the rules and is then
//! SIGKILLed and started again while a pod pings every 10 ms through the translation.
//! Forwarding must not notice (≤ 1 lost ping), and the new process must adopt the
//! pinned programs (same ids), rules and counters instead of reloading. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use remapd_tests::netns::{ChildGuard, LOAD_TIMEOUT, parse_ping, wait_for};
use remapd_tests::topology::{Topology, seed_cluster, seed_split};
use serde_json::Value;

fn start_agent(t: &Topology, gateway: u8, rules: &Path, status: &Path) -> ChildGuard {
    let _ = std::fs::remove_file(status);
    let ns = if gateway == 1 { &t.gw1 } else { &t.gw2 };
    let pins = t.dataplane_config(gateway).pin_dir;
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_dataplane-agent"));
    cmd.arg(&pins).arg(rules).arg(status);
    let log = t.scratch_file(&format!("agent{gateway}.log"));
    let mut agent = ChildGuard::spawn("dataplane-agent", &mut cmd, Some(&log));
    wait_for("the agent's status file", LOAD_TIMEOUT, || {
        assert!(
            agent.is_running(),
            "agent exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        status.exists()
    });
    agent
}

fn read(status: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(status).expect("status file")).expect("status JSON")
}

fn rules_without_counters(status: &Value) -> Vec<Value> {
    status["status"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("packets");
            r.as_object_mut().unwrap().remove("bytes");
            r
        })
        .collect()
}

fn packets(status: &Value) -> Vec<u64> {
    status["status"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["packets"].as_u64().unwrap())
        .collect()
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn sigkill_and_restart_do_not_disturb_forwarding() {
    let (plan1, plan2) = seed_split();
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    let rules1 = t.scratch_file("rules1.json");
    let rules2 = t.scratch_file("rules2.json");
    std::fs::write(&rules1, serde_json::to_vec(&t.rules(1, &plan1)).unwrap()).unwrap();
    std::fs::write(&rules2, serde_json::to_vec(&t.rules(2, &plan2)).unwrap()).unwrap();
    let status1 = t.scratch_file("status1.json");
    let status2 = t.scratch_file("status2.json");
    let mut agent1 = start_agent(&t, 1, &rules1, &status1);
    let _agent2 = start_agent(&t, 2, &rules2, &status2);
    let first = read(&status1);
    assert_eq!(first["status"]["adopted"], false, "the first run loads");
    assert_eq!(first["report"]["inserted"], 2);

    // Warm up the tunnel (handshake), then ping every 10 ms for 4 s in the background.
    let warm = t
        .pod1
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", "30.0.0.1"])
        .output()
        .unwrap();
    assert!(warm.status.success(), "warm-up ping failed");
    let pinger = t
        .pod1
        .command("ping")
        .args(["-n", "-q", "-c", "400", "-i", "0.01", "-W", "1", "30.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    let before = t.status(1);
    assert!(
        before.rules.iter().all(|r| r.packets > 0),
        "traffic was counted before the kill"
    );
    agent1.kill();
    assert!(!agent1.is_running());
    // Forwarding goes on with no process at all for a while.
    std::thread::sleep(Duration::from_millis(500));
    let agent1_again = start_agent(&t, 1, &rules1, &status1);
    let second = read(&status1);

    let out = pinger.wait_with_output().unwrap();
    let (tx, rx) = parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        tx,
        400,
        "ping output: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        tx - rx <= 1,
        "lost {} of {tx} pings across the restart",
        tx - rx
    );

    assert_eq!(
        second["status"]["adopted"], true,
        "the restarted process adopts"
    );
    assert_eq!(
        second["status"]["program_ids"], first["status"]["program_ids"],
        "programs were not reloaded"
    );
    assert_eq!(
        second["status"]["attachments"],
        first["status"]["attachments"]
    );
    assert_eq!(
        rules_without_counters(&second),
        rules_without_counters(&first),
        "rules unchanged"
    );
    let report = &second["report"];
    for key in ["inserted", "updated", "removed", "attached", "detached"] {
        assert_eq!(
            report[key], 0,
            "restart re-applied nothing ({key}): {report}"
        );
    }
    // Counters kept counting: at least what they had before the kill.
    let before_packets: Vec<u64> = before.rules.iter().map(|r| r.packets).collect();
    for (after, before) in packets(&second).iter().zip(&before_packets) {
        assert!(after >= before, "counters went back: {after} < {before}");
    }
    let after = t.status(1);
    for (now, then) in after.rules.iter().zip(&before.rules) {
        assert!(
            now.packets > then.packets,
            "rule {} kept counting",
            now.rule
        );
    }
    drop(agent1_again);
}
