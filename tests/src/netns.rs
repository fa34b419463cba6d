//! Network namespaces, veth links, userspace WireGuard and child processes for the
//! end-to-end tests. Every object is named with a per-test prefix and removed on drop,
//! also when the test panics.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A short prefix unique to this process and call, for names of shared objects.
/// `REMAPD_NS_PREFIX` (at most 5 characters) replaces the process-derived part, so a
/// wrapper script can find and remove everything a run made.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    match std::env::var("REMAPD_NS_PREFIX") {
        Ok(p) if !p.is_empty() && p.len() <= 5 => format!("{p}{n:x}"),
        _ => format!("rm{:04x}{:x}", std::process::id() & 0xffff, n),
    }
}

/// Runs a command, panicking with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip ARGS...`, panicking on failure.
pub fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with `lo` up.
    pub fn new(name: &str) -> Self {
        // A leftover from a crashed run must not make this one fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A handle on an existing namespace that does not delete it on drop.
    pub fn new_handle(name: &str) -> std::mem::ManuallyDrop<Self> {
        std::mem::ManuallyDrop::new(Self { name: name.into() })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip route show table TABLE`: the routes of a routing table, one per line; empty
    /// when the kernel never made the table (no route was ever added to it), which
    /// `ip` reports as an error.
    pub fn table_routes(&self, table: u32) -> String {
        let out = Command::new("ip")
            .args(["-n", self.name.as_str(), "route", "show", "table"])
            .arg(table.to_string())
            .output()
            .unwrap_or_else(|e| panic!("spawning ip: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.contains("FIB table does not exist") {
            return String::new();
        }
        assert!(
            out.status.success(),
            "ip route show table {table} in {}: {stderr}",
            self.name
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.in_ns(move || {
            std::fs::write(&path, &value).unwrap_or_else(|e| panic!("sysctl {path}={value}: {e}"))
        });
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    pub fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file =
            File::open(self.path()).unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        let handle = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Spawns a thread in this namespace running `f`, returning its join handle.
    pub fn spawn_in_ns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file =
            File::open(self.path()).unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// A command that will run inside this namespace (network namespace only: the mount
    /// namespace, and so /sys/fs/bpf and /var/run/wireguard, stay shared).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let file =
            File::open(self.path()).unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; the fd stays open until exec (CLOEXEC).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    /// The child.
    pub child: Child,
    what: String,
}

impl ChildGuard {
    /// Spawns `cmd`, with stdout/stderr going to `log` when given.
    pub fn spawn(what: &str, cmd: &mut Command, log: Option<&Path>) -> Self {
        if let Some(log) = log {
            let f = File::create(log).expect("log file");
            cmd.stdout(f.try_clone().expect("dup")).stderr(f);
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Self {
            child,
            what: what.into(),
        }
    }

    /// Wraps an already spawned child.
    pub fn from_child(what: &str, child: Child) -> Self {
        Self {
            child,
            what: what.into(),
        }
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What this child is.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a process that loads the eBPF programs may take to come up. Loading is
/// bounded by the kernel verifier, whose speed depends on the CPU and its mitigations
/// (about 2 s for the four programs on an Intel session, several times that on an AMD
/// EPYC with SRSO mitigations, where a 10 s bound once failed in CI). This is a liveness
/// bound, not a performance check: start-up time is measured by the benchmarks.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A userspace WireGuard interface (wireguard-go in the foreground) in a namespace.
pub struct WireGuard {
    /// Interface name.
    pub name: String,
    /// Public key, base64.
    pub public_key: String,
    private_key_file: PathBuf,
    _process: ChildGuard,
}

/// Directory where wireguard-go puts its UAPI sockets.
pub const WG_SOCKET_DIR: &str = "/var/run/wireguard";

impl WireGuard {
    /// Starts wireguard-go for `name` in `ns` and sets a fresh key pair and listen port.
    pub fn start(ns: &Netns, name: &str, listen_port: u16, scratch: &Path) -> Self {
        let socket = Path::new(WG_SOCKET_DIR).join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = ns.command("wireguard-go");
        cmd.args(["-f", name]).env("LOG_LEVEL", "error");
        let process = ChildGuard::spawn(
            "wireguard-go",
            &mut cmd,
            Some(&scratch.join(format!("{name}.log"))),
        );
        wait_for(
            &format!("{} to exist", socket.display()),
            Duration::from_secs(10),
            || socket.exists(),
        );
        let private = run(Command::new("wg").arg("genkey")).stdout;
        let private_key_file = scratch.join(format!("{name}.key"));
        std::fs::write(&private_key_file, &private).expect("write key");
        let mut pubkey = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        pubkey
            .stdin
            .take()
            .expect("stdin")
            .write_all(&private)
            .expect("write");
        let out = pubkey.wait_with_output().expect("wg pubkey");
        let public_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        run(ns.command("wg").args([
            "set",
            name,
            "private-key",
            private_key_file.to_str().expect("utf-8 path"),
            "listen-port",
            &listen_port.to_string(),
        ]));
        ns.ip(&["link", "set", name, "up"]);
        Self {
            name: name.into(),
            public_key,
            private_key_file,
            _process: process,
        }
    }

    /// Sets the one peer: its key, endpoint and allowed-ips.
    pub fn set_peer(&self, ns: &Netns, peer_key: &str, endpoint: SocketAddr, allowed_ips: &[&str]) {
        run(ns.command("wg").args([
            "set",
            &self.name,
            "peer",
            peer_key,
            "endpoint",
            &endpoint.to_string(),
            "persistent-keepalive",
            "1",
            "allowed-ips",
            &allowed_ips.join(","),
        ]));
    }
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.private_key_file);
        let _ = std::fs::remove_file(Path::new(WG_SOCKET_DIR).join(format!("{}.sock", self.name)));
    }
}

/// A scratch directory removed on drop.
pub struct Scratch {
    /// Path.
    pub path: PathBuf,
}

impl Scratch {
    /// Creates `/tmp/<prefix>`.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(prefix);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch dir");
        Self { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A bpffs directory removed (all pins dropped) on drop.
pub struct PinDir {
    /// Path.
    pub path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/<prefix>-<name>`, emptied first.
    pub fn new(prefix: &str, name: &str) -> Self {
        let path = PathBuf::from(format!("/sys/fs/bpf/{prefix}-{name}"));
        let _ = std::fs::remove_dir_all(&path);
        Self { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `ping` from a namespace (IPv4 or IPv6, by the target): returns (transmitted,
/// received).
pub fn ping(ns: &Netns, target: impl Into<IpAddr>, count: u32, interval: &str) -> (u32, u32) {
    let target = target.into();
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "2",
        ])
        .arg(target.to_string())
        .output()
        .expect("run ping");
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// Parses ping's "N packets transmitted, M received" line.
pub fn parse_ping(stdout: &str) -> (u32, u32) {
    for line in stdout.lines() {
        if let Some((tx, rest)) = line.split_once(" packets transmitted, ") {
            let rx = rest.split_whitespace().next().unwrap_or("0");
            return (tx.trim().parse().unwrap_or(0), rx.parse().unwrap_or(0));
        }
    }
    (0, 0)
}

/// What a server in one namespace saw of a client's exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Source address the server saw.
    pub server_saw_peer: IpAddr,
    /// Address the client's reply came from (UDP), or the connected peer (TCP).
    pub client_saw_reply_from: IpAddr,
    /// The reply payload the client got.
    pub reply: Vec<u8>,
}

/// The unspecified address of `target`'s family, to bind to.
fn any_of_family(target: IpAddr) -> IpAddr {
    match target {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// A TCP exchange: a server in `server_ns` on `port`, a client in `client_ns` connecting
/// to `target`. The server echoes the message prefixed with "echo:".
pub fn tcp_exchange(
    server_ns: &Netns,
    client_ns: &Netns,
    target: impl Into<IpAddr>,
    port: u16,
    msg: &[u8],
) -> Exchange {
    let target = target.into();
    let any = any_of_family(target);
    let listener = server_ns.in_ns(move || TcpListener::bind((any, port)).expect("bind tcp"));
    listener.set_nonblocking(false).expect("blocking");
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).expect("server read");
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        stream.write_all(&reply).expect("server write");
        peer.ip()
    });
    let msg = msg.to_vec();
    let (reply, from) = client_ns.in_ns(move || {
        let addr = SocketAddr::from((target, port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("tcp connect to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(&msg).expect("client write");
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).expect("client read");
        buf.truncate(n);
        (buf, stream.peer_addr().expect("peer addr").ip())
    });
    let peer = server.join().expect("server thread");
    Exchange {
        server_saw_peer: peer,
        client_saw_reply_from: from,
        reply,
    }
}

/// A UDP exchange: the client sends until it gets the echo (up to 5 s). The server binds
/// `server_addr` (its real address): a wildcard-bound UDP server on a multi-address host
/// answers from whatever source routing picks, which is not what this test is about.
pub fn udp_exchange(
    server_ns: &Netns,
    server_addr: impl Into<IpAddr>,
    client_ns: &Netns,
    target: impl Into<IpAddr>,
    port: u16,
    msg: &[u8],
) -> Exchange {
    let (server_addr, target) = (server_addr.into(), target.into());
    let any = any_of_family(target);
    let server_sock =
        server_ns.in_ns(move || UdpSocket::bind((server_addr, port)).expect("bind udp"));
    server_sock
        .set_read_timeout(Some(Duration::from_secs(6)))
        .expect("timeout");
    let server = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1500];
        let (n, peer) = server_sock.recv_from(&mut buf).expect("server recv");
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        // Answer every copy the client may retry with, for a short while.
        server_sock.send_to(&reply, peer).expect("server send");
        server_sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        while let Ok((_, p)) = server_sock.recv_from(&mut buf) {
            let _ = server_sock.send_to(&reply, p);
        }
        peer.ip()
    });
    let msg = msg.to_vec();
    let (reply, from) = client_ns.in_ns(move || {
        let sock = UdpSocket::bind((any, 0)).expect("bind client");
        sock.set_read_timeout(Some(Duration::from_millis(250)))
            .expect("timeout");
        let start = Instant::now();
        let mut buf = vec![0u8; 1500];
        loop {
            sock.send_to(&msg, (target, port)).expect("client send");
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                buf.truncate(n);
                return (buf, from.ip());
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no UDP reply from {target}:{port}"
            );
        }
    });
    let peer = server.join().expect("server thread");
    Exchange {
        server_saw_peer: peer,
        client_saw_reply_from: from,
        reply,
    }
}

/// A bulk TCP transfer: a server in `server_ns` on `port` reads until the client
/// closes; a client in `client_ns` connects to `target` and writes `bytes` bytes.
/// Returns (bytes written, bytes the server read). Each side gives up after 20 s
/// without progress, so a path that black-holes large segments fails the caller's
/// comparison instead of hanging it.
pub fn tcp_transfer(
    server_ns: &Netns,
    client_ns: &Netns,
    target: impl Into<IpAddr>,
    port: u16,
    bytes: usize,
) -> (usize, usize) {
    let target = target.into();
    let any = any_of_family(target);
    let listener = server_ns.in_ns(move || TcpListener::bind((any, port)).expect("bind tcp"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("server read after {total} bytes: {e}"),
            }
        }
        total
    });
    let sent = client_ns.in_ns(move || {
        let mut s = TcpStream::connect_timeout(&(target, port).into(), Duration::from_secs(5))
            .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let data = vec![0x5au8; bytes];
        s.write_all(&data).expect("write");
        data.len()
    });
    (sent, server.join().expect("server thread"))
}
