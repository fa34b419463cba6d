//! Real `remapd` daemons in the gateway namespaces of a [`Network`], driven only through
//! their HTTP APIs with curl (as an operator would). Each daemon gets its own state
//! directory, bpffs pin directory and run directory; on drop the daemon is killed and
//! everything it started (userspace WireGuard processes, pins, sockets) is removed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::netns::{ChildGuard, LOAD_TIMEOUT, Netns, PinDir, WG_SOCKET_DIR, wait_for};

/// The API token every test daemon uses.
pub const TOKEN: &str = "remapd-test-token-0123456789";

/// The `remapd` binary next to the test binary (`target/<profile>/remapd`).
pub fn remapd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("remapd");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p remapd` (make test does)",
        bin.display()
    );
    bin
}

/// A running daemon.
pub struct Daemon {
    /// Its namespace's name.
    pub ns_name: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Run directory (pid files of WireGuard processes it started).
    pub run_dir: PathBuf,
    /// Pin directory.
    pub pins: PinDir,
    /// Log file.
    pub log: PathBuf,
    process: Option<ChildGuard>,
    token_file: PathBuf,
    advertise: String,
}

impl Daemon {
    /// Starts `remapd` in `ns`, listening on 127.0.0.1:7878 there.
    pub fn start(ns: &Netns, name: &str, scratch: &Path, prefix: &str, advertise: &str) -> Self {
        let base = scratch.join(name);
        std::fs::create_dir_all(&base).expect("daemon dir");
        let token_file = base.join("token");
        std::fs::write(&token_file, TOKEN).expect("token file");
        // remapd refuses a token file others can read.
        std::fs::set_permissions(
            &token_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("token file mode");
        let mut d = Self {
            ns_name: ns.name().to_owned(),
            state_dir: base.join("state"),
            run_dir: base.join("run"),
            pins: PinDir::new(prefix, name),
            log: base.join("remapd.log"),
            process: None,
            token_file,
            advertise: advertise.to_owned(),
        };
        d.spawn(ns);
        d
    }

    /// (Re)starts the process.
    pub fn spawn(&mut self, ns: &Netns) {
        self.spawn_with(ns, &[]);
    }

    /// Runs the daemon with `extra` flags expecting it to refuse to start: its exit
    /// status and what it printed.
    pub fn run_refused(&self, ns: &Netns, extra: &[&str]) -> (std::process::ExitStatus, String) {
        let out = self.command(ns).args(extra).output().expect("run remapd");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text)
    }

    fn command(&self, ns: &Netns) -> Command {
        let mut cmd = ns.command(remapd_binary());
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--advertise")
            .arg(&self.advertise)
            .arg("--listen")
            .arg("127.0.0.1:7878")
            .env("REMAPD_LOG", "info,netlink_packet_route=error");
        cmd
    }

    /// (Re)starts the process with `extra` flags.
    pub fn spawn_with(&mut self, ns: &Netns, extra: &[&str]) {
        let mut cmd = self.command(ns);
        cmd.args(extra);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        cmd.stdout(log.try_clone().expect("dup")).stderr(log);
        let child = cmd.spawn().expect("spawn remapd");
        self.process = Some(ChildGuard::from_child("remapd", child));
        let probe = ns.name().to_owned();
        wait_for("remapd to answer /healthz", LOAD_TIMEOUT, || {
            if let Some(p) = self.process.as_mut() {
                assert!(
                    p.is_running(),
                    "remapd exited: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            curl_raw(&probe, "GET", "/healthz", None).0 == 200
        });
    }

    /// SIGKILLs the process (what it applied stays).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERMs the process and waits (at most 60 s) for it to exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut p = self.process.take().expect("a running daemon");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(p.pid()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let mut status = None;
        wait_for(
            "remapd to exit after SIGTERM",
            Duration::from_secs(60),
            || {
                status = p.child.try_wait().expect("wait");
                status.is_some()
            },
        );
        status.expect("exit status")
    }

    /// An API call: (status, JSON body or the text as a JSON string).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, text) = curl_raw(
            &self.ns_name,
            method,
            path,
            body.map(|b| b.to_string()).as_deref(),
        );
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// An API call that must answer with `want`.
    pub fn expect(&self, method: &str, path: &str, body: Option<&Value>, want: u16) -> Value {
        let (status, json) = self.call(method, path, body);
        assert_eq!(status, want, "{method} {path} on {}: {json}", self.ns_name);
        json
    }

    /// Uploads the component at `path` as policy `name` (`PUT /v1/policies/{name}`),
    /// allowing for compiling an interpreter-sized component; must answer `want`.
    pub fn upload_policy(&self, name: &str, path: &Path, want: u16) -> Value {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "curl",
                "-sS",
                "-m",
                "300",
                "-X",
                "PUT",
            ])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args([
                "-H",
                "Content-Type: application/wasm",
                "-w",
                "\n%{http_code}",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", path.display()))
            .arg(format!("http://127.0.0.1:7878/v1/policies/{name}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let json = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
        assert_eq!(code.trim(), want.to_string(), "upload {name}: {json}");
        json
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pids of the WireGuard processes this daemon started, from its run directory.
    pub fn wireguard_pids(&self) -> Vec<(String, u32)> {
        let Ok(entries) = std::fs::read_dir(&self.run_dir) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let iface = name.strip_suffix(".pid")?.to_owned();
                let pid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((iface, pid))
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        for (iface, pid) in self.wireguard_pids() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            let _ = std::fs::remove_file(Path::new(WG_SOCKET_DIR).join(format!("{iface}.sock")));
        }
    }
}

/// A `GET /v1/trace` streaming from a daemon into a file (curl in the daemon's
/// namespace), until [`TraceCapture::stop`]; the curl process is killed on drop.
pub struct TraceCapture {
    curl: ChildGuard,
    out: PathBuf,
}

impl Daemon {
    /// Starts `GET /v1/trace?{query}` and returns once the daemon answered 200 (the
    /// kernel is tracing then). Panics with the answer when it is anything else.
    pub fn trace(&self, query: &str) -> TraceCapture {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.state_dir.join(format!("trace-{n}.ndjson"));
        let headers = self.state_dir.join(format!("trace-{n}.headers"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name, "curl", "-sSN", "-m", "120"])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&out)
            .arg(format!("http://127.0.0.1:7878/v1/trace?{query}"));
        let mut curl = ChildGuard::spawn("curl /v1/trace", &mut cmd, None);
        wait_for("the trace to start", Duration::from_secs(10), || {
            let head = std::fs::read_to_string(&headers).unwrap_or_default();
            if head.contains(" 200") {
                return true;
            }
            assert!(
                !head.contains("\r\n\r\n") && curl.is_running(),
                "GET /v1/trace?{query}: {head}{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
            false
        });
        TraceCapture { curl, out }
    }
}

impl TraceCapture {
    /// Waits for the daemon to pass on what the programs wrote (it drains the ring
    /// buffer every 20 ms), ends the trace and returns every item received.
    pub fn stop(mut self) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(500));
        self.curl.kill();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for TraceCapture {
    fn drop(&mut self) {
        self.curl.kill();
    }
}

/// curl inside a namespace's loopback; returns (status, body).
pub fn curl_raw(ns_name: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", ns_name, "curl", "-sS", "-m", "30", "-X", method,
    ])
    .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
    .args(["-w", "\n%{http_code}"]);
    if body.is_some() {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    cmd.arg(format!("http://127.0.0.1:7878{path}"));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Ok(mut child) = cmd.spawn() else {
        return (0, String::new());
    };
    if let (Some(b), Some(mut stdin)) = (body, child.stdin.take()) {
        let _ = stdin.write_all(b.as_bytes());
    }
    let Ok(out) = child.wait_with_output() else {
        return (0, String::new());
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rsplit_once('\n') {
        Some((body, code)) => (code.trim().parse().unwrap_or(0), body.to_owned()),
        None => (text.trim().parse().unwrap_or(0), String::new()),
    }
}

/// A policy component built from Python or JavaScript by `scripts/build-policies.sh`
/// (`make policies`, run by `make test`): `target/policies/{name}.wasm`. Panics with
/// what to run when it is missing: a test that needs it must not pass without it.
pub fn language_policy(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/policies")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/build-policies.sh` (make policies; make test runs it)",
        path.display()
    );
    path
}

