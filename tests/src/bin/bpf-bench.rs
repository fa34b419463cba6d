//! Per-packet cost of remapd's TC program with BPF_PROG_TEST_RUN: a no-op program vs
//! remapd with 1 (a self-inverse pair), 1,000 and 100,000 rules, for TCP, UDP and an ICMP
//! error quoting TCP. A repeated test run reuses one buffer, so the measured rules are a
//! self-inverse pair (dst 30/24 <-> 31/24): every pass really rewrites, and after an odd
//! number of passes the packet must be translated exactly once, which is checked.
//! Filler rules are distinct /24s in 64.0.0.0/6 on the same hook (worst case: one trie).
//!
//! Prints a Markdown table. Usage: bpf-bench [REPEAT] [ROUNDS]

use remapd::dataplane::{AddressField, Direction};
use remapd_common::programs;
use remapd_tests::bpf::BpfHarness;
use remapd_tests::packet::{Ipv4, icmp, tcp, udp};

fn packets() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let a = "40.0.0.1".parse().unwrap();
    let d = "30.0.0.1".parse().unwrap();
    let d2 = "31.0.0.1".parse().unwrap();
    let frame = |ip: Vec<u8>| remapd_tests::packet::ethernet(0x0800, &ip);
    let tcp_of = |dst| {
        frame(
            Ipv4::new("40.0.0.1", &dst_str(dst), 6)
                .with_payload(&tcp(a, dst, 40000, 80, &[0u8; 6])),
        )
    };
    let udp_of = |dst| {
        frame(
            Ipv4::new("40.0.0.1", &dst_str(dst), 17)
                .with_payload(&udp(a, dst, 5000, 53, &[0u8; 18], true)),
        )
    };
    let icmp_of = |dst: std::net::Ipv4Addr| {
        let quoted = Ipv4::new(&dst_str(dst), "40.0.0.1", 6)
            .with_payload(&tcp(dst, a, 80, 40000, &[0u8; 8]));
        frame(Ipv4::new("40.0.0.1", &dst_str(dst), 1).with_payload(&icmp(
            3,
            4,
            [0, 0, 5, 0],
            &quoted,
        )))
    };
    vec![
        ("TCP", tcp_of(d), tcp_of(d2)),
        ("UDP", udp_of(d), udp_of(d2)),
        ("ICMP error (quoting TCP)", icmp_of(d), icmp_of(d2)),
    ]
}

fn dst_str(a: std::net::Ipv4Addr) -> String {
    a.to_string()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median no-op time and median remapd time for each harness, checking every output
/// (after an odd number of passes) is `expected`.
fn measure(
    harnesses: &mut [BpfHarness],
    input: &[u8],
    expected: &[u8],
    repeat: u32,
    rounds: usize,
    name: &str,
) -> (f64, Vec<f64>) {
    let mut noop = Vec::new();
    let mut per_harness: Vec<Vec<f64>> = vec![Vec::new(); harnesses.len()];
    for _ in 0..rounds {
        noop.push(
            harnesses[0]
                .run_repeat(remapd_common::bench_programs::NOOP, input, repeat)
                .duration_ns as f64,
        );
        for (i, h) in harnesses.iter_mut().enumerate() {
            let run = h.run_repeat(programs::L2_EGRESS, input, repeat);
            assert_eq!(
                run.packet, expected,
                "{name}: unexpected output after an odd number of passes"
            );
            per_harness[i].push(run.duration_ns as f64);
        }
    }
    (median(noop), per_harness.into_iter().map(median).collect())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repeat: u32 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_001)
        | 1;
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let sizes = [1u32, 1_000, 100_000];
    println!(
        "| packet | no-op ns | remapd 1 rule ns | 1k rules ns | 100k rules ns | 1 rule − no-op | growth 1 → 100k |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut harnesses: Vec<BpfHarness> = sizes
        .iter()
        .map(|&n| {
            let mut h = BpfHarness::new();
            h.add_rule(
                Direction::Egress,
                AddressField::Destination,
                "30.0.0.0/24",
                "31.0.0.0/24",
            );
            h.add_rule(
                Direction::Egress,
                AddressField::Destination,
                "31.0.0.0/24",
                "30.0.0.0/24",
            );
            if n > 1 {
                h.add_filler_rules(Direction::Egress, AddressField::Destination, n - 2);
            }
            h
        })
        .collect();
    // The cost of looking at a packet no rule matches (parse + one trie lookup).
    let miss = remapd_tests::packet::ethernet(
        0x0800,
        &Ipv4::new("40.0.0.1", "50.0.0.1", 6).with_payload(&tcp(
            "40.0.0.1".parse().unwrap(),
            "50.0.0.1".parse().unwrap(),
            40000,
            80,
            &[0u8; 6],
        )),
    );
    let mut rows = packets();
    rows.push(("TCP, no rule matches", miss.clone(), miss.clone()));
    for (name, input, expected) in rows {
        let (noop, m) = measure(&mut harnesses, &input, &expected, repeat, rounds, name);
        println!(
            "| {name} | {noop:.1} | {:.1} | {:.1} | {:.1} | {:+.1} ns | {:+.0}% |",
            m[0],
            m[1],
            m[2],
            m[0] - noop,
            (m[2] / m[0] - 1.0) * 100.0
        );
    }
    let mut noop = Vec::new();
    let mut helper = Vec::new();
    for _ in 0..rounds {
        noop.push(
            harnesses[0]
                .run_repeat(remapd_common::bench_programs::NOOP, &miss, repeat)
                .duration_ns as f64,
        );
        helper.push(
            harnesses[0]
                .run_repeat(remapd_common::bench_programs::ONE_HELPER, &miss, repeat)
                .duration_ns as f64,
        );
    }
    let (noop, helper) = (median(noop), median(helper));
    println!();
    println!(
        "Reference: a program that only makes one cheap helper call (`bpf_skb_load_bytes`, 4 bytes) costs {helper:.1} ns vs {noop:.1} ns for the no-op ({:+.1} ns per helper call on this machine).",
        helper - noop
    );
    println!();
    println!(
        "repeat = {repeat} passes per measurement, median of {rounds} measurements; kernel-measured time per pass."
    );
}
