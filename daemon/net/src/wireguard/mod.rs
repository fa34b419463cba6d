//! WireGuard tunnels, one interface with exactly one peer per peering, configured
//! through wireguard-control's userspace (UAPI socket) backend.
//!
//! Where the kernel has no WireGuard, every interface is a `wireguard-go -f <iface>`
//! process that remapd starts as its own long-lived process: in its own process group,
//! with its pid and log in `run_dir`, so it survives a daemon restart and keeps
//! forwarding. A restarted daemon finds the live UAPI socket and adopts the process as
//! it is, re-applying configuration only when it differs. What remapd manages (and so
//! may stop) is exactly what has a pid file in `run_dir`; a live socket without one is
//! configured but never stopped.
//!
//! Calls may run on a thread that has `setns`-ed into another network namespace: the
//! process is spawned from the calling thread (so its TUN device lands there), and a
//! socket whose server lives in another namespace is never adopted, since UAPI socket
//! names are shared by all namespaces of a mount namespace.
//!
//! The kernel backend is not used: adopting or creating kernel WireGuard links is left
//! for hosts that have the module.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, info, warn};
use wireguard_control::{
    Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder, PeerInfo,
};

mod diff;
mod process;
mod uapi;

use diff::{Current, Desired, parse, parse_name, plan_update};
use process::{
    LOG_MAX, bound_log, log_tail, orphans, process_alive, remove_if_exists, same_netns, signal,
    write_pid_file,
};
use uapi::{LINK_GONE_WAIT, Socket, bring_up, probe, wait_link_gone};

use super::netlink::{NetlinkSession, links, set_link_up};
use super::{NetError, TunnelApplier, TunnelReport, TunnelSpec, TunnelStatus, TunnelStatusReader};

/// How long a freshly started process gets to open its UAPI socket.
const SOCKET_WAIT: Duration = Duration::from_secs(5);
/// How long a process gets to exit after SIGTERM before it is killed.
const TERM_WAIT: Duration = Duration::from_secs(2);
/// How long to wait for the exit after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);

/// Where wireguard-control looks for UAPI sockets (the first that exists).
const LIBRARY_SOCKET_DIRS: [&str; 2] = ["/var/run/wireguard", "/run/wireguard"];

/// Where the userspace implementation comes from and where its state goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireGuardConfig {
    /// The userspace implementation, run as `<program> -f <interface>`. Default
    /// `wireguard-go` (looked up in `PATH`).
    pub userspace_program: PathBuf,
    /// Where the implementation puts its UAPI sockets, `<interface>.sock`. Default
    /// `/var/run/wireguard`; wireguard-go and wireguard-control both use that (or
    /// `/run/wireguard`) and cannot be told otherwise, so another value only works if
    /// it is the same directory.
    pub socket_dir: PathBuf,
    /// Where remapd keeps `<interface>.pid` and `<interface>.log` of the processes it
    /// started. Default `/run/remapd/wireguard`.
    pub run_dir: PathBuf,
}

impl Default for WireGuardConfig {
    fn default() -> Self {
        Self {
            userspace_program: PathBuf::from("wireguard-go"),
            socket_dir: PathBuf::from("/var/run/wireguard"),
            run_dir: PathBuf::from("/run/remapd/wireguard"),
        }
    }
}

/// WireGuard tunnels run by a userspace implementation that remapd starts and adopts.
#[derive(Debug)]
pub struct WireGuardTunnels {
    config: WireGuardConfig,
    /// Processes this instance started, kept to reap them. Never killed on drop: the
    /// tunnels must outlive the daemon.
    children: HashMap<String, Child>,
    /// Opened on the first call, in that thread's namespace.
    netlink: NetlinkSession,
}

