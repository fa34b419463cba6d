//! The `remapd` binary's command line: a bad configuration is refused with a clear
//! message and exit status 64 before anything is touched; the example config is valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use remapd_tests::daemons::remapd_binary;

fn run(args: &[&str]) -> (i32, String) {
    // Compiled policies are cached under target/, not in the user's home.
    let cache = concat!(env!("CARGO_TARGET_TMPDIR"), "/remapd-policy-cache");
    // Under coreutils' timeout: a command that hangs fails the test instead of CI.
    let out = Command::new("timeout")
        .args(["--kill-after=5", "180"])
        .arg(remapd_binary())
        .args(args)
        .env("REMAPD_POLICY_CACHE", cache)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code != 124 && code != 137,
        "remapd {args:?} did not finish within 180 s: {text}"
    );
    (code, text)
}

#[test]
fn bad_configuration_exits_64_with_a_reason() {
    let (code, text) = run(&["--listen", "0.0.0.0:7878", "check-config"]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("token_file"), "{text}");

    let dir = std::env::temp_dir().join(format!("remapd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:7878\"\nroute_tabel = 5\n").unwrap();
    let (code, text) = run(&["--config", bad.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("unknown field `route_tabel`"), "{text}");

    std::fs::write(&bad, "route_placement = \"main\"\n").unwrap();
    let (code, text) = run(&["--config", bad.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 64, "{text}");
    assert!(
        text.contains("own-table") && text.contains("main-table"),
        "{text}"
    );
    let (code, text) = run(&["--route-placement", "main", "check-config"]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("main-table"), "{text}");
    let (code, text) = run(&["--route-placement", "main-table", "check-config"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("route_placement: MainTable"), "{text}");

    let (code, text) = run(&["--config", "/nonexistent/remapd.toml", "check-config"]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("/nonexistent/remapd.toml"), "{text}");

    let (code, text) = run(&["--route-table", "254", "check-config"]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("reserved"), "{text}");

    let (code, text) = run(&["--no-such-flag"]);
    assert_eq!(code, 64, "{text}");

    let short = dir.join("token");
    std::fs::write(&short, "short").unwrap();
    std::fs::set_permissions(&short, PermissionsExt::from_mode(0o600)).unwrap();
    let (code, text) = run(&["--token-file", short.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("at least 16"), "{text}");

    // A token others can read is refused, with the way out.
    let open = dir.join("open-token");
    std::fs::write(&open, "0123456789abcdef0123").unwrap();
    std::fs::set_permissions(&open, PermissionsExt::from_mode(0o644)).unwrap();
    let (code, text) = run(&["--token-file", open.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 64, "{text}");
    assert!(
        text.contains("mode 0644") && text.contains("chmod 600"),
        "{text}"
    );
    // Also when it is the one remapd generated and someone opened it up: the daemon
    // refuses to start (before touching anything).
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let generated = state.join("api-token");
    std::fs::write(&generated, "0123456789abcdef0123").unwrap();
    std::fs::set_permissions(&generated, PermissionsExt::from_mode(0o640)).unwrap();
    let (code, text) = run(&["--state-dir", state.to_str().unwrap(), "run"]);
    assert_eq!(code, 64, "{text}");
    assert!(
        text.contains("api-token") && text.contains("mode 0640"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_config_is_valid_and_documented() {
    let (code, example) = run(&["example-config"]);
    assert_eq!(code, 0);
    assert!(example.contains("listen = \"127.0.0.1:7878\""));
    let dir = std::env::temp_dir().join(format!("remapd-cli-ex-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("remapd.toml");
    std::fs::write(&file, &example).unwrap();
    let (code, text) = run(&["--config", file.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(text.contains("--token-file"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 11 item 7: with the state file gone while a previous remapd's dataplane and
/// tunnels are in place, the daemon refuses to start (it would remove them all) and
/// names the ways out; nothing is written.
#[test]
fn a_lost_state_file_is_not_taken_for_a_fresh_start() {
    let dir = std::env::temp_dir().join(format!("remapd-cli-lost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (state, pins, runs) = (dir.join("state"), dir.join("pins"), dir.join("run"));
    for d in [&state, &pins, &runs] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Files in the pin directory that are no pinned dataplane are nothing to lose; the
    // pinned-dataplane case (rules in its maps) is a netns test of netns_daemons.rs.
    std::fs::write(pins.join("stray"), "").unwrap();
    std::fs::write(runs.join("rmd-x.pid"), "1").unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--state-dir",
            state.to_str().unwrap(),
            "--pin-dir",
            pins.to_str().unwrap(),
            "--run-dir",
            runs.to_str().unwrap(),
            "--listen",
            "127.0.0.1:1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let run_with = |extra: &[&str]| {
        let a = args(extra);
        run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, text) = run_with(&["run"]);
    assert_ne!(code, 0, "{text}");
    for needle in [
        "state.json",
        "rmd-x",
        "--adopt-and-clear",
        "remapd teardown",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert!(!text.contains("pinned dataplane"), "{text}");
    assert!(
        !state.join("state.json").exists(),
        "a state file was written"
    );
    // An emptied state file is refused too, with the ways out.
    std::fs::write(state.join("state.json"), "").unwrap();
    let (code, text) = run_with(&["run"]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("not a valid remapd state file") && text.contains("--adopt-and-clear"),
        "{text}"
    );
    assert_eq!(std::fs::read(state.join("state.json")).unwrap(), b"");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `remapd policy`: the authors' tools, run as a user would, with no daemon.
#[test]
fn policy_tools_check_run_test_and_bench_without_a_daemon() {
    let dir = std::env::temp_dir().join(format!("remapd-policy-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cluster = file(
        "cluster.json",
        r#"{"name": "cluster-1", "pod_cidrs": ["40.0.0.0/24"], "remap_pool": ["30.0.0.0/16"]}"#,
    );
    let peer = file(
        "peer.json",
        r#"{"remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24"], "capabilities": {"nat_dataplane": true}}}"#,
    );
    let json = |text: &str| -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };

    // check: what the component is, read from it.
    let (code, out) = run(&["policy", "check", "split"]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    assert_eq!(report["contract"], "remap:policy@0.2.0");
    assert_eq!(report["families"], serde_json::json!(["ipv4", "ipv6"]));
    assert_eq!(report["exports"], serde_json::json!(["decide"]));
    assert_eq!(report["sha256"].as_str().unwrap().len(), 64);
    let garbage = file("garbage.wasm", "not wasm at all");
    let (code, out) = run(&["policy", "check", &garbage]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a WebAssembly binary"), "{out}");
    let (code, out) = run(&["policy", "check", "no-such-policy"]);
    assert_eq!(code, 64, "{out}");

    // run: decision, validation, plan, log, fuel and time.
    let (code, out) = run(&["policy", "run", "auto", "--cluster", &cluster, &peer]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    assert_eq!(report["decision"]["strategy"], "split");
    assert_eq!(report["validation"], "ok");
    assert_eq!(
        report["plan"]["allowed_ips"],
        serde_json::json!(["40.0.0.0/24"])
    );
    assert!(report["fuel_used"].as_u64().unwrap() > 0);
    assert!(!report["log"].as_array().unwrap().is_empty());
    // A refusal is exit 1 and says why; bad input is 64 and points at the field.
    let no_nat = file(
        "no-nat.json",
        r#"{"remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/24"]}}"#,
    );
    let (code, out) = run(&["policy", "run", "split", "--cluster", &cluster, &no_nat]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the policy refused"), "{out}");
    let bad = file(
        "bad.json",
        r#"{"remote": {"name": "cluster-2", "pod_cidrs": ["40.0.0.0/33"]}}"#,
    );
    let (code, out) = run(&["policy", "run", "auto", "--cluster", &cluster, &bad]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("remote.pod_cidrs[0]"), "{out}");

    // test: the committed cases pass; a wrong expectation fails with a diff.
    let cases = concat!(env!("CARGO_MANIFEST_DIR"), "/policy-cases/auto");
    let (code, out) = run(&["policy", "test", "auto", cases]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 passed, 0 failed"), "{out}");
    let wrong = dir.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(
        wrong.join("expects-both-on-2.json"),
        format!(
            r#"{{"cluster": {}, "input": {}, "expect": {{"decision": {{"strategy": "both-on-2", "mappings": [{{"real": "40.0.0.0/24", "remapped": "30.0.0.0/24"}}]}}}}}}"#,
            std::fs::read_to_string(&cluster).unwrap(),
            std::fs::read_to_string(&peer).unwrap()
        ),
    )
    .unwrap();
    let (code, out) = run(&["policy", "test", "auto", wrong.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL expects-both-on-2"), "{out}");
    assert!(out.contains("-  \"strategy\": \"both-on-2\""), "{out}");
    assert!(out.contains("+  \"strategy\": \"split\""), "{out}");

    // The daemon's limits apply when its configuration is given: a fuel budget too
    // small for the decision fails it, as it would in the daemon.
    let tight = file("tight.toml", "[policy]\nfuel = 1000\n");
    let (code, out) = run(&[
        "--config",
        &tight,
        "policy",
        "run",
        "auto",
        "--cluster",
        &cluster,
        &peer,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("used up its fuel (1000 units)"), "{out}");
    // A policy's own limits (`[policy.by_name.<name>]`) apply to it, and only to it.
    let by_name = file(
        "by-name.toml",
        "[policy.by_name.auto]\nfuel = 2000\n[policy.by_name.split]\nfuel = 1000000\n",
    );
    let with = |policy: &str| {
        run(&[
            "--config",
            &by_name,
            "policy",
            "run",
            policy,
            "--cluster",
            &cluster,
            &peer,
        ])
    };
    let (code, out) = with("auto");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("used up its fuel (2000 units)"), "{out}");
    let (code, out) = with("split");
    assert_eq!(code, 0, "{out}");

    // bench: warm latency over the calls asked for.
    let (code, out) = run(&[
        "policy",
        "bench",
        "auto",
        "--cluster",
        &cluster,
        &peer,
        "--calls",
        "20",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("20 warm decisions") && out.contains("median"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `remapd policy` on the Python and JavaScript policies (built by
/// `scripts/build-policies.sh`): `check` names the language and the empty WASI, `test`
/// passes the same cases as the Rust built-in `split`, and the sandbox probes decide
/// with nothing seen.
#[test]
fn policy_tools_take_python_and_javascript_components() {
    use remapd_tests::daemons::language_policy;
    let cases = concat!(env!("CARGO_MANIFEST_DIR"), "/policy-cases/split");
    let (code, out) = run(&["policy", "test", "split", cases]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 passed, 0 failed"), "{out}");
    for (name, language) in [("split-py", "Python"), ("split-js", "JavaScript")] {
        let path = language_policy(name);
        let path = path.to_str().unwrap();
        let (code, out) = run(&["policy", "check", path]);
        assert_eq!(code, 0, "{out}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["language"], language, "{out}");
        assert!(
            report["wasi"].as_str().unwrap().starts_with("imported"),
            "{out}"
        );
        let (code, out) = run(&["policy", "test", path, cases]);
        assert_eq!(code, 0, "{name}: {out}");
        assert!(out.contains("6 passed, 0 failed"), "{name}: {out}");
    }

    let dir = std::env::temp_dir().join(format!("remapd-policy-langs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("cluster.json");
    std::fs::write(
        &cluster,
        r#"{"name": "cluster-1", "pod_cidrs": ["40.0.0.0/24"], "remap_pool": ["30.0.0.0/16"]}"#,
    )
    .unwrap();
    let peer = dir.join("peer.json");
    std::fs::write(&peer, r#"{"remote": {"name": "cluster-3", "pod_cidrs": ["50.0.0.0/24"], "capabilities": {"nat_dataplane": true}}}"#).unwrap();
    for (name, expected) in [
        (
            "snoop-py",
            &[
                "file: refused (FileNotFoundError)",
                "listdir: refused (FileNotFoundError)",
                "env: 0 variable(s)",
                "time: 0.0",
                "monotonic: 0",
                "connect: refused",
                "resolve: refused",
            ][..],
        ),
        (
            "snoop-js",
            &[
                "time: 0",
                "monotonic: 0",
                "process: undefined",
                "require: undefined",
            ][..],
        ),
    ] {
        let path = language_policy(name);
        let args = [
            "policy",
            "run",
            path.to_str().unwrap(),
            "--cluster",
            cluster.to_str().unwrap(),
            peer.to_str().unwrap(),
        ];
        let (code, first) = run(&args);
        assert_eq!(code, 0, "{name} saw something: {first}");
        let report: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(report["decision"]["strategy"], "none", "{first}");
        let log: Vec<String> = serde_json::from_value(report["log"].clone()).unwrap();
        for line in expected {
            assert!(
                log.iter().any(|l| l.starts_with(line)),
                "{name}: no {line:?} in {log:?}"
            );
        }
        // Randomness is seeded: a second run logs the same "random" values.
        let (_, second) = run(&args);
        let again: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(again["log"], report["log"], "{name}: not deterministic");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
