//! The `remapd` binary's command line: a bad configuration is refused with a clear
//! message and exit status 64 before anything is touched; the example config is valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use remapd_tests::daemons::remapd_binary;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(remapd_binary()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
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
