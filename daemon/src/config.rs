//! Daemon configuration: a TOML file (every key optional, defaults below) and command
//! line flags that override it, validated into [`Config`] before anything touches the
//! kernel or binds a socket.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dataplane::AttachMode;

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
    /// Routing table for routes into the tunnels.
    pub route_table: u32,
    /// Priority of the policy rule that sends lookups to that table.
    pub rule_priority: u32,
    /// Underlay address peers reach this gateway at (put into exports).
    pub advertise: Option<IpAddr>,
    /// WireGuard settings.
    pub wireguard: WireGuardSection,
    /// Policy sandbox limits.
    pub policy: PolicySection,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            token_file: None,
            state_dir: PathBuf::from("/var/lib/remapd"),
            pin_dir: PathBuf::from(crate::dataplane::DEFAULT_PIN_DIR),
            attach_mode: AttachMode::Auto,
            route_table: 7878,
            rule_priority: 7878,
            advertise: None,
            wireguard: WireGuardSection::default(),
            policy: PolicySection::default(),
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
}

impl Default for PolicySection {
    fn default() -> Self {
        let d = crate::policy::PolicyLimits::default();
        Self {
            fuel: d.fuel,
            timeout_ms: d.timeout.as_millis() as u64,
            memory_mib: d.memory_bytes >> 20,
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// File settings after flags.
    pub file: FileConfig,
    /// The token, read from `token_file`.
    pub token: Option<String>,
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
            Some(path) => {
                let t = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let t = t.trim().to_owned();
                if t.len() < 16 {
                    return Err(ConfigError::Invalid(format!(
                        "{}: the token must be at least 16 characters",
                        path.display()
                    )));
                }
                Some(t)
            }
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
        Ok(Config { file: self, token })
    }
}

impl Config {
    /// The policy limits.
    pub fn policy_limits(&self) -> crate::policy::PolicyLimits {
        crate::policy::PolicyLimits {
            fuel: self.file.policy.fuel,
            timeout: std::time::Duration::from_millis(self.file.policy.timeout_ms),
            memory_bytes: self.file.policy.memory_mib << 20,
            ..crate::policy::PolicyLimits::default()
        }
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
        assert_eq!(parsed.wireguard.run_dir, d.wireguard.run_dir);
        assert_eq!(parsed.policy.timeout_ms, d.policy.timeout_ms);
        parsed.validate().unwrap();
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
    }
}
