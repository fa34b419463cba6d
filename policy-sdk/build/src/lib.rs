//! Builds a remapd policy crate into a WebAssembly component: `cargo build --target
//! wasm32-unknown-unknown --release`, then wit-component turns the core module (which
//! carries its WIT world in a custom section, put there by the SDK's bindings) into a
//! component. The result imports nothing but the contract's `log` (no WASI).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::Message;

/// Turns a core module built with the SDK into a component, and checks that it imports
/// only what the contract offers.
pub fn componentize(core_module: &[u8]) -> anyhow::Result<Vec<u8>> {
    let component = wit_component::ComponentEncoder::default()
        .module(core_module)
        .context(
            "reading the core module's component metadata (was it built with remapd-policy-sdk?)",
        )?
        .validate(true)
        .encode()
        .context("encoding the component")?;
    Ok(component)
}

/// Builds the policy crate at `crate_dir` for wasm32-unknown-unknown and returns the
/// componentized bytes of its cdylib. `target_dir` keeps the nested build apart.
pub fn build_policy(crate_dir: &Path, target_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let manifest = crate_dir.join("Cargo.toml");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "--message-format=json-render-diagnostics",
        "--lib",
    ])
    .arg("--manifest-path")
    .arg(&manifest)
    .arg("--target-dir")
    .arg(target_dir)
    // Settings meant for the host build must not leak into the wasm one.
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut wasm: Option<PathBuf> = None;
    for message in Message::parse_stream(std::io::BufReader::new(stdout)) {
        if let Message::CompilerArtifact(artifact) = message.context("reading cargo's output")? {
            if artifact.manifest_path.as_std_path()
                != manifest.canonicalize().unwrap_or(manifest.clone())
            {
                continue;
            }
            if let Some(file) = artifact
                .filenames
                .iter()
                .find(|f| f.extension() == Some("wasm"))
            {
                wasm = Some(file.clone().into_std_path_buf());
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!(
            "building {} for wasm32-unknown-unknown failed ({status}); is the target installed? (rustup target add wasm32-unknown-unknown)",
            crate_dir.display()
        );
    }
    let wasm = wasm.ok_or_else(|| {
        anyhow!(
            "{} produced no .wasm (is crate-type = [\"cdylib\"] set?)",
            crate_dir.display()
        )
    })?;
    let core = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    componentize(&core).with_context(|| format!("componentizing {}", wasm.display()))
}
