//! The daemon's persisted desired state: the local cluster, uploaded policies, peerings,
//! and the WireGuard private keys it generated. One JSON document (`state.json`), policy
//! components by sha256 (`policies/<sha256>.wasm`) and keys (`keys/<peering>.key`, mode
//! 0600) under the state directory. Every write goes to a temporary file that is synced
//! and renamed over the old one, so a crash leaves either the old or the new state.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use remapd_model::model::{LocalCluster, RemoteCluster};

/// The tunnel side of a peering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Local UDP port WireGuard listens on.
    #[schema(minimum = 1, maximum = 65535, example = 51820)]
    pub listen_port: u16,
    /// The remote gateway's WireGuard endpoint (`ip:port`); optional for a side that
    /// only answers.
    #[serde(default)]
    #[schema(
        value_type = Option<String>,
        example = "198.18.0.2:51820",
        pattern = "^([0-9.]+|\\[[0-9a-fA-F:.]+\\]):[0-9]{1,5}$"
    )]
    pub endpoint: Option<SocketAddr>,
    /// The remote gateway's WireGuard public key (base64). May be left out while
    /// bootstrapping: the peering is decided and its exports (with this gateway's key)
    /// can be given to the remote, whose exports then complete this side.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
    pub remote_public_key: Option<String>,
    /// Persistent keepalive in seconds (default 25; 0 disables).
    #[serde(default = "default_keepalive")]
    #[schema(minimum = 0, maximum = 65535)]
    pub keepalive: u16,
    /// Lower the MSS option of TCP SYNs crossing the tunnel (both ways) to this, for
    /// paths that drop oversized packets without an ICMP error; e.g. 1360 for a
    /// 1420-byte WireGuard MTU. IPv6 SYNs are lowered to 20 less (their header is 20
    /// bytes longer). Not set: SYNs pass as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 536, maximum = 65495, example = 1360)]
    pub mss_clamp: Option<u16>,
    /// Interface name; default `rmd-<peering>` cut to 15 bytes.
    #[serde(default)]
    #[schema(pattern = "^rmd-[A-Za-z0-9_-]{1,11}$")]
    pub interface: Option<String>,
}

fn default_keepalive() -> u16 {
    25
}

/// A peering as the operator declared it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeeringSpec {
    /// Policy deciding the strategy (default `auto`): a name, or `name@sha256:<hex>` to
    /// pin one version of it (kept while pinned, whatever is uploaded under the name).
    #[serde(default = "default_policy")]
    #[schema(
        pattern = "^[a-z0-9][a-z0-9-]{0,62}(@sha256:[0-9a-f]{64})?$",
        example = "auto"
    )]
    pub policy: String,
    /// The remote cluster (paste the remote daemon's `exports.remote` here).
    pub remote: RemoteCluster,
    /// Settings passed to the policy.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// The tunnel.
    pub tunnel: TunnelConfig,
}

fn default_policy() -> String {
    remapd_model::model::DEFAULT_POLICY.to_owned()
}

impl PeeringSpec {
    /// The tunnel interface name of peering `name`.
    pub fn interface(&self, name: &str) -> String {
        self.tunnel
            .interface
            .clone()
            .unwrap_or_else(|| default_interface(name))
    }
}

/// `rmd-<name>`, cut to the 15 bytes Linux allows.
pub fn default_interface(name: &str) -> String {
    let mut s = format!("rmd-{name}");
    s.truncate(15);
    s
}

/// An uploaded policy's record (the bytes live in `policies/<sha256>.wasm`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// sha256 of the component.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
}

