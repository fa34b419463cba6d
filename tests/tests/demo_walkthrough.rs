//! The README cannot rot: the demo script (which `make demo` runs) is run here for every
//! policy against the freshly built daemon, and every curl command the README's
//! walkthrough shows must appear, verbatim, in that script. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use remapd_tests::daemons::remapd_binary;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_readme_curl_command_is_in_the_demo_script() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let script = std::fs::read_to_string(root().join("scripts/demo.sh"))
        .unwrap()
        .replace("'\"$POLICY\"'", "split");
    assert!(
        readme.contains("<!-- walkthrough:start -->")
            && readme.contains("<!-- walkthrough:end -->")
    );
    // Every curl command anywhere in the README: they are all written as `gw1 curl` /
    // `gw2 curl` (the demo's helpers for running on a gateway), so the demo runs them.
    assert!(
        !readme.lines().any(|l| l.trim_start().starts_with("curl ")),
        "write README curl commands as `gw1 curl ...` so the demo can run them"
    );
    let commands: Vec<&str> = readme
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("gw1 curl") || l.starts_with("gw2 curl"))
        .collect();
    assert!(
        commands.len() >= 8,
        "the walkthrough shows the calls: {commands:?}"
    );
    for c in commands {
        assert!(
            script.contains(c),
            "README command not in scripts/demo.sh:\n{c}"
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn the_demo_passes_for_every_policy() {
    let out = Command::new("bash")
        .arg(root().join("scripts/demo.sh"))
        .env("SKIP_BUILD", "1")
        .env("REMAPD", remapd_binary())
        .env(
            "POLICY_BUILD",
            remapd_binary().with_file_name("remapd-policy-build"),
        )
        .env(
            "DEMO_DIR",
            std::env::temp_dir().join(format!("remapd-demo-test-{}", std::process::id())),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0 failed"), "{text}");
    assert_eq!(
        text.matches('✔').count(),
        41,
        "13 checks for each of 3 policies (ping, TCP and UDP both ways over IPv4 and IPv6, the clean deletion), the uploaded policy's upload (with its digest) and dry run:\n{text}"
    );
    assert!(!text.contains('✘'), "{text}");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("remapd-"),
        "the demo cleaned up its namespaces"
    );
}
