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
    let start = readme
        .find("<!-- walkthrough:start -->")
        .expect("walkthrough start marker in README");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("walkthrough end marker in README");
    let commands: Vec<&str> = readme[start..end]
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
fn the_demo_passes_for_every_policy() {
    let out = Command::new("bash")
        .arg(root().join("scripts/demo.sh"))
        .env("SKIP_BUILD", "1")
        .env("REMAPD", remapd_binary())
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
        21,
        "7 checks for each of 3 policies:\n{text}"
    );
    assert!(!text.contains('✘'), "{text}");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("remapd-"),
        "the demo cleaned up its namespaces"
    );
}
