//! `remapd-policy-build CRATE_DIR [-o OUT.wasm]`: builds a policy crate into a component.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut crate_dir: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-o" | "--output" => out = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!(
                    "usage: remapd-policy-build CRATE_DIR [-o OUT.wasm]\n\nBuilds a policy crate (written with remapd-policy-sdk) for wasm32-unknown-unknown\nand turns it into a component remapd accepts. Default output: <crate name>.wasm."
                );
                return Ok(());
            }
            other if crate_dir.is_none() => crate_dir = Some(PathBuf::from(other)),
            other => bail!("unexpected argument {other:?} (see --help)"),
        }
    }
    let crate_dir = crate_dir.unwrap_or_else(|| PathBuf::from("."));
    let crate_dir = crate_dir
        .canonicalize()
        .with_context(|| format!("{}", crate_dir.display()))?;
    let name = crate_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into());
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.wasm")));
    let target_dir = crate_dir.join("target");
    let component = remapd_policy_build::build_policy(&crate_dir, &target_dir)?;
    std::fs::write(&out, &component).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} ({} bytes)", out.display(), component.len());
    Ok(())
}