/// Everything the daemon must remember across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// The local cluster, once configured.
    pub cluster: Option<LocalCluster>,
    /// Uploaded policies by name.
    #[serde(default)]
    pub policies: BTreeMap<String, StoredPolicy>,
    /// Peerings by name.
    #[serde(default)]
    pub peerings: BTreeMap<String, PeeringSpec>,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The state file does not parse.
    #[error("{path}: not a valid remapd state file: {reason}")]
    Corrupt {
        /// Path.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// A key file is not a WireGuard key.
    #[error("{path}: not a WireGuard private key")]
    BadKey {
        /// Path.
        path: PathBuf,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the state directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        for sub in ["", "policies", "keys"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let keys = dir.join("keys");
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).map_err(io(&keys))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Whether a state file exists (written at the first start, so its absence later
    /// means it was lost).
    pub fn has_state(&self) -> bool {
        self.state_path().exists()
    }

    /// Reads the saved state (empty if none was saved yet).
    pub fn load(&self) -> Result<DesiredState, StoreError> {
        let path = self.state_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DesiredState::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Saves the state atomically.
    pub fn save(&self, state: &DesiredState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Corrupt {
            path: self.state_path(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.state_path(), &bytes, 0o600)
    }

    /// Stores a policy component under its sha256.
    pub fn put_policy_bytes(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        write_atomic(
            &self.dir.join("policies").join(format!("{sha256}.wasm")),
            bytes,
            0o644,
        )
    }

    /// Reads a stored policy component.
    pub fn policy_bytes(&self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join("policies").join(format!("{sha256}.wasm"));
        fs::read(&path).map_err(io(&path))
    }

    /// Removes stored components no policy and no pinning peering refers to.
    pub fn gc_policies(&self, state: &DesiredState) -> Result<(), StoreError> {
        let dir = self.dir.join("policies");
        let pinned = pins(state);
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let used = state
                .policies
                .values()
                .any(|p| name == format!("{}.wasm", p.sha256))
                || pinned
                    .iter()
                    .any(|(_, digest)| name == format!("{digest}.wasm"));
            if !used {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Where peering `name`'s private key is kept.
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{name}.key"))
    }

    /// The private key of peering `name`, generated (and saved, 0600) on first use.
    pub fn private_key(&self, name: &str) -> Result<String, StoreError> {
        let path = self.key_path(name);
        match fs::read_to_string(&path) {
            Ok(s) => {
                let key = s.trim().to_owned();
                wireguard_control::Key::from_base64(&key)
                    .map_err(|_| StoreError::BadKey { path })?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = wireguard_control::Key::generate_private().to_base64();
                write_atomic(&path, format!("{key}\n").as_bytes(), 0o600)?;
                Ok(key)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The private key of peering `name` if its key file exists (never creates one).
    pub fn existing_key(&self, name: &str) -> Result<Option<String>, StoreError> {
        if self.has_key(name) {
            self.private_key(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Whether peering `name` has a key file.
    pub fn has_key(&self, name: &str) -> bool {
        self.key_path(name).exists()
    }

    /// Removes key files of peerings `state` does not hold (left by a crash between a
    /// delete's state write and its key removal, or by a refused change). Returns the
    /// names removed.
    pub fn gc_keys(&self, state: &DesiredState) -> Result<Vec<String>, StoreError> {
        let dir = self.dir.join("keys");
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".key") else {
                continue;
            };
            if !state.peerings.contains_key(name) {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
                removed.push(name.to_owned());
            }
        }
        Ok(removed)
    }

    /// Removes the temporary files of writes a crash interrupted (`.<name>.tmp`, never
    /// renamed into place) in the state, key and policy directories. Call at start,
    /// before anything writes. Returns the paths removed.
    pub fn gc_temp_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        for dir in [
            self.dir.clone(),
            self.dir.join("keys"),
            self.dir.join("policies"),
        ] {
            for entry in fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with('.') && file.ends_with(".tmp") {
                    fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
                    removed.push(entry.path());
                }
            }
        }
        Ok(removed)
    }

    /// Deletes the key of a removed peering.
    pub fn remove_key(&self, name: &str) -> Result<(), StoreError> {
        let path = self.key_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

/// The public key for a base64 private key.
pub fn public_key(private: &str) -> Option<String> {
    wireguard_control::Key::from_base64(private)
        .ok()
        .map(|k| k.get_public().to_base64())
}

/// Writes `bytes` to a temporary file next to `path` with `mode`, syncs it, renames it
/// over `path` and syncs the directory.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// The policy versions `state`'s peerings pin (`name@sha256:<hex>`): (name, digest).
pub fn pins(state: &DesiredState) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = state
        .peerings
        .values()
        .filter_map(|p| match remapd_policy_host::parse_reference(&p.policy)? {
            (name, Some(digest)) => Some((name.to_owned(), digest.to_owned())),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("remapd-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn state_round_trips_and_keys_are_private() {
        let dir = scratch("roundtrip");
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), DesiredState::default());
        let state = DesiredState {
            cluster: Some(LocalCluster {
                name: "c1".into(),
                pod_cidrs: vec!["40.0.0.0/24".parse().unwrap()],
                ..LocalCluster::default()
            }),
            ..DesiredState::default()
        };
        store.save(&state).unwrap();
        assert_eq!(Store::open(&dir).unwrap().load().unwrap(), state);
        let key = store.private_key("p1").unwrap();
        assert_eq!(
            store.private_key("p1").unwrap(),
            key,
            "generated once, then kept"
        );
        let mode = fs::metadata(dir.join("keys/p1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(public_key(&key).is_some());
        fs::write(dir.join("state.json"), b"{ not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn interface_names_fit() {
        assert_eq!(default_interface("c2"), "rmd-c2");
        assert_eq!(default_interface("a-very-long-peering-name").len(), 15);
    }

    #[test]
    fn interrupted_writes_leave_nothing_after_a_start() {
        let dir = std::env::temp_dir().join(format!("remapd-store-tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.private_key("p1").unwrap();
        for stale in [
            ".p2.key.tmp",
            "../.state.json.tmp",
            "../policies/.abc.wasm.tmp",
        ] {
            fs::write(dir.join("keys").join(stale), "partial").unwrap();
        }
        let removed = store.gc_temp_files().unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        let keys: Vec<String> = fs::read_dir(dir.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(keys, vec!["p1.key".to_owned()]);
        let _ = fs::remove_dir_all(&dir);
    }
}
