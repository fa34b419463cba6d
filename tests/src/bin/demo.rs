//! The two-cluster demo: both clusters use 40.0.0.0/24 for pods; cluster 1 reaches
//! cluster 2 at 30.0.0.0/24 and cluster 2 reaches cluster 1 at 60.0.0.0/24, through
//! gateways joined by a userspace WireGuard tunnel, for the split and both-on-2
//! strategies. Rules go in through remapd's dataplane module (the HTTP API that will
//! drive it is not built yet). Exits non-zero if any check fails. Run via `make demo`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use remapd_tests::netns::{ping, tcp_exchange, udp_exchange};
use remapd_tests::topology::{GatewayPlan, Topology, seed_both_on_2, seed_cluster, seed_split};

struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    fn check(&mut self, what: &str, f: impl FnOnce() -> String) {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(detail) => {
                self.passed += 1;
                println!("  \u{2714} {what}: {detail}");
            }
            Err(panic) => {
                self.failed += 1;
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                println!("  \u{2718} {what}: {msg}");
            }
        }
    }
}

fn run(name: &str, plans: (GatewayPlan, GatewayPlan), checks: &mut Checks) {
    println!("\n== strategy: {name} ==");
    let (plan1, plan2) = plans;
    println!(
        "- building namespaces pod1, gw1, gw2, pod2 (both clusters 40.0.0.0/24) and the WireGuard tunnel"
    );
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    for (gw, plan) in [(1u8, &plan1), (2, &plan2)] {
        let rules = t.rules(gw, plan);
        println!(
            "- gw{gw}: {} rule(s), routes {:?} into the tunnel",
            rules.len(),
            plan.routes
        );
        for r in &rules {
            println!("    {r}");
        }
        let report = t.apply(gw, plan);
        println!("    applied: {report:?}");
    }
    let a = |s: &str| s.parse::<std::net::Ipv4Addr>().expect("address");
    checks.check("ping pod1 -> 30.0.0.1", || {
        let (tx, rx) = ping(&t.pod1, a("30.0.0.1"), 3, "0.2");
        assert!(rx >= 2, "{rx}/{tx} replies");
        format!("{rx}/{tx} replies")
    });
    checks.check("TCP pod1 -> 30.0.0.1:7000", || {
        let x = tcp_exchange(&t.pod2, &t.pod1, a("30.0.0.1"), 7000, b"hi");
        assert_eq!(x.server_saw_peer, a("60.0.0.1"));
        format!("pod2 saw the client as {}", x.server_saw_peer)
    });
    checks.check("UDP pod1 -> 30.0.0.1:7001", || {
        let x = udp_exchange(&t.pod2, a("40.0.0.1"), &t.pod1, a("30.0.0.1"), 7001, b"hi");
        assert_eq!(x.server_saw_peer, a("60.0.0.1"));
        assert_eq!(x.client_saw_reply_from, a("30.0.0.1"));
        format!(
            "pod2 saw {}, reply came from {}",
            x.server_saw_peer, x.client_saw_reply_from
        )
    });
    checks.check("ping pod2 -> 60.0.0.1", || {
        let (tx, rx) = ping(&t.pod2, a("60.0.0.1"), 3, "0.2");
        assert!(rx >= 2, "{rx}/{tx} replies");
        format!("{rx}/{tx} replies")
    });
    checks.check("TCP pod2 -> 60.0.0.1:7100", || {
        let x = tcp_exchange(&t.pod1, &t.pod2, a("60.0.0.1"), 7100, b"hi");
        assert_eq!(x.server_saw_peer, a("30.0.0.1"));
        format!("pod1 saw the client as {}", x.server_saw_peer)
    });
    for gw in [1u8, 2] {
        let status = t.status(gw);
        println!("- gw{gw} rule counters:");
        for r in &status.rules {
            println!(
                "    {:<55} {:>6} packets {:>8} bytes",
                r.rule.to_string(),
                r.packets,
                r.bytes
            );
        }
        if status.rules.is_empty() {
            println!("    (none: this gateway only routes)");
        }
    }
    println!("- tearing down");
}

fn main() {
    let mut checks = Checks {
        passed: 0,
        failed: 0,
    };
    run("split", seed_split(), &mut checks);
    run("both-on-2", seed_both_on_2(), &mut checks);
    println!("\n{} passed, {} failed", checks.passed, checks.failed);
    if checks.failed > 0 {
        std::process::exit(1);
    }
}
