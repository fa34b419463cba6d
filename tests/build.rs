//! Marks a build by a user other than root with `cfg(unprivileged)`: the tests that need
//! root (network namespaces, eBPF) are then reported as ignored, with the reason, instead
//! of failing. `make test` runs as root and runs them all. `REMAPD_TESTS_UNPRIVILEGED=1`
//! marks a root build the same way, to see what a user's `cargo test` runs.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(unprivileged)");
    // The same target directory may be built by root and by a user: check again when
    // the user changes.
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_USER");
    println!("cargo::rerun-if-env-changed=REMAPD_TESTS_UNPRIVILEGED");
    println!("cargo::rerun-if-changed=build.rs");
    let forced = std::env::var_os("REMAPD_TESTS_UNPRIVILEGED").is_some_and(|v| v == "1");
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory.
    if forced || unsafe { libc::geteuid() } != 0 {
        println!("cargo::rustc-cfg=unprivileged");
    }
}
