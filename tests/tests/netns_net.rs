//! The network appliers against a real kernel, inside throwaway network namespaces:
//! `NetlinkRoutes` must converge remapd's table and rule on exactly what it is given
//! and touch nothing else; `WireGuardTunnels` must start wireguard-go in the caller's
//! namespace, carry traffic, adopt a running tunnel instead of restarting it, update
//! only what changed, and stop and clean up what it manages. Needs root and
//! wireguard-go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use remapd::net::routes::{NetlinkRoutes, RoutePlacement, RouteTarget};
use remapd::net::wireguard::{WireGuardConfig, WireGuardTunnels};
use remapd::net::{
    NetError, RouteApplier, RouteReport, RouteSpec, TunnelApplier, TunnelReport, TunnelSpec,
};
use remapd_tests::netns::{Netns, WG_SOCKET_DIR, ping, run, unique_prefix, wait_for};

const TABLE: u32 = 7878;
const PRIORITY: u32 = 7878;
const OWN: RouteTarget = RouteTarget {
    placement: RoutePlacement::OwnTable,
    table: TABLE,
    rule_priority: PRIORITY,
};
const MAIN: RouteTarget = RouteTarget {
    placement: RoutePlacement::MainTable,
    table: TABLE,
    rule_priority: PRIORITY,
};

// ---------------------------------------------------------------------------------
// Routes

fn specs(routes: &[(&str, &str)]) -> Vec<RouteSpec> {
    routes
        .iter()
        .map(|(prefix, interface)| RouteSpec {
            prefix: prefix.parse().unwrap(),
            interface: (*interface).into(),
        })
        .collect()
}

/// Applies on a thread inside `ns`, as the daemon does after `setns`.
fn apply(ns: &Netns, routes: &[(&str, &str)]) -> Result<RouteReport, NetError> {
    let routes = specs(routes);
    ns.in_ns(move || NetlinkRoutes::new(OWN).apply(&routes))
}

fn teardown(ns: &Netns) -> Result<(), NetError> {
    ns.in_ns(|| NetlinkRoutes::new(OWN).teardown())
}

fn stdout(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// remapd's table as (prefix, device), asserting every route is `scope link`.
fn table(ns: &Netns) -> BTreeSet<(String, String)> {
    let table = TABLE.to_string();
    prefix_and_device(&stdout(ns.ip(&["-4", "route", "show", "table", &table])))
}

/// `ip route show` output as (prefix, device), asserting every route is `scope link`.
fn prefix_and_device(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(line.contains("scope link"), "not scope link: {line}");
            let dev = words
                .iter()
                .position(|w| *w == "dev")
                .map(|i| words[i + 1].to_owned())
                .unwrap_or_else(|| panic!("no dev in {line}"));
            (words[0].to_owned(), dev)
        })
        .collect()
}

fn expect(routes: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .map(|(p, d)| ((*p).to_owned(), (*d).to_owned()))
        .collect()
}

fn is_our_rule(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        == [
            &format!("{PRIORITY}:"),
            "from",
            "all",
            "lookup",
            &TABLE.to_string(),
        ]
}

fn rules(ns: Option<&Netns>) -> Vec<String> {
    let out = match ns {
        Some(ns) => ns.ip(&["-4", "rule", "show"]),
        None => run(Command::new("ip").args(["-4", "rule", "show"])),
    };
    stdout(out).lines().map(str::to_owned).collect()
}

fn our_rule_count(ns: &Netns) -> usize {
    rules(Some(ns)).iter().filter(|l| is_our_rule(l)).count()
}

/// Everything in the namespace that is not remapd's: must never change.
fn foreign(ns: &Netns) -> String {
    let main = stdout(ns.ip(&["-4", "route", "show", "table", "main"]));
    let other = stdout(ns.ip(&["-4", "route", "show", "table", "100"]));
    let rules: Vec<String> = rules(Some(ns))
        .into_iter()
        .filter(|l| !is_our_rule(l))
        .collect();
    format!("{main}\n--\n{other}\n--\n{}", rules.join("\n"))
}

