//! Policy decision latency: each built-in policy, warm (precompiled, a fresh store per
//! call as in the daemon, validation included) in wasm vs the same crate called
//! natively, plus the one-time compile cost of a component. Prints a Markdown table.
//!
//! Usage: policy-bench [ITERATIONS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use remapd::model::{Capabilities, LocalCluster, PolicyInput, RemoteCluster};
use remapd::policy::{PolicyEngine, PolicyLimits, builtin};
use remapd_policy_sdk::{self as sdk, Policy};

fn n(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

fn input() -> PolicyInput {
    PolicyInput {
        local: LocalCluster {
            name: "cluster-1".into(),
            pod_cidrs: vec![n("10.1.0.0/16")],
            service_cidrs: vec![n("10.96.0.0/12")],
            reserved_cidrs: vec![n("192.168.0.0/16")],
            remap_pool: vec![n("100.64.0.0/10")],
        },
        local_capabilities: Capabilities {
            nat_dataplane: true,
        },
        allocated: vec![n("100.64.0.0/16"), n("100.65.0.0/16")],
        remote: RemoteCluster {
            name: "cluster-2".into(),
            pod_cidrs: vec![n("10.1.0.0/16"), n("10.2.0.0/24")],
            service_cidrs: vec![n("10.96.0.0/12")],
            capabilities: Capabilities {
                nat_dataplane: true,
            },
            view_of_local: None,
        },
        settings: Default::default(),
    }
}

fn sdk_input() -> sdk::DecisionInput {
    let c = |s: &str| sdk::Cidr::parse(s).expect("cidr");
    sdk::DecisionInput {
        local: sdk::LocalCluster {
            name: "cluster-1".into(),
            pod_cidrs: vec![c("10.1.0.0/16")],
            service_cidrs: vec![c("10.96.0.0/12")],
            reserved_cidrs: vec![c("192.168.0.0/16")],
            remap_pool: vec![c("100.64.0.0/10")],
            allocated: vec![c("100.64.0.0/16"), c("100.65.0.0/16")],
            capabilities: sdk::Capabilities {
                nat_dataplane: true,
            },
        },
        remote: sdk::RemoteCluster {
            name: "cluster-2".into(),
            pod_cidrs: vec![c("10.1.0.0/16"), c("10.2.0.0/24")],
            service_cidrs: vec![c("10.96.0.0/12")],
            capabilities: sdk::Capabilities {
                nat_dataplane: true,
            },
            view_of_local: None,
        },
        settings: vec![],
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_call(iterations: u32, mut f: impl FnMut()) -> Duration {
    // Seven batches; the median batch's mean.
    let batches: Vec<Duration> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed() / iterations
        })
        .collect();
    median(batches)
}

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let engine = Arc::new(PolicyEngine::new(PolicyLimits::default()).expect("engine"));
    let input = input();
    let native_input = sdk_input();
    println!(
        "| policy | wasm warm decision | native | wasm / native | of which: fresh store + instantiate | call in a live instance | call / native | one-time compile |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    type Native = fn(&sdk::DecisionInput) -> Result<sdk::Decision, String>;
    let cases: [(&str, &[u8], Native); 3] = [
        ("auto", builtin::AUTO, remapd_policy_auto::Auto::decide),
        ("split", builtin::SPLIT, remapd_policy_split::Split::decide),
        (
            "both-on-2",
            builtin::BOTH_ON_2,
            remapd_policy_both_on_2::BothOn2::decide,
        ),
    ];
    for (name, bytes, native) in cases {
        let compile = median(
            (0..5)
                .map(|_| {
                    let fresh = PolicyEngine::new(PolicyLimits::default()).expect("engine");
                    let start = Instant::now();
                    fresh.compile(bytes).expect("compile");
                    start.elapsed()
                })
                .collect(),
        );
        let compiled = engine.compile(bytes).expect("compile");
        let expected = engine.decide(&compiled, &input).expect("decide").decision;
        let wasm = per_call(iterations, || {
            let eval = engine.decide(&compiled, &input).expect("decide");
            assert_eq!(eval.decision, expected);
        });
        let native_time = per_call(iterations * 10, || {
            std::hint::black_box(native(std::hint::black_box(&native_input)))
                .expect("native decide");
        });
        let (instantiate, call) = {
            let runs: Vec<(Duration, Duration)> = (0..7)
                .map(|_| {
                    engine
                        .time_calls_in_one_instance(&compiled, &input, iterations)
                        .expect("calls")
                })
                .collect();
            (
                median(runs.iter().map(|r| r.0).collect()),
                median(runs.iter().map(|r| r.1).collect()),
            )
        };
        println!(
            "| {name} | {:.1} µs | {:.2} µs | {:.0}× | {:.1} µs | {:.2} µs | {:.1}× | {:.1} ms |",
            wasm.as_secs_f64() * 1e6,
            native_time.as_secs_f64() * 1e6,
            wasm.as_secs_f64() / native_time.as_secs_f64(),
            instantiate.as_secs_f64() * 1e6,
            call.as_secs_f64() * 1e6,
            call.as_secs_f64() / native_time.as_secs_f64(),
            compile.as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "Input: 3 remote CIDRs (two overlapping), 4 local prefixes, 2 other allocations. Warm wasm = fresh store + instantiate from the precompiled InstancePre + call + lift + validate, median of 7 batches of {iterations}; native = the same policy crate called directly (no validation), batches of {}.",
        iterations * 10
    );
}
