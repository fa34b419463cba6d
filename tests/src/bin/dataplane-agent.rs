//! A minimal long-running process built on remapd's dataplane module, for the restart
//! test and the benchmarks: opens (loads or adopts) the dataplane, applies the desired
//! state from a JSON file (`{"rules": [..], "borders": [..]}`, or just a rules array),
//! writes `{"report": .., "status": ..}` to the status file, then waits to be killed.
//!
//! Usage: dataplane-agent PIN_DIR RULES_JSON STATUS_JSON

use std::time::Duration;

use anyhow::{Context as _, bail};
use remapd::dataplane::{Dataplane, DataplaneConfig, DesiredDataplane, TranslationRule};

/// What the input file may hold.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Input {
    Rules(Vec<TranslationRule>),
    Desired(DesiredDataplane),
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, pin_dir, rules_file, status_file] = args.as_slice() else {
        bail!("usage: dataplane-agent PIN_DIR RULES_JSON STATUS_JSON");
    };
    let input: Input = serde_json::from_slice(
        &std::fs::read(rules_file).with_context(|| format!("reading {rules_file}"))?,
    )
    .context("parsing the desired dataplane")?;
    let desired = match input {
        Input::Rules(rules) => DesiredDataplane {
            rules,
            borders: Vec::new(),
        },
        Input::Desired(desired) => desired,
    };
    let config = DataplaneConfig {
        pin_dir: pin_dir.into(),
        ..DataplaneConfig::default()
    };
    let mut dataplane = Dataplane::open(&config).context("opening the dataplane")?;
    let report = dataplane
        .apply(&desired)
        .context("applying the desired dataplane")?;
    let status = dataplane.status().context("reading status")?;
    let doc = serde_json::json!({ "report": report, "status": status });
    let tmp = format!("{status_file}.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::rename(&tmp, status_file)?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
