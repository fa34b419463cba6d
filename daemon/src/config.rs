//! Daemon configuration: a TOML file (every key optional, defaults below) and command
//! line flags that override it, validated into [`Config`] before anything touches the
//! kernel or binds a socket.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dataplane::AttachMode;
use crate::net::routes::{RoutePlacement, RouteTarget};

/// The example configuration with every default, as shipped in `remapd.example.toml`.
pub const EXAMPLE: &str = include_str!("../remapd.example.toml");

/// The configuration file's contents.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// File holding the API bearer token.
    pub token_file: Option<PathBuf>,
    /// Where state (desired state, uploaded policies, WireGuard keys) is kept.
    pub state_dir: PathBuf,
    /// bpffs directory for the pinned dataplane.
    pub pin_dir: PathBuf,
    /// `auto`, `tcx` or `netlink`.
    pub attach_mode: AttachMode,
    /// Where the routes into the tunnels go: `own-table` (`route_table`, behind one
    /// policy rule) or `main-table` (the main table, marked with protocol 78, no rule).
    pub route_placement: RoutePlacement,
    /// remapd's own routing table for routes into the tunnels.
    pub route_table: u32,
    /// Priority of the policy rule that sends lookups to that table.
    pub rule_priority: u32,
    /// Underlay address peers reach this gateway at (put into exports).
    pub advertise: Option<IpAddr>,
    /// WireGuard settings.
    pub wireguard: WireGuardSection,
    /// Policy sandbox limits.
    pub policy: PolicySection,
    /// API server limits.
    pub api: ApiSection,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            token_file: None,
            state_dir: PathBuf::from("/var/lib/remapd"),
            pin_dir: PathBuf::from(crate::dataplane::DEFAULT_PIN_DIR),
            attach_mode: AttachMode::Auto,
            route_placement: RoutePlacement::OwnTable,
            route_table: 7878,
            rule_priority: 7878,
            advertise: None,
            wireguard: WireGuardSection::default(),
            policy: PolicySection::default(),
            api: ApiSection::default(),
        }
    }
}

/// `[wireguard]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WireGuardSection {
    /// Userspace WireGuard used where the kernel has none.
    pub userspace_program: PathBuf,
    /// Where userspace WireGuard puts its UAPI sockets.
    pub socket_dir: PathBuf,
    /// Where remapd keeps pid files and logs of the processes it starts.
    pub run_dir: PathBuf,
}

impl Default for WireGuardSection {
    fn default() -> Self {
        Self {
            userspace_program: PathBuf::from("wireguard-go"),
            socket_dir: PathBuf::from("/var/run/wireguard"),
            run_dir: PathBuf::from("/run/remapd"),
        }
    }
}

/// `[policy]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    /// Fuel per decision.
    pub fuel: u64,
    /// Wall-clock limit per decision, milliseconds.
    pub timeout_ms: u64,
    /// Memory a policy may use, MiB.
    pub memory_mib: usize,
    /// Limits of their own for policies by (uploaded or built-in) name:
    /// `[policy.by_name.<name>]` with any of `fuel`, `timeout_ms`, `memory_mib`; what
    /// is not given is the `[policy]` value.
    pub by_name: BTreeMap<String, PolicyLimitsOverride>,
}

/// `[policy.by_name.<name>]`: what differs from `[policy]` for one policy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyLimitsOverride {
    /// Fuel per decision.
    pub fuel: Option<u64>,
    /// Wall-clock limit per decision, milliseconds.
    pub timeout_ms: Option<u64>,
    /// Memory a policy may use, MiB.
    pub memory_mib: Option<usize>,
}

impl Default for PolicySection {
    fn default() -> Self {
        let d = crate::policy::PolicyLimits::default();
        Self {
            fuel: d.fuel,
            timeout_ms: d.timeout.as_millis() as u64,
            memory_mib: d.memory_bytes >> 20,
            by_name: BTreeMap::new(),
        }
    }
}

/// `[api]`: limits of the API server.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// A client must send a whole request head within this long of connecting or of its
    /// previous response (also the keep-alive idle timeout), milliseconds.
    pub header_timeout_ms: u64,
    /// A request body must arrive within this long, milliseconds (else 408).
    pub body_timeout_ms: u64,
    /// Connections open at once (lowered to fit the open-files limit).
    pub max_connections: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        let d = crate::http::HttpLimits::default();
        Self {
            header_timeout_ms: d.header_timeout.as_millis() as u64,
            body_timeout_ms: crate::api::DEFAULT_BODY_TIMEOUT.as_millis() as u64,
            max_connections: d.max_connections,
        }
    }
}

impl ApiSection {
    /// The connection limits.
    pub fn limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms),
            max_connections: self.max_connections,
        }
    }

    /// The body deadline.
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_timeout_ms)
    }
}