/// Devices `d0` and `d1` in `ns`, up, to route into (veth pairs: this kernel may have
/// no dummy driver).
fn two_devices(ns: &Netns) {
    for dev in ["d0", "d1"] {
        let peer = format!("{dev}p");
        ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["link", "set", &peer, "up"]);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn routes_converge_on_exactly_the_given_set_and_touch_nothing_else() {
    let p = unique_prefix();
    let ns = Netns::new(&format!("{p}-rt"));
    two_devices(&ns);
    // Not remapd's: a main-table route, a route in another table, a rule for remapd's
    // table at another priority and one at remapd's priority for another table.
    ns.ip(&["route", "add", "10.50.0.0/16", "dev", "d0"]);
    ns.ip(&["route", "add", "10.60.0.0/16", "dev", "d1", "table", "100"]);
    ns.ip(&[
        "rule",
        "add",
        "from",
        "10.70.0.0/16",
        "lookup",
        "7878",
        "priority",
        "7877",
    ]);
    ns.ip(&[
        "rule", "add", "from", "all", "lookup", "100", "priority", "7878",
    ]);
    let untouched = foreign(&ns);
    let host_rules = rules(None);

    let first = [
        ("10.1.0.0/16", "d0"),
        ("10.2.0.0/16", "d0"),
        ("10.3.0.0/24", "d1"),
    ];
    let report = apply(&ns, &first).unwrap();
    assert_eq!(
        report,
        RouteReport {
            added: 3,
            removed: 0,
            unchanged: 0
        }
    );
    assert_eq!(table(&ns), expect(&first));
    assert_eq!(our_rule_count(&ns), 1, "rules: {:#?}", rules(Some(&ns)));
    assert_eq!(
        rules(None),
        host_rules,
        "the host namespace's rules must not change"
    );

    let again = apply(&ns, &first).unwrap();
    assert_eq!(
        again,
        RouteReport {
            added: 0,
            removed: 0,
            unchanged: 3
        }
    );
    assert_eq!(our_rule_count(&ns), 1);

    // A route someone else put in remapd's table is not kept; a prefix moves to
    // another device; a duplicate and host bits in the input are normalized away.
    ns.ip(&["route", "add", "10.9.0.0/16", "dev", "d1", "table", "7878"]);
    let second = [
        ("10.1.0.0/16", "d0"),
        ("10.3.0.0/24", "d0"),
        ("10.4.0.0/16", "d1"),
        ("10.4.7.7/16", "d1"),
    ];
    let report = apply(&ns, &second).unwrap();
    assert_eq!(
        report,
        RouteReport {
            added: 2,
            removed: 3,
            unchanged: 1
        }
    );
    assert_eq!(
        table(&ns),
        expect(&[
            ("10.1.0.0/16", "d0"),
            ("10.3.0.0/24", "d0"),
            ("10.4.0.0/16", "d1"),
        ])
    );

    // A missing interface fails before anything changes.
    let before = table(&ns);
    let err = apply(&ns, &[("10.1.0.0/16", "d0"), ("10.5.0.0/16", "nope0")]).unwrap_err();
    assert!(
        matches!(&err, NetError::InterfaceNotFound(i) if i == "nope0"),
        "{err:?}"
    );
    assert_eq!(table(&ns), before);
    assert_eq!(our_rule_count(&ns), 1);
    assert_eq!(foreign(&ns), untouched);

    teardown(&ns).unwrap();
    assert!(table(&ns).is_empty(), "table left: {:?}", table(&ns));
    assert_eq!(our_rule_count(&ns), 0);
    assert_eq!(foreign(&ns), untouched);
    teardown(&ns).expect("teardown of nothing");

    // An identical rule made by hand is adopted, not duplicated.
    ns.ip(&[
        "rule", "add", "from", "all", "lookup", "7878", "priority", "7878",
    ]);
    let report = apply(&ns, &[("10.1.0.0/16", "d0")]).unwrap();
    assert_eq!(report.added, 1);
    assert_eq!(our_rule_count(&ns), 1, "rules: {:#?}", rules(Some(&ns)));

    // The kernel treats a rule's unset selectors as wildcards when matching: a later
    // rule with a selector at the same priority and table must survive teardown...
    let narrower = ["from", "10.80.0.0/16", "lookup", "7878", "priority", "7878"];
    let mut add = vec!["rule", "add"];
    add.extend(narrower);
    ns.ip(&add);
    let with_narrower = foreign(&ns);
    assert_eq!(apply(&ns, &[("10.1.0.0/16", "d0")]).unwrap().unchanged, 1);
    teardown(&ns).unwrap();
    assert_eq!(our_rule_count(&ns), 0);
    assert_eq!(foreign(&ns), with_narrower);
    // ...and, coming first, it blocks remapd's rule: a clear error, nothing changed.
    let err = apply(&ns, &[("10.1.0.0/16", "d0")]).unwrap_err();
    assert!(
        matches!(&err, NetError::Netlink { reason, .. } if reason.contains("another rule")),
        "{err:?}"
    );
    assert!(table(&ns).is_empty());
    assert_eq!(our_rule_count(&ns), 0);
    assert_eq!(foreign(&ns), with_narrower);
    let mut del = vec!["rule", "del"];
    del.extend(narrower);
    ns.ip(&del);
    assert_eq!(foreign(&ns), untouched);
}

/// remapd's routes in the main table (`proto 78`) as (prefix, device).
fn main_ours(ns: &Netns) -> BTreeSet<(String, String)> {
    prefix_and_device(&stdout(
        ns.ip(&["-4", "route", "show", "table", "main", "proto", "78"]),
    ))
}

/// The main table's routes that are not remapd's, and every rule.
fn main_others_and_rules(ns: &Netns) -> String {
    let main = stdout(ns.ip(&["-4", "route", "show", "table", "main"]));
    let others: Vec<&str> = main.lines().filter(|l| !l.contains("proto 78")).collect();
    format!("{}\n--\n{}", others.join("\n"), rules(Some(ns)).join("\n"))
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn main_table_placement_needs_no_rule_owns_only_proto_78_and_switches_cleanly() {
    let p = unique_prefix();
    let ns = Netns::new(&format!("{p}-rm"));
    two_devices(&ns);
    // Not remapd's: main-table routes of other protocols.
    ns.ip(&["route", "add", "10.50.0.0/16", "dev", "d0"]);
    ns.ip(&["route", "add", "10.60.0.0/16", "dev", "d1", "proto", "boot"]);
    let default_rules = rules(Some(&ns));
    assert_eq!(default_rules.len(), 3, "{default_rules:#?}");
    let untouched = main_others_and_rules(&ns);
    let apply_to = |target: RouteTarget, routes: &[(&str, &str)]| {
        let routes = specs(routes);
        ns.in_ns(move || NetlinkRoutes::new(target).apply(&routes))
    };

    // Own-table mode first, as a gateway upgraded from it would be.
    apply_to(OWN, &[("10.1.0.0/16", "d0")]).unwrap();
    assert_eq!(table(&ns), expect(&[("10.1.0.0/16", "d0")]));
    assert_eq!(our_rule_count(&ns), 1);

    // Main-table mode: the routes in the main table with protocol 78, the old table
    // and rule gone (the kernel's three rules only), nobody else's route touched.
    let report = apply_to(MAIN, &[("10.1.0.0/16", "d0"), ("10.2.0.0/16", "d1")]).unwrap();
    assert_eq!(report.added, 2);
    assert_eq!(
        main_ours(&ns),
        expect(&[("10.1.0.0/16", "d0"), ("10.2.0.0/16", "d1")])
    );
    assert!(table(&ns).is_empty(), "own table left: {:?}", table(&ns));
    assert_eq!(rules(Some(&ns)), default_rules);
    assert_eq!(main_others_and_rules(&ns), untouched);
    let route = stdout(ns.ip(&["-4", "route", "get", "10.2.3.4"]));
    assert!(route.contains("dev d1"), "{route}");
    let again = apply_to(MAIN, &[("10.1.0.0/16", "d0"), ("10.2.0.0/16", "d1")]).unwrap();
    assert_eq!((again.added, again.removed, again.unchanged), (0, 0, 2));

    // A prefix another route of the main table holds: refused, nothing changed.
    let before = main_ours(&ns);
    for taken in ["10.50.0.0/16", "10.60.0.0/16"] {
        let err = apply_to(MAIN, &[("10.1.0.0/16", "d1"), (taken, "d1")]).unwrap_err();
        assert!(
            matches!(&err, NetError::RouteTaken { route }
                if route.starts_with(taken) && route.ends_with("proto boot")),
            "{err:?}"
        );
        assert_eq!(main_ours(&ns), before);
        assert_eq!(main_others_and_rules(&ns), untouched);
    }

    // A more specific route of someone else's inside a wanted prefix: refused too.
    ns.ip(&["route", "add", "10.70.1.0/24", "dev", "d0"]);
    let untouched_with_it = main_others_and_rules(&ns);
    let err = apply_to(MAIN, &[("10.1.0.0/16", "d1"), ("10.70.0.0/16", "d1")]).unwrap_err();
    assert!(
        matches!(&err, NetError::RouteTaken { route } if route.starts_with("10.70.1.0/24")),
        "{err:?}"
    );
    assert_eq!(main_ours(&ns), before);
    assert_eq!(main_others_and_rules(&ns), untouched_with_it);
    ns.ip(&["route", "del", "10.70.1.0/24", "dev", "d0"]);

    // A prefix moving to another device, one no longer wanted.
    let report = apply_to(MAIN, &[("10.1.0.0/16", "d1")]).unwrap();
    assert_eq!((report.added, report.removed), (1, 2));
    assert_eq!(main_ours(&ns), expect(&[("10.1.0.0/16", "d1")]));

    // Back to own-table mode: remapd's main-table routes go.
    apply_to(OWN, &[("10.1.0.0/16", "d1")]).unwrap();
    assert!(main_ours(&ns).is_empty(), "{:?}", main_ours(&ns));
    assert_eq!(table(&ns), expect(&[("10.1.0.0/16", "d1")]));

    // Teardown in main-table mode removes both placements' routes and the rule.
    apply_to(MAIN, &[("10.3.0.0/16", "d0")]).unwrap();
    ns.ip(&["route", "add", "10.4.0.0/16", "dev", "d0", "table", "7878"]);
    ns.in_ns(|| NetlinkRoutes::new(MAIN).teardown()).unwrap();
    assert!(main_ours(&ns).is_empty());
    assert!(table(&ns).is_empty());
    assert_eq!(main_others_and_rules(&ns), untouched);
}

// ---------------------------------------------------------------------------------
// Tunnels

/// A directory removed on drop, panicking or not; wireguard-go's logs in it are
/// printed first when the test failed.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for sub in ["a", "b"] {
                let dir = self.path.join(sub);
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if entry.path().extension().is_some_and(|e| e == "log") {
                        eprintln!(
                            "--- {}:\n{}",
                            entry.path().display(),
                            std::fs::read_to_string(entry.path()).unwrap_or_default()
                        );
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Kills whatever the appliers started and left (a failed test never reaches
/// `prune`) and removes the sockets.
struct Reaper {
    run_dirs: Vec<PathBuf>,
    interfaces: Vec<String>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for dir in &self.run_dirs {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "pid") {
                    continue;
                }
                let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                else {
                    continue;
                };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains("wireguard-go")
                    && self.interfaces.iter().any(|i| cmdline.contains(i.as_str()))
                {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
            }
        }
        for interface in &self.interfaces {
            let _ =
                std::fs::remove_file(Path::new(WG_SOCKET_DIR).join(format!("{interface}.sock")));
        }
    }
}

fn genkey() -> (String, String) {
    let private = run(Command::new("wg").arg("genkey")).stdout;
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    pubkey.stdin.take().unwrap().write_all(&private).unwrap();
    let out = pubkey.wait_with_output().unwrap();
    assert!(out.status.success());
    (
        String::from_utf8(private).unwrap().trim().to_owned(),
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

fn config(run_dir: PathBuf) -> WireGuardConfig {
    WireGuardConfig {
        userspace_program: "wireguard-go".into(),
        socket_dir: WG_SOCKET_DIR.into(),
        run_dir,
    }
}

/// Runs `f` on the applier from a thread inside `ns`, as the daemon does from a
/// blocking task after `setns`.
fn call<R: Send + 'static>(
    ns: &Netns,
    tunnels: &mut WireGuardTunnels,
    f: impl FnOnce(&mut WireGuardTunnels) -> R + Send + 'static,
) -> R {
    let taken = std::mem::replace(tunnels, WireGuardTunnels::new(WireGuardConfig::default()));
    let (back, out) = ns.in_ns(move || {
        let mut t = taken;
        let out = f(&mut t);
        (t, out)
    });
    *tunnels = back;
    out
}

fn ensure(ns: &Netns, tunnels: &mut WireGuardTunnels, spec: &TunnelSpec) -> TunnelReport {
    let spec = spec.clone();
    call(ns, tunnels, move |t| t.ensure(&[spec]))
        .unwrap_or_else(|e| panic!("ensure in {}: {e}", ns.name()))
}

fn pid_of(run_dir: &Path, interface: &str) -> u32 {
    let path = run_dir.join(format!("{interface}.pid"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

fn in_netns(pid: u32, ns: &Netns) -> bool {
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let named = std::fs::metadata(Path::new("/run/netns").join(ns.name())).unwrap();
    theirs.ino() == named.ino() && theirs.dev() == named.dev()
}

fn socket(interface: &str) -> PathBuf {
    Path::new(WG_SOCKET_DIR).join(format!("{interface}.sock"))
}

fn report(created: usize, updated: usize, unchanged: usize, removed: usize) -> TunnelReport {
    TunnelReport {
        created,
        updated,
        unchanged,
        removed,
        failed: Default::default(),
    }
}

fn assert_pings(from: &Netns, to: Ipv4Addr) {
    let (tx, rx) = ping(from, to, 5, "0.2");
    assert!(
        tx == 5 && rx >= 4,
        "ping {to} from {}: {rx}/{tx} answered",
        from.name()
    );
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn userspace_tunnels_are_started_adopted_updated_and_pruned() {
    let p = unique_prefix();
    let dir = TempDir::new(&format!("{p}-wg"));
    let (run_a, run_b) = (dir.path.join("a"), dir.path.join("b"));
    let a = Netns::new(&format!("{p}-a"));
    let b = Netns::new(&format!("{p}-b"));
    let (wga, wgb) = (format!("{p}wa"), format!("{p}wb"));
    // Declared last so it runs first: processes die before their namespaces go.
    let _reaper = Reaper {
        run_dirs: vec![run_a.clone(), run_b.clone()],
        interfaces: vec![wga.clone(), wgb.clone()],
    };

    let (va, vb) = (format!("{p}va"), format!("{p}vb"));
    a.ip(&[
        "link",
        "add",
        &va,
        "type",
        "veth",
        "peer",
        "name",
        &vb,
        "netns",
        b.name(),
    ]);
    a.ip(&["addr", "add", "198.18.0.1/30", "dev", &va]);
    a.ip(&["link", "set", &va, "up"]);
    b.ip(&["addr", "add", "198.18.0.2/30", "dev", &vb]);
    b.ip(&["link", "set", &vb, "up"]);

    let (priv_a, pub_a) = genkey();
    let (priv_b, pub_b) = genkey();
    let mut spec_a = TunnelSpec {
        interface: wga.clone(),
        private_key: priv_a,
        listen_port: 51820,
        peer_public_key: pub_b.clone(),
        endpoint: Some("198.18.0.2:51821".parse().unwrap()),
        allowed_ips: vec!["169.254.77.2/32".parse().unwrap()],
        keepalive: Some(1),
    };
    let spec_b = TunnelSpec {
        interface: wgb.clone(),
        private_key: priv_b,
        listen_port: 51821,
        peer_public_key: pub_a.clone(),
        endpoint: Some("198.18.0.1:51820".parse().unwrap()),
        allowed_ips: vec!["169.254.77.1/32".parse().unwrap()],
        keepalive: Some(1),
    };

    let mut ta = WireGuardTunnels::new(config(run_a.clone()));
    let mut tb = WireGuardTunnels::new(config(run_b.clone()));
    assert_eq!(ensure(&a, &mut ta, &spec_a), report(1, 0, 0, 0));
    assert_eq!(ensure(&b, &mut tb, &spec_b), report(1, 0, 0, 0));
    let (pid_a, pid_b) = (pid_of(&run_a, &wga), pid_of(&run_b, &wgb));
    assert!(running(pid_a) && running(pid_b));
    assert!(
        in_netns(pid_a, &a),
        "wireguard-go for {wga} is not in {}",
        a.name()
    );
    assert!(
        in_netns(pid_b, &b),
        "wireguard-go for {wgb} is not in {}",
        b.name()
    );
    assert!(run_a.join(format!("{wga}.log")).exists());
    let link = stdout(a.ip(&["link", "show", &wga]));
    assert!(
        link.contains(",UP") || link.contains("<UP"),
        "{wga} not up: {link}"
    );

    a.ip(&["addr", "add", "169.254.77.1/32", "dev", &wga]);
    a.ip(&["route", "add", "169.254.77.2/32", "dev", &wga]);
    b.ip(&["addr", "add", "169.254.77.2/32", "dev", &wgb]);
    b.ip(&["route", "add", "169.254.77.1/32", "dev", &wgb]);
    assert_pings(&a, Ipv4Addr::new(169, 254, 77, 2));

    // A daemon restart: a new instance adopts the running process as it is.
    drop(ta);
    let mut ta = WireGuardTunnels::new(config(run_a.clone()));
    assert_eq!(ensure(&a, &mut ta, &spec_a), report(0, 0, 1, 0));
    assert_eq!(pid_of(&run_a, &wga), pid_a, "adopted, not restarted");
    assert!(running(pid_a));
    assert_eq!(ensure(&b, &mut tb, &spec_b), report(0, 0, 1, 0));
    assert_eq!(pid_of(&run_b, &wgb), pid_b);

    // Only what changed is applied, to the same process, and traffic keeps flowing.
    spec_a.allowed_ips.push("10.99.0.0/16".parse().unwrap());
    assert_eq!(ensure(&a, &mut ta, &spec_a), report(0, 1, 0, 0));
    assert_eq!(pid_of(&run_a, &wga), pid_a);
    let allowed = stdout(run(a.command("wg").args(["show", &wga, "allowed-ips"])));
    assert!(
        allowed.contains("10.99.0.0/16") && allowed.contains("169.254.77.2/32"),
        "allowed-ips: {allowed}"
    );
    assert_eq!(ensure(&a, &mut ta, &spec_a), report(0, 0, 1, 0));
    assert_pings(&a, Ipv4Addr::new(169, 254, 77, 2));

    let wga2 = wga.clone();
    let status = call(&a, &mut ta, move |t| t.status(&wga2))
        .unwrap()
        .expect("status of a running tunnel");
    assert_eq!(status.interface, wga);
    assert_eq!(status.public_key.as_deref(), Some(pub_a.as_str()));
    assert_eq!(status.listen_port, Some(51820));
    assert!(status.last_handshake.is_some(), "{status:?}");
    assert!(status.rx_bytes > 0 && status.tx_bytes > 0, "{status:?}");
    assert_eq!(status.backend, "userspace");
    let missing = format!("{p}zz");
    assert_eq!(
        call(&a, &mut ta, move |t| t.status(&missing)).unwrap(),
        None
    );

    // The socket names are shared by all namespaces: b's tunnel is invisible from a
    // and is not taken over by an ensure there.
    let wgb2 = wgb.clone();
    assert_eq!(call(&a, &mut ta, move |t| t.status(&wgb2)).unwrap(), None);
    let stolen = spec_b.clone();
    let refused = call(&a, &mut ta, move |t| t.ensure(&[stolen])).unwrap();
    assert_eq!(refused.created + refused.updated + refused.unchanged, 0);
    assert!(refused.failed.contains_key(&wgb), "{refused:?}");
    assert!(!run_a.join(format!("{wgb}.pid")).exists());
    assert_eq!(pid_of(&run_b, &wgb), pid_b);

    // Pruning keeps what it is told to keep...
    let keep = vec![wga.clone()];
    assert_eq!(
        call(&a, &mut ta, move |t| t.prune(&keep)).unwrap(),
        report(0, 0, 0, 0)
    );
    assert!(running(pid_a));
    // ...and removes the rest: the adopted process (not this instance's child) and the
    // one this instance started.
    assert_eq!(
        call(&a, &mut ta, |t| t.prune(&[])).unwrap(),
        report(0, 0, 0, 1)
    );
    assert_eq!(
        call(&b, &mut tb, |t| t.prune(&[])).unwrap(),
        report(0, 0, 0, 1)
    );
    for (pid, iface, run_dir, ns) in [(pid_a, &wga, &run_a, &a), (pid_b, &wgb, &run_b, &b)] {
        wait_for(
            &format!("process {pid} to disappear"),
            Duration::from_secs(2),
            || !Path::new(&format!("/proc/{pid}")).exists(),
        );
        assert!(!socket(iface).exists(), "{} left", socket(iface).display());
        assert!(!run_dir.join(format!("{iface}.pid")).exists());
        // Its log goes with it (a churn of peerings must not fill run_dir).
        assert!(!run_dir.join(format!("{iface}.log")).exists());
        let links = stdout(ns.ip(&["-o", "link", "show"]));
        assert!(
            !links.contains(iface.as_str()),
            "{iface} still there: {links}"
        );
    }
    call(&a, &mut ta, |t| t.teardown()).unwrap();
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn invalid_keys_are_refused_before_anything_starts() {
    let p = unique_prefix();
    let dir = TempDir::new(&format!("{p}-wk"));
    let run_dir = dir.path.join("a");
    let interface = format!("{p}wk");
    let broken = format!("{p}wl");
    let _reaper = Reaper {
        run_dirs: vec![run_dir.clone()],
        interfaces: vec![interface.clone(), broken.clone()],
    };
    let (private, _) = genkey();
    let (_, peer) = genkey();
    let good = TunnelSpec {
        interface: interface.clone(),
        private_key: private,
        listen_port: 51820,
        peer_public_key: peer,
        endpoint: None,
        allowed_ips: vec![],
        keepalive: None,
    };
    let mut tunnels = WireGuardTunnels::new(config(run_dir.clone()));
    for bad in [
        TunnelSpec {
            interface: broken.clone(),
            private_key: "not base64!".into(),
            ..good.clone()
        },
        TunnelSpec {
            interface: broken.clone(),
            peer_public_key: "c2hvcnQ=".into(),
            ..good.clone()
        },
    ] {
        // The good spec first: validation covers the whole set before anything starts.
        let err = tunnels.ensure(&[good.clone(), bad]).unwrap_err();
        assert!(
            matches!(&err, NetError::BadKey { interface: i } if *i == broken),
            "{err:?}"
        );
        assert!(!err.to_string().contains(&good.private_key));
    }
    assert!(!run_dir.exists(), "nothing may have been started");
    assert!(!socket(&interface).exists() && !socket(&broken).exists());
}

/// What no tunnel route may cover, read from the kernel: the gateway's addresses of both
/// families on its own interfaces (not on remapd's tunnels, not loopback or link-local)
/// and the next hop of the main-table route of its family towards each endpoint. An
/// IPv6 default route hides no IPv4 next hop.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn protected_addresses_are_read_from_the_kernel() {
    let p = unique_prefix();
    let ns = Netns::new(&format!("{p}-pa"));
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    ns.ip(&[
        "link", "add", "rmd-x", "type", "veth", "peer", "name", "rmd-xp",
    ]);
    for dev in ["eth0", "eth0p", "rmd-x", "rmd-xp"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"]);
    ns.ip(&["addr", "add", "100.64.0.1/24", "dev", "rmd-x"]);
    ns.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "192.0.2.254"]);
    ns.ip(&["addr", "add", "2001:db8:a::10/64", "dev", "eth0", "nodad"]);
    ns.ip(&["addr", "add", "2001:db8:f::1/64", "dev", "rmd-x", "nodad"]);
    ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:a::1"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:b::/48",
        "via",
        "2001:db8:a::fe",
    ]);
    let endpoints: Vec<std::net::IpAddr> = [
        "198.51.100.7",
        "203.0.113.9",
        "192.0.2.77",
        "2001:db8:c::7",
        "2001:db8:b::9",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let protected = ns
        .in_ns(move || NetlinkRoutes::new(OWN).protected_addresses(&endpoints))
        .unwrap();
    let addresses: BTreeSet<String> = protected
        .iter()
        .map(|p| format!("{} {}", p.address, p.what))
        .collect();
    let want: BTreeSet<String> = [
        "192.0.2.10 this gateway's address on eth0",
        "192.0.2.1 the next hop (via eth0) towards the WireGuard endpoint 198.51.100.7",
        "192.0.2.254 the next hop (via eth0) towards the WireGuard endpoint 203.0.113.9",
        "2001:db8:a::10 this gateway's address on eth0",
        "2001:db8:a::1 the next hop (via eth0) towards the WireGuard endpoint 2001:db8:c::7",
        "2001:db8:a::fe the next hop (via eth0) towards the WireGuard endpoint 2001:db8:b::9",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(addresses, want);
}

/// A userspace WireGuard for an `rmd-*` interface that no pid file records (its remapd
/// was SIGKILLed between spawning it and writing the file: seen once in the crash test)
/// is adopted and pruned like any other; one in another namespace is left alone.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn an_orphan_without_a_pid_file_is_adopted_and_pruned() {
    use std::os::unix::process::CommandExt as _;
    let p = unique_prefix();
    let ns = Netns::new(&format!("{p}-or"));
    let other = Netns::new(&format!("{p}-ot"));
    let scratch = std::env::temp_dir().join(format!("{p}-orphan"));
    let _ = std::fs::remove_dir_all(&scratch);
    let spawn = |ns: &Netns, name: &str| {
        ns.command("wireguard-go")
            .args(["-f", name])
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("wireguard-go")
    };
    let orphan_name = format!("rmd-{p}o");
    let foreign_name = format!("rmd-{p}x");
    let mut orphan = spawn(&ns, &orphan_name);
    let mut foreign = spawn(&other, &foreign_name);
    wait_for("the orphan's socket", Duration::from_secs(10), || {
        socket(&orphan_name).exists() && socket(&foreign_name).exists()
    });
    let mut tunnels = WireGuardTunnels::new(config(scratch.join("run")));
    let report = call(&ns, &mut tunnels, |t| t.prune(&[])).unwrap();
    // Reaped by the applier (it runs in this process, whose child the orphan is) or
    // exited: either way gone.
    let gone = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        orphan.try_wait().map_or(true, |s| s.is_some())
    });
    let foreign_alive = foreign.try_wait().is_ok_and(|s| s.is_none());
    let _ = orphan.kill();
    let _ = foreign.kill();
    let _ = orphan.wait();
    let _ = foreign.wait();
    let _ = std::fs::remove_dir_all(&scratch);
    assert_eq!(report.removed, 1, "{report:?}");
    assert!(gone, "the orphan was not stopped");
    assert!(foreign_alive, "a process of another namespace was touched");
}
