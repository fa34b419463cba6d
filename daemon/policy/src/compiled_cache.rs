//! Compiled policies kept on disk, so a restart (or the next `remapd policy` run) does
//! not compile an interpreter-sized component again: a componentize-py policy takes
//! ~10 s to compile, and loading its compiled form takes milliseconds.
//!
//! Only components of at least [`MIN_CACHED_BYTES`] are kept (the built-ins compile in
//! milliseconds). An entry is `<dir>/<sha256 of the component>.cwasm`, written by
//! this engine (`Component::serialize`) atomically with mode 0600. Loading one is
//! `unsafe` in wasmtime's terms — the bytes are native code — so the directory must be
//! writable by this user only: the daemon uses `compiled/` inside its state directory
//! (mode 0700), and refuses a directory others may write. Uploaded `.cwasm` files are
//! never accepted (see `PolicyError::NativeCode`); nothing here reads a file this
//! engine did not write. wasmtime checks an entry against the engine's version and
//! settings when loading it; a stale or damaged entry is compiled again and replaced.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Components smaller than this are compiled every time (milliseconds).
pub const MIN_CACHED_BYTES: usize = 1 << 20;

/// A directory of compiled components.
#[derive(Clone, Debug)]
pub struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    /// Opens (creating it, mode 0700) `dir`. Refuses a directory another user owns or
    /// that group or others may write: loading from it would run their code.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if std::fs::symlink_metadata(dir)?.uid() == me {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not private to this user (owner {}, mode {:o}); compiled policies are native code",
                    dir.display(),
                    meta.uid(),
                    meta.permissions().mode() & 0o777
                ),
            ));
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.cwasm"))
    }

    /// The compiled component for `sha256`, if this engine wrote a usable one.
    pub(crate) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store` below (same engine settings, checked
        // again by wasmtime) into a directory only this user can write (`open`).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => {
                debug!(path = %path.display(), "compiled policy loaded from the cache");
                Some(component)
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "compiled policy in the cache is unusable; compiling again");
                None
            }
        }
    }

    /// Keeps `component` for `sha256`; a failure only costs a compile next time.
    pub(crate) fn store(&self, sha256: &str, component: &Component) {
        let path = self.path(sha256);
        let tmp = self.dir.join(format!(".{sha256}.cwasm.tmp"));
        let written = component
            .serialize()
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            warn!(path = %path.display(), error = %e, "could not keep the compiled policy");
        }
    }

    /// Removes entries whose component is not in `keep` (sha256s).
    pub fn retain(&self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let live = name
                .strip_suffix(".cwasm")
                .is_some_and(|sha| keep.contains(&sha));
            if !live {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