/// Two daemons, one per gateway of a [`Network`], with their peering set up through
/// exports. Field order is drop order: the daemons (and the tunnels they started) go
/// before the network and the scratch directory that holds their pid files.
pub struct Pair {
    /// Gateway 1's daemon.
    pub d1: Daemon,
    /// Gateway 2's daemon.
    pub d2: Daemon,
    /// The namespaces.
    pub net: crate::topology::Network,
}

/// What [`Pair::connect`] configures: both clusters on `pods`; cluster 1 draws its views
/// from `pools[0]`, cluster 2 from `pools[1]`.
pub struct PairSpec<'a> {
    /// The policy of both peerings.
    pub policy: &'a str,
    /// Both clusters' pod CIDRs (the same: they overlap exactly).
    pub pods: &'a [&'a str],
    /// Each cluster's remap pool.
    pub pools: [&'a [&'a str]; 2],
    /// A component uploaded to both daemons as `policy` first.
    pub upload: Option<&'a Path>,
}

impl Pair {
    /// Starts both daemons on `net`, configures their clusters, and sets the peering
    /// up as an operator would: a bootstrap on gateway 1, then each side's exports
    /// piped into the other.
    pub fn connect(net: crate::topology::Network, spec: &PairSpec<'_>) -> Self {
        use crate::topology::{UNDERLAY_GW1, UNDERLAY_GW2};
        use serde_json::json;
        let d1 = Daemon::start(
            &net.gw1,
            "gw1",
            &net.scratch.path,
            &net.prefix,
            UNDERLAY_GW1,
        );
        let d2 = Daemon::start(
            &net.gw2,
            "gw2",
            &net.scratch.path,
            &net.prefix,
            UNDERLAY_GW2,
        );
        for (d, name, pool) in [
            (&d1, "cluster-1", spec.pools[0]),
            (&d2, "cluster-2", spec.pools[1]),
        ] {
            let cluster = json!({"name": name, "pod_cidrs": spec.pods, "remap_pool": pool});
            d.expect("PUT", "/v1/cluster", Some(&cluster), 200);
            if let Some(path) = spec.upload {
                d.upload_policy(spec.policy, path, 201);
            }
        }
        let pair = Self { d1, d2, net };
        let (p1, p2) = (pair.peering(1), pair.peering(2));
        let bootstrap = json!({
            "policy": spec.policy,
            "remote": {"name": "cluster-2", "pod_cidrs": spec.pods, "capabilities": {"nat_dataplane": true}},
            "tunnel": {"listen_port": 51820, "keepalive": 1}
        });
        pair.d1
            .expect("PUT", &format!("/v1/peerings/{p1}"), Some(&bootstrap), 201);
        let exports1 = pair
            .d1
            .expect("GET", &format!("/v1/peerings/{p1}/exports"), None, 200);
        pair.d2
            .expect("PUT", &format!("/v1/peerings/{p2}"), Some(&exports1), 201);
        let exports2 = pair
            .d2
            .expect("GET", &format!("/v1/peerings/{p2}/exports"), None, 200);
        pair.d1
            .expect("PUT", &format!("/v1/peerings/{p1}"), Some(&exports2), 200);
        pair
    }

