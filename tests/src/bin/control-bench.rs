//! Control-plane benchmark: how long it takes, and how much memory, to decide, compile
//! and apply 1, 100, 1,000 and 10,000 peerings (real policy engine, real eBPF maps and
//! program attachment; WireGuard and routes through the in-memory fakes), and the
//! latency of one peering `PUT` through the API until its rules are in the kernel.
//! Runs in a private network namespace (rules go on its loopback). Needs root.
//!
//! Prints a Markdown table. Usage: control-bench [MAX_PEERINGS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use remapd::dataplane::{
    ApplyReport, AttachMode, DataplaneApplier, DataplaneConfig, DataplaneError,
    DataplaneStatusReader, DesiredDataplane, IngressBorder, KernelDataplane,
};
use remapd::model::{Capabilities, LocalCluster, RemoteCluster};
use remapd::net::fake::{FakeRoutes, FakeTunnels};
use remapd::policy::{PolicyEngine, PolicyLimits, PolicyRegistry};
use remapd::reconcile::{Keys, Reconciler};
use remapd::store::{DesiredState, PeeringSpec, TunnelConfig};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn remote(i: u32) -> RemoteCluster {
    // Distinct /24s inside the local 10.0.0.0/8: every one overlaps the local cluster,
    // so every peering gets a view from the pool and two translation rules.
    let net = Ipv4Net::new((0x0a00_0000u32 + (i << 8)).into(), 24).expect("prefix");
    RemoteCluster {
        name: format!("remote-{i}"),
        pod_cidrs: vec![net.into()],
        service_cidrs: vec![],
        capabilities: Capabilities {
            nat_dataplane: true,
        },
        view_of_local: None,
    }
}

fn spec(i: u32) -> PeeringSpec {
    PeeringSpec {
        policy: "split".into(),
        remote: remote(i),
        settings: Default::default(),
        tunnel: TunnelConfig {
            listen_port: 1,
            endpoint: None,
            remote_public_key: None,
            keepalive: 0,
            mss_clamp: None,
            // Every peering on loopback: the fakes stand in for one tunnel per peering.
            interface: Some("lo".into()),
        },
    }
}

fn cluster() -> LocalCluster {
    LocalCluster {
        name: "hub".into(),
        pod_cidrs: vec!["10.0.0.0/8".parse().expect("prefix")],
        service_cidrs: vec![],
        reserved_cidrs: vec![],
        remap_pool: vec!["100.64.0.0/10".parse().expect("prefix")],
    }
}

/// The real dataplane, with every peering's border merged into one per interface: here
/// all peerings share loopback (standing in for one tunnel each), and the dataplane
/// rightly refuses two borders on one interface. The daemon has one border per tunnel.
struct SharedLoopback(KernelDataplane);

impl DataplaneApplier for SharedLoopback {
    fn apply(&mut self, desired: &DesiredDataplane) -> Result<ApplyReport, DataplaneError> {
        let mut merged: std::collections::BTreeMap<String, IngressBorder> = Default::default();
        for border in &desired.borders {
            let entry = merged
                .entry(border.interface.clone())
                .or_insert_with(|| IngressBorder {
                    interface: border.interface.clone(),
                    sources: Vec::new(),
                    destinations: Vec::new(),
                    mss_clamp: None,
                });
            entry.sources.extend(&border.sources);
            entry.destinations.extend(&border.destinations);
        }
        self.0.apply(&DesiredDataplane {
            rules: desired.rules.clone(),
            borders: merged.into_values().collect(),
        })
    }

    fn teardown(&mut self) -> Result<(), DataplaneError> {
        self.0.teardown()
    }

    fn status_reader(&self) -> Arc<dyn DataplaneStatusReader> {
        self.0.status_reader()
    }

    fn nat_available(&self) -> bool {
        self.0.nat_available()
    }

    fn trace_source(&self) -> Arc<dyn remapd::dataplane::trace::TraceSource> {
        self.0.trace_source()
    }
}

fn reconciler(registry: Arc<PolicyRegistry>, pin_dir: &std::path::Path) -> Reconciler {
    Reconciler::new(
        registry,
        Box::new(SharedLoopback(KernelDataplane::new(DataplaneConfig {
            pin_dir: pin_dir.to_owned(),
            attach_mode: AttachMode::Auto,
            without_trace: false,
        }))),
        Box::new(FakeRoutes::default()),
        Box::new(FakeTunnels::default()),
    )
}

fn main() {
    let max: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare the network namespace (root?)");
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");

    let rss_start = rss_mib();
    let engine = Arc::new(PolicyEngine::new(PolicyLimits::default()).expect("engine"));
    let registry = Arc::new(PolicyRegistry::with_builtins(engine).expect("registry"));
    let rss_idle = rss_mib();
    println!(
        "| peerings | rules | first apply (decide + compile + apply) | per peering | re-apply unchanged | one peering added | RSS after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut rss_10k = 0.0;
    for n in [1u32, 100, 1_000, 10_000].into_iter().filter(|n| *n <= max) {
        let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/remapd-control-bench-{n}"));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let mut rec = reconciler(registry.clone(), &pin_dir);
        let mut state = DesiredState {
            cluster: Some(cluster()),
            ..DesiredState::default()
        };
        let mut keys = Keys::new();
        for i in 0..n {
            state.peerings.insert(format!("p{i:05}"), spec(i));
            keys.insert(format!("p{i:05}"), String::new());
        }
        let started = Instant::now();
        let report = rec.reconcile(&state, &keys);
        let first = started.elapsed();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.dataplane.inserted, 2 * n as usize, "{report:?}");
        let started = Instant::now();
        let again = rec.reconcile(&state, &keys);
        let unchanged = started.elapsed();
        assert!(again.dataplane.inserted == 0 && again.dataplane.removed == 0);
        state.peerings.insert("zz-new".into(), spec(n));
        keys.insert("zz-new".into(), String::new());
        let started = Instant::now();
        let added = rec.reconcile(&state, &keys);
        let one = started.elapsed();
        assert!(added.errors.is_empty(), "{:?}", added.errors);
        assert_eq!(added.dataplane.inserted, 2);
        let rss = rss_mib();
        if n == 10_000 {
            rss_10k = rss;
        }
        println!(
            "| {n} | {} | {} | {:.0} µs | {} | {} | {rss:.0} MiB |",
            2 * n,
            fmt(first),
            first.as_secs_f64() * 1e6 / f64::from(n),
            fmt(unchanged),
            fmt(one)
        );
        rec.teardown();
        drop(rec);
        let _ = std::fs::remove_dir_all(&pin_dir);
    }
    println!();
    println!(
        "Memory: {rss_start:.0} MiB at start, {rss_idle:.0} MiB with the policy engine and the three built-ins compiled (what an idle daemon holds), {rss_10k:.0} MiB after the 10,000-peering run (resident set of this process; the fakes hold the tunnel/route state in memory)."
    );
}

fn fmt(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.2} s", d.as_secs_f64())
    } else if d.as_secs_f64() >= 0.001 {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}
