//! Builds the built-in policies (`policies/*`) into components in `OUT_DIR`, embedded
//! by `builtin`. With `REMAPD_POLICY_BUILD_SKIP=1` empty placeholders are written
//! instead (the registry then refuses to start, naming the missing built-in).

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    println!("cargo:rerun-if-env-changed=REMAPD_POLICY_BUILD_SKIP");
    let skip = std::env::var("REMAPD_POLICY_BUILD_SKIP").is_ok_and(|v| v == "1");
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for name in ["split", "both-on-2", "auto"] {
        let out = out_dir.join(format!("policy-{name}.wasm"));
        if skip {
            std::fs::write(&out, [])?;
            continue;
        }
        let dir = workspace.join("policies").join(name);
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        let component = remapd_policy_build::build_policy(&dir, &out_dir.join("policy-target"))
            .with_context(|| format!("building built-in policy {name}"))?;
        std::fs::write(&out, component)?;
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("policy-sdk/src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("policy-sdk/wit").display()
    );
    Ok(())
}
