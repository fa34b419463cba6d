//! The API against its own OpenAPI document (issue 11): Schemathesis (installed by
//! `scripts/setup.sh` into `target/py/schemathesis`) generates requests for every
//! operation — examples, boundary values, fuzzed and schema-invalid data, and stateful
//! sequences following the spec's links — against a real daemon in its own network
//! namespace, and fails on any server error, undocumented status, response that does
//! not match its schema or media type, schema-invalid data accepted, or a call that
//! needs the token accepted without it. `REMAPD_SCHEMATHESIS_SEED` replays a run
//! (default fixed, so CI is deterministic); `REMAPD_SCHEMATHESIS_EXAMPLES` sets the
//! examples per operation (default 50). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use remapd_tests::daemons::{Daemon, TOKEN, remapd_binary};
use remapd_tests::netns::{Netns, Scratch, unique_prefix};

fn schemathesis() -> PathBuf {
    let target = remapd_binary()
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_owned();
    let bin = target.join("py/schemathesis/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh (make test does)",
        bin.display()
    );
    bin
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn every_operation_matches_the_spec_under_generated_requests() {
    let prefix = unique_prefix();
    let scratch = Scratch::new(&format!("{prefix}-contract"));
    let ns = Netns::new(&format!("{prefix}-api"));
    let daemon = Daemon::start(&ns, "api", &scratch.path, &prefix, "198.18.0.1");
    let seed = std::env::var("REMAPD_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261202".into());
    let examples = std::env::var("REMAPD_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "50".into());
    let hooks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis");
    let out = ns
        .command(schemathesis())
        .args([
            "run",
            "http://127.0.0.1:7878/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance,\
             negative_data_rejection,ignored_auth,use_after_free,ensure_resource_availability",
            "--max-examples",
            &examples,
            "--workers",
            "1",
            "--seed",
            &seed,
            "--no-color",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &hooks)
        .env("HOME", &scratch.path)
        .current_dir(&scratch.path)
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis (seed {seed}) found failures:\n{text}\n--- daemon log ---\n{}",
        daemon.log_text()
    );
    // It really ran every operation the spec has.
    let spec: serde_json::Value = serde_json::from_str(
        &remapd::api::openapi()
            .to_json()
            .expect("the spec serializes"),
    )
    .expect("the spec is JSON");
    let operations: usize = spec["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |ops| ops.len()))
        .sum();
    assert!(
        text.contains(&format!("Tested: {operations}")),
        "{operations} operations in the spec:\n{text}"
    );
}
