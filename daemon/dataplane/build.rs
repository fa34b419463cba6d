//! Builds the eBPF programs (`ebpf/remapd-ebpf`) with the nightly toolchain and
//! bpf-linker via aya-build, and leaves the object in `OUT_DIR/remapd-ebpf` for
//! `include_bytes_aligned!`. With `AYA_BUILD_SKIP=1` (clippy, `cargo check` on a machine
//! without bpf-linker) an empty object is left instead and the daemon reports it at run
//! time.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    build_ebpf()
}

fn build_ebpf() -> anyhow::Result<()> {
    let out_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("remapd-ebpf");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        std::fs::write(&object, []).context("writing the empty placeholder object")?;
        std::fs::write(out_dir.join("remapd-bench-ebpf"), [])
            .context("writing the empty placeholder bench object")?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "remapd-ebpf")
        .ok_or_else(|| anyhow!("package remapd-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("remapd-ebpf manifest has no parent directory"))?;
    println!(
        "cargo:rerun-if-changed={}",
        root_dir.join("../remapd-common/src")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "remapd-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