/// What became of one tunnel in `ensure`.
enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl WireGuardTunnels {
    /// Tunnels run as configured in `config`.
    pub fn new(config: WireGuardConfig) -> Self {
        Self {
            config,
            children: HashMap::new(),
            netlink: NetlinkSession::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &WireGuardConfig {
        &self.config
    }

    fn socket_path(&self, interface: &str) -> PathBuf {
        self.config.socket_dir.join(format!("{interface}.sock"))
    }

    fn pid_path(&self, interface: &str) -> PathBuf {
        self.config.run_dir.join(format!("{interface}.pid"))
    }

    fn log_path(&self, interface: &str) -> PathBuf {
        self.config.run_dir.join(format!("{interface}.log"))
    }

    fn program_name(&self) -> String {
        self.config.userspace_program.display().to_string()
    }

    fn ensure_one(&mut self, want: &Desired<'_>) -> Result<Outcome, NetError> {
        let interface = want.spec.interface.as_str();
        let socket = self.socket_path(interface);
        let created = match probe(&socket) {
            Socket::Live { pid } => {
                if let Some(pid) = pid
                    && same_netns(pid) == Some(false)
                {
                    return Err(NetError::WireGuard {
                        interface: interface.to_owned(),
                        reason: format!(
                            "{} is served by process {pid} in another network namespace",
                            socket.display()
                        ),
                    });
                }
                if !self.pid_path(interface).exists() {
                    // Every reconcile passes here, so not at info.
                    debug!(interface = %interface, pid = ?pid,
                        "adopting a tunnel remapd did not start; it is configured but never stopped");
                }
                false
            }
            state => {
                if let Some(pid) = self.read_pid(interface)
                    && !self.exited(interface, pid)
                    && self.runs_wireguard_for(pid, interface)
                {
                    warn!(interface = %interface, pid, "wireguard process without a live socket; restarting it");
                    self.stop(interface, pid)?;
                }
                if matches!(state, Socket::Dead) {
                    remove_if_exists(&socket).map_err(|e| NetError::WireGuard {
                        interface: interface.to_owned(),
                        reason: format!("removing stale socket {}: {e}", socket.display()),
                    })?;
                }
                self.start(interface)?;
                true
            }
        };

        self.check_socket_dir(interface)?;
        let device =
            Device::get(&want.name, Backend::Userspace).map_err(|e| NetError::WireGuard {
                interface: interface.to_owned(),
                reason: format!("reading the device: {e}"),
            })?;
        let mut changed = false;
        if let Some((update, what)) = plan_update(&Current::from(&device), want) {
            // The liveness check above makes wireguard-control's own fallback (starting
            // a daemonized wireguard-go when the socket does not answer) unreachable
            // short of the process dying in between.
            update
                .apply(&want.name, Backend::Userspace)
                .map_err(|e| NetError::WireGuard {
                    interface: interface.to_owned(),
                    reason: format!("configuring: {e}"),
                })?;
            if !created {
                info!(interface = %interface, changed = ?what, "updated tunnel configuration");
            }
            changed = true;
        }
        if bring_up(&self.netlink, interface)? {
            if !created {
                info!(interface = %interface, "set tunnel link up");
            }
            changed = true;
        }
        Ok(if created {
            info!(
                interface = %interface,
                peer = %want.peer.as_ref().map(Key::to_base64).unwrap_or_else(|| "none yet".into()),
                "tunnel created"
            );
            Outcome::Created
        } else if changed {
            Outcome::Updated
        } else {
            debug!(interface = %interface, "tunnel unchanged");
            Outcome::Unchanged
        })
    }

    /// Starts `<program> -f <interface>` and waits until its socket answers.
    fn start(&mut self, interface: &str) -> Result<(), NetError> {
        let program = self.program_name();
        let spawn_error = |reason: String| NetError::Spawn {
            program: program.clone(),
            interface: interface.to_owned(),
            reason,
        };
        fs::create_dir_all(&self.config.run_dir)
            .map_err(|e| spawn_error(format!("creating {}: {e}", self.config.run_dir.display())))?;
        let log_path = self.log_path(interface);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| spawn_error(format!("opening {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| spawn_error(format!("duplicating the log file: {e}")))?;
        // Spawned from this thread, so the process (and its TUN device) is in this
        // thread's network namespace. Foreground mode: wireguard-go's daemonizing mode
        // does not work inside a network namespace, and a direct child is one remapd can
        // track and reap. Its own process group keeps signals meant for the daemon's
        // group (a terminal's ^C, a group kill) away from it.
        let child = Command::new(&self.config.userspace_program)
            .arg("-f")
            .arg(interface)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        let pid = child.id();
        self.children.insert(interface.to_owned(), child);
        if let Err(e) = write_pid_file(&self.pid_path(interface), pid) {
            let reason = format!("writing {}: {e}", self.pid_path(interface).display());
            self.abandon_start(interface, pid);
            return Err(spawn_error(reason));
        }
        info!(interface = %interface, pid, program = %program, "started userspace wireguard");

        let socket = self.socket_path(interface);
        let deadline = Instant::now() + SOCKET_WAIT;
        loop {
            if let Socket::Live { pid: server } = probe(&socket)
                && server.is_none_or(|s| s == pid)
            {
                return Ok(());
            }
            if let Some(child) = self.children.get_mut(interface)
                && let Ok(Some(status)) = child.try_wait()
            {
                self.children.remove(interface);
                let _ = fs::remove_file(self.pid_path(interface));
                return Err(spawn_error(format!(
                    "exited ({status}) before opening {}: {}",
                    socket.display(),
                    log_tail(&log_path)
                )));
            }
            if Instant::now() >= deadline {
                self.abandon_start(interface, pid);
                return Err(spawn_error(format!(
                    "{} did not appear within {SOCKET_WAIT:?}: {}",
                    socket.display(),
                    log_tail(&log_path)
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills and forgets a process whose start failed half-way.
    fn abandon_start(&mut self, interface: &str, pid: u32) {
        if let Some(mut child) = self.children.remove(interface) {
            let _ = child.kill();
            let _ = child.wait();
        } else {
            signal(pid, Signal::SIGKILL);
        }
        let _ = fs::remove_file(self.pid_path(interface));
    }

    fn read_pid(&self, interface: &str) -> Option<u32> {
        fs::read_to_string(self.pid_path(interface))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// True when `pid`'s command line is exactly `<program> -f <interface>`, so a pid
    /// file left behind and since reused by another process is never acted on.
    fn runs_wireguard_for(&self, pid: u32, interface: &str) -> bool {
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        let ours = self.config.userspace_program.file_name();
        match args.as_slice() {
            [argv0, flag, name] => {
                Path::new(OsStr::from_bytes(argv0)).file_name() == ours
                    && *flag == b"-f"
                    && *name == interface.as_bytes()
            }
            _ => false,
        }
    }

    /// True once `pid` no longer runs, reaping it when it is (or was) a child.
    fn exited(&mut self, interface: &str, pid: u32) -> bool {
        if let Some(child) = self.children.get_mut(interface)
            && child.id() == pid
        {
            match child.try_wait() {
                Ok(None) => return false,
                Ok(Some(_)) => {
                    self.children.remove(interface);
                    return true;
                }
                Err(_) => {
                    self.children.remove(interface);
                }
            }
        }
        !process_alive(pid, &self.config.userspace_program)
    }

    fn wait_exit(&mut self, interface: &str, pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited(interface, pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    fn stop(&mut self, interface: &str, pid: u32) -> Result<(), NetError> {
        signal(pid, Signal::SIGTERM);
        if self.wait_exit(interface, pid, TERM_WAIT) {
            return Ok(());
        }
        warn!(interface = %interface, pid, "no exit {TERM_WAIT:?} after SIGTERM; sending SIGKILL");
        signal(pid, Signal::SIGKILL);
        if self.wait_exit(interface, pid, KILL_WAIT) {
            return Ok(());
        }
        Err(NetError::WireGuard {
            interface: interface.to_owned(),
            reason: format!("process {pid} still runs after SIGKILL"),
        })
    }

    /// Stops a managed tunnel's process and removes its socket and pid file.
    fn remove(&mut self, interface: &str) -> Result<(), NetError> {
        if let Some(pid) = self.read_pid(interface) {
            if self.exited(interface, pid) {
                debug!(interface = %interface, pid, "process already gone");
            } else if self.runs_wireguard_for(pid, interface) {
                self.stop(interface, pid)?;
                // A process we did not start is seen gone when its leader is a zombie,
                // while its other threads may still hold the TUN device for a moment.
                if !wait_link_gone(&self.netlink, interface, LINK_GONE_WAIT) {
                    warn!(interface = %interface, "the tunnel device outlived its process");
                }
                info!(interface = %interface, pid, "stopped userspace wireguard");
            } else {
                warn!(interface = %interface, pid,
                    "pid file names a process that is not this tunnel's; not signalling it");
            }
        }
        let socket = self.socket_path(interface);
        match probe(&socket) {
            Socket::Live { pid } => {
                warn!(interface = %interface, server = ?pid,
                    "socket still answers after the process stopped; leaving it")
            }
            Socket::Dead => remove_if_exists(&socket).map_err(|e| NetError::WireGuard {
                interface: interface.to_owned(),
                reason: format!("removing {}: {e}", socket.display()),
            })?,
            Socket::Missing => {}
        }
        let pid_path = self.pid_path(interface);
        remove_if_exists(&pid_path).map_err(|e| NetError::WireGuard {
            interface: interface.to_owned(),
            reason: format!("removing {}: {e}", pid_path.display()),
        })?;
        // Its log and the rotated copy: a removed tunnel's log would otherwise stay in
        // run_dir for good, one more with every peering that comes and goes.
        let log = self.log_path(interface);
        let mut rotated = log.as_os_str().to_owned();
        rotated.push(".1");
        for path in [log, PathBuf::from(rotated)] {
            if let Err(e) = remove_if_exists(&path) {
                warn!(interface = %interface, path = %path.display(), error = %e, "removing the tunnel's log");
            }
        }
        if let Some(mut child) = self.children.remove(interface) {
            // Started by this instance under a pid the file no longer named.
            let _ = child.try_wait();
        }
        Ok(())
    }

    /// Interfaces with a pid file in `run_dir`, after adopting orphans: a userspace
    /// WireGuard for an `rmd-*` interface in this network namespace that no live pid
    /// file records (its remapd was killed between spawning it and writing the file)
    /// gets its pid file now, so it is managed (adopted or pruned) like the others.
    fn managed(&self) -> Result<Vec<String>, NetError> {
        for (interface, pid) in orphans(&self.config.userspace_program) {
            let recorded = self.read_pid(&interface);
            if recorded == Some(pid)
                || recorded.is_some_and(|r| process_alive(r, &self.config.userspace_program))
                || same_netns(pid) != Some(true)
            {
                continue;
            }
            warn!(interface = %interface, pid, "adopting a userspace wireguard no pid file recorded");
            fs::create_dir_all(&self.config.run_dir)
                .and_then(|()| write_pid_file(&self.pid_path(&interface), pid))
                .map_err(|e| NetError::WireGuard {
                    interface: interface.clone(),
                    reason: format!("recording the orphan's pid: {e}"),
                })?;
        }
        let entries = match fs::read_dir(&self.config.run_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(NetError::WireGuard {
                    interface: String::new(),
                    reason: format!("listing {}: {e}", self.config.run_dir.display()),
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension() == Some(OsStr::new("pid"))
                && let Some(stem) = path.file_stem().and_then(OsStr::to_str)
            {
                out.push(stem.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// wireguard-control has its own idea of the socket directory; refuse to configure
    /// through it when that is not `socket_dir`, rather than talk to another socket.
    fn check_socket_dir(&self, interface: &str) -> Result<(), NetError> {
        let Some(library) = LIBRARY_SOCKET_DIRS
            .iter()
            .map(Path::new)
            .find(|d| d.exists())
        else {
            return Err(NetError::WireGuard {
                interface: interface.to_owned(),
                reason: "no WireGuard socket directory exists".into(),
            });
        };
        let same = match (
            fs::canonicalize(&self.config.socket_dir),
            fs::canonicalize(library),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.config.socket_dir == library,
        };
        if same {
            Ok(())
        } else {
            Err(NetError::WireGuard {
                interface: interface.to_owned(),
                reason: format!(
                    "socket_dir {} is not {}, where wireguard-control looks",
                    self.config.socket_dir.display(),
                    library.display()
                ),
            })
        }
    }

    fn reap(&mut self) {
        self.children
            .retain(|_, child| matches!(child.try_wait(), Ok(None)));
    }
}

/// Reads live tunnel state through a second, read-only [`WireGuardTunnels`] (it starts,
/// adopts and stops nothing), so status reads never wait for the applier.
struct WireGuardStatusReader(std::sync::Mutex<WireGuardTunnels>);

impl TunnelStatusReader for WireGuardStatusReader {
    fn status(&self, interface: &str) -> Result<Option<TunnelStatus>, NetError> {
        let tunnels = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        TunnelApplier::status(&*tunnels, interface)
    }
}

impl TunnelApplier for WireGuardTunnels {
    fn port_available(&self, port: u16) -> Result<bool, NetError> {
        // Bind and release at once, on both families (wireguard-go binds both).
        let free = |addr: std::net::SocketAddr| match std::net::UdpSocket::bind(addr) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(false),
            // No IPv6 in this namespace: nothing can hold the port there.
            Err(e) if addr.is_ipv6() && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(true),
            Err(e) if addr.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(true),
            Err(e) => Err(NetError::Netlink {
                what: format!("checking whether UDP port {port} is free"),
                reason: e.to_string(),
            }),
        };
        Ok(free((std::net::Ipv4Addr::UNSPECIFIED, port).into())?
            && free((std::net::Ipv6Addr::UNSPECIFIED, port).into())?)
    }

    fn status_reader(&self) -> std::sync::Arc<dyn TunnelStatusReader> {
        std::sync::Arc::new(WireGuardStatusReader(std::sync::Mutex::new(
            WireGuardTunnels::new(self.config.clone()),
        )))
    }

    fn ensure(&mut self, tunnels: &[TunnelSpec]) -> Result<TunnelReport, NetError> {
        // Everything is checked before any process is started.
        let mut seen = HashSet::new();
        let mut desired = Vec::with_capacity(tunnels.len());
        for spec in tunnels {
            if !seen.insert(spec.interface.as_str()) {
                return Err(NetError::WireGuard {
                    interface: spec.interface.clone(),
                    reason: "given more than once".into(),
                });
            }
            desired.push(parse(spec)?);
        }
        self.reap();
        let mut report = TunnelReport::default();
        for want in &desired {
            match self.ensure_one(want) {
                Ok(Outcome::Created) => report.created += 1,
                Ok(Outcome::Updated) => report.updated += 1,
                Ok(Outcome::Unchanged) => report.unchanged += 1,
                Err(e) => {
                    warn!(interface = %want.spec.interface, error = %e, "tunnel failed; the others go on");
                    report
                        .failed
                        .insert(want.spec.interface.clone(), e.to_string());
                }
            }
        }
        // Every change and resync: the tunnels' logs stay bounded for as long as they
        // run (they outlive the daemon; the next daemon bounds them too).
        for want in &desired {
            let log = self.log_path(&want.spec.interface);
            match bound_log(&log, LOG_MAX) {
                Ok(true) => info!(log = %log.display(), "tunnel log rotated to .1"),
                Ok(false) => {}
                Err(e) => {
                    warn!(log = %log.display(), error = %e, "tunnel log could not be bounded")
                }
            }
        }
        Ok(report)
    }

    fn prune(&mut self, keep: &[String]) -> Result<TunnelReport, NetError> {
        self.reap();
        let mut report = TunnelReport::default();
        for interface in self.managed()? {
            if keep.contains(&interface) {
                continue;
            }
            self.remove(&interface)?;
            info!(interface = %interface, "tunnel removed");
            report.removed += 1;
        }
        Ok(report)
    }

    fn status(&self, interface: &str) -> Result<Option<TunnelStatus>, NetError> {
        let name = parse_name(interface)?;
        match probe(&self.socket_path(interface)) {
            Socket::Live { pid } => {
                if pid.is_some_and(|p| same_netns(p) == Some(false)) {
                    // Same socket name, another namespace's interface: not ours to see.
                    return Ok(None);
                }
            }
            Socket::Missing | Socket::Dead => return Ok(None),
        }
        self.check_socket_dir(interface)?;
        let device = match Device::get(&name, Backend::Userspace) {
            Ok(device) => device,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(NetError::WireGuard {
                    interface: interface.to_owned(),
                    reason: format!("reading the device: {e}"),
                });
            }
        };
        let peer = device.peers.first();
        Ok(Some(TunnelStatus {
            interface: interface.to_owned(),
            public_key: device.public_key.as_ref().map(Key::to_base64),
            listen_port: device.listen_port,
            last_handshake: peer.and_then(|p| p.stats.last_handshake_time),
            rx_bytes: peer.map_or(0, |p| p.stats.rx_bytes),
            tx_bytes: peer.map_or(0, |p| p.stats.tx_bytes),
            backend: "userspace",
        }))
    }

    fn teardown(&mut self) -> Result<(), NetError> {
        self.prune(&[]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use wireguard_control::AllowedIp;

    fn spec() -> TunnelSpec {
        let private = Key::generate_private();
        TunnelSpec {
            interface: "wgt0".into(),
            private_key: private.to_base64(),
            listen_port: 51820,
            peer_public_key: Key::generate_private().get_public().to_base64(),
            endpoint: Some("198.18.0.2:51820".parse().unwrap()),
            allowed_ips: vec![
                "10.1.2.3/16".parse().unwrap(),
                "10.9.0.0/24".parse().unwrap(),
            ],
            keepalive: Some(5),
        }
    }

    struct Owned {
        private_key: Option<Key>,
        listen_port: Option<u16>,
        peers: Vec<PeerInfo>,
    }

    impl Owned {
        fn view(&self) -> Current<'_> {
            Current {
                private_key: self.private_key.as_ref(),
                listen_port: self.listen_port,
                peers: &self.peers,
            }
        }
    }

    fn device_like(want: &Desired<'_>) -> Owned {
        let mut peer = PeerInfo::from_public_key(want.peer.clone().expect("test peer"));
        peer.config.endpoint = want.spec.endpoint;
        peer.config.persistent_keepalive_interval = want.spec.keepalive;
        peer.config.allowed_ips = vec![
            AllowedIp {
                address: "10.9.0.0".parse().unwrap(),
                cidr: 24,
            },
            AllowedIp {
                address: "10.1.0.0".parse().unwrap(),
                cidr: 16,
            },
        ];
        peer.stats.last_handshake_time = Some(SystemTime::now());
        Owned {
            private_key: Some(want.private_key.clone()),
            listen_port: Some(want.spec.listen_port),
            peers: vec![peer],
        }
    }

    #[test]
    fn matching_device_needs_no_update() {
        let s = spec();
        let want = parse(&s).unwrap();
        assert!(plan_update(&device_like(&want).view(), &want).is_none());
    }

    #[test]
    fn differences_are_found() {
        let s = spec();
        let want = parse(&s).unwrap();
        let mut d = device_like(&want);
        d.peers[0].config.allowed_ips.pop();
        assert_eq!(plan_update(&d.view(), &want).unwrap().1, vec!["peer"]);

        let mut d = device_like(&want);
        d.listen_port = Some(1);
        d.peers
            .push(PeerInfo::from_public_key(Key::generate_private()));
        assert_eq!(
            plan_update(&d.view(), &want).unwrap().1,
            vec!["listen port", "other peers"]
        );

        let mut d = device_like(&want);
        d.peers.clear();
        d.private_key = None;
        assert_eq!(
            plan_update(&d.view(), &want).unwrap().1,
            vec!["private key", "new peer"]
        );
    }

    #[test]
    fn unset_endpoint_and_keepalive_zero_match_a_roamed_peer() {
        let mut s = spec();
        s.endpoint = None;
        s.keepalive = None;
        let want = parse(&s).unwrap();
        let mut d = device_like(&want);
        d.peers[0].config.endpoint = Some("203.0.113.9:4000".parse().unwrap());
        d.peers[0].config.persistent_keepalive_interval = Some(0);
        assert!(plan_update(&d.view(), &want).is_none());
    }

    #[test]
    fn bad_keys_and_names_are_rejected() {
        let mut s = spec();
        s.peer_public_key = "not a key".into();
        assert!(matches!(parse(&s), Err(NetError::BadKey { .. })));
        let mut s = spec();
        s.interface = "much-too-long-interface".into();
        assert!(matches!(parse(&s), Err(NetError::WireGuard { .. })));
    }

    #[test]
    fn a_missing_socket_and_a_dead_one_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("remapd-wg-probe-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.sock");
        assert!(matches!(probe(&path), Socket::Missing));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(probe(&path), Socket::Live { pid: Some(p) } if p == std::process::id()));
        drop(listener);
        assert!(matches!(probe(&path), Socket::Dead));
        fs::remove_dir_all(&dir).unwrap();
    }
}
