//! Per-packet cost of remapd's TC program with BPF_PROG_TEST_RUN, side by side in one
//! run: a no-op program, a program making one helper call, the reference rewrite (the
//! floor: one LPM lookup + direct writes, nothing else), and remapd on a border hook
//! (ingress, allow-list on) with its rules inline, while the gateway holds 2, 1,000 or
//! 100,000 rules (the others on other hooks), and with 1,000 / 100,000 rules on the
//! measured hook itself (the trie path).
//!
//! A repeated test run reuses one buffer, so the measured rules are a self-inverse pair
//! (dst 30/24 <-> 31/24): every pass really rewrites, and after an odd number of passes
//! the packet must be translated exactly once, which is checked for every program.
//!
//! Prints Markdown. Usage: bpf-bench [REPEAT] [ROUNDS]

use remapd::dataplane::{AddressField, Direction};
use remapd_common::{bench_programs, programs};
use remapd_tests::bpf::BpfHarness;
use remapd_tests::packet::{Ipv4, icmp, tcp, udp};

type Case = (&'static str, Vec<u8>, Vec<u8>);

fn packets() -> Vec<Case> {
    let a = "40.0.0.1".parse().unwrap();
    let d = "30.0.0.1".parse().unwrap();
    let d2 = "31.0.0.1".parse().unwrap();
    let frame = |ip: Vec<u8>| remapd_tests::packet::ethernet(0x0800, &ip);
    let tcp_of = |dst: std::net::Ipv4Addr| {
        frame(
            Ipv4::new("40.0.0.1", &dst.to_string(), 6)
                .with_payload(&tcp(a, dst, 40000, 80, &[0u8; 6])),
        )
    };
    let udp_of = |dst: std::net::Ipv4Addr| {
        frame(
            Ipv4::new("40.0.0.1", &dst.to_string(), 17)
                .with_payload(&udp(a, dst, 5000, 53, &[0u8; 18], true)),
        )
    };
    let icmp_of = |dst: std::net::Ipv4Addr| {
        let quoted = Ipv4::new(&dst.to_string(), "40.0.0.1", 6)
            .with_payload(&tcp(dst, a, 80, 40000, &[0u8; 8]));
        frame(
            Ipv4::new("40.0.0.1", &dst.to_string(), 1).with_payload(&icmp(
                3,
                4,
                [0, 0, 5, 0],
                &quoted,
            )),
        )
    };
    vec![
        ("TCP", tcp_of(d), tcp_of(d2)),
        ("UDP", udp_of(d), udp_of(d2)),
        ("ICMP error (quoting TCP)", icmp_of(d), icmp_of(d2)),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A harness whose test-run ingress is a border (sources 40/24, destinations 30/24 and
/// 31/24) with the self-inverse destination pair, plus `other` rules on other hooks and
/// `on_hook` more rules on the measured hook.
fn harness(other: u32, on_hook: u32) -> BpfHarness {
    setup(BpfHarness::new(), other, on_hook)
}

fn setup(mut h: BpfHarness, other: u32, on_hook: u32) -> BpfHarness {
    for (from, to) in [
        ("30.0.0.0/24", "31.0.0.0/24"),
        ("31.0.0.0/24", "30.0.0.0/24"),
    ] {
        h.add_rule(Direction::Ingress, AddressField::Destination, from, to);
        // The same pair on egress, which is no border: what the allow-list costs.
        h.add_rule(Direction::Egress, AddressField::Destination, from, to);
    }
    h.set_border(&["40.0.0.0/24"], &["30.0.0.0/24", "31.0.0.0/24"]);
    if on_hook > 0 {
        h.add_filler_rules(Direction::Ingress, AddressField::Destination, on_hook);
    }
    if other > 0 {
        h.add_rules_of_other_hooks(other);
    }
    for (from, to) in [
        ("30.0.0.0/24", "31.0.0.0/24"),
        ("31.0.0.0/24", "30.0.0.0/24"),
    ] {
        h.add_reference_rule(from, to);
    }
    h
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repeat: u32 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_001)
        | 1;
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    // (label, rules on other hooks, rules on the measured hook)
    let setups: [(&str, u32, u32); 5] = [
        ("remapd, 2 rules", 0, 0),
        ("remapd, 1k rules on other hooks", 998, 0),
        ("remapd, 100k rules on other hooks", 99_998, 0),
        ("remapd, 1k rules on this hook (trie)", 0, 998),
        ("remapd, 100k rules on this hook (trie)", 0, 99_998),
    ];
    let mut harnesses: Vec<BpfHarness> = setups.iter().map(|(_, o, n)| harness(*o, *n)).collect();

    let miss = remapd_tests::packet::ethernet(
        0x0800,
        &Ipv4::new("40.0.0.1", "30.0.0.1", 6).with_payload(&tcp(
            "40.0.0.1".parse().unwrap(),
            "30.0.0.1".parse().unwrap(),
            40000,
            80,
            &[0u8; 6],
        )),
    );

    println!(
        "Nanoseconds per packet (kernel-measured, median of {rounds} runs of {repeat} passes), and the cost above the no-op relative to the reference rewrite's cost above the no-op."
    );
    println!();
    print!("| packet | no-op | one helper | reference | remapd, 2 rules, no border (egress) |");
    for (label, _, _) in &setups {
        print!(" {label} |");
    }
    println!(" remapd 2 rules ÷ reference (above no-op) | 2 → 100k (other hooks) |");
    print!("|---|---:|---:|---:|---:|");
    for _ in &setups {
        print!("---:|");
    }
    println!("---:|---:|");
    for (name, input, expected) in packets() {
        let mut noop = Vec::new();
        let mut helper = Vec::new();
        let mut reference = Vec::new();
        let mut no_border = Vec::new();
        let mut ours: Vec<Vec<f64>> = vec![Vec::new(); harnesses.len()];
        let has_reference = name != "ICMP error (quoting TCP)";
        for _ in 0..rounds {
            let h0 = &mut harnesses[0];
            noop.push(
                h0.run_repeat(bench_programs::NOOP, &input, repeat)
                    .duration_ns as f64,
            );
            helper.push(
                h0.run_repeat(bench_programs::ONE_HELPER, &input, repeat)
                    .duration_ns as f64,
            );
            if has_reference {
                let run = h0.run_repeat(bench_programs::REFERENCE, &input, repeat);
                assert_eq!(
                    run.packet, expected,
                    "{name}: the reference program's output"
                );
                reference.push(run.duration_ns as f64);
            }
            let run = harnesses[0].run_repeat(programs::L2_EGRESS, &input, repeat);
            assert_eq!(run.packet, expected, "{name}: remapd on egress");
            no_border.push(run.duration_ns as f64);
            for (i, h) in harnesses.iter_mut().enumerate() {
                let run = h.run_repeat(programs::L2_INGRESS, &input, repeat);
                assert_eq!(
                    run.packet, expected,
                    "{name} / {}: unexpected output",
                    setups[i].0
                );
                ours[i].push(run.duration_ns as f64);
            }
        }
        let (noop, helper) = (median(noop), median(helper));
        let ours: Vec<f64> = ours.into_iter().map(median).collect();
        let reference = has_reference.then(|| median(reference));
        print!(
            "| {name} | {noop:.1} | {helper:.1} | {} | {:.1} |",
            reference.map_or("—".into(), |r| format!("{r:.1}")),
            median(no_border)
        );
        for m in &ours {
            print!(" {m:.1} |");
        }
        let ratio = reference.map_or("—".into(), |r| {
            format!("{:.2}×", (ours[0] - noop) / (r - noop))
        });
        println!(" {ratio} | {:+.0}% |", (ours[2] / ours[0] - 1.0) * 100.0);
    }
    trace_cost(rounds);
    // The same packet when no rule matches but the border allows it: parse + lookups +
    // allow-list, no rewrite.
    let mut h = BpfHarness::new();
    h.set_border(&["40.0.0.0/24"], &["30.0.0.0/24"]);
    let mut pass = Vec::new();
    let mut noop = Vec::new();
    for _ in 0..rounds {
        noop.push(
            h.run_repeat(bench_programs::NOOP, &miss, repeat)
                .duration_ns as f64,
        );
        let run = h.run_repeat(programs::L2_INGRESS, &miss, repeat);
        assert_eq!(run.packet, miss);
        pass.push(run.duration_ns as f64);
    }
    println!();
    println!(
        "A TCP packet that matches no rule and that the border lets through (parse, lookups, allow-list): {:.1} ns vs {:.1} ns for the no-op.",
        median(pass),
        median(noop)
    );
    ipv6_cost(repeat, rounds);
}

/// IPv6 next to IPv4, side by side: the same TCP segment over each family through the
/// same border hook, each with its self-inverse destination pair (IPv4 30/24 <-> 31/24
/// inline; IPv6 fd00:30::/56 <-> fd00:31::/56, in the trie, on IPv6's own path), and
/// IPv6 with a checksum-neutral pair (RFC 6296: no checksum helper runs).
fn ipv6_cost(repeat: u32, rounds: usize) {
    use remapd_tests::packet::{ethernet, ipv6_packet, tcp6};
    let mut h = BpfHarness::new();
    for (from, to) in [
        ("30.0.0.0/24", "31.0.0.0/24"),
        ("31.0.0.0/24", "30.0.0.0/24"),
    ] {
        h.add_rule(Direction::Ingress, AddressField::Destination, from, to);
    }
    // fd00:32:1::/56 and fd00:33::/56 sum to the same one's-complement value
    // (0x32 + 0x1 = 0x33): a checksum-neutral pair (RFC 6296), no checksum helper.
    for (from, to) in [
        ("fd00:30::/56", "fd00:31::/56"),
        ("fd00:31::/56", "fd00:30::/56"),
        ("fd00:32:1::/56", "fd00:33::/56"),
        ("fd00:33::/56", "fd00:32:1::/56"),
    ] {
        h.add_rule6(Direction::Ingress, AddressField::Destination, from, to);
    }
    h.set_border_dual(
        &["40.0.0.0/24"],
        &["30.0.0.0/24", "31.0.0.0/24"],
        &["fd00:40::/56"],
        &[
            "fd00:30::/56",
            "fd00:31::/56",
            "fd00:32:1::/56",
            "fd00:33::/56",
        ],
    );
    let v4 = packets().swap_remove(0);
    let six = |d: &str| {
        let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
            ("fd00:40::1".parse().unwrap(), d.parse().unwrap());
        ethernet(
            0x86dd,
            &ipv6_packet(s, d, &[], 6, &tcp6(s, d, 40000, 80, &[0u8; 6])),
        )
    };
    let v6 = ("TCP over IPv6", six("fd00:30::1"), six("fd00:31::1"));
    let neutral = (
        "TCP over IPv6, checksum-neutral",
        six("fd00:32:1::1"),
        six("fd00:33::1"),
    );
    let (mut noop, mut four, mut sixes, mut neutrals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        noop.push(
            h.run_repeat(bench_programs::NOOP, &v4.1, repeat)
                .duration_ns as f64,
        );
        for ((_, input, expected), out) in [
            (&v4, &mut four),
            (&v6, &mut sixes),
            (&neutral, &mut neutrals),
        ] {
            let run = h.run_repeat(programs::L2_INGRESS, input, repeat);
            assert_eq!(&run.packet, expected, "translated once");
            out.push(run.duration_ns as f64);
        }
    }
    let (noop, four, six, neutral) = (median(noop), median(four), median(sixes), median(neutrals));
    println!();
    println!(
        "IPv6 next to IPv4 (TCP, border hook, a self-inverse destination pair; median of {rounds} runs of {repeat} passes; ns per packet):"
    );
    println!();
    println!(
        "| no-op | IPv4 (fast path, inline rules) | IPv6 (its own path, trie rules) | IPv6, checksum-neutral pair | IPv6 above the no-op ÷ IPv4 above the no-op | checksum-neutral saves |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {noop:.1} | {four:.1} | {six:.1} | {neutral:.1} | {:.2}× | {:.1} ns |",
        (six - noop) / (four - noop),
        six - neutral
    );
}

/// What the trace costs, side by side: the programs with the trace removed at load time
/// (what they were before it existed), with it and no trace running, with a trace
/// running for another interface, and writing every packet to the ring buffer (drained
/// between runs, so no write fails). TCP on the border hook, 2 rules. Fewer passes per
/// run than above, so the buffer holds every event of a run; more rounds instead.
fn trace_cost(rounds: usize) {
    use remapd::dataplane::trace::{KernelTraceFilter, TraceTap};
    const PASSES: u32 = 15_001;
    let (_, input, expected) = packets().swap_remove(0);
    let mut without = setup(BpfHarness::without_trace(), 0, 0);
    let mut with = harness(0, 0);
    let elsewhere = KernelTraceFilter {
        ifindex: Some(u32::MAX),
        ..KernelTraceFilter::default()
    };
    let mut cols: [Vec<f64>; 5] = Default::default();
    for _ in 0..rounds * 5 {
        let time = |h: &mut BpfHarness, program: &str| {
            let run = h.run_repeat(program, &input, PASSES);
            if program != bench_programs::NOOP {
                assert_eq!(run.packet, expected, "{program}: translated once");
            }
            run.duration_ns as f64
        };
        cols[0].push(time(&mut with, bench_programs::NOOP));
        cols[1].push(time(&mut without, programs::L2_INGRESS));
        with.trace().set(None).expect("trace off");
        cols[2].push(time(&mut with, programs::L2_INGRESS));
        with.trace().set(Some(&elsewhere)).expect("trace elsewhere");
        cols[3].push(time(&mut with, programs::L2_INGRESS));
        with.trace()
            .set(Some(&KernelTraceFilter::default()))
            .expect("trace on");
        cols[4].push(time(&mut with, programs::L2_INGRESS));
        let written = with.trace_events().len();
        with.trace().set(None).expect("trace off");
        assert_eq!(written, PASSES as usize, "every pass was traced");
    }
    let lost = with.trace().lost().expect("lost");
    assert_eq!(lost, 0, "the buffer held every event");
    let [noop, without, idle, elsewhere, on] = cols.map(median);
    println!();
    println!(
        "The trace (TCP, border hook, 2 rules; median of {} runs of {PASSES} passes; ns per packet):",
        rounds * 5
    );
    println!();
    println!(
        "| no-op | remapd, trace removed at load | remapd, no trace running | trace running for another interface | trace running, every packet written | no trace running vs removed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {noop:.1} | {without:.1} | {idle:.1} | {elsewhere:.1} | {on:.1} | {:+.1} ns ({:+.0}%) |",
        idle - without,
        (idle - without) / (without - noop) * 100.0
    );
}