/// Creates `path` (and its directory, 0700) holding a new random token, mode 0600.
fn write_new_token(path: &Path) -> Result<(), ConfigError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let write_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_error)?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| write_error(std::io::Error::other(e.to_string())))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// File settings after flags.
    pub file: FileConfig,
    /// The token, read from `token_file`; `None` until [`Config::ensure_token`] when
    /// none is configured.
    pub token: Option<String>,
    /// `--adopt-and-clear`: start with an empty state even though the state file is
    /// gone while a previous remapd's dataplane or tunnels are still in place (they are
    /// then removed). A one-off flag, never in the file.
    pub adopt_and_clear: bool,
}

/// Why the configuration is unusable (the daemon exits 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {reason}")]
    Parse {
        /// Path.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// A setting is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

impl FileConfig {
    /// Reads a TOML file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Checks the settings and reads the token.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let token = match &self.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        if !self.listen.ip().is_loopback() && token.is_none() {
            return Err(ConfigError::Invalid(format!(
                "listen = {} is not a loopback address: set token_file (every call then needs the bearer token)",
                self.listen
            )));
        }
        if self.route_table == 0 || (253..=255).contains(&self.route_table) {
            return Err(ConfigError::Invalid(format!(
                "route_table = {} is reserved (0, 253-255); pick a table of remapd's own",
                self.route_table
            )));
        }
        if self.rule_priority == 0 || self.rule_priority >= 32766 {
            return Err(ConfigError::Invalid(format!(
                "rule_priority = {} must be between 1 and 32765 (before the main table's rule)",
                self.rule_priority
            )));
        }
        if self.policy.timeout_ms == 0 || self.policy.memory_mib == 0 || self.policy.fuel == 0 {
            return Err(ConfigError::Invalid(
                "policy limits must be above zero".into(),
            ));
        }
        for (name, o) in &self.policy.by_name {
            if o.timeout_ms == Some(0) || o.memory_mib == Some(0) || o.fuel == Some(0) {
                return Err(ConfigError::Invalid(format!(
                    "[policy.by_name.{name}]: limits must be above zero"
                )));
            }
            if o.memory_mib.is_some_and(|m| m > 4096) {
                return Err(ConfigError::Invalid(format!(
                    "[policy.by_name.{name}]: memory_mib is at most 4096 (wasm32's 4 GiB)"
                )));
            }
            if let Err(p) = crate::api::check_name(name, "") {
                return Err(ConfigError::Invalid(format!(
                    "[policy.by_name.{name}]: {}",
                    p.detail
                )));
            }
        }
        if self.api.header_timeout_ms == 0
            || self.api.body_timeout_ms == 0
            || self.api.max_connections == 0
        {
            return Err(ConfigError::Invalid(
                "[api] limits must be above zero".into(),
            ));
        }
        Ok(Config {
            file: self,
            token,
            adopt_and_clear: false,
        })
    }
}

/// Name of the token file remapd generates in the state directory when no
/// `token_file` is configured.
pub const GENERATED_TOKEN_FILE: &str = "api-token";

/// Reads a token file: it must be readable by its owner only (the token opens every
/// mutating call) and hold at least 16 characters.
pub fn read_token(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_error)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::Invalid(format!(
            "{}: the token file is readable or writable by group or others (mode {:04o}); run chmod 600 on it",
            path.display(),
            mode & 0o7777
        )));
    }
    let token = std::fs::read_to_string(path)
        .map_err(read_error)?
        .trim()
        .to_owned();
    if token.len() < 16 {
        return Err(ConfigError::Invalid(format!(
            "{}: the token must be at least 16 characters",
            path.display()
        )));
    }
    Ok(token)
}

impl Config {
    /// With no `token_file` configured, uses the token in `state_dir/api-token`,
    /// generating it (32 random bytes, hex, mode 0600) the first time, so mutating calls
    /// always need a token. Returns the file's path when it is the generated one.
    pub fn ensure_token(&mut self) -> Result<Option<PathBuf>, ConfigError> {
        if self.token.is_some() {
            return Ok(None);
        }
        let path = self.file.state_dir.join(GENERATED_TOKEN_FILE);
        if !path.exists() {
            write_new_token(&path)?;
        }
        self.token = Some(read_token(&path)?);
        Ok(Some(path))
    }

    /// Where remapd's routes go.
    pub fn route_target(&self) -> RouteTarget {
        RouteTarget {
            placement: self.file.route_placement,
            table: self.file.route_table,
            rule_priority: self.file.rule_priority,
        }
    }