    /// The name of the peering on gateway `side` (1 or 2).
    pub fn peering(&self, side: u8) -> String {
        format!(
            "{}-{}",
            self.net.prefix,
            if side == 1 { "c2" } else { "c1" }
        )
    }
}

/// The strategy of peering `name` at `d`.
pub fn strategy_of(d: &Daemon, name: &str) -> String {
    d.expect("GET", &format!("/v1/peerings/{name}"), None, 200)["decision"]["strategy"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Ping, TCP and UDP from `from` to `target` (how the client's cluster sees the server
/// at `real`, IPv4 or IPv6); the server must see the client as `seen_as`, and replies
/// come back from `target`.
pub fn reachable(from: &Netns, server: &Netns, target: &str, real: &str, seen_as: &str, port: u16) {
    use crate::netns::{ping, tcp_exchange, udp_exchange};
    let ip = |s: &str| -> std::net::IpAddr { s.parse().expect("address") };
    let t = ip(target);
    let mut rx = 0;
    for _ in 0..5 {
        rx = ping(from, t, 3, "0.2").1;
        if rx >= 2 {
            break;
        }
    }
    assert!(rx >= 2, "ping {target}: {rx}/3");
    let tcp = tcp_exchange(server, from, t, port, b"tcp");
    assert_eq!(tcp.server_saw_peer, ip(seen_as), "TCP to {target}");
    assert_eq!(tcp.reply, b"echo:tcp");
    let udp = udp_exchange(server, ip(real), from, t, port + 1, b"udp");
    assert_eq!(udp.server_saw_peer, ip(seen_as), "UDP to {target}");
    assert_eq!(udp.client_saw_reply_from, t);
}

/// `GET /v1/explain?from=&to=` at `d` has exactly one path, delivered both ways: the pod
/// dialed at `to` (real address `real`) sees `seen_as` — what [`reachable`] saw a real
/// connection's server get — and the reply comes back from `to`.
pub fn explained_as_seen(d: &Daemon, from: &str, to: &str, real: &str, seen_as: &str) {
    use serde_json::json;
    let body = d.expect(
        "GET",
        &format!("/v1/explain?from={from}&to={to}"),
        None,
        200,
    );
    let paths = body.as_array().expect("a list of paths");
    assert_eq!(paths.len(), 1, "{from} -> {to}: {body:#}");
    let e = &paths[0];
    assert_eq!(e["request"]["verdict"]["outcome"], "delivered", "{e:#}");
    assert_eq!(
        e["request"]["received"],
        json!({"source": seen_as, "destination": real}),
        "{e:#}"
    );
    assert_eq!(e["reply"]["verdict"]["outcome"], "delivered", "{e:#}");
    assert_eq!(
        e["reply"]["received"],
        json!({"source": to, "destination": from}),
        "{e:#}"
    );
}
