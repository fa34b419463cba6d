//! Compiled policies kept on disk, so a restart (or the next `remapd policy` run) does
//! not compile an interpreter-sized component again: a componentize-py policy takes
//! ~10 s to compile, and loading its compiled form takes milliseconds.
//!
//! Only components of at least [`MIN_CACHED_BYTES`] are kept (the built-ins compile in
//! milliseconds). An entry is `<dir>/<sha256 of the component>.cwasm`, written by
//! this engine (`Component::serialize`) atomically with mode 0600. Loading one is
//! `unsafe` in wasmtime's terms — the bytes are native code — so only files this user
//! could have written are read: the directory (checked at open and at every load) and
//! the entry (opened without following symlinks, checked on the open file) must be
//! this user's, not writable by group or others, and the entry a regular file with one
//! link. The daemon uses `compiled/` in its state directory (created 0700); the state
//! directory itself is the operator's to keep root-only. Uploaded `.cwasm` files are
//! never accepted (see `PolicyError::NativeCode`). wasmtime checks an entry's header
//! against the engine's version and settings; an entry that fails that (a stale one,
//! a truncated one) is compiled again and replaced. An entry altered in place by this
//! same user is not detected: that user can already replace the daemon.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Components smaller than this are compiled every time (milliseconds).
pub const MIN_CACHED_BYTES: usize = 1 << 20;

/// A directory of compiled components.
#[derive(Debug)]
pub struct CompiledCache {
    dir: PathBuf,
    uid: u32,
    /// Names temporary files uniquely (two compiles of the same bytes may race).
    writes: AtomicU64,
}

/// True when `meta` is this user's and nobody else may write it.
fn private(meta: &std::fs::Metadata, uid: u32) -> bool {
    meta.uid() == uid && meta.permissions().mode() & 0o022 == 0
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
        if !meta.is_dir() || !private(&meta, me) {
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
            uid: me,
            writes: AtomicU64::new(0),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.cwasm"))
    }

    /// The compiled component for `sha256`, if this user wrote a usable one.
    pub(crate) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        let untrusted = |why: &str| {
            warn!(path = %path.display(), why, "not loading this compiled policy; compiling again");
            None
        };
        match std::fs::symlink_metadata(&self.dir) {
            Ok(meta) if meta.is_dir() && private(&meta, self.uid) => {}
            _ => return untrusted("the cache directory is no longer private to this user"),
        }
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(_) => return untrusted("cannot open it (a symlink?)"),
        };
        match file.metadata() {
            Ok(meta) if meta.is_file() && meta.nlink() == 1 && private(&meta, self.uid) => {}
            _ => return untrusted("not a private regular file of this user"),
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return untrusted("cannot read it");
        }
        // SAFETY: the bytes come from a file only this user could have written (checked
        // above on the open file, in a directory only this user can write); wasmtime
        // checks them against this engine's version and settings.
        match unsafe { Component::deserialize(engine, &bytes) } {
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
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{sha256}.{}.{n}.tmp", std::process::id()));
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