    /// The policy limits.
    pub fn policy_limits(&self) -> crate::policy::PolicyLimits {
        crate::policy::PolicyLimits {
            fuel: self.file.policy.fuel,
            timeout: std::time::Duration::from_millis(self.file.policy.timeout_ms),
            memory_bytes: self.file.policy.memory_mib << 20,
            ..crate::policy::PolicyLimits::default()
        }
    }

    /// The limits of the policies `[policy.by_name]` names: theirs where given, the
    /// `[policy]` values elsewhere.
    pub fn policy_limits_by_name(&self) -> BTreeMap<String, crate::policy::PolicyLimits> {
        let defaults = self.policy_limits();
        self.file
            .policy
            .by_name
            .iter()
            .map(|(name, o)| {
                let mut limits = defaults.clone();
                if let Some(fuel) = o.fuel {
                    limits.fuel = fuel;
                }
                if let Some(ms) = o.timeout_ms {
                    limits.timeout = std::time::Duration::from_millis(ms);
                }
                if let Some(mib) = o.memory_mib {
                    limits.memory_bytes = mib << 20;
                }
                (name.clone(), limits)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_the_defaults() {
        let parsed: FileConfig = toml::from_str(EXAMPLE).unwrap();
        let d = FileConfig::default();
        assert_eq!(parsed.listen, d.listen);
        assert_eq!(parsed.state_dir, d.state_dir);
        assert_eq!(parsed.route_table, d.route_table);
        assert_eq!(parsed.route_placement, d.route_placement);
        assert_eq!(parsed.wireguard.run_dir, d.wireguard.run_dir);
        assert_eq!(parsed.policy.timeout_ms, d.policy.timeout_ms);
        parsed.validate().unwrap();
    }

    #[test]
    fn a_policy_gets_limits_of_its_own_by_name() {
        let text = "[policy]\nfuel = 1000\n[policy.by_name.py]\ntimeout_ms = 2000\nmemory_mib = 256\n[policy.by_name.tight]\nfuel = 10\n";
        let config = toml::from_str::<FileConfig>(text)
            .unwrap()
            .validate()
            .unwrap();
        let by_name = config.policy_limits_by_name();
        assert_eq!(by_name.len(), 2);
        let py = &by_name["py"];
        assert_eq!(
            (py.fuel, py.timeout.as_millis(), py.memory_bytes),
            (1000, 2000, 256 << 20),
            "what is not given is the [policy] value"
        );
        assert_eq!(by_name["tight"].fuel, 10);
        assert_eq!(by_name["tight"].memory_bytes, 64 << 20);
        for (bad, says) in [
            ("[policy.by_name.x]\nfuel = 0\n", "above zero"),
            ("[policy.by_name.x]\nmemory_mib = 9000\n", "at most 4096"),
            ("[policy.by_name.Bad_Name]\nfuel = 5\n", "not a valid name"),
        ] {
            let err = toml::from_str::<FileConfig>(bad)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = toml::from_str::<FileConfig>("[policy.by_name.x]\nfule = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn a_token_is_required_and_kept_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("remapd-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = FileConfig {
            state_dir: dir.join("state"),
            ..FileConfig::default()
        }
        .validate()
        .unwrap();
        assert!(config.token.is_none());
        let path = config.ensure_token().unwrap().expect("a generated token");
        let token = config.token.clone().unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The next start uses the same token.
        let mut again = FileConfig {
            state_dir: dir.join("state"),
            ..FileConfig::default()
        }
        .validate()
        .unwrap();
        again.ensure_token().unwrap();
        assert_eq!(again.token, Some(token));
        // A token file others can read is refused, configured or generated.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = again.clone();
        let mut err = Config { token: None, ..err };
        assert!(
            err.ensure_token()
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        let c = FileConfig {
            token_file: Some(path.clone()),
            ..FileConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("mode 0644"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let err = toml::from_str::<FileConfig>("lisen = \"1.2.3.4:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let c = FileConfig {
            listen: "0.0.0.0:7878".parse().unwrap(),
            ..FileConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("token_file"), "{err}");
        let c = FileConfig {
            route_table: 254,
            ..FileConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("reserved"));
        let err = toml::from_str::<FileConfig>("route_placement = \"main\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("own-table") && err.contains("main-table"),
            "{err}"
        );
    }

    #[test]
    fn route_placement_is_read_from_the_file() {
        let c: FileConfig = toml::from_str("route_placement = \"main-table\"").unwrap();
        let c = c.validate().unwrap();
        assert_eq!(
            c.route_target(),
            RouteTarget {
                placement: RoutePlacement::MainTable,
                table: 7878,
                rule_priority: 7878,
            }
        );
        assert_eq!(
            "main-table".parse::<RoutePlacement>(),
            Ok(RoutePlacement::MainTable)
        );
        assert!(
            "main"
                .parse::<RoutePlacement>()
                .unwrap_err()
                .contains("own-table")
        );
    }
}
